"""The lip-sync server's two figures, measured in one run against real ``genserve serve`` processes.

1. Server time per frame outside ONNX inference (audio + compositing + JPEG), for batches of 25
   frames composited onto 640x360 backgrounds at JPEG quality 75: the response's own timings,
   ``(total_time_ms - inference_time_ms) / 25``, from one client sending one request at a time.
   Target: <= 1.5 ms per frame.
2. Throughput with dynamic batching on and off: 8 closed-loop clients (processes, each with its own
   channel) sending 8-frame requests to two servers that differ only in ``lipsync.batching``. The
   runs are split in halves in the order on, off, off, on, so a machine that slows down slows
   both. Target: batching >= 1.5x the requests/s.

Both servers serve the demo lip-sync model (``genserve models demo`` builds the same), each in its
own process as in production. ``--generator unet`` swaps the demo's one-convolution generator for
an encoder-decoder with the same interface whose inference costs what a real generator's does
(``lipsync_generator.py``): the figure batching is judged on when inference matters.

    .venv/bin/python benchmarks/lipsync.py [--requests 20] [--clients 8] [--batch 8] [--total 96]
    .venv/bin/python benchmarks/lipsync.py --generator unet [--width 16] --batch 1 --total 64
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import grpc
import numpy as np
from lipsync_generator import install_unet  # benchmarks/ is on sys.path when run as a script
from rest_overhead import shares, start_server

from genserve.api.grpc.gen import monolithic_pb2 as pb
from genserve.api.grpc.gen import monolithic_pb2_grpc as rpc
from genserve.models.demo.lipsync import MODEL_FILE, build_lipsync_demo

MODEL = "sanders"
LIMIT = 100 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(root: Path, name: str, batching: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        "GENSERVE_MODELS__DIR": str(root / "models"),
        "GENSERVE_GRPC__PORTS": f"[{port}]",
        "GENSERVE_LIPSYNC__BATCHING": str(batching).lower(),
        "GENSERVE_SERVER__ACCESS_LOG": "false",
        "GENSERVE_LOGGING__LEVEL": "WARNING",
    }
    proc, _ = start_server(env, root, root / f"{name}.log")
    return proc, f"127.0.0.1:{port}"


def request(batch: int, seed: int) -> pb.CompositeBatchRequest:
    rng = np.random.default_rng(seed)
    audio = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * np.arange(10_240) / 16_000)
    return pb.CompositeBatchRequest(
        model_id=MODEL,
        visual_frames=rng.random(batch * 6 * 320 * 320, dtype=np.float32).tobytes(),
        raw_audio=audio.astype("<f4").tobytes(),
        batch_size=batch,
        start_frame_idx=seed,
    )


def call(stub: rpc.MonolithicServiceStub, req: pb.CompositeBatchRequest) -> pb.CompositeBatchResponse:
    reply = stub.InferBatchComposite(req, timeout=300)
    if not reply.success:
        raise RuntimeError(reply.error)
    return reply


def per_frame(target: str, count: int) -> None:
    batch = 25
    req = request(batch, 1)
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        stub = rpc.MonolithicServiceStub(channel)
        for _ in range(3):
            call(stub, req)  # load the model, warm the audio path and the pools
        replies, walls = [], []
        for _ in range(count):
            started = time.perf_counter()
            replies.append(call(stub, req))
            walls.append((time.perf_counter() - started) * 1000)
    outside = [(r.total_time_ms - r.inference_time_ms) / batch for r in replies]
    audio = [r.audio_processing_ms / batch for r in replies]
    composite = [r.composite_time_ms / batch for r in replies]
    inference = [r.inference_time_ms / batch for r in replies]
    p50 = statistics.median
    where = f"GPU {replies[-1].gpu_id}" if replies[-1].gpu_id >= 0 else "the CPU"
    print(f"batch {batch}, 640x360, JPEG q75, {count} requests (p50 per frame), model on {where}:")
    figure = p50(outside)
    print(f"  outside inference   {figure:6.2f} ms/frame   (target <= 1.5; ratio {figure / 1.5:.2f})")
    print(f"    audio             {p50(audio):6.2f} ms/frame")
    print(f"    composite + JPEG  {p50(composite):6.2f} ms/frame")
    print(f"  ONNX inference      {p50(inference):6.2f} ms/frame")
    megabytes = batch * 6 * 320 * 320 * 4 / 1e6
    wall = p50(walls) / batch
    print(f"  client wall         {wall:6.2f} ms/frame (incl. sending {megabytes:.0f} MB of frames)")


def inference_ceiling(model: Path, batch: int, clients: int, rounds: int = 4) -> tuple[float, float]:
    """ms per frame of ``clients`` concurrent ``batch``-frame runs, and of the same frames in one run.

    Their ratio is the most that merging can gain on this device for this model, whatever the
    server does around it: on a CPU concurrent runs already share the cores, on a GPU they queue.
    Measured in this process on onnxruntime directly, before the servers start.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the server's
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    rng = np.random.default_rng(0)

    def feeds(frames: int) -> dict[str, np.ndarray]:
        return {
            "input": rng.random((frames, 6, 320, 320), dtype=np.float32),
            "audio": rng.random((frames, 32, 16, 16), dtype=np.float32),
        }

    small, merged = feeds(batch), feeds(batch * clients)
    session.run(None, small)
    session.run(None, merged)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: session.run(None, small), range(clients * rounds)))
    concurrent = (time.perf_counter() - started) * 1000 / (clients * rounds * batch)
    started = time.perf_counter()
    for _ in range(rounds):
        session.run(None, merged)
    together = (time.perf_counter() - started) * 1000 / (clients * rounds * batch)
    return concurrent, together


