"""One door alone in its own process: ``genserve file-worker`` and ``genserve kafka-worker``.

Each builds the runtime, runs its door until SIGTERM or Ctrl-C, lets the work in hand finish,
then closes the runtime (engine first, then models).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from genserve.api.files import FileDoor
from genserve.api.kafka.door import KafkaDoor, KafkaTuning
from genserve.app.runtime import build_runtime
from genserve.config import Settings

# The doors' own loggers: a worker's lines read as its door's.
files_log = logging.getLogger("genserve.files")
kafka_log = logging.getLogger("genserve.kafka")


def run_file_worker(settings: Settings) -> None:
    """``genserve file-worker``: the drop-folder door alone, until SIGTERM or Ctrl-C."""

    async def main() -> None:
        with build_runtime(settings) as runtime:
            door = FileDoor(runtime)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await door.start()
            await stop.wait()
            files_log.info("stopping: finishing the requests in hand")
            await door.stop()

    asyncio.run(main())


def run_kafka_worker(settings: Settings, tuning: KafkaTuning | None = None) -> None:
    """``genserve kafka-worker``: the Kafka door alone, until SIGTERM or Ctrl-C (a second one
    stops at once, leaving unanswered work to the other workers)."""
    asyncio.run(_work(settings, tuning))


async def _work(settings: Settings, tuning: KafkaTuning | None) -> None:
    runtime = build_runtime(settings)
    try:
        door = KafkaDoor(runtime, tuning)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                kafka_log.warning("kafka: second signal: stopping now")
                door.hurry()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        starting = asyncio.create_task(door.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # a signal while joining the groups: give up joining
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return
            starting.result()  # a start that failed raises here
            await stop.wait()
            await door.stop()
        finally:
            stopping.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        await asyncio.to_thread(runtime.close)
