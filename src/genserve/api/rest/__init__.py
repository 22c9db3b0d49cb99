"""The REST door (FastAPI): the pipeline endpoints, model admin, health and metrics."""

from genserve.api.rest.app import build_app

__all__ = ["build_app"]
