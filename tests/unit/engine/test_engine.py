"""Engine behaviour with small real services: queueing, progress, cancellation, errors, devices."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, cast

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import ProgressEvent, Service

# -- test services ------------------------------------------------------------------------------
from tests.unit.engine.conftest import (
    ADD,
    FAIL_KNOWN,
    FAIL_UNKNOWN,
    KNOWN_ERROR,
    WRONG_TYPE,
    AddRequest,
    AddResponse,
    MakeEngine,
    StepLog,
    StepsResponse,
    _add,
    gate_service,
    steps_service,
)


def test_submit_returns_typed_response_off_the_loop_thread(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD)

    async def scenario() -> tuple[Any, int]:
        return await engine.submit(ADD, AddRequest(a=2, b=3)), threading.get_ident()

    response, loop_thread = asyncio.run(scenario())
    assert isinstance(response, AddResponse)
    assert response.total == 5
    assert response.thread_id != loop_thread
    assert response.thread_name.startswith("genserve-cpu")


def test_dict_request_by_service_name(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD)
    response = asyncio.run(engine.submit("add", {"a": 1, "b": 2}))
    assert isinstance(response, AddResponse)
    assert response.total == 3


def test_unknown_service_lists_known_names(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD, FAIL_KNOWN)
    with pytest.raises(GenserveError) as excinfo:
        engine.service("nope")
    assert excinfo.value.code is ErrorCode.NOT_FOUND
    assert "add" in excinfo.value.message and "fail_known" in excinfo.value.message


@pytest.mark.parametrize(
    ("data", "bad_field"),
    [({"a": "x", "b": 1}, "a"), ({"a": 1}, "b"), ({"a": 1, "b": 2, "extra": 3}, "extra")],
)
def test_bad_dict_request_is_refused_before_running(
    make_engine: MakeEngine, data: dict[str, Any], bad_field: str
) -> None:
    calls: list[AddRequest] = []
    spy = Service("add", AddRequest, AddResponse, lambda r, ctx: calls.append(r) or _add(r, ctx))
    engine = make_engine(spy)
    with pytest.raises(GenserveError) as excinfo:
        asyncio.run(engine.submit("add", data))
    assert excinfo.value.code is ErrorCode.INVALID_INPUT
    assert excinfo.value.details["fields"] == [bad_field]
    assert bad_field in excinfo.value.message
    assert calls == []


def test_unknown_device_is_invalid_input(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD)
    with pytest.raises(GenserveError) as excinfo:
        asyncio.run(engine.submit(ADD, {"a": 1, "b": 1}, device="cuda:7"))
    assert excinfo.value.code is ErrorCode.INVALID_INPUT
    assert "cuda:7" in excinfo.value.message


# -- progress ----------------------------------------------------------------------------------


def test_progress_arrives_in_order_on_the_loop_thread(make_engine: MakeEngine) -> None:
    log = StepLog()
    service = steps_service(log)
    engine = make_engine(service)
    seen: list[tuple[int, int, int, str]] = []

    def on_progress(event: ProgressEvent) -> None:
        seen.append((event.step, event.total, threading.get_ident(), event.request_id))

    async def scenario() -> int:
        await engine.submit(service, {"steps": 5}, progress=on_progress, request_id="r-1")
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert [(step, total) for step, total, _, _ in seen] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert {thread for _, _, thread, _ in seen} == {loop_thread}
    assert log.thread_id != loop_thread
    assert {rid for _, _, _, rid in seen} == {"r-1"}


def test_failing_progress_callback_is_logged_not_raised(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    log = StepLog()
    service = steps_service(log)
    engine = make_engine(service)

    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("display gone")

    with caplog.at_level(logging.ERROR, logger="genserve.engine"):
        response = engine.run_sync(service, {"steps": 3}, progress=broken)
    assert isinstance(response, StepsResponse) and response.done == 3
    assert sum("progress callback failed" in r.getMessage() for r in caplog.records) == 3


# -- cancellation, timeout, backpressure -------------------------------------------------------


def test_cancelling_the_caller_stops_the_run(make_engine: MakeEngine) -> None:
    log = StepLog()
    service = steps_service(log)
    engine = make_engine(service)
    cancel = threading.Event()

    async def scenario() -> None:
        first_step = asyncio.Event()
        task = asyncio.create_task(
            engine.submit(
                service, {"steps": 200, "delay": 0.01}, progress=lambda e: first_step.set(), cancel=cancel
            )
        )
        await asyncio.wait_for(first_step.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert cancel.is_set()
    assert log.finished.wait(5)
    assert log.cancel_event is cancel
    assert 1 <= log.steps_run < 200
    assert engine.device_load("cpu").running == 0 and engine.device_load("cpu").waiting == 0


def test_cancelled_while_queued_never_runs(make_engine: MakeEngine) -> None:
    started, release = threading.Event(), threading.Event()
    gate = gate_service(started, release)
    log = StepLog()
    steps = steps_service(log)
    engine = make_engine(gate, steps, workers_per_device=1)

    async def scenario() -> None:
        holder = asyncio.create_task(engine.submit(gate, {}))
        assert await asyncio.to_thread(started.wait, 5)
        queued = asyncio.create_task(engine.submit(steps, {"steps": 3}))
        await asyncio.sleep(0.05)
        assert engine.device_load("cpu").waiting == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await holder

    asyncio.run(scenario())
    engine.close()
    assert not log.started.is_set()
    load = engine.device_load("cpu")
    assert (load.device, load.running, load.waiting) == ("cpu", 0, 0)


def test_full_queue_is_refused_at_once(make_engine: MakeEngine) -> None:
    started, release = threading.Event(), threading.Event()
    gate = gate_service(started, release)
    engine = make_engine(gate, ADD, queue_size=1, workers_per_device=1)

    async def scenario() -> None:
        running = asyncio.create_task(engine.submit(gate, {}))
        assert await asyncio.to_thread(started.wait, 5)
        waiting = asyncio.create_task(engine.submit(ADD, {"a": 1, "b": 1}))
        await asyncio.sleep(0.05)
        with pytest.raises(GenserveError) as excinfo:
            await engine.submit(ADD, {"a": 2, "b": 2})
        assert excinfo.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert excinfo.value.message == "queue for device cpu is full (1 waiting)"
        release.set()
        await running
        assert cast(AddResponse, await waiting).total == 2
        # The slots are given back: the queue accepts work again.
        assert cast(AddResponse, await engine.submit(ADD, {"a": 3, "b": 3})).total == 6

    asyncio.run(scenario())


def test_timeout_cancels_the_run_and_silences_progress(make_engine: MakeEngine) -> None:
    log = StepLog()
    service = steps_service(log)
    engine = make_engine(service)
    delivered: list[int] = []

    async def scenario() -> tuple[int, int]:
        with pytest.raises(GenserveError) as excinfo:
            await engine.submit(
                service,
                {"steps": 200, "delay": 0.01},
                timeout=0.1,
                progress=lambda e: delivered.append(e.step),
            )
        assert excinfo.value.code is ErrorCode.TIMEOUT
        at_timeout = len(delivered)
        assert await asyncio.to_thread(log.finished.wait, 5)
        await asyncio.sleep(0.05)  # let any late event reach the loop
        return at_timeout, len(delivered)

    at_timeout, after_finish = asyncio.run(scenario())
    assert log.cancel_event is not None and log.cancel_event.is_set()
    assert log.steps_run < 200
    assert after_finish == at_timeout  # the caller has gone; its callback is not called again


def test_cancel_flag_set_before_start_means_it_never_runs(make_engine: MakeEngine) -> None:
    log = StepLog()
    service = steps_service(log)
    engine = make_engine(service)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenserveError) as excinfo:
        engine.run_sync(service, {"steps": 3}, cancel=cancel, request_id="r-early")
    assert excinfo.value.code is ErrorCode.CANCELLED
    assert "r-early" in excinfo.value.message
    assert not log.started.is_set()


# -- errors ------------------------------------------------------------------------------------


def test_genserve_error_passes_unchanged(make_engine: MakeEngine) -> None:
    engine = make_engine(FAIL_KNOWN)
    with pytest.raises(GenserveError) as excinfo:
        engine.run_sync("fail_known", {"a": 1, "b": 1})
    assert excinfo.value is KNOWN_ERROR


def test_unexpected_exception_becomes_internal_and_is_logged(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(FAIL_UNKNOWN)
    with caplog.at_level(logging.ERROR, logger="genserve.engine"), pytest.raises(GenserveError) as excinfo:
        engine.run_sync("fail_unknown", {"a": 1, "b": 1}, request_id="r-boom")
    assert excinfo.value.code is ErrorCode.INTERNAL
    assert "ValueError: boom" in excinfo.value.message
    failures = [r for r in caplog.records if r.exc_info and "r-boom" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is ValueError


def test_wrong_response_type_is_internal(make_engine: MakeEngine) -> None:
    engine = make_engine(WRONG_TYPE)
    with pytest.raises(GenserveError) as excinfo:
        engine.run_sync("wrong_type", {"a": 1, "b": 1})
    assert excinfo.value.code is ErrorCode.INTERNAL
    assert "StepsResponse" in excinfo.value.message


# -- sync use, devices, logging, lifecycle -----------------------------------------------------


def test_run_sync_from_plain_code_twice(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD)
    first = cast(AddResponse, engine.run_sync("add", {"a": 1, "b": 1}))
    second = cast(AddResponse, engine.run_sync(ADD, AddRequest(a=5, b=5)))
    assert (first.total, second.total) == (2, 10)


def test_each_device_has_its_own_executor(make_engine: MakeEngine) -> None:
    started, release = threading.Event(), threading.Event()
    gate = gate_service(started, release)
    engine = make_engine(gate, ADD, devices=("cpu", "cpu:1"), queue_size=0, workers_per_device=1)
    assert engine.devices == ("cpu", "cpu:1")

    async def scenario() -> None:
        holder = asyncio.create_task(engine.submit(gate, {}))  # the first device is the default
        assert await asyncio.to_thread(started.wait, 5)
        with pytest.raises(GenserveError) as excinfo:
            await engine.submit(ADD, {"a": 1, "b": 1}, device="cpu")
        assert excinfo.value.code is ErrorCode.RESOURCE_EXHAUSTED
        other = cast(AddResponse, await engine.submit(ADD, {"a": 1, "b": 1}, device="cpu:1"))
        assert other.thread_name.startswith("genserve-cpu:1_")
        release.set()
        await holder
        first = cast(AddResponse, await engine.submit(ADD, {"a": 1, "b": 1}))
        assert first.thread_name.startswith("genserve-cpu_")

    asyncio.run(scenario())


def test_one_log_line_per_request_without_contents(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(ADD, FAIL_KNOWN)
    with caplog.at_level(logging.INFO, logger="genserve.engine"):
        engine.run_sync("add", {"a": 1, "b": 2, "note": "s3cret-token"}, request_id="r-ok")
        with pytest.raises(GenserveError):
            engine.run_sync("fail_known", {"a": 1, "b": 2}, request_id="r-bad")
    lines = {r.request_id: r for r in caplog.records if hasattr(r, "outcome")}  # type: ignore[attr-defined]
    assert set(lines) == {"r-ok", "r-bad"}
    assert (lines["r-ok"].service, lines["r-ok"].device, lines["r-ok"].outcome) == ("add", "cpu", "ok")  # type: ignore[attr-defined]
    assert lines["r-bad"].outcome == "INVALID_INPUT"  # type: ignore[attr-defined]
    assert lines["r-ok"].duration_ms >= 0  # type: ignore[attr-defined]
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


def test_close_waits_for_running_work_and_refuses_new(make_engine: MakeEngine) -> None:
    log = StepLog()
    service = steps_service(log)
    engine = make_engine(service, ADD)

    async def scenario() -> None:
        async with engine:
            task = asyncio.create_task(engine.submit(service, {"steps": 5, "delay": 0.02}))
            assert await asyncio.to_thread(log.started.wait, 5)
        assert log.finished.is_set() and log.steps_run == 5
        assert cast(StepsResponse, await task).done == 5
        with pytest.raises(GenserveError) as excinfo:
            await engine.submit(ADD, {"a": 1, "b": 1})
        assert excinfo.value.code is ErrorCode.UNAVAILABLE

    asyncio.run(scenario())
    engine.close()  # idempotent


def test_a_job_removed_as_its_worker_takes_it_never_runs(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race behind a bridge cancel that did not stop a remote prompt: the worker has taken the
    job (its future runs) but not yet marked it running when the removal comes. The worker is held
    in that instant here; the removal must still keep the service from running."""
    log = StepLog()
    steps = steps_service(log)
    engine = make_engine(steps)
    taken, go_on = threading.Event(), threading.Event()
    mark_started = engine._jobs.started

    def held(job: Any) -> None:
        taken.set()
        go_on.wait(5)
        mark_started(job)

    monkeypatch.setattr(engine._jobs, "started", held)
    job = engine.enqueue(steps, {"steps": 3})
    assert taken.wait(5) and not job.running
    assert engine.remove([job.id]) == [job.id]
    go_on.set()
    with pytest.raises(GenserveError) as excinfo:
        job.future.result(timeout=5)
    assert excinfo.value.code is ErrorCode.CANCELLED
    assert not log.started.is_set()
