"""Engine.stream: chunks in order, the response last, errors as GenserveError, early exit cancels."""

from __future__ import annotations

import asyncio
import threading

import pytest

from genserve.engine.events import RunRecord
from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import RunContext, Service, ServiceModel
from tests.unit.engine.conftest import ADD, FAIL_KNOWN, KNOWN_ERROR, MakeEngine, gate_service


class CountRequest(ServiceModel):
    upto: int
    delay: float = 0.0


class Piece(ServiceModel):
    n: int
    thread_id: int


class CountResponse(ServiceModel):
    emitted: int


def count_service(stopped: threading.Event) -> Service[CountRequest, CountResponse]:
    """Emits 0..upto-1, checking for cancellation between pieces like a token loop does."""

    def run(request: CountRequest, ctx: RunContext) -> CountResponse:
        try:
            for n in range(request.upto):
                ctx.check_cancelled()
                ctx.emit(Piece(n=n, thread_id=threading.get_ident()))
                threading.Event().wait(request.delay)
            return CountResponse(emitted=request.upto)
        finally:
            stopped.set()

    return Service("count", CountRequest, CountResponse, run)


def test_chunks_arrive_in_order_then_the_response(make_engine: MakeEngine) -> None:
    engine = make_engine(count_service(threading.Event()))
    records: list[RunRecord] = []
    engine.observers.append(records.append)

    async def scenario() -> tuple[list[object], int]:
        return [item async for item in engine.stream("count", {"upto": 50})], threading.get_ident()

    items, loop_thread = asyncio.run(scenario())
    assert [item.n for item in items[:-1]] == list(range(50))  # type: ignore[attr-defined]
    assert items[-1] == CountResponse(emitted=50)
    assert all(item.thread_id != loop_thread for item in items[:-1])  # type: ignore[attr-defined]
    assert [(r.service, r.outcome) for r in records] == [("count", "ok")]


def test_a_service_that_emits_nothing_streams_its_response(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD)

    async def scenario() -> list[object]:
        return [item async for item in engine.stream(ADD, {"a": 2, "b": 3})]

    (only,) = asyncio.run(scenario())
    assert only.total == 5  # type: ignore[attr-defined]


def test_submit_drops_chunks(make_engine: MakeEngine) -> None:
    engine = make_engine(count_service(threading.Event()))
    assert asyncio.run(engine.submit("count", {"upto": 3})) == CountResponse(emitted=3)


@pytest.mark.parametrize(
    ("service", "request_", "code"),
    [
        (FAIL_KNOWN, {"a": 1, "b": 1}, KNOWN_ERROR.code),
        (ADD, {"a": "x", "b": 1}, ErrorCode.INVALID_INPUT),
        ("nope", {}, ErrorCode.NOT_FOUND),
    ],
)
def test_errors_surface_from_the_iterator(
    make_engine: MakeEngine, service: object, request_: dict[str, object], code: ErrorCode
) -> None:
    engine = make_engine(ADD, FAIL_KNOWN)

    async def scenario() -> None:
        async for _ in engine.stream(service, request_):  # type: ignore[arg-type]
            pass

    with pytest.raises(GenserveError) as info:
        asyncio.run(scenario())
    assert info.value.code is code


def test_closing_early_cancels_the_run(make_engine: MakeEngine) -> None:
    stopped = threading.Event()
    engine = make_engine(count_service(stopped))
    records: list[RunRecord] = []
    engine.observers.append(records.append)
    flag = threading.Event()

    async def scenario() -> int:
        items = engine.stream("count", {"upto": 10_000, "delay": 0.005}, cancel=flag)
        seen = 0
        async for _ in items:
            seen += 1
            if seen == 3:
                break
        await items.aclose()
        return seen

    assert asyncio.run(scenario()) == 3
    assert flag.is_set() and stopped.wait(5)
    assert [r.outcome for r in records] == ["cancelled"]


def test_stream_is_admitted_like_submit(make_engine: MakeEngine) -> None:
    started, release = threading.Event(), threading.Event()
    gate = gate_service(started, release)
    engine = make_engine(gate, count_service(threading.Event()), queue_size=0)

    async def scenario() -> None:
        held = asyncio.ensure_future(engine.submit(gate, {}))
        await asyncio.to_thread(started.wait, 5)
        try:
            with pytest.raises(GenserveError) as info:
                async for _ in engine.stream("count", {"upto": 1}):
                    pass
            assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        finally:
            release.set()
            await held

    asyncio.run(scenario())
