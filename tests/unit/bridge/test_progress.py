"""Whole-job percentages from ComfyUI's messages, and the models a workflow names."""

from __future__ import annotations

from genserve.bridge.progress import ProgressTracker, is_final, models_of
from genserve.workflows.demo import demo_workflow


def message(kind: str, **data: object) -> dict[str, object]:
    return {"type": kind, "data": {"prompt_id": "p", **data}}


def test_percent_counts_finished_nodes_with_sampler_steps_inside() -> None:
    graph = {str(n): {"class_type": "X", "inputs": {}} for n in range(4)}
    tracker = ProgressTracker(graph)
    seen = []
    for msg in [
        message("execution_start"),
        message("execution_cached", nodes=["0"]),
        message("executing", node="1"),
        message("executing", node="2"),
        message("progress", value=5, max=10, node="2"),
        message("executing", node="3"),
        message("executing", node=None),
    ]:
        if tracker.feed(msg):
            seen.append(round(tracker.percent, 2))
    # cached 0 -> 25 %; 1 done when 2 starts -> 50 %; half of 2 -> 62.5 %; 2 done -> 75 %; end -> 100 %.
    assert seen == [25.0, 50.0, 62.5, 75.0, 100.0]


def test_percent_never_goes_down() -> None:
    tracker = ProgressTracker({"1": {}, "2": {}})
    tracker.feed(message("executing", node="1"))
    tracker.feed(message("progress", value=9, max=10, node="1"))
    high = tracker.percent
    assert not tracker.feed(message("progress", value=1, max=10, node="1"))
    assert tracker.percent == high


def test_final_messages_and_models() -> None:
    assert is_final(message("execution_success")) and is_final(message("execution_error"))
    assert not is_final(message("executing", node=None))
    models = models_of(demo_workflow("image-edit"))
    assert {m.split(".")[0] for m in models} >= {"qwen_image_vae"} and len(models) == 4


def test_no_progress_after_an_error_or_an_interrupt() -> None:
    """ComfyUI sends ``executing {node: null}`` after ``execution_error``: not a 100 % to show."""
    for ending in ("execution_error", "execution_interrupted"):
        tracker = ProgressTracker({"1": {}, "2": {}})
        tracker.feed(message("executing", node="1"))
        assert tracker.feed(message("executing", node="2"))
        before = tracker.percent
        assert not tracker.feed(message(ending, node_id="1"))
        assert not tracker.feed(message("executing", node=None))
        assert not tracker.feed(message("execution_success"))
        assert tracker.failed and tracker.percent == before < 100.0
