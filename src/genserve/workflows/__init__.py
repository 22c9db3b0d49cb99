"""Workflows: ComfyUI API-format graphs, the node types they name, and the runner that executes them."""
