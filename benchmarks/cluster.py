"""The LLM cluster (titancompute.v1): routing decisions per second, and time to first token.

routing     ``genserve coordinator`` runs as a subprocess (its own GIL, as in production); this
            process registers 50 simulated agents and keeps their 50 health streams open (one update
            per agent per second, random free memory, load and round trip), then times
            RequestInference: each call scores the agents serving the model and signs an RS256 token.
            Printed: decisions/s and p50/p99 latency at 1 and 16 concurrent callers, and the rate of
            the bare ``routing.choose`` over the same 50 records in-process (no gRPC, no signing).
first token A coordinator and one agent (demo LLM, CPU) as subprocesses; a client does what a user
            does: RequestInference, then StreamInference at the returned endpoint with the token,
            timed until the first StreamResponse arrives. Against it, ``engine.stream(
            "text_generation", ...)`` in this process until its first chunk. Same prompt, greedy,
            8 tokens; pairs alternate after a warm-up. Printed: p50 of each and the ratio.

    .venv/bin/python benchmarks/cluster.py [--agents 50] [--requests 2000] [--pairs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge_queue import models_folder

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from genserve.app.runtime import build_runtime
from genserve.cluster.routing import AgentRecord, choose
from genserve.config import load_settings
from tests.integration.cluster.support import (
    MODEL,
    ask,
    coordinator_stub,
    processes,
    start_agent,
    start_coordinator,
    status,
    wait_until,
)

PROMPT = "Once upon a time"


async def simulated_agents(address: str, count: int, stop: asyncio.Event) -> None:
    """``count`` agents on one channel: register each, then one health stream per agent."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpc.CoordinatorServiceStub(channel)
        rng = random.Random(0)
        for i in range(count):
            gpu = i % 3 != 0
            await stub.RegisterAgent(
                pb.AgentRegistration(
                    agent_id=f"sim-{i:02d}",
                    endpoint=f"10.0.{i // 250}.{i % 250}:50052",
                    total_vram_mb=24_000 if gpu else 0,
                    total_ram_mb=64_000,
                    max_jobs=64,
                    supported_models=[MODEL, f"other-{i % 5}"],
                    capabilities={"tokens_per_second": str(rng.randint(5, 80))},
                )
            )

        async def health(i: int) -> None:
            async def updates() -> Any:
                while not stop.is_set():
                    yield pb.HealthUpdate(
                        agent_id=f"sim-{i:02d}",
                        free_vram_mb=rng.randint(1_000, 24_000) if i % 3 else 0,
                        free_ram_mb=rng.randint(4_000, 64_000),
                        running_jobs=rng.randint(0, 8),
                        cpu_percent=rng.uniform(5, 80),
                        rtt_ms=rng.uniform(0.5, 80),
                        timestamp=int(time.time()),
                    )
                    await asyncio.sleep(1.0)

            async for _ack in stub.ReportHealth(updates()):
                pass

        tasks = [asyncio.create_task(health(i)) for i in range(count)]
        await stop.wait()
        for task in tasks:
            task.cancel()


async def route_rate(address: str, requests: int, callers: int) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpc.CoordinatorServiceStub(channel)
        request = pb.InferenceRequest(client_id="bench", model=MODEL, prompt=PROMPT, max_tokens=8)
        latencies: list[float] = []

        async def caller(n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                await stub.RequestInference(request)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller(requests // callers) for _ in range(callers)))
        return len(latencies) / (time.perf_counter() - started), latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def routing(args: argparse.Namespace, work: Path) -> None:
    coordinator = start_coordinator(work, GENSERVE_CLUSTER__HEARTBEAT_TIMEOUT_S="10")
    address = coordinator.wait_ready().group(1)

    async def run() -> None:
        stop = asyncio.Event()
        sims = asyncio.create_task(simulated_agents(address, args.agents, stop))
        stub = coordinator_stub(address)
        await asyncio.to_thread(wait_until, lambda: len(status(stub)) == args.agents, 30, "agents registered")
        await route_rate(address, 200, 4)  # warm-up
        for callers in (1, 16):
            rate, lat = await route_rate(address, args.requests, callers)
            print(
                f"routing via gRPC, {args.agents} agents, {callers:2d} caller(s): {rate:8.0f} decisions/s"
                f"   p50 {pct(lat, 0.5):.2f} ms   p99 {pct(lat, 0.99):.2f} ms"
            )
        stop.set()
        await sims

    with processes(coordinator):
        asyncio.run(run())
    records = [
        AgentRecord(
            f"a{i}", "h:1", 0 if i % 3 == 0 else 24_000, 64_000, 64, frozenset({MODEL}), free_ram_mb=9_000
        )
        for i in range(args.agents)
    ]
    started, n = time.perf_counter(), 20_000
    for _ in range(n):
        choose(records, MODEL, 30)
    rate = n / (time.perf_counter() - started)
    print(f"routing.choose in-process, {args.agents} agents: {rate:8.0f} decisions/s")


def first_token(args: argparse.Namespace, work: Path) -> None:
    models = models_folder(work)
    coordinator = start_coordinator(work)
    address = coordinator.wait_ready().group(1)
    agent = start_agent(work, address, "bench-agent", models)
    with processes(coordinator, agent):
        agent.wait_ready()
        stub = coordinator_stub(address)
        wait_until(lambda: "bench-agent" in status(stub), 20, "agent registered")
        env = {"GENSERVE_MODELS__DIR": str(models), "GENSERVE_ENGINE__TORCH_THREADS": "1"}
        fields = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0}
        channels: dict[str, grpc.Channel] = {}

        def cluster_ttft() -> float:
            started = time.perf_counter()
            route = ask(stub)
            channel = channels.setdefault(route.agent_endpoint, grpc.insecure_channel(route.agent_endpoint))
            # On the wire temperature 0 is the spec's default 0.7; greedy is asked for by option.
            request = pb.StreamRequest(
                session_token=route.session_token, stream=True, options={"greedy": "true"}, **fields
            )
            replies = rpc.AgentServiceStub(channel).StreamInference(request)
            next(replies)
            elapsed = time.perf_counter() - started
            for _ in replies:
                pass
            return elapsed

        with build_runtime(load_settings(environ=env)) as rt, asyncio.Runner() as runner:

            async def local() -> float:
                started = time.perf_counter()
                elapsed = 0.0
                async for _item in rt.engine.stream("text_generation", fields):
                    elapsed = elapsed or time.perf_counter() - started
                return elapsed

            remote: list[float] = []
            inproc: list[float] = []
            for index in range(args.warmup + args.pairs):
                if index % 2:  # alternate which goes first, so drift hits both alike
                    r, i = cluster_ttft(), runner.run(local())
                else:
                    i, r = runner.run(local()), cluster_ttft()
                if index >= args.warmup:
                    remote.append(r)
                    inproc.append(i)
    c, i = statistics.median(remote) * 1000, statistics.median(inproc) * 1000
    print(f"first token via coordinator + agent: p50 {c:.2f} ms (RequestInference + StreamInference)")
    print(f"first token in-process engine.stream: p50 {i:.2f} ms")
    print(f"ratio cluster / in-process: {c / i:.2f}  (overhead {c - i:.2f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=6)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp:
        for name in ("routing", "ttft"):
            (Path(tmp) / name).mkdir()
        routing(args, Path(tmp) / "routing")
        first_token(args, Path(tmp) / "ttft")
    return 0


if __name__ == "__main__":
    sys.exit(main())
