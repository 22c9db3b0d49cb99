"""ComfyUI node types, one module per family (models, sampling, image, values), and the registry
that names them. May import services, models and storage.
"""
