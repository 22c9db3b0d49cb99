"""The bridge's catalog tests validate workflows over the workflow tests' toy node types."""

from tests.unit.workflows.conftest import registry

__all__ = ["registry"]
