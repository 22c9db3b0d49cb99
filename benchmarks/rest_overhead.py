"""What the REST door costs over calling the engine in-process, for one cheap request.

``POST /api/v1/decoding/decode`` on the demo VAE (128x128 output, a few ms of compute) is timed
two ways, on the same latent file and the same request body:

HTTP.       ``genserve serve`` runs as a subprocess (its own GIL, as in production) and a keep-alive
            ``httpx.Client`` posts the request; the time is the client's, from send to parsed JSON.
in-process. ``runtime.engine.submit("decoding", ...)`` in this process, on an event loop that stays
            open: the work the route hands to the engine, without uvicorn, FastAPI, JSON or sockets.

The two are interleaved (HTTP first on even pairs, in-process first on odd ones) after a warm-up,
so a noisy machine slows both alike. Prints p50 and p99 of each, the overhead in ms and as a
ratio, and a PASS/FAIL line for the target p50 overhead <= 2 ms. Then it measures requests/s at 1
and 16 concurrent clients both ways (closed loop: each client sends its next request when its
answer is in; HTTP clients are threads with their own ``httpx.Client``, in-process ones are
coroutines on one loop), each run split in halves in the order in-process, HTTP, HTTP, in-process.
Also printed: p50 of ``GET /health/live``, the floor of one HTTP round trip through the app.

    .venv/bin/python benchmarks/rest_overhead.py [--pairs 200] [--warmup 20] [--concurrency-requests 320]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pipeline_overhead import models_folder  # benchmarks/ is on sys.path when run as a script

from genserve.config import load_settings
from genserve.runtime import Runtime, build_runtime

ROUTE = "/api/v1/decoding/decode"
SIZE = 128  # output side, as in the test suite


def environment(models_dir: Path, data: Path) -> dict[str, str]:
    """The GENSERVE_* settings both sides use: same models, folders and sizes, quiet logs."""
    mp = str(SIZE * SIZE / 1_000_000)
    return {
        "GENSERVE_MODELS__DIR": str(models_dir),
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data}]",
        "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data / 'outputs'}]",
        "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data / "outputs"),
        "GENSERVE_PIPELINE__MEGAPIXELS": mp,
        "GENSERVE_PIPELINE__VAE_REFERENCE_MEGAPIXELS": mp,
        "GENSERVE_SERVER__ACCESS_LOG": "false",
        "GENSERVE_LOGGING__LEVEL": "WARNING",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``genserve serve`` on a free port; returns once /health/ready answers 200."""
    port = free_port()
    exe = shutil.which("genserve", path=str(Path(sys.executable).parent)) or "genserve"
    with log.open("wb") as err:  # cwd is the temp folder, so no stray genserve.yaml is read
        proc = subprocess.Popen(
            [exe, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"genserve serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"genserve serve not ready after 120 s:\n{log.read_text()}")


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def http_call(client: httpx.Client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = client.post(ROUTE, json=body)
    response.raise_for_status()
    response.json()
    return ms_since(started)


def inproc_call(runner: asyncio.Runner, rt: Runtime, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    runner.run(rt.engine.submit("decoding", body))
    return ms_since(started)


def http_rate(url: str, body: dict[str, Any], clients: int, total: int) -> float:
    """Requests/s of ``clients`` threads, each with its own keep-alive client, ``total`` requests in all."""
    share = [total // clients + (i < total % clients) for i in range(clients)]
    sessions = [httpx.Client(base_url=url, timeout=120) for _ in range(clients)]
    for session in sessions:  # connect before the clock starts
        session.get("/health/live").raise_for_status()
    barrier = threading.Barrier(clients + 1)

    def client(session: httpx.Client, count: int) -> None:
        barrier.wait()
        for _ in range(count):
            session.post(ROUTE, json=body).raise_for_status()

    threads = [threading.Thread(target=client, args=a) for a in zip(sessions, share, strict=True)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for session in sessions:
        session.close()
    return total / elapsed


def inproc_rate(runner: asyncio.Runner, rt: Runtime, body: dict[str, Any], clients: int, total: int) -> float:
    """Requests/s of ``clients`` coroutines calling ``engine.submit`` in turn, ``total`` requests in all."""

    async def client(count: int) -> None:
        for _ in range(count):
            await rt.engine.submit("decoding", body)

    async def everyone() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(total // clients + (i < total % clients)) for i in range(clients)))
        return time.perf_counter() - started

    return total / runner.run(everyone())


def interleaved_rate(
    first: Callable[[int], float], second: Callable[[int], float], total: int
) -> tuple[float, float]:
    """Rates of two runs, each split into halves in the order first, second, second, first."""
    half = max(total // 2, 1)
    a1, b1, b2, a2 = first(half), second(half), second(half), first(half)
    return 2 / (1 / a1 + 1 / a2), 2 / (1 / b1 + 1 / b2)  # total requests over total time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=200, help="timed HTTP/in-process pairs (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed pairs first (default 20)")
    parser.add_argument(
        "--concurrency-requests",
        type=int,
        default=320,
        metavar="N",
        help="requests per throughput run, at 1 and at 16 clients, each way (default 320)",
    )
    args = parser.parse_args(argv)
    if args.pairs < 2 or args.concurrency_requests < 32:
        parser.error("--pairs must be at least 2 and --concurrency-requests at least 32")

    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp:
        work = Path(tmp)
        models_dir = models_folder(work)
        data = work / "data"
        (data / "outputs").mkdir(parents=True)
        image = Path(shutil.copy(models_dir.parent / "images" / "person.png", data / "person.png"))
        env = environment(models_dir, data)
        proc, url = start_server(env, work, work / "server.log")
        try:
            with build_runtime(load_settings(environ=env)) as rt, asyncio.Runner() as runner:
                encoded: Any = runner.run(rt.engine.submit("latent_encoder", {"image_path": str(image)}))
                body = {"latent_file": encoded.latent_file_path, "output_format": "png"}
                with httpx.Client(base_url=url, timeout=120) as client:
                    http_ms: list[float] = []
                    inproc_ms: list[float] = []
                    for index in range(args.warmup + args.pairs):
                        if index % 2:
                            b, a = inproc_call(runner, rt, body), http_call(client, body)
                        else:
                            a, b = http_call(client, body), inproc_call(runner, rt, body)
                        if index >= args.warmup:
                            http_ms.append(a)
                            inproc_ms.append(b)
                    live = []
                    for _ in range(args.pairs):
                        started = time.perf_counter()
                        client.get("/health/live").raise_for_status()
                        live.append(ms_since(started))
                rates = {
                    clients: interleaved_rate(
                        lambda n, c=clients: inproc_rate(runner, rt, body, c, n),
                        lambda n, c=clients: http_rate(url, body, c, n),
                        args.concurrency_requests,
                    )
                    for clients in (1, 16)
                }
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    p50 = statistics.median
    h50, i50, h99, i99 = p50(http_ms), p50(inproc_ms), percentile(http_ms, 99), percentile(inproc_ms, 99)
    paired = p50([a - b for a, b in zip(http_ms, inproc_ms, strict=True)])
    print(f"{ROUTE} on the demo VAE, {SIZE}x{SIZE} png; {os.cpu_count()} CPUs")
    print(f"latency: {args.pairs} interleaved pairs after {args.warmup} warm-up pairs")
    print(f"{'':12s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(f"{'HTTP':12s} {h50:8.2f} {h99:8.2f}")
    print(f"{'in-process':12s} {i50:8.2f} {i99:8.2f}")
    print(
        f"{'overhead':12s} {h50 - i50:8.2f} {h99 - i99:8.2f}   (median of per-pair differences {paired:.2f})"
    )
    print(f"{'ratio':12s} {h50 / i50:8.2f} {h99 / i99:8.2f}")
    print(f"GET /health/live p50 {p50(live):.2f} ms (one HTTP round trip through the app, no engine)")
    print(f"throughput: {args.concurrency_requests} requests per run, closed loop")
    print(f"{'clients':>7s} {'HTTP req/s':>11s} {'in-process req/s':>17s} {'ratio':>6s}")
    for clients, (inproc, http) in rates.items():
        print(f"{clients:7d} {http:11.1f} {inproc:17.1f} {http / inproc:6.2f}")
    verdict = "PASS" if h50 - i50 <= 2.0 else "FAIL"
    print(f"{verdict}: p50 overhead {h50 - i50:.2f} ms at 1 client (target <= 2 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
