"""Queue throughput of the workflow bridge over one genserve backend and over two.

The bridge's job is to keep its backends busy: queue, pick a backend, follow the job, collect its
files. This measures that, not the model: the same tiny jobs go through a bridge whose only backend
is A, then through a bridge over A and B, in one run on the same processes, and it prints jobs/s
for each and the ratio two/one. Ideal dispatch gives a ratio near 2 when the jobs' own time is
mostly waiting (``DelayImage``); the model part of a job competes for the CPU, so on a small
machine the ratio drops towards what the cores allow.

Processes (all ``genserve serve`` on free loopback ports, quiet logs, no gRPC):

- backends **A** and **B**, each with its own data root, serving ComfyUI's API under ``/comfy``
  (``--threads`` torch threads each, 1 by default, so two backends do not oversubscribe 2 cores);
- bridge **one** (``bridge.backends = [A]``) and bridge **two** (``[A, B]``), both started up front
  with ``max_inflight`` ``--max-inflight`` per backend and no local runner (``workflows.enabled:
  false``), each with its own durable queue.

A job is the catalog alias ``tiny``: demo text-to-image at 64x64 with one sampling step, then a
``DelayImage`` of ``--delay`` seconds, then SaveImage; the seed differs per job so the backend's
node cache cannot skip the sampler and the delay. Both backends run a few warm-up prompts directly
first (models loaded, caches filled). Then, for each bridge in turn (``--rounds`` alternates
one, two, one, two...), ``--clients`` threads each run ``--jobs / --clients`` jobs one after
another, as the spec's clients do: open ``WS /ws?clientId=``, ``POST /generate-based-workflow``,
read the socket to its ``closed``, ``GET /history`` (a multipart PNG). The time is from the first
submit to the last history fetched; each job is checked to have returned a PNG.

    .venv/bin/python benchmarks/bridge_queue.py [--jobs 200] [--clients 20] [--delay 0.2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from genserve.models.demo import lipsync as lipsync_demo
from genserve.models.demo import pipeline as demo
from genserve.workflows.demo import demo_workflow

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".genserve-cache"
ALIAS = "tiny"
PNG = b"\x89PNG\r\n\x1a\n"


def models_folder(work: Path) -> Path:
    """The test suite's cached demo models when current (tests/conftest.py's digest), else a fresh
    build under ``work`` (a few seconds), so the benchmark needs no earlier test run."""
    sources = Path(demo.__file__).read_bytes() + Path(lipsync_demo.__file__).read_bytes()
    cached = CACHE / f"demo-{hashlib.sha1(sources).hexdigest()[:12]}"
    if demo.demo_present(cached / "models") and (cached / "images").is_dir():
        return cached / "models"
    demo.build_demo(work / "demo" / "models", images_dir=work / "demo" / "images")
    return work / "demo" / "models"


def tiny_workflow(delay: float) -> dict[str, Any]:
    """Text-to-image at 64x64 in one step, held ``delay`` seconds by DelayImage before SaveImage."""
    graph = demo_workflow("text-to-image")
    for node in graph.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"]["width"] = node["inputs"]["height"] = 64
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 1
    save = next(n for n in graph.values() if n["class_type"] == "SaveImage")
    graph["90"] = {
        "class_type": "DelayImage",
        "inputs": {"image": save["inputs"]["images"], "seconds": delay},
    }
    save["inputs"]["images"] = ["90", 0]
    return graph


def environment(models: Path, data: Path, threads: int) -> dict[str, str]:
    """GENSERVE_* settings for one process on its own data root: quiet, no gRPC, own bridge files."""
    bridge = data / "bridge"
    return {
        "GENSERVE_MODELS__DIR": str(models),
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data}]",
        "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data / 'outputs'}]",
        "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data / "outputs"),
        "GENSERVE_WORKFLOWS__INPUT_DIR": str(data / "inputs"),
        "GENSERVE_WORKFLOWS__OUTPUT_DIR": str(data / "outputs" / "workflows"),
        "GENSERVE_BRIDGE__WORKFLOWS_DIR": str(bridge / "workflows"),
        "GENSERVE_BRIDGE__ALIAS_FILE": str(bridge / "workflows" / "workflow_alias.json"),
        "GENSERVE_BRIDGE__JOBS_DB": str(bridge / "jobs.sqlite3"),
        "GENSERVE_BRIDGE__RESULTS_DIR": str(bridge / "results"),
        "GENSERVE_ENGINE__TORCH_THREADS": str(threads),
        "GENSERVE_GRPC__ENABLED": "false",
        "GENSERVE_SERVER__ACCESS_LOG": "false",
        "GENSERVE_LOGGING__LEVEL": "WARNING",
    }


def data_root(root: Path) -> Path:
    for folder in ("inputs", "outputs", "bridge/workflows"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(name: str, env: dict[str, str], work: Path) -> Iterator[str]:
    """``genserve serve`` on a free port, its log in ``work/<name>.log``; yields its URL once ready."""
    port = free_port()
    exe = shutil.which("genserve", path=str(Path(sys.executable).parent)) or "genserve"
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    log = work / f"{name}.log"
    with log.open("wb") as out:  # cwd is the temp folder, so no stray genserve.yaml is read
        command = [exe, "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, env=base | env, cwd=work, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not get ready (exit {process.poll()}):\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def warm(backend: str, graph: dict[str, Any], runs: int) -> None:
    """Run prompts straight on a backend's ComfyUI API: models loaded and caches filled before timing."""
    with httpx.Client(base_url=f"{backend}/comfy", timeout=120) as client:
        for seed in range(runs):
            prompt = json.loads(json.dumps(graph))
            prompt["3"]["inputs"]["seed"] = 10_000 + seed
            prompt_id = client.post("/prompt", json={"prompt": prompt}).raise_for_status().json()["prompt_id"]
            deadline = time.monotonic() + 120
            while prompt_id not in client.get(f"/history/{prompt_id}").json():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up prompt {prompt_id} on {backend} did not finish")
                time.sleep(0.05)
            client.post("/history", json={"delete": [prompt_id]})


