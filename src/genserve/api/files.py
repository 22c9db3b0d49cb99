"""The drop-folder door: ``request_{id}.json`` files in, outputs and ``response_{id}.json`` out.

A writer writes its request anywhere else (or under a name that does not match
``request_*.json``, e.g. ``.request_7.json.tmp``) and renames it into ``files.input_dir`` when it
is complete; a rename is atomic, so the door never reads half a file. The door claims a request
by renaming it into ``claimed/`` before any work starts, so two workers never take the same one
and a crash leaves it where the next start finds it. Outputs land in ``files.output_dir`` under
the spec's names (``latent_{id}.pt``, ..., ``metadata_{id}.json``), with ``response_{id}.json`` in
the spec's success or error format; the request then moves to ``done/``, or to ``failed/`` with a
copy of its error response. A bad file fails alone: the worker goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from genserve.api.request_ids import checked_request_id
from genserve.engine.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.storage.artifacts import file_tag, write_json

log = logging.getLogger("genserve.files")

REQUEST_FILE = re.compile(r"request_(.+)\.json")
MAX_REQUEST_BYTES = 1024 * 1024
RETRY_FULL_QUEUE_S = 1.0


class FileDoor:
    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings.files
        self.runtime = runtime
        self.input_dir = settings.input_dir
        self.output_dir = settings.output_dir
        self.poll_interval_s = settings.poll_interval_s
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
            service, body = self._read(claimed)
            response = await self._run(service, body, request_id)
        except GenserveError as err:
            self._finish(claimed, request_id or raw_id, err.to_dict(request_id), failed=True)
        except Exception as exc:  # the worker must outlive any one file
            log.exception("drop-folder request %s failed unexpectedly", claimed.name)
            err = as_genserve_error(exc)
            self._finish(claimed, request_id or raw_id, err.to_dict(request_id), failed=True)
        else:
            self._finish(claimed, request_id, response, failed=False)

    def _read(self, claimed: Path) -> tuple[str, dict[str, Any]]:
        if claimed.stat().st_size > MAX_REQUEST_BYTES:
            raise GenserveError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"request file larger than {MAX_REQUEST_BYTES} bytes"
            )
        try:
            data = json.loads(claimed.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenserveError(ErrorCode.INVALID_INPUT, f"request file is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise GenserveError(
                ErrorCode.INVALID_INPUT, 'request file must be {"service": ..., "input": {...}}'
            )
        unknown = sorted(set(data) - {"service", "input", "request_id"})
        if unknown:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{', '.join(unknown)}: unknown key(s); expected service and input"
            )
        service, body = data.get("service"), data.get("input")
        if not isinstance(service, str) or not service:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, "service: required, e.g. latent_encoder", field="service"
            )
        if not isinstance(body, dict):
            raise GenserveError(ErrorCode.INVALID_INPUT, "input: required, an object of the service's fields")
        return service, body

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
