"""The official Qwen templates (``comfyui-workflow-templates-json``): converted, validated, run.

For every template whose file name contains "qwen" (31 in the locked version), in UI format:

1. **converted**: ``ui_to_api`` turns it into an API prompt, as ComfyUI's frontend would queue it;
2. **validated**: the prompt passes ``parse_graph`` against genserve's node registry (model and
   image names are not checked here); otherwise the missing node types are listed;
3. **ran** (unless ``--no-run``): the demo models are built in a temp folder with every ComfyUI
   file layout (``genserve models demo --formats``), a real ``genserve serve`` starts on a free
   port, each model file name the template asks for is mapped to the closest file present in the
   same loader's list (``/object_info``; names present are kept, an input with no file of its kind
   stays unmapped), each image it loads is uploaded under its name (the demo person), sizes and
   step counts are cut to the demo's scale (``--full-size`` keeps them), and the prompt is queued
   through ComfyUI's API (``POST /comfy/prompt``) and followed in ``/comfy/history`` to its end.

It prints a table and the counts, ``validated N/31`` and ``ran M/31``.

    .venv/bin/python benchmarks/comfy_templates.py [--no-run] [--limit N] [--only TEXT] [--timeout S]
        [--full-size] [--threads N]
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bridge_queue import data_root, environment, serve

from genserve.models.demo import pipeline as demo
from genserve.models.demo.layouts import write_every_layout
from genserve.models.demo.vision_chat import DEMO_VL_LLM
from genserve.workflows.graph import GraphValidationError, is_link, parse_graph
from genserve.workflows.nodes.builtin import pipeline_registry
from genserve.workflows.ui_format import UIWorkflowError, registry_object_info, ui_to_api

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")
SMALL = {"width": 128, "height": 128, "resolution": 128, "largest_size": 128, "steps": 4, "max_length": 32}
# The demo LLM reads 4096 tokens; the 2.1 prompt enhancers' system prompts are longer in its tokens.
MAX_TEXT = 2000
QWEN21_NAME = re.compile(r"qwen_image_2\.1|qwen3vl")


@dataclass
class Row:
    """What happened to one template."""

    name: str
    nodes: int = 0
    converted: bool = False
    validated: bool = False
    missing: list[str] = field(default_factory=list)
    problem: str = ""
    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    ran: bool | None = None
    outcome: str = ""
    prompt: dict[str, Any] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)


def templates(limit: int | None, only: str = "") -> list[Path]:
    import comfyui_workflow_templates_json as package

    folder = Path(package.__file__).parent / "templates"
    found = sorted(p for p in folder.glob("*.json") if "qwen" in p.name.lower() and only in p.name)
    return found[:limit] if limit else found


def check(path: Path) -> Row:
    """Convert and validate one template against the node registry (no models needed)."""
    row = Row(path.name)
    registry = pipeline_registry()
    row.ui = json.loads(path.read_text(encoding="utf-8"))
    try:
        row.prompt = ui_to_api(row.ui, registry_object_info(registry))
    except UIWorkflowError as exc:
        row.problem = exc.reason
        return row
    row.converted, row.nodes = True, len(row.prompt)
    try:
        parse_graph(row.prompt, registry)
        row.validated = True
    except GraphValidationError as exc:
        row.missing = sorted({p.class_type or "?" for p in exc.problems if p.kind == "missing_node_type"})
        others = [p for p in exc.problems if p.kind != "missing_node_type"]
        row.problem = str(others[0]) if others else ""
    return row


def shrink(prompt: dict[str, Any]) -> None:
    """Sizes, steps and text lengths cut to what the tiny demo models run in seconds on a CPU."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, cap in SMALL.items():
            if (
                isinstance(inputs.get(name), int)
                and not isinstance(inputs[name], bool)
                and inputs[name] > cap
            ):
                inputs[name] = cap
        for name, value in inputs.items():
            if isinstance(value, str) and len(value) > MAX_TEXT:
                inputs[name] = value[:MAX_TEXT]
        if isinstance(inputs.get("megapixels"), int | float) and inputs["megapixels"] > 0.02:
            # ResolutionSelector's floor is 0.1 MP (ComfyUI's too); the scaling nodes take less.
            floor = 0.1 if node["class_type"] == "ResolutionSelector" else 0.0
            inputs["megapixels"] = max(floor, 128 * 128 / 2**20)
        title = str(node.get("_meta", {}).get("title", "")).lower()
        if node["class_type"] == "PrimitiveInt" and isinstance(inputs.get("value"), int):
            if "step" in title:
                inputs["value"] = min(inputs["value"], SMALL["steps"])
            elif "width" in title or "height" in title:
                inputs["value"] = min(inputs["value"], SMALL["width"])


def llm_loaders(prompt: dict[str, Any], seeing: bool = False) -> set[str]:
    """Loaders whose output is TextGenerate's ``clip``: they name an LLM, not a text encoder
    (with ``seeing``, only those of a TextGenerate that is given an image: a vision LLM)."""
    return {
        str(node["inputs"]["clip"][0])
        for node in prompt.values()
        if node["class_type"] == "TextGenerate"
        and is_link(node["inputs"].get("clip"))
        and (not seeing or is_link(node["inputs"].get("image")))
    }


def is_qwen21_name(name: str) -> bool:
    return bool(QWEN21_NAME.search(name.lower()))


