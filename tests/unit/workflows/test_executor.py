"""WorkflowExecutor: the closing message comes after the history entry, as ComfyUI's worker sends it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from genserve.workflows.executor import WorkflowExecutor
from genserve.workflows.runner import WorkflowRunner

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("first", "status"), [("Number", "success"), ("Fail", "error")])
def test_history_is_in_place_when_the_closing_message_arrives(
    runner: WorkflowRunner, first: str, status: str
) -> None:
    """Clients fetch /history/<id> on ``executing`` with ``node: null``; the entry must be there."""
    inputs: dict[str, Any] = {"value": 2.0} if first == "Number" else {"x": ["0", 0]}
    prompt = {
        "0": {"class_type": "Number", "inputs": {"value": 1.0}},
        "1": {"class_type": first, "inputs": inputs},
        "2": {"class_type": "Collect", "inputs": {"values": ["1", 0]}},
    }
    executor = WorkflowExecutor(runner, resources=None)
    seen: dict[str, Any] = {}
    closed = threading.Event()

    def listener(message: dict[str, Any]) -> None:
        if message["type"] == "executing" and message["data"]["node"] is None:
            prompt_id = message["data"]["prompt_id"]
            seen["history"] = executor.history(prompt_id).get(prompt_id)
            closed.set()

    executor.add_listener("client", listener)
    executor.start()
    try:
        executor.submit(prompt, client_id="client")
        assert closed.wait(10), "no closing message"
    finally:
        executor.stop()
    assert seen["history"] is not None, "the closing message came before the history entry"
    assert seen["history"]["status"]["status_str"] == status
