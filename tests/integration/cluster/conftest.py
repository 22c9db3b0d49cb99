"""Every cluster process a test starts is stopped when the test ends, passed or failed."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.integration.cluster.support import Process


@pytest.fixture(autouse=True)
def stop_what_the_test_started() -> Iterator[None]:
    """Processes started by module fixtures come before this fixture's mark and are theirs to stop."""
    mark = len(Process.started)
    yield
    for process in Process.started[mark:]:
        process.stop(signal.SIGKILL)
    del Process.started[mark:]