def map_files(row: Row, object_info: dict[str, Any], client: httpx.Client, person: bytes) -> None:
    """Model names to the closest file of the same loader's list (an LLM for TextGenerate's
    loader: CLIPLoader lists text encoders, then LLMs; the demo's vision-language LLM when that
    TextGenerate is given an image); LoadImage names uploaded."""
    answer = client.get("/models/text_encoders")
    encoders = set(answer.json()) if answer.status_code == 200 else set()
    for_llm, for_vision = llm_loaders(row.prompt), llm_loaders(row.prompt, seeing=True)
    for node_id, node in row.prompt.items():
        info = object_info.get(node["class_type"])
        for name, value in node["inputs"].items():
            if is_link(value) or not isinstance(value, str):
                continue
            if node["class_type"] == "LoadImage" and name == "image":
                client.post(
                    "/upload/image",
                    files={"image": (Path(value).name, person, "image/png")},
                    data={"overwrite": "true"},
                ).raise_for_status()
                node["inputs"][name] = Path(value).name
                continue
            if not value.lower().endswith(MODEL_SUFFIXES):
                continue
            specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})} if info else {}
            head = specs.get(name, [None])[0]
            choices = [c for c in head if isinstance(c, str)] if isinstance(head, list) else []
            if node_id in for_llm:
                choices = [c for c in choices if c not in encoders] or choices
            if node_id in for_vision:  # an LLM that sees images: the demo's, or 2.1's edit enhancer
                choices = [c for c in choices if c == DEMO_VL_LLM or "pe_i2i" in c] or choices
            # Qwen-Image 2.1's files stand in for 2.1's names only, and only for them.
            choices = [c for c in choices if is_qwen21_name(c) == is_qwen21_name(value)] or choices
            if value in choices:
                row.mapped.append(value)
            elif choices:
                best = max(choices, key=lambda c: difflib.SequenceMatcher(None, value, c).ratio())
                node["inputs"][name] = best
                row.mapped.append(f"{value} -> {best}")
            else:
                row.unmapped.append(value)


def run(row: Row, client: httpx.Client, timeout: float) -> None:
    """Queue through ComfyUI's API and follow the history to the end."""
    body = {
        "prompt": row.prompt,
        "client_id": "templates",
        "extra_data": {"extra_pnginfo": {"workflow": row.ui}},
    }
    answer = client.post("/prompt", json=body)
    if answer.status_code != 200:
        error = answer.json()
        nodes = error.get("node_errors") or {}
        first = next(iter(nodes.values()), {}).get("errors", [{}])[0] if nodes else error.get("error", {})
        row.ran, row.outcome = False, f"refused: {first.get('details') or first.get('message')}"[:160]
        return
    prompt_id = answer.json()["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = client.get(f"/history/{prompt_id}").json().get(prompt_id)
        if entry and entry["status"].get("completed") is not None:
            row.ran = entry["status"]["status_str"] == "success"
            errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            row.outcome = "ok" if row.ran else f"failed: {errors[0].get('exception_message', '')}"[:160]
            return
        time.sleep(0.2)
    client.post("/interrupt", json={"prompt_id": prompt_id})
    row.ran, row.outcome = False, f"timed out after {timeout:.0f} s"


def run_all(rows: list[Row], args: argparse.Namespace) -> None:
    """Demo models in every layout, one real server, every converted template queued on it."""
    with tempfile.TemporaryDirectory(prefix="genserve-templates-") as tmp:
        work = Path(tmp)
        models, images = work / "models", work / "images"
        started = time.perf_counter()
        demo.build_demo(models, images_dir=images)
        write_every_layout(models)
        print(f"demo models with every layout built in {time.perf_counter() - started:.1f} s")
        env = environment(models, data_root(work / "data"), args.threads) | {"GENSERVE_COMFY__PORT": "0"}
        with serve("server", env, work) as url, httpx.Client(base_url=f"{url}/comfy", timeout=120) as client:
            object_info = client.get("/object_info").json()
            person = (images / "person.png").read_bytes()
            for row in rows:
                if not row.converted:
                    continue
                if not args.full_size:
                    shrink(row.prompt)
                map_files(row, object_info, client, person)
                began = time.perf_counter()
                run(row, client, args.timeout)
                print(f"  {row.name}: {row.outcome} ({time.perf_counter() - began:.1f} s)", flush=True)


def report(rows: list[Row], ran: bool) -> None:
    print()
    print("| template | nodes | converted | validated | missing node types / first problem | models | ran |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        why = ", ".join(row.missing) or row.problem
        models = f"{len(row.mapped)} mapped, {len(row.unmapped)} not" if ran and row.converted else ""
        done = "" if row.ran is None else ("yes" if row.ran else "no")
        print(
            f"| {row.name} | {row.nodes} | {'yes' if row.converted else 'no'} | "
            f"{'yes' if row.validated else 'no'} | {why[:120]} | {models} | {done} |"
        )
    if ran:
        print("\nmodel names not mapped (no file of that kind among the demo models):")
        for row in rows:
            if row.unmapped:
                print(f"  {row.name}: {', '.join(sorted(set(row.unmapped)))}")
        print("\nruns that did not finish:")
        for row in rows:
            if row.ran is False:
                print(f"  {row.name}: {row.outcome}")
    total = len(rows)
    converted = sum(r.converted for r in rows)
    validated = sum(r.validated for r in rows)
    print(f"\nconverted {converted}/{total}, validated {validated}/{total}", end="")
    print(f", ran {sum(bool(r.ran) for r in rows)}/{total}" if ran else " (not run: --no-run)")
    print(
        f"ratio validated: {validated / total:.2f}"
        + (f", ran: {sum(bool(r.ran) for r in rows) / total:.2f}" if ran else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-run", action="store_true", help="convert and validate only (seconds)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N templates (by name)")
    parser.add_argument("--only", default="", help="only templates whose file name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one template may run (300)")
    parser.add_argument("--full-size", action="store_true", help="keep the templates' sizes and steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the server (default 2)")
    args = parser.parse_args(argv)
    rows = [check(path) for path in templates(args.limit, args.only)]
    if not args.no_run:
        run_all(rows, args)
    report(rows, not args.no_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