def _client(target: str, seed: int, batch: int, count: int, ready: Barrier, done: Queue[float]) -> None:
    """One closed-loop client in its own process: a client-side GIL must not be what is measured."""
    req = request(batch, seed)
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        stub = rpc.MonolithicServiceStub(channel)
        call(stub, req)  # connected and warm before the clock starts
        ready.wait()
        for _ in range(count):
            call(stub, req)
        done.put(time.monotonic())  # CLOCK_MONOTONIC: one clock for every process on the machine


def rate(target: str, batch: int, clients: int, total: int) -> float:
    """Requests per second of ``clients`` processes sending ``total`` requests of ``batch`` frames.

    The clock runs from the start barrier to the last client's last answer, so neither a client's
    start-up nor its interpreter's exit is counted.
    """
    spawn = mp.get_context("spawn")  # grpc does not survive fork
    ready = spawn.Barrier(clients + 1)
    done: Queue[float] = spawn.Queue()
    procs = [
        spawn.Process(target=_client, args=(target, i, batch, count, ready, done))
        for i, count in enumerate(shares(total, clients))
    ]
    for proc in procs:
        proc.start()
    ready.wait(timeout=300)
    started = time.monotonic()
    finished = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(60)
        if proc.exitcode != 0:
            raise RuntimeError(f"a client process failed (exit code {proc.exitcode})")
    return total / (max(finished) - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=20, help="batch-25 requests timed for the per-frame figure"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the throughput figure")
    parser.add_argument("--batch", type=int, default=8, help="frames per request in the throughput runs")
    parser.add_argument("--total", type=int, default=96, help="requests per throughput run (split in halves)")
    parser.add_argument(
        "--generator",
        choices=("demo", "unet"),
        default="demo",
        help="demo: the demo set's one-convolution generator; unet: one with a real generator's cost",
    )
    parser.add_argument("--width", type=int, default=16, help="first-layer channels of the unet generator")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genserve-lipsync-bench-") as tmp:
        root = Path(tmp)
        build_lipsync_demo(root / "models" / "lipsync" / MODEL)
        if args.generator == "unet":
            install_unet(root / "models" / "lipsync" / MODEL, args.width)
        folder = root / "models" / "lipsync" / MODEL
        concurrent, together = inference_ceiling(folder / MODEL_FILE, args.batch, args.clients)
        on, on_target = serve(root, "batching-on", True)
        off, off_target = serve(root, "batching-off", False)
        try:
            generator = "demo" if args.generator == "demo" else f"unet, width {args.width}"
            print(f"machine: {os.cpu_count()} cores; generator: {generator}")
            per_frame(on_target, args.requests)
            half = max(args.total // 2, 1)
            a1 = rate(on_target, args.batch, args.clients, half)
            b1 = rate(off_target, args.batch, args.clients, half)
            b2 = rate(off_target, args.batch, args.clients, half)
            a2 = rate(on_target, args.batch, args.clients, half)
            with_batching, without = 2 / (1 / a1 + 1 / a2), 2 / (1 / b1 + 1 / b2)
            print(f"{args.clients} clients, {args.batch}-frame requests, {2 * half} requests per side:")
            print(f"  batching on   {with_batching:6.2f} req/s  ({with_batching * args.batch:6.1f} frames/s)")
            print(f"  batching off  {without:6.2f} req/s  ({without * args.batch:6.1f} frames/s)")
            print(f"  ratio on/off  {with_batching / without:6.2f}x   (target >= 1.5)")
            merged = args.batch * args.clients
            print(f"ONNX alone, in this process ({args.clients} x {args.batch} frames):")
            print(f"  {args.clients} concurrent runs   {concurrent:6.2f} ms/frame")
            print(f"  one {merged}-frame run  {together:6.2f} ms/frame")
            print(f"  merging can gain at most {concurrent / together:4.2f}x on this device")
        finally:
            for proc in (on, off):
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
