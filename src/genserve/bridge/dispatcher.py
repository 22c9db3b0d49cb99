"""The bridge's queue worker: durable jobs in, backends picked, progress out, results kept.

Jobs live in the JobStore (SQLite) from ``submit`` until ``/history`` has delivered their
results, so a restart loses nothing: ``start`` puts jobs that were running back in the queue.
``submit`` admits a job within the queue's bounds (``admission``). One dispatch loop hands queued
jobs, round-robin across clients, to the backend ``balancer.pick`` chooses (a job stays on that
backend to its end); each handed-out job is one asyncio task that follows the backend's ComfyUI
messages into the client's ``{"status", "details"}`` updates. A job has no time cap.

Why a job's task stops decides what happens to the job (``_reasons``): ``cancelled`` (its client
interrupted or left) ends it; ``lost`` (its backend went down) and ``BackendDown`` put it back in
the queue for another backend; ``PromptLost`` (the backend dropped its prompt) puts it back up to
``MAX_LOSSES`` times, then fails it; a shutdown leaves it ``running`` in the store, to be
re-queued at the next start. No job is left ``running`` without a task following it.

``/history`` reads a client's results (``pending_results``) and deletes them only once its answer
was written to the end (``forget_delivered``): a client whose connection broke gets them again.
The client's uploads (``upload_dir``) that a job names are deleted with its results, unless a
queued or running job still names them; whatever is left is swept once older than the
retention, at start and by the retention loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genserve.bridge.admission import Admission, QueueLimits, fair_order, position
from genserve.bridge.backends import Backend, BackendBusy, BackendDown, JobFailed, PromptLost
from genserve.bridge.balancer import BackendState, Prober, pick
from genserve.bridge.progress import ProgressTracker, models_of
from genserve.bridge.results import ResultShelf
from genserve.bridge.sessions import DONE, Sessions, Status, Update
from genserve.bridge.uploads import delete_uploads, referenced_uploads, sweep_uploads
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.jobs import Job, JobState, JobStore, Result

log = logging.getLogger("genserve.workflows.bridge")

INTERRUPTED = Update(Status.CLOSED, "Execution was interrupted")
# The last word to a socket whose client still has work when the server stops (the socket then
# closes with 1012, "service restart"); one without work hears SERVER_CLOSING.
SHUTTING_DOWN = Update(Status.ERROR, "server shutting down; the job stays queued and resumes after restart")
SERVER_CLOSING = Update(Status.CLOSED, "server shutting down")
# A job whose prompt its backends dropped this many times is failed rather than queued again.
MAX_LOSSES = 3
_ACTIVE = (JobState.QUEUED, JobState.RUNNING)


class Bridge:
    """Submit, follow, interrupt and collect workflow jobs over a set of backends."""

    def __init__(
        self,
        store: JobStore,
        backends: Sequence[Backend],
        *,
        results_dir: Path,
        sessions: Sessions | None = None,
        probe_interval_s: float = 2.0,
        probe_timeout_s: float = 5.0,
        affinity_weight: float = 1.0,
        retention_s: float = 24 * 3600.0,
        upload_dir: Path | None = None,
        limits: QueueLimits | None = None,
    ) -> None:
        self.store = store
        self.admission = Admission(store, limits or QueueLimits())
        self.states = [BackendState(b) for b in backends]
        self.shelf = ResultShelf(store, results_dir)
        self.sessions = sessions or Sessions()
        self.affinity_weight = affinity_weight
        self.retention_s = retention_s
        self.upload_dir = upload_dir
        self.stopping = False
        self._probers = [
            Prober(s, probe_interval_s, probe_timeout_s, self._backend_changed) for s in self.states
        ]
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Jobs from just before their claim to the end of their task: with the store's queued jobs,
        # the jobs whose uploads must stay.
        self._handed: dict[str, Job] = {}
        self._reasons: dict[str, str] = {}
        self._losses: dict[str, int] = {}  # job id -> prompts lost, while it is still queued or running
        # Each waiting client's last turn (``admission.fair_order``), from a counter of claims.
        self._served: dict[str, int] = {}
        self._turns = itertools.count()
        self._background: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # Lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        requeued = await asyncio.to_thread(self.store.requeue_running)
        if requeued:
            log.info("bridge: %d job(s) cut off by the last stop are queued again", len(requeued))
        await asyncio.to_thread(self._sweep_uploads)
        await asyncio.gather(*(p.probe_once() for p in self._probers))
        self._background = [asyncio.create_task(p.run(), name=f"probe-{p.state.name}") for p in self._probers]
        self._background.append(asyncio.create_task(self._dispatch_loop(), name="bridge-dispatch"))
        self._background.append(asyncio.create_task(self._retention_loop(), name="bridge-retention"))

    async def stop(self) -> None:
        """Stop handing out work; running jobs stay ``running`` in the store for the next start."""
        for task in self._background:
            task.cancel()
        for job_id, task in list(self._tasks.items()):
            self._reasons[job_id] = "shutdown"
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks.values(), return_exceptions=True)
        self._background.clear()
        for state in self.states:
            with contextlib.suppress(Exception):
                await state.backend.close()

    async def announce_shutdown(self, grace_s: float = 1.0) -> None:
        """Tell every open socket the server is stopping, before the server closes them: a client
        with work hears SHUTTING_DOWN (its jobs stay queued), others SERVER_CLOSING; the sockets
        then close themselves with 1012. Waits up to ``grace_s`` for them to do so."""
        self.stopping = True
        clients = self.sessions.clients()
        for client_id in clients:
            active = await asyncio.to_thread(self.active_jobs, client_id)
            self.sessions.publish(client_id, SHUTTING_DOWN if active else SERVER_CLOSING)
        deadline = asyncio.get_running_loop().time() + grace_s
        while self.sessions.clients() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    def wake(self) -> None:
        """Look at the queue again (thread-safe)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # Client operations -------------------------------------------------------------------------

    def available(self) -> bool:
        return any(state.healthy for state in self.states)

    def check_available(self) -> None:
        """All backends down is a clear refusal at submit time, never a job that waits forever."""
        if not self.available():
            down = "; ".join(state.describe() for state in self.states)
            raise GenserveError(ErrorCode.UNAVAILABLE, f"no backend is available ({down})")

    def submit(self, client_id: str, alias: str, graph: dict[str, Any]) -> int:
        """Queue one job within the queue's bounds (blocking: SQLite); returns the queue length
        including it. A full queue is RESOURCE_EXHAUSTED with ``retry_after_s`` in its details."""
        self.check_available()
        self.admission.enqueue(client_id, alias, graph)
        self.wake()
        return self.store.queue_length()

    def active_jobs(self, client_id: str) -> list[Job]:
        return self.store.jobs_for_client(client_id, _ACTIVE)

    def cancel_client(self, client_id: str) -> list[Job]:
        """End this client's queued and running jobs, and only theirs (run on the event loop)."""
        jobs = self.store.cancel_client(client_id)
        for job in jobs:
            task = self._tasks.get(job.id)
            if task is not None:
                self._reasons[job.id] = "cancelled"
                task.cancel()
        if jobs:
            self.sessions.publish(client_id, INTERRUPTED)
        return jobs

    async def free(self, client_id: str | None = None) -> list[str]:
        """Free every healthy backend, or the one this client's latest job ran on; their names."""
        if client_id is None:
            targets = [s for s in self.states if s.healthy]
        else:
            jobs = await asyncio.to_thread(self.store.jobs_for_client, client_id)
            if not jobs:
                raise GenserveError(ErrorCode.INVALID_INPUT, f"unknown clientId {client_id!r}")
            backend = next((j.backend for j in reversed(jobs) if j.backend), None)
            targets = [s for s in self.states if s.name == backend and s.healthy]
        for state in targets:
            try:
                await state.backend.free()
            except BackendDown as exc:
                log.warning("free on %s failed: %s", state.name, exc)
                continue
            state.warm.clear()
        return [s.name for s in targets]

    def execution_info(self, client_id: str) -> Update:
        """The client's current state for ``/execution-info``; from the store after a restart."""
        jobs = self.store.jobs_for_client(client_id)
        if not jobs:
            raise GenserveError(ErrorCode.INVALID_INPUT, f"unknown clientId {client_id!r}")
        last = self.sessions.last(client_id)
        active = [j for j in jobs if j.state in _ACTIVE]
        if any(j.state is JobState.RUNNING for j in active):
            if last is not None and not last.final:
                return last
            return Update(Status.CONNECTED, "server connected")
        if active:
            # The spec's execution-info table has no "listening": queued is still "connected".
            place = position(self.store.queued(), self._served.copy(), client_id) or 0
            return Update(Status.CONNECTED, f"waiting in queue: position {place}")
        job = jobs[-1]
        if job.state is JobState.DONE:
            return DONE
        if job.state is JobState.FAILED:
            return Update(Status.ERROR, job.error or "failed")
        return INTERRUPTED

    def pending_results(self, client_id: str) -> list[Result]:
        """The client's stored results, left in place until ``forget_delivered`` (blocking)."""
        results, missing = self.shelf.pending(client_id)
        if missing:
            self.forget_delivered(missing)
        return results

    def forget_delivered(self, results: Sequence[Result]) -> None:
        """Delete results ``/history`` has written to the end of an answer, and the uploads their
        jobs named (blocking)."""
        gone = self.shelf.forget(results)
        self._drop_uploads({result.job_id for result in gone})

    # Uploads -----------------------------------------------------------------------------------

    def _uploads_in_use(self) -> set[str]:
        """Uploads named by queued or running jobs. The store is read before the in-memory jobs: a
        job is in ``_handed`` from before its claim, so one claimed in between is seen either way."""
        jobs = self.store.queued()
        jobs += list(self._handed.copy().values())  # copied in one step: the loop thread changes it
        return set().union(*(referenced_uploads(job.graph) for job in jobs))

    def _drop_uploads(self, job_ids: set[str]) -> None:
        """Delete the uploads these (collected) jobs named, unless other work still needs them."""
        if self.upload_dir is None or not job_ids:
            return
        named: set[str] = set()
        for job_id in job_ids:
            job = self.store.get(job_id)
            if job is not None:
                named |= referenced_uploads(job.graph)
        if named:
            deleted = delete_uploads(self.upload_dir, named - self._uploads_in_use())
            log.debug("deleted %d collected upload(s)", len(deleted))

    def _sweep_uploads(self) -> None:
        """Delete uploads older than the retention that no queued or running job names."""
        if self.upload_dir is None:
            return
        deleted = sweep_uploads(self.upload_dir, self.retention_s, self._uploads_in_use())
        if deleted:
            log.info("bridge: deleted %d upload(s) older than the retention", len(deleted))

    # Dispatch ----------------------------------------------------------------------------------

    def _mark_down(self, state: BackendState, error: str) -> None:
        """A job found its backend dead: the same as a failed probe (logged, its jobs re-queued)."""
        if state.healthy:
            state.healthy, state.error = False, error
            log.warning("backend %s is down: %s", state.name, error)
            self._backend_changed(state)

    def _backend_changed(self, state: BackendState) -> None:
        if not state.healthy:  # its jobs go back to the queue, for another backend
            for job_id in list(state.inflight):
                task = self._tasks.get(job_id)
                if task is not None:
                    self._reasons[job_id] = "lost"
                    task.cancel()
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:
                log.exception("bridge dispatch failed; trying again")

    async def _dispatch(self) -> None:
        free = sum(s.backend.max_inflight - len(s.inflight) for s in self.states if s.has_room)
        if free <= 0:
            return
        # Any backend with room can take any job, so the first ``free`` jobs are all it can hand out.
        queued = await asyncio.to_thread(self.store.queued)
        waiting = {job.client_id for job in queued}
        self._served = {c: turn for c, turn in self._served.items() if c in waiting}
        for job in fair_order(queued, self._served)[:free]:
            state = pick(self.states, models_of(job.graph), self.affinity_weight)
            if state is None:
                return
            self._handed[job.id] = job
            claimed = await asyncio.to_thread(self.store.claim, job.id, state.name)
            if claimed is None:
                self._handed.pop(job.id, None)
                continue
            state.inflight.add(job.id)
            self._served[job.client_id] = next(self._turns)
            self._tasks[job.id] = asyncio.create_task(self._run(claimed, state), name=f"job-{job.id}")

    async def _run(self, job: Job, state: BackendState) -> None:
        client = job.client_id
        requeued = False  # after a lost prompt: its count of losses is kept
        tracker = ProgressTracker(job.graph)
        self.sessions.publish(client, Update(Status.PROGRESS, "0.00%"))

        def on_message(message: dict[str, Any]) -> None:
            if tracker.feed(message):
                self.sessions.publish(client, Update(Status.PROGRESS, f"{tracker.percent:.2f}%"))

        try:
            outputs = await state.backend.run(job.graph, job.id, on_message)
        except asyncio.CancelledError:
            reason = self._reasons.pop(job.id, "shutdown")
            if reason == "lost":
                await asyncio.to_thread(self.store.requeue, job.id)
                log.info("job %s goes back to the queue: backend %s was lost", job.id, state.name)
        except BackendBusy as exc:
            # Full, not dead: count it as loaded until its next probe, so others are tried first.
            state.queue_remaining = max(state.queue_remaining, state.load + state.backend.max_inflight)
            await asyncio.to_thread(self.store.requeue, job.id)
            log.info("job %s goes back to the queue: %s", job.id, exc)
        except BackendDown as exc:
            await asyncio.to_thread(self.store.requeue, job.id)
            log.warning("job %s goes back to the queue: %s", job.id, exc)
            self._mark_down(state, str(exc))
        except PromptLost as exc:
            requeued = await self._prompt_lost(job, str(exc))
        except JobFailed as exc:
            await asyncio.to_thread(self.store.mark_failed, job.id, str(exc))
            self.sessions.publish(client, Update(Status.ERROR, str(exc)))
        except Exception as exc:
            log.exception("job %s failed on %s", job.id, state.name)
            await asyncio.to_thread(self.store.mark_failed, job.id, f"{type(exc).__name__}: {exc}")
            self.sessions.publish(client, Update(Status.ERROR, f"internal error: {exc}"))
        else:
            # The backend is done with it: a backend lost from now on must not re-queue it, and a
            # stop must not cut the store's write in half (the thread finishes either way).
            state.inflight.discard(job.id)
            state.warm |= models_of(job.graph)
            with contextlib.suppress(asyncio.CancelledError):
                if await asyncio.shield(asyncio.to_thread(self.shelf.keep, job, outputs)):
                    self.sessions.publish(client, DONE)
        finally:
            if not requeued:
                self._losses.pop(job.id, None)
            state.inflight.discard(job.id)
            self._reasons.pop(job.id, None)
            if self._tasks.get(job.id) is asyncio.current_task():
                del self._tasks[job.id]
            self._handed.pop(job.id, None)
            self._forget_if_idle(client)
            self._wake.set()

    async def _prompt_lost(self, job: Job, error: str) -> bool:
        """Queue the job again (its client sees it start over), unless its prompts keep vanishing
        (then it fails); whether it was queued again."""
        losses = self._losses[job.id] = self._losses.get(job.id, 0) + 1
        if losses < MAX_LOSSES and await asyncio.to_thread(self.store.requeue, job.id):
            log.warning("job %s goes back to the queue (%d/%d): %s", job.id, losses, MAX_LOSSES, error)
            return True
        message = f"the backend dropped the job's prompt {losses} times; last: {error}"
        if await asyncio.to_thread(self.store.mark_failed, job.id, message):
            log.warning("job %s failed: %s", job.id, message)
            self.sessions.publish(job.client_id, Update(Status.ERROR, message))
        return False

    def _forget_if_idle(self, client_id: str) -> None:
        """Drop the client's last update once nothing follows it: no socket, no job of its running
        here. ``/execution-info`` reads finished and queued jobs from the store, not from it."""
        if self.sessions.subscribed(client_id):
            return
        if any(job.client_id == client_id for job in self._handed.values()):
            return
        self.sessions.forget(client_id)

    # Retention ---------------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        period = min(max(self.retention_s / 10, 1.0), 300.0)
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(self.shelf.purge, self.retention_s)
                await asyncio.to_thread(self._sweep_uploads)
            except Exception:
                log.exception("purging old bridge results failed")
