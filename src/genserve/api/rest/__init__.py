"""The REST door (FastAPI): one router module per API family (pipeline, model admin, operations,
ComfyUI's API, the bridge's API, the OpenAI-compatible API), their dependencies injected from one
``RestParts``. Imports what every door may.
"""

from genserve.api.rest.app import build_app

__all__ = ["build_app"]
