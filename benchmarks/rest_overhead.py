"""What the REST door costs over calling the engine in-process, for one cheap request.

``POST /api/v1/decoding/decode`` on the demo VAE (128x128 png, tens of ms of compute) is timed two
ways, with the same latent file and the same request body:

HTTP        ``genserve serve`` runs as a subprocess (its own GIL, as in production); one keep-alive
            ``httpx.Client`` posts the request. The time is the client's: send to parsed JSON.
in-process  ``runtime.engine.submit("decoding", ...)`` in this process on a long-lived event loop:
            the call the route makes, without uvicorn, FastAPI, JSON or sockets.

They alternate (HTTP first on even pairs, in-process first on odd ones) after a warm-up, so a
machine that slows down slows both. Printed: p50 and p99 of each, the overhead in ms and as a
ratio, also for the time outside the VAE compute (wall minus the service's ``decode_ms``, which
drops the compute's own noise); the p50 of ``GET /health/live``, the round-trip floor; requests/s
at 1 and 16 closed-loop clients both ways (threads with their own ``httpx.Client``, or coroutines
on one event loop), each run split in halves: in-process, HTTP, HTTP, in-process. Target: p50
overhead <= 2 ms at 1 client, judged on the time outside compute.

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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pipeline_overhead import models_folder  # benchmarks/ is on sys.path when run as a script

from genserve.app.runtime import Runtime, build_runtime
from genserve.config import load_settings

ROUTE = "/api/v1/decoding/decode"
SIZE = 128  # output side, as in the test suite
Sample = tuple[float, float]  # (wall ms, decode_ms the service reports)
Rate = Callable[[int], float]  # requests -> requests/s


def environment(models_dir: Path, data: Path, threads: int) -> dict[str, str]:
    """The GENSERVE_* settings both sides use: same models, folders, sizes and threads; quiet logs."""
    mp = str(SIZE * SIZE / 1_000_000)
    return {
        "GENSERVE_ENGINE__TORCH_THREADS": str(threads),
        "GENSERVE_GRPC__ENABLED": "false",
        "GENSERVE_MODELS__DIR": str(models_dir),
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data}]",
        "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data / 'outputs'}]",
        "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data / "outputs"),
        "GENSERVE_PIPELINE__MEGAPIXELS": mp,
        "GENSERVE_PIPELINE__VAE_REFERENCE_MEGAPIXELS": mp,
        "GENSERVE_SERVER__ACCESS_LOG": "false",
        "GENSERVE_LOGGING__LEVEL": "WARNING",
    }


def start_server(env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``genserve serve`` on a free port; returns once /health/ready answers 200."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    exe = shutil.which("genserve", path=str(Path(sys.executable).parent)) or "genserve"
    with log.open("wb") as out:  # cwd is the temp folder, so no stray genserve.yaml is read
        command = [exe, "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"genserve serve did not get ready (exit code {proc.poll()}):\n{log.read_text()}")


def http_call(client: httpx.Client, body: dict[str, Any]) -> Sample:
    started = time.perf_counter()
    response = client.post(ROUTE, json=body)
    response.raise_for_status()
    decode_ms = response.json()["metadata"]["decode_ms"]
    return (time.perf_counter() - started) * 1000, decode_ms


def inproc_call(runner: asyncio.Runner, rt: Runtime, body: dict[str, Any]) -> Sample:
    started = time.perf_counter()
    response: Any = runner.run(rt.engine.submit("decoding", body))
    return (time.perf_counter() - started) * 1000, response.metadata["decode_ms"]


def shares(total: int, clients: int) -> list[int]:
    return [total // clients + (i < total % clients) for i in range(clients)]


def http_rate(url: str, body: dict[str, Any], clients: int, total: int) -> float:
    """Requests/s of ``clients`` threads, each with its own keep-alive client, ``total`` requests in all."""
    sessions = [httpx.Client(base_url=url, timeout=300) for _ in range(clients)]
    for session in sessions:  # connected before the clock starts
        session.get("/health/live").raise_for_status()

    def client(session: httpx.Client, count: int) -> None:
        for _ in range(count):
            session.post(ROUTE, json=body).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, sessions, shares(total, clients)))
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
        await asyncio.gather(*(client(count) for count in shares(total, clients)))
        return time.perf_counter() - started

    return total / runner.run(everyone())


def interleaved_rates(a: Rate, b: Rate, total: int) -> tuple[float, float]:
    """Rates of two runs of ``total`` requests, each split in halves run in the order a, b, b, a."""
    half = max(total // 2, 1)
    a1, b1, b2, a2 = a(half), b(half), b(half), a(half)
    return 2 / (1 / a1 + 1 / a2), 2 / (1 / b1 + 1 / b2)  # requests over the summed time


@dataclass(frozen=True)
class Door:
    """How a report names the door it measured (shared with grpc_overhead.py)."""

    name: str  # "HTTP"
    call: str  # what was timed
    floor: str  # the round-trip floor's description
    clients: str  # "clients" or "callers"
    target_ms: float


HTTP = Door(
    "HTTP",
    f"POST {ROUTE}",
    "GET /health/live after an in-process decode (the floor of one round trip: client, loopback, "
    "uvicorn, a minimal route)",
    "clients",
    2.0,
)


def report(
    args: Any,
    door: Door,
    remote: list[Sample],
    inproc: list[Sample],
    floor: list[float],
    rates: dict[int, Any],
) -> None:
    p50 = statistics.median

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[98]

    remote_wall, inproc_wall = [w for w, _ in remote], [w for w, _ in inproc]
    remote_out, inproc_out = [w - d for w, d in remote], [w - d for w, d in inproc]
    cells = {
        "p50 ms": (p50(remote_wall), p50(inproc_wall)),
        "p99 ms": (p99(remote_wall), p99(inproc_wall)),
        "p50 outside compute": (p50(remote_out), p50(inproc_out)),
    }
    print(
        f"{door.call} on the demo VAE, {SIZE}x{SIZE} png; {os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    print(f"latency: {args.pairs} interleaved pairs after {args.warmup} warm-up pairs")
    print(f"{'':11s}" + "".join(f"{name:>21s}" for name in cells))
    rows: dict[str, Callable[[float, float], float]] = {
        door.name: lambda r, i: r,
        "in-process": lambda r, i: i,
        "overhead": lambda r, i: r - i,
        "ratio": lambda r, i: r / i,
    }
    for label, cell in rows.items():
        print(f"{label:11s}" + "".join(f"{cell(r, i):21.2f}" for r, i in cells.values()))
    paired = p50([r - i for r, i in zip(remote_out, inproc_out, strict=True)])
    print(f"median of the per-pair differences outside compute: {paired:.2f} ms")
    print(f"{door.floor}: p50 {p50(floor):.2f} ms")
    print(f"throughput: {args.concurrency_requests} requests per run, closed loop")
    print(f"{door.clients:>7s} {door.name + ' req/s':>11s} {'in-process req/s':>17s} {'ratio':>6s}")
    for clients, (inproc_rps, remote_rps) in rates.items():
        print(f"{clients:7d} {remote_rps:11.1f} {inproc_rps:17.1f} {remote_rps / inproc_rps:6.2f}")
    outside = cells["p50 outside compute"][0] - cells["p50 outside compute"][1]
    wall = cells["p50 ms"][0] - cells["p50 ms"][1]
    verdict = "PASS" if outside <= door.target_ms else "FAIL"
    one = door.clients[:-1]
    print(
        f"{verdict}: p50 overhead at 1 {one} {outside:.2f} ms outside compute, {wall:.2f} ms wall "
        f"(target <= {door.target_ms:g} ms, judged outside compute)"
    )


def round_trip_floor(
    runner: Any, rt: Runtime, body: dict[str, Any], pairs: int, probe: Callable[[], Any]
) -> list[float]:
    """The cheapest call the door answers, each timed right after an in-process decode, so the
    door is as cold as before a timed call (ms)."""
    floor: list[float] = []
    for _ in range(max(pairs // 4, 2)):
        inproc_call(runner, rt, body)
        started = time.perf_counter()
        probe()
        floor.append((time.perf_counter() - started) * 1000)
    return floor


def door_rates(
    runner: Any, rt: Runtime, body: dict[str, Any], remote_rate: Callable[[int, int], float], args: Any
) -> dict[int, Any]:
    """Requests/s in-process and through the door at 1 and 16 concurrent clients."""
    return {
        clients: interleaved_rates(
            lambda n, c=clients: inproc_rate(runner, rt, body, c, n),
            lambda n, c=clients: remote_rate(c, n),
            args.concurrency_requests,
        )
        for clients in (1, 16)
    }


def parse_args(argv: list[str] | None, door: Door, doc: str | None) -> argparse.Namespace:
    """The options both door benchmarks take."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--pairs", type=int, default=200, help=f"timed {door.name}/in-process pairs (default 200)")
    add("--warmup", type=int, default=20, help="untimed pairs first (default 20)")
    add("--concurrency-requests", type=int, default=320, help="requests per throughput run (default 320)")
    add(
        "--threads",
        type=int,
        default=1,
        help=f"torch threads, both sides (default 1: a core left for {door.name})",
    )
    args = parser.parse_args(argv)
    if args.pairs < 2 or args.concurrency_requests < 32:
        parser.error("--pairs must be at least 2 and --concurrency-requests at least 32")
    return args


