"""The drop-folder door: ``request_{id}.json`` files in, outputs and ``response_{id}.json`` out.

A writer writes its request anywhere else (or under a name that does not match
``request_*.json``, e.g. ``.request_7.json.tmp``) and renames it into ``files.input_dir`` when it
is complete; a rename is atomic, so the door never reads half a file. The door claims a request
by renaming it into ``claimed/`` before any work starts, so two workers never take the same one
and a crash leaves it where the next start finds it. Outputs land in ``files.output_dir`` under
the spec's names (``latent_{id}.pt``, ..., ``metadata_{id}.json``), with ``response_{id}.json`` in
the spec's success or error format; the request then moves to ``done/``, or to ``failed/`` with a
copy of its error response. A bad file fails alone: the worker goes on.

Anyone who can write into the folder can put anything there under a matching name, so a request
is read only when it is a regular file, never through a symlink (which could point anywhere),
never a FIFO (whose open would wait for a writer) or a device, and only up to
``files.max_request_bytes``; and the reading happens on a worker thread, so a slow disk never
stalls the REST and gRPC doors that share the event loop. A refused file gets the same error
response as any bad request, naming neither a path nor anything read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from genserve.api.json_limits import check_json_depth
from genserve.api.request_ids import checked_request_id
from genserve.engine.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.storage.artifacts import file_tag, write_json

log = logging.getLogger("genserve.files")

REQUEST_FILE = re.compile(r"request_(.+)\.json")
RETRY_FULL_QUEUE_S = 1.0
# Opened without following a symlink and without waiting (a FIFO's open waits for a writer).
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_KEYS_SHOWN = 5  # unknown keys named in an error, each cut to _KEY_CHARS
_KEY_CHARS = 40


class FileDoor:
    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings.files
        self.runtime = runtime
        self.input_dir = settings.input_dir
        self.output_dir = settings.output_dir
        self.poll_interval_s = settings.poll_interval_s
        self.max_request_bytes = settings.max_request_bytes
        self.max_json_depth = runtime.settings.server.max_json_depth
        self.claimed = self.input_dir / "claimed"
        self.done = self.input_dir / "done"
        self.failed = self.input_dir / "failed"
        # Outputs go where requests may write: stop at start-up, naming the key, if they cannot.
        try:
            runtime.sandbox.output_dir(str(self.output_dir.resolve()))
        except GenserveError as exc:
            raise GenserveError(exc.code, f"files.output_dir: {exc.message}") from None
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        for folder in (self.input_dir, self.claimed, self.done, self.failed, self.output_dir):
            folder.mkdir(parents=True, exist_ok=True)
        leftovers = sorted(self.claimed.glob("request_*.json"))
        if leftovers:
            log.info("resuming %d request(s) claimed before a stop or crash", len(leftovers))
        for path in leftovers:
            await self._launch(path)
        self._poller = asyncio.create_task(self._poll())
        log.info("drop folder %s -> %s", self.input_dir, self.output_dir)

    async def stop(self) -> None:
        """Stop taking new files; let the requests already claimed finish."""
        self._stopping.set()
        if self._poller is not None:
            await self._poller
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            for path in sorted(self.input_dir.glob("request_*.json")):
                if self._stopping.is_set():
                    break
                claimed = self.claimed / path.name
                try:
                    path.rename(claimed)  # the claim: atomic, and only one worker wins it
                except FileNotFoundError:
                    continue  # another worker took it
                await self._launch(claimed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval_s)

    async def _launch(self, claimed: Path) -> None:
        await self._slots.acquire()  # bounded: the poller waits instead of claiming more
        task = asyncio.create_task(self._handle(claimed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._slots.release())

    async def _handle(self, claimed: Path) -> None:
        match = REQUEST_FILE.fullmatch(claimed.name)
        raw_id = match.group(1) if match else claimed.stem
        request_id: str | None = None
        try:
            request_id = checked_request_id(raw_id, "file name")
            raw = await asyncio.to_thread(read_request_file, claimed, self.max_request_bytes)
            service, body = parse_request(raw, self.max_json_depth)
            response = await self._run(service, body, request_id)
        except GenserveError as err:
            outcome, failed = err.to_dict(request_id), True
        except Exception as exc:  # the worker must outlive any one file
            log.exception("drop-folder request %s failed unexpectedly", claimed.name)
            outcome, failed = as_genserve_error(exc).to_dict(request_id), True
        else:
            outcome, failed = response, False
        await asyncio.to_thread(self._finish, claimed, request_id or raw_id, outcome, failed=failed)

    async def _run(self, service: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        engine = self.runtime.engine
        resolved = engine.service(service)  # NOT_FOUND naming the known services
        if "output_dir" in resolved.request_model.model_fields and "output_dir" not in body:
            body = {**body, "output_dir": str(self.output_dir.resolve())}
        while True:
            try:
                result = await engine.submit(resolved, body, request_id=request_id)
            except GenserveError as err:
                if err.code is ErrorCode.RESOURCE_EXHAUSTED and not self._stopping.is_set():
                    await asyncio.sleep(RETRY_FULL_QUEUE_S)  # a full queue is a wait here, not a failure
                    continue
                raise
            return result.model_dump(mode="json")

    def _finish(self, claimed: Path, request_id: str, response: dict[str, Any], *, failed: bool) -> None:
        tag = file_tag(request_id)
        try:
            write_json(self.output_dir / f"response_{tag}.json", response)
            metadata = response.get("metadata", response.get("sampling_metadata"))
            if not failed and metadata is not None:
                write_json(self.output_dir / f"metadata_{tag}.json", metadata)
            if failed:
                write_json(self.failed / f"response_{tag}.json", response)
            claimed.rename((self.failed if failed else self.done) / claimed.name)
        except (OSError, GenserveError):
            log.exception("could not file the outcome of %s; it stays claimed for the next start", claimed)
            return
        outcome = response.get("error_code", "ok")
        log.info("drop-folder request %s: %s", request_id, outcome, extra={"request_id": request_id})


def read_request_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; blocking, so it runs
    on a worker thread. The type is checked on the opened descriptor, so a file swapped after a
    check cannot slip through."""
    not_regular = GenserveError(
        ErrorCode.INVALID_INPUT,
        "the request file is not a regular file (symlinks, FIFOs, devices and folders are not read)",
    )
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the name is a symlink
            raise not_regular from None
        message = f"the request file cannot be read ({exc.strerror})"  # strerror names no path
        raise GenserveError(ErrorCode.INVALID_INPUT, message) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise not_regular
        chunks: list[bytes] = []
        total = 0
        while info.st_size <= max_bytes and total <= max_bytes:  # it may grow while read
            chunk = os.read(fd, max_bytes + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if info.st_size > max_bytes or total > max_bytes:
        raise GenserveError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the request file is larger than {max_bytes} bytes (files.max_request_bytes)",
            limit_bytes=max_bytes,
        )
    return b"".join(chunks)


def parse_request(raw: bytes, max_depth: int) -> tuple[str, dict[str, Any]]:
    """The service name and its input from a request file's bytes."""
    check_json_depth(raw, max_depth, "server.max_json_depth", "the request file")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise GenserveError(ErrorCode.INVALID_INPUT, f"the request file is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise GenserveError(ErrorCode.INVALID_INPUT, 'request file must be {"service": ..., "input": {...}}')
    unknown = sorted(set(data) - {"service", "input", "request_id"})
    if unknown:
        shown = ", ".join(repr(key[:_KEY_CHARS]) for key in unknown[:_KEYS_SHOWN])
        more = f" and {len(unknown) - _KEYS_SHOWN} more" if len(unknown) > _KEYS_SHOWN else ""
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{shown}{more}: unknown key(s); expected service and input"
        )
    service, body = data.get("service"), data.get("input")
    if not isinstance(service, str) or not service:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, "service: required, e.g. latent_encoder", field="service"
        )
    if not isinstance(body, dict):
        raise GenserveError(ErrorCode.INVALID_INPUT, "input: required, an object of the service's fields")
    return service, body
