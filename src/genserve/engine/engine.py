"""The engine: the only way a door runs work.

Doors speak asyncio; services are blocking functions over tensors and files. The engine keeps the
two apart: each device gets its own thread pool, so a request never runs on the event loop and
work on one device never queues behind another. Admission is counted per device and refused once
the queue is full, because a server that buffers without bound falls over instead of saying
"try later". Progress crosses back to the caller's loop thread, and a caller that goes away
(cancelled task, timeout) sets the run's cancel flag so the service stops at its next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from genserve.config import PipelineSettings
from genserve.engine.batching import DynamicBatcher, run_batched
from genserve.engine.events import (
    ChunkCallback,
    ProgressCallback,
    ProgressRelay,
    RunObserver,
    RunRecord,
    discard,
    log_run,
)
from genserve.engine.jobs import Job, JobTable
from genserve.engine.lanes import DeviceLoad, Lane, LaneTable, ServiceLane
from genserve.engine.streaming import stream_run
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.services.base import RunContext, Service, parse_request
from genserve.storage.paths import Sandbox

if TYPE_CHECKING:
    from genserve.models.manager import ModelManager

logger = logging.getLogger("genserve.engine")


class Engine:
    """Runs services on per-device executors with bounded queues, progress and cancellation."""

    def __init__(
        self,
        models: ModelManager,
        sandbox: Sandbox,
        pipeline: PipelineSettings,
        *,
        queue_size: int = 64,
        workers_per_device: int = 1,
        devices: Sequence[str] = ("cpu",),
        device_workers: Mapping[str, int] | None = None,
        services: Mapping[str, Service[Any, Any]] | None = None,
        service_lanes: Mapping[str, ServiceLane] | None = None,
    ) -> None:
        self._models = models
        self._sandbox = sandbox
        self._pipeline = pipeline
        self._services = dict(services) if services is not None else None
        self._lanes = LaneTable(
            devices, queue_size, workers_per_device, dict(device_workers or {}), service_lanes or {}
        )
        self._jobs = JobTable()
        self.observers: list[RunObserver] = []

    # -- lookup -------------------------------------------------------------------------------

    @property
    def devices(self) -> tuple[str, ...]:
        return self._lanes.devices

    @property
    def services(self) -> Mapping[str, Service[Any, Any]]:
        if self._services is None:
            # Imported here so that the engine does not depend on every service at import time.
            from genserve.services.builtin import SERVICES

            self._services = dict(SERVICES)
        return self._services

    def service(self, name: str) -> Service[Any, Any]:
        found = self.services.get(name)
        if found is None:
            known = ", ".join(sorted(self.services)) or "none"
            raise GenserveError(
                ErrorCode.NOT_FOUND, f"unknown service {name!r}; known services: {known}", service=name
            )
        return found

    @property
    def accepting(self) -> bool:
        """False once close() has begun: new requests are refused."""
        return self._lanes.accepting

    def batcher(self, lane: str) -> DynamicBatcher | None:
        """The lane's batcher (its merged runs are in ``stats()``); None for a lane that merges nothing."""
        return self._lanes.get(lane).batcher

    def device_load(self, device: str) -> DeviceLoad:
        self._lanes.get(device)
        return self._lanes.loads([device])[0]

    def loads(self) -> list[DeviceLoad]:
        return self._lanes.loads()

    def _pick_lane(self, service: Service[Any, Any] | str, device: str | None) -> str:
        found = self.services.get(service) if isinstance(service, str) else service
        if found is not None and found.lane in self._lanes:
            return found.lane
        return device if device is not None else self._lanes.least_busy()

    # -- running ------------------------------------------------------------------------------

    async def submit(
        self,
        service: Service[Any, Any] | str,
        request: BaseModel | Mapping[str, Any],
        *,
        request_id: str | None = None,
        progress: ProgressCallback | None = None,
        device: str | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
        chunks: ChunkCallback | None = None,
    ) -> BaseModel:
        """Run one request and return its response; every failure is a GenserveError.

        Cancelling the awaiting task (a client that disconnects) sets the run's cancel flag and
        re-raises CancelledError; a request still waiting in the queue then never starts.
        ``chunks`` receives, on the caller's loop, each piece the service emits (``stream`` uses it).
        """
        rid = request_id or str(uuid.uuid4())
        service_name = service if isinstance(service, str) else service.name
        device_name = self._pick_lane(service, device)
        started = time.perf_counter()
        outcome = "ok"
        relay: ProgressRelay[Any] | None = None
        chunk_relay: ProgressRelay[BaseModel] | None = None
        try:
            resolved = self.service(service) if isinstance(service, str) else service
            if resolved.lane is not None and resolved.lane not in self._lanes:
                raise GenserveError(ErrorCode.UNAVAILABLE, f"service {resolved.name} is not served here")
            parsed = parse_request(resolved, request)
            lane = self._lanes.get(device_name)
            if progress is not None:
                relay = ProgressRelay(asyncio.get_running_loop(), progress, rid)
            if chunks is not None:
                chunk_relay = ProgressRelay(asyncio.get_running_loop(), chunks, rid)
            ctx = RunContext(
                models=self._models,
                sandbox=self._sandbox,
                defaults=self._pipeline,
                request_id=rid,
                progress_sink=relay if relay is not None else discard,
                cancel_event=cancel if cancel is not None else threading.Event(),
                device=device_name if lane.is_device else None,
            )
            if chunk_relay is not None:
                ctx.chunk_sink = chunk_relay
            work = self._admit(lane, device_name, resolved, parsed, ctx)
            return await self._wait(work, ctx, timeout)
        except GenserveError as exc:
            outcome = exc.code.value
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            for opened in (relay, chunk_relay):
                if opened is not None:
                    opened.open = False
            record = RunRecord(service_name, device_name, time.perf_counter() - started, outcome)
            self._notify(record)
            log_run(record, rid)

    def stream(
        self,
        service: Service[Any, Any] | str,
        request: BaseModel | Mapping[str, Any],
        *,
        request_id: str | None = None,
        device: str | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[BaseModel, None]:
        """Run one request like ``submit``, yielding each chunk the service emits, then its response.

        Admission, lanes, queue limits, logging and observers are ``submit``'s own. Closing the
        iterator early (a client gone) sets the run's cancel flag, so it stops at its next step.
        """
        return stream_run(self.submit, service, request, request_id, device, cancel, timeout)

    def _notify(self, record: RunRecord) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                logger.exception("run observer failed")

    def run_sync(
        self,
        service: Service[Any, Any] | str,
        request: BaseModel | Mapping[str, Any],
        *,
        request_id: str | None = None,
        progress: ProgressCallback | None = None,
        device: str | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> BaseModel:
        """``submit`` for code without an event loop (the CLI, scripts); progress arrives on this thread."""
        return asyncio.run(
            self.submit(
                service,
                request,
                request_id=request_id,
                progress=progress,
                device=device,
                cancel=cancel,
                timeout=timeout,
            )
        )

    # -- queued work ------------------------------------------------------------------------

    def enqueue(
        self,
        service: Service[Any, Any] | str,
        request: BaseModel | Mapping[str, Any],
        *,
        job_id: str | None = None,
        device: str | None = None,
    ) -> Job:
        """Admit a request now, run it later; returns its Job at once (callable from any thread).

        The job can be listed (``jobs``), removed while it waits (``remove``) and cancelled while
        it runs (``job.cancel``); ``job.future`` holds its response or its GenserveError. It is
        logged and observed like a ``submit`` once it ends; a full lane refuses it at once.
        """
        resolved = self.service(service) if isinstance(service, str) else service
        lane_name = self._pick_lane(resolved, device)
        lane = self._lanes.get(lane_name)
        parsed = parse_request(resolved, request)
        job = Job(job_id or str(uuid.uuid4()), lane_name, parsed)
        ctx = RunContext(
            models=self._models,
            sandbox=self._sandbox,
            defaults=self._pipeline,
            request_id=job.id,
            cancel_event=job.cancel,
            device=lane_name if lane.is_device else None,
        )
        started = time.perf_counter()
        job.future = self._admit(lane, lane_name, resolved, parsed, ctx, job)
        self._jobs.add(job)
        job.future.add_done_callback(lambda done: self._job_done(job, resolved.name, started, done))
        return job

    def jobs(self, lane: str) -> list[Job]:
        """A lane's queued jobs: the running ones first, then those waiting, in order."""
        return self._jobs.of(lane)

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def remove(self, job_ids: Sequence[str]) -> list[str]:
        """Take waiting jobs out of their lane before they start; returns the ids removed.

        A job a worker took in the instant between the look and the removal (its future running,
        its ``running`` flag not yet set) is cancelled instead: ``_execute`` checks the cancel
        before any work, so it ends without running, as if it had been removed."""
        removed = []
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None or job.running:
                continue
            if not job.future.cancel():
                job.cancel.set()
            removed.append(job_id)
        return removed

    def _job_done(self, job: Job, service: str, started: float, done: Future[BaseModel]) -> None:
        self._jobs.finished(job)
        error = None if done.cancelled() else done.exception()
        if done.cancelled():
            outcome = "cancelled"
        elif error is None:
            outcome = "ok"
        else:
            outcome = error.code.value if isinstance(error, GenserveError) else ErrorCode.INTERNAL.value
        record = RunRecord(service, job.lane, time.perf_counter() - started, outcome)
        self._notify(record)
        log_run(record, job.id)

    def _admit(
        self,
        lane: Lane,
        name: str,
        service: Service[Any, Any],
        request: BaseModel,
        ctx: RunContext,
        job: Job | None = None,
    ) -> Future[BaseModel]:
        return self._lanes.admit(name, self._execute, lane, service, request, ctx, job)

    @staticmethod
    async def _wait(work: Future[BaseModel], ctx: RunContext, timeout: float | None) -> BaseModel:
        waiter = asyncio.wrap_future(work)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        except asyncio.CancelledError:
            _abandon(work, waiter, ctx)
            raise
        if not done:
            _abandon(work, waiter, ctx)
            raise GenserveError(
                ErrorCode.TIMEOUT,
                f"request {ctx.request_id} did not finish within {timeout:g} s",
                timeout_s=timeout,
            )
        if waiter.cancelled():  # dropped from the queue by close() before it started
            raise GenserveError(
                ErrorCode.CANCELLED, f"request {ctx.request_id} was cancelled: the engine shut down"
            )
        return waiter.result()

    def _execute(
        self, lane: Lane, service: Service[Any, Any], request: BaseModel, ctx: RunContext, job: Job | None
    ) -> BaseModel:
        if job is not None:
            self._jobs.started(job)
        self._lanes.started(lane)
        try:
            ctx.check_cancelled()  # the caller may have gone while this waited in the queue
            if service.batching is not None:
                result = run_batched(service, request, ctx, lane.batcher)
            else:
                result = service.run(request, ctx)
        except GenserveError:
            raise
        except Exception as exc:
            logger.exception("service %s failed (request_id=%s)", service.name, ctx.request_id)
            raise as_genserve_error(exc) from exc
        finally:
            self._lanes.ended(lane)
        if not isinstance(result, service.response_model):
            raise GenserveError(
                ErrorCode.INTERNAL,
                f"service {service.name} returned {type(result).__name__}, "
                f"expected {service.response_model.__name__}",
            )
        return result

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new work, drop what has not started, and wait for running work to finish."""
        self._lanes.close()

    async def aclose(self) -> None:
        # Waiting for running work blocks, so it happens off the loop thread.
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _abandon(work: Future[BaseModel], waiter: asyncio.Future[BaseModel], ctx: RunContext) -> None:
    """Stop a run whose caller has gone: cancel it if queued, else ask it to stop at its next step."""
    ctx.cancel_event.set()
    work.cancel()
    if waiter.done() and not waiter.cancelled():
        waiter.exception()  # mark the outcome as seen; nobody will read it
    else:
        waiter.cancel()