def workspace(work: Path, threads: int) -> tuple[Path, dict[str, str]]:
    """Demo models, a data root holding the input image, and the settings both sides share."""
    models_dir = models_folder(work)
    data = work / "data"
    (data / "outputs").mkdir(parents=True)
    image = Path(shutil.copy(models_dir.parent / "images" / "person.png", data / "person.png"))
    return image, environment(models_dir, data, threads)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, HTTP, __doc__)
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp:
        work = Path(tmp)
        image, env = workspace(work, args.threads)
        proc, url = start_server(env, work, work / "server.log")
        try:
            with build_runtime(load_settings(environ=env)) as rt, asyncio.Runner() as runner:
                encoded: Any = runner.run(rt.engine.submit("latent_encoder", {"image_path": str(image)}))
                body = {"latent_file": encoded.latent_file_path, "output_format": "png"}
                http: list[Sample] = []
                inproc: list[Sample] = []
                with httpx.Client(base_url=url, timeout=300) as client:
                    for index in range(args.warmup + args.pairs):
                        if index % 2:
                            i, h = inproc_call(runner, rt, body), http_call(client, body)
                        else:
                            h, i = http_call(client, body), inproc_call(runner, rt, body)
                        if index >= args.warmup:
                            http.append(h)
                            inproc.append(i)
                    floor = round_trip_floor(
                        runner, rt, body, args.pairs, lambda: client.get("/health/live").raise_for_status()
                    )
                rates = door_rates(runner, rt, body, lambda c, n: http_rate(url, body, c, n), args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report(args, HTTP, http, inproc, floor, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
