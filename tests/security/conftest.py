"""Hostile clients against real servers: the integration suite's live servers, reused."""

from tests.integration.conftest import client, module_data, server  # noqa: F401
