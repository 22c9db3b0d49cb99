"""``Engine.stream``: a run's emitted chunks as an async iterator, its response as the last item.

The run itself goes through ``Engine.submit`` (so admission, lanes, queue limits, logging and
observers are the same for streamed and plain calls); the chunks it emits on the worker thread
reach this loop through the submit's chunk relay, in the order the service emitted them, and
before the response, because the worker hands them over before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from genserve.errors import GenserveError
from genserve.services.base import Service

Submit = Callable[..., Awaitable[BaseModel]]


async def stream_run(
    submit: Submit,
    service: Service[Any, Any] | str,
    request: BaseModel | Mapping[str, Any],
    request_id: str | None,
    device: str | None,
    cancel: threading.Event | None,
    timeout: float | None,
) -> AsyncGenerator[BaseModel, None]:
    """Yield every chunk, then the response; a failure surfaces as the GenserveError ``submit`` raised.

    Leaving early (``aclose``, a consumer that stops iterating, a cancelled consumer task) sets the
    cancel flag and cancels the submit, so the service stops at its next cancellation check and a
    request still queued never starts.
    """
    flag = cancel if cancel is not None else threading.Event()
    pending: asyncio.Queue[BaseModel] = asyncio.Queue()
    run = asyncio.ensure_future(
        submit(
            service,
            request,
            request_id=request_id,
            device=device,
            cancel=flag,
            timeout=timeout,
            chunks=pending.put_nowait,
        )
    )
    try:
        while not run.done():
            getter = asyncio.ensure_future(pending.get())
            try:
                await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                yield getter.result()
        while not pending.empty():  # chunks delivered just before the response
            yield pending.get_nowait()
        yield run.result()
    finally:
        if not run.done():
            flag.set()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, GenserveError):
                await run
