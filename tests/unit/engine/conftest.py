"""Small real services and an engine factory for the engine tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from genserve.config import PipelineSettings
from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.storage.paths import Sandbox

# -- test services ------------------------------------------------------------------------------


class AddRequest(ServiceModel):
    a: int
    b: int
    note: str = ""


class AddResponse(ServiceModel):
    total: int
    thread_name: str
    thread_id: int


def _add(request: AddRequest, ctx: RunContext) -> AddResponse:
    current = threading.current_thread()
    return AddResponse(total=request.a + request.b, thread_name=current.name, thread_id=current.ident or 0)


ADD = Service("add", AddRequest, AddResponse, _add)


class StepsRequest(ServiceModel):
    steps: int
    delay: float = 0.0


class StepsResponse(ServiceModel):
    done: int


@dataclass
class StepLog:
    """What a steps run did, seen from the worker thread."""

    started: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    steps_run: int = 0
    thread_id: int = 0
    cancel_event: threading.Event | None = None


def steps_service(log: StepLog) -> Service[StepsRequest, StepsResponse]:
    def run(request: StepsRequest, ctx: RunContext) -> StepsResponse:
        log.started.set()
        log.thread_id = threading.get_ident()
        log.cancel_event = ctx.cancel_event
        try:
            for i in range(request.steps):
                ctx.check_cancelled()
                threading.Event().wait(request.delay)
                log.steps_run += 1
                ctx.progress(i + 1, request.steps)
            return StepsResponse(done=log.steps_run)
        finally:
            log.finished.set()

    return Service("steps", StepsRequest, StepsResponse, run)


class GateRequest(ServiceModel):
    pass


def gate_service(started: threading.Event, release: threading.Event) -> Service[GateRequest, StepsResponse]:
    """Holds its worker until released (bounded, so a failing test cannot hang teardown)."""

    def run(request: GateRequest, ctx: RunContext) -> StepsResponse:
        started.set()
        release.wait(5)
        return StepsResponse(done=1)

    return Service("gate", GateRequest, StepsResponse, run)


KNOWN_ERROR = GenserveError(ErrorCode.INVALID_INPUT, "a: must be positive", field="a")


def _fail_known(request: AddRequest, ctx: RunContext) -> AddResponse:
    raise KNOWN_ERROR


def _fail_unknown(request: AddRequest, ctx: RunContext) -> AddResponse:
    raise ValueError("boom")


def _wrong_type(request: AddRequest, ctx: RunContext) -> AddResponse:
    return cast(AddResponse, StepsResponse(done=1))


FAIL_KNOWN = Service("fail_known", AddRequest, AddResponse, _fail_known)
FAIL_UNKNOWN = Service("fail_unknown", AddRequest, AddResponse, _fail_unknown)
WRONG_TYPE = Service("wrong_type", AddRequest, AddResponse, _wrong_type)

MakeEngine = Callable[..., Engine]


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[MakeEngine]:
    engines: list[Engine] = []

    def make(*services: Service[Any, Any], **kwargs: Any) -> Engine:
        sandbox = Sandbox([tmp_path / "in"], [tmp_path / "out"], tmp_path / "out")
        # The test services never touch models, so no ModelManager is needed.
        engine = Engine(
            cast(Any, None), sandbox, PipelineSettings(), services={s.name: s for s in services}, **kwargs
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


# -- results and validation --------------------------------------------------------------------