def one_job(http: httpx.Client, ws_url: str, client_id: str, seed: int) -> None:
    """One spec client's round: socket first, submit, read to ``closed``, fetch the PNG."""
    with connect(f"{ws_url}/ws?clientId={client_id}", open_timeout=30) as ws:
        body = {"workflow": ALIAS, "3/seed": seed}
        answer = http.post("/generate-based-workflow", params={"clientId": client_id}, json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"{client_id}: submit answered {answer.status_code}: {answer.text}")
        for raw in ws:  # the bridge closes the socket after the job's final word
            message = json.loads(raw)
            if message["status"] == "error":
                raise RuntimeError(f"{client_id}: {message['details']}")
            if message["status"] == "closed":
                break
    history = http.get("/history", params={"clientId": client_id})
    if history.status_code != 200 or PNG not in history.content:
        raise RuntimeError(f"{client_id}: /history answered {history.status_code} without a PNG")


def throughput(url: str, jobs: int, clients: int, run: int) -> float:
    """``clients`` threads share ``jobs`` jobs, each running its share one after another; jobs/s.

    Seeds are unique across runs (``run``): a repeated seed would let a backend's node cache answer
    the sampler and the delay from memory."""
    shares = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    errors: list[BaseException] = []
    counted = httpx.get(f"{url}/generation-count", timeout=10).json()
    start = threading.Barrier(clients + 1)
    ws_url = url.replace("http://", "ws://")

    def client(index: int, count: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            start.wait()
            try:
                for job in range(count):
                    seed = (run * clients + index) * jobs + job
                    one_job(http, ws_url, f"run{run}-c{index}-j{job}", seed)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i, n), daemon=True) for i, n in enumerate(shares)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]}")
    count = httpx.get(f"{url}/generation-count", timeout=10).json() - counted
    if count != jobs:
        raise RuntimeError(f"the bridge counted {count} generations for {jobs} jobs")
    return jobs / elapsed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per measured run (default 200)")
    parser.add_argument("--clients", type=int, default=20, help="client threads (default 20)")
    parser.add_argument("--delay", type=float, default=0.2, help="DelayImage seconds per job (default 0.2)")
    parser.add_argument("--rounds", type=int, default=1, help="one/two pairs to run, alternating (default 1)")
    parser.add_argument(
        "--max-inflight", type=int, default=2, help="bridge.backends max_inflight (default 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per backend (default 1)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up prompts per backend (default 3)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or not 1 <= args.clients <= args.jobs or args.delay < 0 or args.rounds < 1:
        parser.error("need jobs >= clients >= 1, delay >= 0 and rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    graph = tiny_workflow(args.delay)
    with tempfile.TemporaryDirectory(prefix="genserve-bridge-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        models = models_folder(work)
        a, b = (
            stack.enter_context(serve(n, environment(models, data_root(work / n), args.threads), work))
            for n in ("a", "b")
        )
        bridges: dict[str, str] = {}
        for name, members in (("one", [("a", a)]), ("two", [("a", a), ("b", b)])):
            data = data_root(work / f"bridge-{name}")
            folder = data / "bridge" / "workflows"
            (folder / "tiny.json").write_text(json.dumps(graph))
            (folder / "workflow_alias.json").write_text(
                json.dumps({ALIAS: {"file": "tiny.json", "inputs": ["3/seed"]}})
            )
            entries = ", ".join(
                f'{{name: {n}, url: "{u}/comfy", max_inflight: {args.max_inflight}}}' for n, u in members
            )
            env = environment(models, data, 1) | {
                "GENSERVE_BRIDGE__BACKENDS": f"[{entries}]",
                "GENSERVE_WORKFLOWS__ENABLED": "false",
            }
            bridges[name] = stack.enter_context(serve(f"bridge-{name}", env, work))
        for backend in (a, b):
            warm(backend, graph, args.warmup)
        print(
            f"{args.jobs} jobs from {args.clients} clients, DelayImage {args.delay:g} s, "
            f"max_inflight {args.max_inflight}, {args.threads} torch thread(s) per backend, "
            f"{os.cpu_count()} CPUs"
        )
        rates: dict[str, list[float]] = {"one": [], "two": []}
        run = 0
        for round_ in range(args.rounds):
            for name in ("one", "two") if round_ % 2 == 0 else ("two", "one"):
                run += 1
                rate = throughput(bridges[name], args.jobs, args.clients, run)
                rates[name].append(rate)
                print(
                    f"  round {round_ + 1}, {name} backend{'s' if name == 'two' else ''}: {rate:.2f} jobs/s"
                )
        one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
        print(f"one backend  : {one:.2f} jobs/s")
        print(f"two backends : {two:.2f} jobs/s")
        print(f"ratio two/one: {two / one:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
