"""PromptQueue on the engine's workflow lane: the closing message comes after the history entry,
as ComfyUI's worker sends it; waiting prompts are listed and deleted by id; every prompt is a run
the engine's observers see."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genserve.config import PipelineSettings
from genserve.engine.engine import Engine
from genserve.engine.events import RunRecord
from genserve.engine.lanes import ServiceLane
from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.nodes.values import PipelineResources
from genserve.workflows.queue import LANE, PromptQueue
from genserve.workflows.runner import WorkflowRunner

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An engine with the workflow lane only (the toy nodes need no models or files)."""
    made = Engine(None, None, PipelineSettings(), service_lanes={LANE: ServiceLane(1, 4)})  # type: ignore[arg-type]
    yield made
    made.close()


@pytest.mark.parametrize(("first", "status"), [("Number", "success"), ("Fail", "error")])
def test_history_is_in_place_when_the_closing_message_arrives(
    runner: WorkflowRunner, engine: Engine, first: str, status: str
) -> None:
    """Clients fetch /history/<id> on ``executing`` with ``node: null``; the entry must be there."""
    inputs: dict[str, Any] = {"value": 2.0} if first == "Number" else {"x": ["0", 0]}
    prompt = {
        "0": {"class_type": "Number", "inputs": {"value": 1.0}},
        "1": {"class_type": first, "inputs": inputs},
        "2": {"class_type": "Collect", "inputs": {"values": ["1", 0]}},
    }
    executor = PromptQueue(engine, runner, resources=None)
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


SLOW = {
    "0": {"class_type": "Number", "inputs": {"value": 1.0}},
    "1": {"class_type": "SlowSteps", "inputs": {"x": ["0", 0], "steps": 50, "delay": 0.02}},
    "2": {"class_type": "Collect", "inputs": {"values": ["1", 0]}},
}


def test_waiting_prompts_are_listed_and_deleted_by_id_on_the_engine_lane(
    runner: WorkflowRunner, engine: Engine
) -> None:
    queue = PromptQueue(engine, runner, resources=None)
    runs: list[RunRecord] = []
    engine.observers.append(runs.append)
    queue.start()
    try:
        first, _ = queue.submit(SLOW)
        deadline = time.monotonic() + 10
        while not engine.jobs(LANE)[0].running:
            assert time.monotonic() < deadline, "the first prompt never started"
            time.sleep(0.01)
        second, _ = queue.submit(SLOW)
        third, _ = queue.submit(SLOW)
        listed = queue.queue()
        assert [entry[1] for entry in listed["queue_running"]] == [first]
        assert [entry[1] for entry in listed["queue_pending"]] == [second, third]
        assert queue.queue_remaining() == 3
        assert [job.id for job in engine.jobs(LANE)] == [first, second, third]
        assert queue.delete_queued([second]) == 1
        assert [job.id for job in engine.jobs(LANE)] == [first, third]
        assert queue.interrupt(first)
    finally:
        queue.stop()
    assert queue.history(first)[first]["status"]["status_str"] == "error"  # interrupted
    assert queue.history(second) == {}  # deleted before it ran
    assert engine.jobs(LANE) == []
    outcomes = sorted((r.service, r.device, r.outcome) for r in runs)
    assert ("workflow", LANE, "CANCELLED") in outcomes and ("workflow", LANE, "cancelled") in outcomes


def test_a_full_lane_refuses_the_prompt(runner: WorkflowRunner, engine: Engine) -> None:
    queue = PromptQueue(engine, runner, resources=None)
    queue.start()
    try:
        for _ in range(5):  # one running, four waiting: the lane's queue size
            queue.submit(SLOW)
        with pytest.raises(GenserveError) as info:
            queue.submit(SLOW)
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert info.value.message.startswith("the workflow queue is full")
    finally:
        queue.stop()


def _resources(output: Path, temp: Path | None = None) -> PipelineResources:
    """Only the folders matter to the queue's start-up clean-up: no models or sandbox are used."""
    return PipelineResources(
        models=None,  # type: ignore[arg-type]
        sandbox=None,  # type: ignore[arg-type]
        defaults=PipelineSettings(),
        input_dir=output,
        output_dir=output,
        temp_dir=temp,
    )


def test_start_empties_the_temp_folder_and_nothing_else(
    runner: WorkflowRunner, engine: Engine, tmp_path: Path
) -> None:
    """ComfyUI empties its temp folder at start-up; previews of earlier sessions go, the output
    folder, the temp folder itself and what a link in it points at stay."""
    output, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    temp = output / "temp"
    (temp / "clients" / "key").mkdir(parents=True)
    (temp / "ComfyUI_temp_abcde_00001_.png").write_bytes(b"png")
    (temp / "clients" / "key" / "preview.png").write_bytes(b"png")
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (temp / "link").symlink_to(elsewhere, target_is_directory=True)
    (output / "ComfyUI_00001_.png").write_bytes(b"saved")
    queue = PromptQueue(engine, runner, resources=_resources(output))
    queue.start()
    queue.stop()
    assert temp.is_dir() and list(temp.iterdir()) == []
    assert (output / "ComfyUI_00001_.png").read_bytes() == b"saved"
    assert (elsewhere / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["outside", "output itself", "link out"])
def test_a_temp_folder_outside_the_output_folder_is_left_alone(
    runner: WorkflowRunner, engine: Engine, tmp_path: Path, where: str
) -> None:
    output, outside = tmp_path / "output", tmp_path / "outside"
    output.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (output / "keep.png").write_bytes(b"saved")
    temp = {"outside": outside, "output itself": output, "link out": output / "temp"}[where]
    if where == "link out":
        temp.symlink_to(outside, target_is_directory=True)
    resources = _resources(output, temp)
    assert resources.clear_temp() == 0
    PromptQueue(engine, runner, resources=resources).start()
    assert (outside / "keep.txt").read_text() == "keep" and (output / "keep.png").read_bytes() == b"saved"
