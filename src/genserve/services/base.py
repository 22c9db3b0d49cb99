"""Services are plain functions over typed requests: ``run(request, ctx) -> response``.

A Service bundles a name (the spec's service name), its pydantic Request and Response, and the
function. Doors parse wire data with ``parse_request`` so every protocol reports a bad field the
same way. RunContext carries what a run needs: request id, model manager, sandbox, defaults,
a progress sink and a cancel flag. It knows nothing about protocols.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from genserve.config import PipelineSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.artifacts import file_tag
from genserve.storage.paths import Sandbox

if TYPE_CHECKING:
    from genserve.models.manager import ModelManager
    from genserve.models.registry import ModelKind

ReqT = TypeVar("ReqT", bound=BaseModel)
RespT = TypeVar("RespT", bound=BaseModel)


class ServiceModel(BaseModel):
    """Base for requests and responses: unknown fields are rejected, never silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class ProgressEvent:
    request_id: str
    stage: str  # "load" (a model load), "step" (a sampling step), or a service stage name
    step: int
    total: int
    message: str = ""


ProgressSink = Callable[[ProgressEvent], None]


def _ignore(_: ProgressEvent) -> None:
    return None


# Receives each piece a streaming service emits (tokens, frames); the engine sets one for streams.
ChunkSink = Callable[[BaseModel], None]


def _drop_chunk(_: BaseModel) -> None:
    return None


@dataclass
class RunContext:
    models: ModelManager
    sandbox: Sandbox
    defaults: PipelineSettings
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    progress_sink: ProgressSink = _ignore
    cancel_event: threading.Event = field(default_factory=threading.Event)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("genserve.service"))
    device: str | None = None
    chunk_sink: ChunkSink = _drop_chunk

    @property
    def file_tag(self) -> str:
        """The request id as output file names carry it (ids from the wire may hold anything)."""
        return file_tag(self.request_id)

    def progress(self, step: int, total: int, stage: str = "step", message: str = "") -> None:
        self.progress_sink(ProgressEvent(self.request_id, stage, step, total, message))

    def emit(self, chunk: BaseModel) -> None:
        """Hand one streamed piece to whoever streams this run; a plain ``submit`` drops it, so a
        streaming service works unchanged behind doors that only want the final response."""
        self.chunk_sink(chunk)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise GenserveError(ErrorCode.CANCELLED, f"request {self.request_id} was cancelled")

    @contextmanager
    def use_model(self, kind: ModelKind, name: str, field_name: str) -> Iterator[Any]:
        """Pin a model for the block, reporting a load as a progress stage when one happens."""
        entry = self.models.registry.resolve(kind, name, field_name)
        loading = not self.models.is_loaded(entry.kind, entry.name)
        if loading:
            self.progress(0, 1, stage="load", message=f"loading {kind.value}/{entry.name}")
        with self.models.use(entry.kind, entry.name, device=self.device) as model:
            if loading:
                self.progress(1, 1, stage="load", message=f"loaded {kind.value}/{entry.name}")
            yield model


@dataclass(frozen=True)
class BatchItem:
    """What a batching service yields mid-run: its share of one merged model run.

    ``size`` (frames, images) counts against the lane's largest batch; ``merge`` False runs it
    alone (where merging cannot pay, e.g. on a CPU whose cores concurrent runs already share).
    """

    payload: Any
    size: int
    merge: bool = True


@dataclass(frozen=True)
class Batching:
    """A service's declaration that concurrent requests with the same ``key`` may share one run.

    The service's ``run`` is then a generator: it prepares its request, yields one BatchItem, and
    receives its own output of ``run_batch`` (payloads in, one output per payload out, in order),
    which the engine calls once for every request merged into the run.
    """

    key: Callable[[Any], Hashable]
    run_batch: Callable[[list[Any]], list[Any]]


@dataclass(frozen=True)
class Service(Generic[ReqT, RespT]):
    name: str
    request_model: type[ReqT]
    response_model: type[RespT]
    run: Callable[[ReqT, RunContext], Any]  # -> RespT; a generator of one BatchItem when batching
    description: str = ""
    # A service with its own lane runs on that lane's workers and queue (the lip-sync server's own
    # concurrency, and its batching) instead of a device lane.
    lane: str | None = None
    batching: Batching | None = None


def parse_request(service: Service[ReqT, Any], data: Any) -> ReqT:
    """Validate wire data into the service's Request; the error names every bad field."""
    if isinstance(data, service.request_model):
        return data
    try:
        return service.request_model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            where = ".".join(str(p) for p in item["loc"]) or "request"
            problems.append(f"{where}: {item['msg']}")
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"invalid {service.name} request: " + "; ".join(problems),
            fields=[".".join(str(p) for p in item["loc"]) for item in exc.errors()],
        ) from None
