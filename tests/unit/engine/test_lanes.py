"""Several devices: workers per device from config, the least busy device first, and the
observer hook that metrics read."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import pytest

from genserve.engine.events import RunRecord
from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import RunContext, Service, ServiceModel
from tests.unit.engine.conftest import ADD, FAIL_KNOWN, MakeEngine, gate_service


class WhereRequest(ServiceModel):
    pass


class WhereResponse(ServiceModel):
    device: str


def _where(request: WhereRequest, ctx: RunContext) -> WhereResponse:
    return WhereResponse(device=str(ctx.device))


WHERE = Service("where", WhereRequest, WhereResponse, _where)


def test_workers_per_device_can_differ(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD, devices=("cuda:0", "cpu"), workers_per_device=1, device_workers={"cuda:0": 3})
    loads = {load.device: load for load in engine.loads()}
    assert (loads["cuda:0"].workers, loads["cpu"].workers) == (3, 1)
    assert loads["cuda:0"].capacity == 3 + 64 and loads["cpu"].capacity == 1 + 64
    with pytest.raises(ValueError, match="cuda:1"):
        make_engine(ADD, devices=("cpu",), device_workers={"cuda:1": 2})


def test_a_request_without_a_device_goes_to_the_least_busy_one(make_engine: MakeEngine) -> None:
    started, release = threading.Event(), threading.Event()
    gate = gate_service(started, release)
    engine = make_engine(gate, WHERE, devices=("a", "b"))

    async def scenario() -> tuple[str, str]:
        first = cast(WhereResponse, await engine.submit(WHERE, {}))
        held = asyncio.create_task(engine.submit(gate, {}, device="a"))
        assert await asyncio.to_thread(started.wait, 5)
        second = cast(WhereResponse, await engine.submit(WHERE, {}))
        release.set()
        await held
        return first.device, second.device

    assert asyncio.run(scenario()) == ("a", "b")  # idle: the first listed; "a" busy: "b"


def test_observers_see_every_outcome_and_a_failing_observer_is_harmless(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD, FAIL_KNOWN)
    seen: list[RunRecord] = []

    def broken(_: RunRecord) -> None:
        raise RuntimeError("observer bug")

    engine.observers.extend([broken, seen.append])
    engine.run_sync(ADD, {"a": 1, "b": 2})
    with pytest.raises(GenserveError):
        engine.run_sync(FAIL_KNOWN, {"a": 1, "b": 2})
    assert [(r.service, r.device, r.outcome) for r in seen] == [
        ("add", "cpu", "ok"),
        ("fail_known", "cpu", ErrorCode.INVALID_INPUT.value),
    ]
    assert all(r.seconds >= 0 for r in seen)


def test_accepting_turns_false_on_close(make_engine: MakeEngine) -> None:
    engine = make_engine(ADD)
    assert engine.accepting
    engine.close()
    assert not engine.accepting
    with pytest.raises(GenserveError) as info:
        engine.run_sync(ADD, {"a": 1, "b": 1})
    assert info.value.code is ErrorCode.UNAVAILABLE
