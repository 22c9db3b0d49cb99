"""The runner: outputs along links, the output cache, events, progress, cancellation and failures."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.cache import OutputCache
from genserve.workflows.events import (
    Executed,
    Executing,
    ExecutionError,
    ExecutionInterrupted,
    Progress,
    WorkflowEvent,
    overall_percent,
)
from genserve.workflows.graph import GraphValidationError
from genserve.workflows.inputs import Linked
from genserve.workflows.nodes.base import NodeRegistry, NodeResult, NodeType
from genserve.workflows.runner import WorkflowRunner
from tests.unit.workflows.conftest import Recorder, chain

pytestmark = pytest.mark.timeout(30)


def test_runs_in_order_passing_outputs_and_reports_comfyui_events(runner: WorkflowRunner) -> None:
    calls: list[str] = []
    recorder = Recorder()
    result = runner.run(chain(seed=1), prompt_id="p1", on_event=recorder, resources=calls)
    assert calls == ["1", "2", "3", "4"]
    assert result.prompt_id == "p1"
    assert result.outputs == {"4": {"values": [7.0], "label": ["result"]}}  # 2 * 3 + 1
    assert result.values["3"] == (7.0,)
    assert result.executed == ("1", "2", "3", "4") and result.cached == ()
    messages = [e.to_message() for e in recorder.events]
    assert [m["type"] for m in messages] == [
        "execution_start",
        "execution_cached",
        "executing",
        "executing",
        "progress",
        "progress",
        "progress",
        "progress",
        "executing",
        "executing",
        "executed",
        "execution_success",
        "executing",
    ]
    assert all(m["data"]["prompt_id"] == "p1" for m in messages)
    assert messages[1]["data"]["nodes"] == []
    assert messages[4]["data"] == {"value": 1, "max": 4, "prompt_id": "p1", "node": "2"}
    assert messages[10]["data"]["output"] == {"values": [7.0], "label": ["result"]}
    assert messages[-1]["data"] == {"node": None, "display_node": None, "prompt_id": "p1"}


def test_rerun_with_only_the_seed_changed_reruns_only_downstream_of_it(runner: WorkflowRunner) -> None:
    runner.run(chain(seed=1))
    calls: list[str] = []
    recorder = Recorder()
    result = runner.run(chain(seed=2), on_event=recorder, resources=calls)
    assert calls == ["3", "4"]
    assert result.cached == ("1", "2") and result.executed == ("3", "4")
    assert result.outputs["4"]["values"] == [8.0]
    cached = [e for e in recorder.events if e.type.value == "execution_cached"]
    assert cached[0].to_message()["data"]["nodes"] == ["1", "2"]


def test_an_upstream_change_reruns_everything_after_it(runner: WorkflowRunner) -> None:
    runner.run(chain(value=2.0))
    calls: list[str] = []
    runner.run(chain(value=5.0), resources=calls)
    assert calls == ["1", "2", "3", "4"]


def test_an_unchanged_workflow_runs_nothing_and_still_reports_its_outputs(runner: WorkflowRunner) -> None:
    runner.run(chain())
    calls: list[str] = []
    recorder = Recorder()
    result = runner.run(chain(), on_event=recorder, resources=calls)
    assert calls == []
    assert result.outputs == {"4": {"values": [6.0], "label": ["result"]}}
    executed = [e for e in recorder.events if isinstance(e, Executed)]
    assert [(e.node, e.output["values"]) for e in executed] == [("4", [6.0])]


def test_the_cache_is_shared_across_node_ids(runner: WorkflowRunner) -> None:
    runner.run(chain(seed=1))
    calls: list[str] = []
    result = runner.run(chain(seed=1, ids=("a", "b", "c", "d")), resources=calls)
    assert calls == []
    assert result.cached == ("a", "b", "c", "d")


def test_not_cacheable_nodes_rerun_with_their_readers_but_not_the_rest(registry: NodeRegistry) -> None:
    runner = WorkflowRunner(registry)
    data = {
        "1": {"class_type": "Random", "inputs": {}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["3", 0]}},
        "3": {"class_type": "Number", "inputs": {"value": 10}},
        "4": {"class_type": "Collect", "inputs": {"values": ["2", 0]}},
    }
    first = runner.run(data)
    calls: list[str] = []
    second = runner.run(data, resources=calls)
    assert calls == ["1", "2", "4"]
    assert second.cached == ("3",)
    assert second.outputs["4"]["values"] != first.outputs["4"]["values"]
    assert len(runner.cache) == 1  # volatile results are not kept: they could never be hit


@pytest.mark.parametrize(("size", "rerun"), [(4, ["3", "4"]), (6, [])])
def test_cache_size_bounds_entries_lru(registry: NodeRegistry, size: int, rerun: list[str]) -> None:
    runner = WorkflowRunner(registry, cache_size=size)
    runner.run(chain(seed=1))  # 4 entries
    runner.run(chain(seed=2))  # hits "1" and "2" (now most recent), adds 2 entries for "3" and "4"
    assert len(runner.cache) == min(size, 6)
    calls: list[str] = []
    runner.run(chain(seed=1), resources=calls)
    assert calls == rerun  # with room for 4, seed=1's "3" and "4" were the least recently used


def test_cache_size_zero_runs_everything_every_time(registry: NodeRegistry) -> None:
    runner = WorkflowRunner(registry, cache_size=0)
    runner.run(chain())
    calls: list[str] = []
    runner.run(chain(), resources=calls)
    assert calls == ["1", "2", "3", "4"]


def test_output_cache_lru_order_and_clear() -> None:
    cache = OutputCache(2)
    cache.put("a", NodeResult((1,)))
    cache.put("b", NodeResult((2,)))
    assert cache.get("a") == NodeResult((1,))  # "a" is now the most recently used
    cache.put("c", NodeResult((3,)))
    assert "a" in cache and "b" not in cache and "c" in cache
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        OutputCache(-1)


def test_overall_progress_counts_finished_nodes_and_the_running_nodes_steps(runner: WorkflowRunner) -> None:
    assert overall_percent(2, 4, 10, 20) == 62.5
    assert overall_percent(0, 4) == 0.0
    assert overall_percent(4, 4) == 100.0
    assert overall_percent(0, 0) == 100.0
    assert overall_percent(1, 2, 5, 0) == 50.0
    recorder = Recorder()
    runner.run(chain(), on_event=recorder)
    progress = [e.overall for e in recorder.events if isinstance(e, Progress)]
    assert progress == [31.25, 37.5, 43.75, 50.0]  # node 2 of 4: (1 + step/4) / 4
    executing = [(e.node, e.overall) for e in recorder.events if isinstance(e, Executing)]
    assert executing == [("1", 0.0), ("2", 25.0), ("3", 50.0), ("4", 75.0), (None, 100.0)]
    # With the first two nodes cached, only the two nodes left count.
    recorder = Recorder()
    runner.run(chain(seed=9), on_event=recorder)
    executing = [(e.node, e.overall) for e in recorder.events if isinstance(e, Executing)]
    assert executing == [("3", 0.0), ("4", 50.0), (None, 100.0)]


def test_cancel_mid_run_interrupts_and_keeps_finished_results(runner: WorkflowRunner) -> None:
    cancel = threading.Event()

    def cancel_at_step_two(event: WorkflowEvent) -> None:
        if isinstance(event, Progress) and event.value == 2:
            cancel.set()

    recorder = Recorder(cancel_at_step_two)
    calls: list[str] = []
    with pytest.raises(GenserveError) as excinfo:
        runner.run(chain(), on_event=recorder, cancel_event=cancel, resources=calls)
    error = excinfo.value
    assert error.code is ErrorCode.CANCELLED
    assert error.details["node_id"] == "2" and error.details["class_type"] == "SlowSteps"
    assert calls == ["1", "2"]
    interrupted = [e for e in recorder.events if isinstance(e, ExecutionInterrupted)]
    assert [(e.node_id, e.node_type, e.executed) for e in interrupted] == [("2", "SlowSteps", ("1",))]
    assert recorder.types()[-2:] == ["execution_interrupted", "executing"]
    assert "execution_success" not in recorder.types()
    calls.clear()
    runner.run(chain(), resources=calls)
    assert calls == ["2", "3", "4"]  # node 1 finished before the cancel and stays cached


def test_cancel_from_another_thread_between_nodes(runner: WorkflowRunner) -> None:
    cancel = threading.Event()
    data = chain()
    data["2"]["inputs"]["delay"] = 0.05
    started = threading.Event()
    recorder = Recorder(lambda e: started.set() if isinstance(e, Progress) else None)
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            runner.run(data, on_event=recorder, cancel_event=cancel)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(5)
    cancel.set()
    thread.join(5)
    assert isinstance(outcome[0], GenserveError) and outcome[0].code is ErrorCode.CANCELLED


def test_cancel_before_start_runs_nothing(runner: WorkflowRunner) -> None:
    cancel = threading.Event()
    cancel.set()
    calls: list[str] = []
    recorder = Recorder()
    with pytest.raises(GenserveError) as excinfo:
        runner.run(chain(), cancel_event=cancel, on_event=recorder, resources=calls)
    assert excinfo.value.code is ErrorCode.CANCELLED
    assert calls == []
    interrupted = [e for e in recorder.events if isinstance(e, ExecutionInterrupted)]
    assert interrupted[0].node_id == "1"


def test_a_failing_node_reports_its_id_and_class_and_finished_nodes_stay_cached(
    runner: WorkflowRunner,
) -> None:
    data = chain()
    data["3"] = {"class_type": "Fail", "inputs": {"x": ["2", 0]}}
    recorder = Recorder()
    with pytest.raises(GenserveError) as excinfo:
        runner.run(data, on_event=recorder, prompt_id="p9")
    error = excinfo.value
    assert error.code is ErrorCode.INTERNAL
    assert error.message == "node 3 (Fail) failed: RuntimeError: boom at 2.0"
    assert error.details == {"node_id": "3", "class_type": "Fail"}
    failure = next(e for e in recorder.events if isinstance(e, ExecutionError))
    data_out = failure.to_message()["data"]
    assert data_out["node_id"] == "3" and data_out["node_type"] == "Fail"
    assert data_out["exception_message"] == "boom at 2.0"
    assert data_out["exception_type"] == "builtins.RuntimeError"
    assert data_out["executed"] == ["1", "2"]
    assert data_out["traceback"] == []  # the log has it; clients never get one
    assert recorder.types()[-2:] == ["execution_error", "executing"]
    calls: list[str] = []
    runner.run(chain(), resources=calls)
    assert calls == ["3", "4"]


def test_a_node_raising_genserve_error_keeps_its_code(registry: NodeRegistry) -> None:
    def missing(ctx: Any, x: float) -> tuple[float]:
        raise GenserveError(ErrorCode.MODEL_NOT_FOUND, "no model 'x.safetensors'", field="unet_name")

    registry.register(
        NodeType("NeedsModel", missing, required={"x": Linked("NUMBER")}, return_types=("NUMBER",))
    )
    data = chain()
    data["3"] = {"class_type": "NeedsModel", "inputs": {"x": ["2", 0]}}
    with pytest.raises(GenserveError) as excinfo:
        WorkflowRunner(registry).run(data)
    assert excinfo.value.code is ErrorCode.MODEL_NOT_FOUND
    assert excinfo.value.details == {"field": "unet_name", "node_id": "3", "class_type": "NeedsModel"}


def test_invalid_workflow_runs_nothing(runner: WorkflowRunner) -> None:
    data = chain()
    data["3"]["inputs"]["seed"] = -5
    calls: list[str] = []
    recorder = Recorder()
    with pytest.raises(GraphValidationError):
        runner.run(data, resources=calls, on_event=recorder)
    assert calls == [] and recorder.events == []


def test_a_failing_event_listener_does_not_fail_the_run(runner: WorkflowRunner) -> None:
    def broken(event: WorkflowEvent) -> None:
        raise ConnectionError("socket closed")

    assert runner.run(chain(), on_event=broken).outputs["4"]["values"] == [6.0]


def test_a_validated_graph_can_be_run_directly(runner: WorkflowRunner) -> None:
    graph = runner.validate(chain())
    assert runner.run(graph).outputs["4"]["values"] == [6.0]
