"""What the gRPC door costs over calling the engine in-process, for one cheap request.

``Decoder.Decode`` on the demo VAE (128x128 png, tens of ms of compute) is timed two ways, with
the same latent file and the same request:

gRPC        ``genserve serve`` runs as a subprocess (its own GIL, as in production) with its gRPC
            door on a free port; one sync ``DecoderStub`` on one insecure channel calls it. The
            time is the client's: request built and sent to response parsed.
in-process  ``runtime.engine.submit("decoding", ...)`` in this process on a long-lived event loop:
            the call the servicer makes, without grpc.aio, protobuf <-> dict conversion or sockets.

The design is rest_overhead.py's, and its helpers are reused: the pairs alternate (gRPC first on
even pairs, in-process first on odd ones) after a warm-up. Printed: p50 and p99 of each, the
overhead in ms and as a ratio, also for the time outside the VAE compute (wall minus the
``decode_ms`` the service reports in the response's metadata Struct, which drops the compute's own
noise); the p50 of ``grpc.health.v1.Health/Check``, the round-trip floor; requests/s at 1 and 16
closed-loop callers both ways, each run split in halves: in-process, gRPC, gRPC, in-process.
gRPC callers are threads sharing one channel (sync stubs are thread-safe; HTTP/2 multiplexes
their calls on one connection, as a real client would), in-process callers coroutines on one
event loop. Target: p50 overhead <= 1 ms at 1 caller, judged on the time outside compute.

    .venv/bin/python benchmarks/grpc_overhead.py [--pairs 200] [--warmup 20] [--concurrency-requests 320]
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rest_overhead import (
    Door,
    Sample,
    door_rates,
    inproc_call,
    parse_args,
    report,
    round_trip_floor,
    shares,
    start_server,
    workspace,
)

from genserve.api.grpc.gen import pipeline_pb2 as pb
from genserve.api.grpc.gen import pipeline_pb2_grpc as rpc
from genserve.app.runtime import build_runtime
from genserve.config import load_settings

METHOD = "Decoder.Decode"
TARGET_MS = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def grpc_call(stub: rpc.DecoderStub, latent_file: str) -> Sample:
    started = time.perf_counter()
    response = stub.Decode(pb.DecodeRequest(latent_file=latent_file, output_format="png"), timeout=300)
    return (time.perf_counter() - started) * 1000, response.metadata["decode_ms"]


def grpc_rate(channel: grpc.Channel, latent_file: str, callers: int, total: int) -> float:
    """Requests/s of ``callers`` threads sharing one channel, ``total`` requests in all."""
    stub = rpc.DecoderStub(channel)

    def caller(count: int) -> None:
        for _ in range(count):
            stub.Decode(pb.DecodeRequest(latent_file=latent_file, output_format="png"), timeout=300)

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(caller, shares(total, callers)))
    return total / (time.perf_counter() - started)


GRPC = Door(
    "gRPC",
    METHOD,
    "Health/Check after an in-process decode (the floor of one round trip: client, loopback, "
    "grpc.aio, a minimal servicer)",
    "callers",
    TARGET_MS,
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, GRPC, __doc__)
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp:
        work = Path(tmp)
        image, env = workspace(work, args.threads)
        port = free_port()
        env["GENSERVE_GRPC__PORTS"] = f"[{port}]"
        env["GENSERVE_GRPC__ENABLED"] = "true"  # rest_overhead's environment turns it off
        proc, _ = start_server(env, work, work / "server.log")  # the gRPC door starts before REST
        try:
            with (
                build_runtime(load_settings(environ=env)) as rt,
                asyncio.Runner() as runner,
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            ):
                grpc.channel_ready_future(channel).result(timeout=60)
                encoded: Any = runner.run(rt.engine.submit("latent_encoder", {"image_path": str(image)}))
                latent = encoded.latent_file_path
                body = {"latent_file": latent, "output_format": "png"}
                stub, health = rpc.DecoderStub(channel), health_pb2_grpc.HealthStub(channel)
                remote: list[Sample] = []
                inproc: list[Sample] = []
                for index in range(args.warmup + args.pairs):
                    if index % 2:
                        i, g = inproc_call(runner, rt, body), grpc_call(stub, latent)
                    else:
                        g, i = grpc_call(stub, latent), inproc_call(runner, rt, body)
                    if index >= args.warmup:
                        remote.append(g)
                        inproc.append(i)
                check = health_pb2.HealthCheckRequest(service="")
                floor = round_trip_floor(
                    runner, rt, body, args.pairs, lambda: health.Check(check, timeout=60)
                )
                rates = door_rates(runner, rt, body, lambda c, n: grpc_rate(channel, latent, c, n), args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report(args, GRPC, remote, inproc, floor, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
