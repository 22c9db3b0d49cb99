"""genserve against ComfyUI: the same API workflow on the same single-file demo weights.

Both servers run as subprocesses on loopback and are driven the same way, through ComfyUI's API
(``POST /prompt``, the ``/ws`` messages, ``GET /history/{id}``): genserve's ``genserve serve``
(its ComfyUI API under ``/comfy``) and a ComfyUI checkout given with ``--comfyui PATH`` (never
committed; its Python with ``--comfyui-python``, default this one). The models are the demo set
written in ComfyUI's layouts (``genserve models demo --formats``): the prefixed single-file
transformer, the ComfyUI text encoder, the Wan-layout VAE; ComfyUI finds them through an
``extra_model_paths.yaml`` pointing at genserve's models folder, so both read the same files.

Timed per server, the two alternating so machine noise hits both:
- **cold**: the first prompt after start (models load);
- **seed-only re-run**: the same graph with a new KSampler seed (median of ``--reruns``);
- **prompts/s**: ``--prompts`` prompts with distinct seeds queued at once, until the last is done.

Printed side by side with the ratio ComfyUI / genserve (above 1: genserve is faster). Without
``--comfyui`` only genserve's column is measured. A server that fails a prompt is reported with
its error, and the script exits 1.

    .venv/bin/python benchmarks/comfy_vs_genserve.py --comfyui ~/ComfyUI [--workflow text-to-image]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bridge_queue import models_folder  # benchmarks/ is on sys.path when run as a script
from rest_overhead import environment, start_server
from websockets.sync.client import connect

from genserve.models.demo.layouts import write_every_layout
from genserve.workflows.demo import CLOTH, DEMO_WORKFLOWS, PERSON, demo_workflow

SINGLE_FILES = {  # the loader input -> the single file --formats writes, in ComfyUI's folders
    "unet_name": "demo_prefixed.safetensors",
    "clip_name": "demo_comfy.safetensors",
    "vae_name": "demo_wan.safetensors",
    "lora_name": "demo_comfyui.safetensors",
}


class PromptFailed(RuntimeError):
    pass


@dataclass
class Server:
    """One ComfyUI-API server: its base URL and what was measured on it."""

    name: str
    base: str
    cold: float = 0.0
    reruns: list[float] = field(default_factory=list)
    rate: float = 0.0

    def run(self, graph: dict[str, Any]) -> float:
        """Queue one prompt and wait for it: seconds from POST to its last message."""
        return self.run_many([graph])

    def run_many(self, graphs: list[dict[str, Any]]) -> float:
        client_id = uuid.uuid4().hex
        ws_url = self.base.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        with connect(ws_url, max_size=None, open_timeout=30) as ws, httpx.Client(timeout=60) as http:
            started = time.perf_counter()
            waiting = set()
            for graph in graphs:
                answer = http.post(f"{self.base}/prompt", json={"prompt": graph, "client_id": client_id})
                if answer.status_code != 200:
                    raise PromptFailed(f"{self.name}: POST /prompt {answer.status_code}: {answer.text[:500]}")
                waiting.add(answer.json()["prompt_id"])
            while waiting:
                message = ws.recv(timeout=600)
                if isinstance(message, bytes):
                    continue  # previews
                event = json.loads(message)
                data = event.get("data", {})
                if event.get("type") == "execution_error":
                    raise PromptFailed(f"{self.name}: {data.get('exception_message', data)}")
                if event.get("type") == "executing" and data.get("node") is None:
                    waiting.discard(data.get("prompt_id"))
            elapsed = time.perf_counter() - started
        return elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workflow(name: str, seed: int) -> dict[str, Any]:
    graph = demo_workflow(name)
    for node in graph.values():
        inputs = node["inputs"]
        for key, file in SINGLE_FILES.items():
            if key in inputs:
                inputs[key] = file
        if node["class_type"] == "KSampler":
            inputs["seed"] = seed
    return graph


@contextmanager
def genserve_server(work: Path, models: Path, inputs: Path, threads: int) -> Iterator[Server]:
    data = work / "genserve-data"
    (data / "outputs").mkdir(parents=True)
    env = environment(models, data, threads) | {
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data}, {inputs}]",
        "GENSERVE_WORKFLOWS__INPUT_DIR": str(inputs),
        "GENSERVE_WORKFLOWS__OUTPUT_DIR": str(data / "outputs"),
        "GENSERVE_BRIDGE__ENABLED": "false",
    }
    proc, url = start_server(env, work, work / "genserve.log")
    try:
        yield Server("genserve", url + "/comfy")
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def comfyui_server(checkout: Path, python: str, work: Path, models: Path, inputs: Path) -> Iterator[Server]:
    paths = work / "extra_model_paths.yaml"
    folders = ("diffusion_models", "text_encoders", "vae", "loras")
    lines = ["genserve:", f"  base_path: {models}"] + [f"  {folder}: {folder}" for folder in folders]
    paths.write_text("\n".join(lines) + "\n")
    port = free_port()
    command = [
        python, str(checkout / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--extra-model-paths-config", str(paths), "--input-directory", str(inputs),
        "--output-directory", str(work / "comfyui-output"), "--disable-auto-launch",
    ]  # fmt: skip
    log = work / "comfyui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=checkout, stdout=out, stderr=out, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"ComfyUI did not start (exit code {proc.poll()}):\n{tail}")
            try:
                if httpx.get(base + "/system_stats", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield Server("ComfyUI", base)
    finally:
        proc.terminate()
        proc.wait(30)


def measure(servers: list[Server], name: str, reruns: int, prompts: int) -> None:
    seed = 1000
    for server in servers:
        server.cold = server.run(workflow(name, seed))
    for index in range(reruns):
        for server in servers if index % 2 == 0 else servers[::-1]:
            server.reruns.append(server.run(workflow(name, seed + 1 + index)))
    for server in servers:
        graphs = [workflow(name, seed + 100 + i) for i in range(prompts)]
        server.rate = prompts / server.run_many(graphs)


def report(servers: list[Server], name: str, reruns: int, prompts: int) -> None:
    print(f"workflow {name!r} on the single-file demo weights; {os.cpu_count()} CPUs")
    heads = "".join(f"{s.name:>12}" for s in servers)
    print(f"{'':34}{heads}{'ComfyUI/genserve':>18}" if len(servers) == 2 else f"{'':34}{heads}")
    rows = [
        ("cold run, s", [s.cold for s in servers], True),
        (f"seed-only re-run, s (median of {reruns})", [statistics.median(s.reruns) for s in servers], True),
        (f"prompts/s ({prompts} queued at once)", [s.rate for s in servers], False),
    ]
    for label, values, lower_is_better in rows:
        line = f"{label:34}" + "".join(f"{v:12.3f}" for v in values)
        if len(values) == 2:
            genserve, comfy = values
            line += f"{(comfy / genserve if lower_is_better else genserve / comfy):18.2f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--comfyui", type=Path, help="a ComfyUI checkout (the folder holding main.py)")
    parser.add_argument("--comfyui-python", default=sys.executable, help="the Python that runs ComfyUI")
    parser.add_argument("--workflow", choices=DEMO_WORKFLOWS, default="text-to-image")
    parser.add_argument("--reruns", type=int, default=5, help="seed-only re-runs per server")
    parser.add_argument("--prompts", type=int, default=8, help="prompts queued at once for prompts/s")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args(argv)
    if args.comfyui is not None and not (args.comfyui / "main.py").is_file():
        parser.error(f"--comfyui {args.comfyui}: no main.py there")
    with tempfile.TemporaryDirectory(prefix="genserve-vs-comfy-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        models = work / "models"
        shutil.copytree(models_folder(work), models)
        write_every_layout(models)
        inputs = work / "inputs"
        inputs.mkdir()
        for image in (PERSON, CLOTH):
            shutil.copy(_demo_image(work, image), inputs)
        servers = [stack.enter_context(genserve_server(work, models, inputs, args.threads))]
        if args.comfyui is not None:
            servers.append(
                stack.enter_context(comfyui_server(args.comfyui, args.comfyui_python, work, models, inputs))
            )
        try:
            measure(servers, args.workflow, args.reruns, args.prompts)
        except PromptFailed as exc:
            print(f"a prompt failed: {exc}", file=sys.stderr)
            return 1
        report(servers, args.workflow, args.reruns, args.prompts)
    return 0


def _demo_image(work: Path, name: str) -> Path:
    """The demo input images, from the same build as the models."""
    return models_folder(work).parent / "images" / name


if __name__ == "__main__":
    sys.exit(main())
