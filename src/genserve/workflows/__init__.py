"""Workflows: ComfyUI API-format graphs (validation, pruning, order, cache keys), the runner with
its output cache and events, ComfyUI's prompt queue on the engine's workflow lane, and nodes/, the
node types. Imports the engine, services, models, storage and config; never the bridge or a door.
"""
