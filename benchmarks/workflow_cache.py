"""What the native workflow runner's output cache saves when only the seed changes.

The runner keys each node's output by its class, its widget values and its ancestors' keys, so a
re-run with only KSampler's seed changed must reuse the loaders, text encoders and image encodes
and run only the sampler and what follows it. Target: the re-run takes at most half the time of a
cold run of the same workflow (ratio <= 0.5).

Part 1, ``--part cache``: for each demo workflow (``demo_workflows.py``), on the demo models, in
one process with a fresh runtime per workflow:

- **first run**, once, for information: it also pays the process's one-off costs (lazy imports,
  torch's first calls), so it is no fair baseline;
- **cold**: what ComfyUI's ``POST /free {"unload_models": true}`` leaves: the runner's cache
  emptied and every model unloaded, so every node computes and the loaders load from disk. The
  target is judged on this run: it is the run the cache exists to spare;
- **cold, models resident**, for information: the runner's cache emptied and the loaded VAE's
  encode cache too (``--keep-vae-cache`` keeps it), the models left loaded in the model manager
  (genserve's second cache), so only the node outputs are cold;
- **re-run**: the same graph with a new KSampler seed on the warm cache.

The three alternate (cold, resident, re-run, cold, ...) so machine noise hits them alike. The
seeds chain so every run really samples and the correctness checks come for free: cold i and
resident i use seed s+i, re-run i uses s+i+1, and cold i+1 uses that same seed again on an empty
cache. So each re-run must differ from the cold run before it (the seed had an effect), each cold
run must give the re-run before it pixel for pixel (cached encodings are the ones a cold run
computes), and each resident run must give its cold run's pixels. It prints the medians, the ratio
re-run/cold (median of the per-pair ratios), the time per node of both cold kinds, and the nodes
the re-runs ran and took from the cache (``execution_cached``). Exit status 1 when a check fails.

    .venv/bin/python benchmarks/workflow_cache.py [--workflow text-to-image image-edit] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pipeline_overhead import make_runtime  # benchmarks/ is on sys.path when run as a script

from genserve.app.runtime import Runtime
from genserve.models.demo import lipsync as lipsync_demo
from genserve.models.demo import pipeline as demo
from genserve.models.loaders.vae import ENCODE_CACHE_ENTRIES, LatentCache
from genserve.models.registry import ModelKind
from genserve.workflows.demo import CLOTH, DEMO_WORKFLOWS, PERSON, demo_workflow
from genserve.workflows.events import Executing, ExecutionCached, WorkflowEvent
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.runner import RunResult, WorkflowRunner

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".genserve-cache"
COMFY_MEGAPIXEL = 1024 * 1024  # ImageScaleToTotalPixels counts megapixels as ComfyUI does
FIRST_SEED = 42
BASE_SEED = 1000
TARGET = 0.5


def models_folder(work: Path) -> Path:
    """The test suite's cached demo models when current (same digest as tests/conftest.py), else a
    fresh build under ``work``: about 3 s, and the benchmark needs no earlier test run."""
    sources = Path(demo.__file__).read_bytes() + Path(lipsync_demo.__file__).read_bytes()
    cached = CACHE / f"demo-{hashlib.sha1(sources).hexdigest()[:12]}"
    if demo.demo_present(cached / "models") and (cached / "images" / PERSON).is_file():
        return cached / "models"
    demo.build_demo(work / "demo" / "models", images_dir=work / "demo" / "images")
    return work / "demo" / "models"


def sized(workflow: dict[str, Any], size: int) -> dict[str, Any]:
    """Set the output size: the empty latent's sides, or the scaled input picture's area."""
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptySD3LatentImage":
            inputs["width"] = inputs["height"] = size
        elif node["class_type"] == "ImageScaleToTotalPixels":
            inputs["megapixels"] = size * size / COMFY_MEGAPIXEL
    return workflow


def forget_vae_encodings(rt: Runtime) -> None:
    """Empty each loaded VAE's pixel-keyed encode cache, which would otherwise serve a cold run's
    VAE encodes from the previous run and make "cold" cheaper than running every node."""
    for stats in rt.models.loaded():
        if stats.kind == ModelKind.VAE:
            with rt.models.use(stats.kind, stats.name, count=False) as vae:
                vae.encodings = LatentCache(ENCODE_CACHE_ENTRIES)


@dataclass
class Figures:
    """One workflow's measurements and checks."""

    name: str
    first_ms: float = 0.0
    cold_ms: list[float] = field(default_factory=list)
    cold_nodes: dict[str, list[float]] = field(default_factory=dict)
    resident_ms: list[float] = field(default_factory=list)
    resident_nodes: dict[str, list[float]] = field(default_factory=dict)
    resident_equal: list[bool] = field(default_factory=list)
    rerun_ms: list[float] = field(default_factory=list)
    ran: set[tuple[str, ...]] = field(default_factory=set)
    cached: set[tuple[str, ...]] = field(default_factory=set)
    seed_changes: list[bool] = field(default_factory=list)
    same_seed_equal: list[bool] = field(default_factory=list)
    event_matches: bool = True
    output_size: str = ""


class Bench:
    """One demo workflow on one runtime: a runner and its resources, as build_workflow_executor
    makes them, and a timed run that returns the saved image's pixels."""

    def __init__(self, rt: Runtime, inputs: Path, name: str, size: int) -> None:
        self.rt = rt
        self.runner = WorkflowRunner(pipeline_registry(rt.models.registry, inputs))
        self.resources = PipelineResources.from_runtime(rt, input_dir=inputs)
        self.workflow = sized(demo_workflow(name), size)
        self.sampler = next(n for n in self.workflow.values() if n["class_type"] == "KSampler")
        self.classes = {node_id: node["class_type"] for node_id, node in self.workflow.items()}
        self.events: list[WorkflowEvent] = []
        self.stamps: list[tuple[str | None, float]] = []

    def run(self, seed: int) -> tuple[float, RunResult, np.ndarray]:
        self.sampler["inputs"]["seed"] = seed
        self.events, self.stamps = [], []
        started = time.perf_counter()
        result = self.runner.run(self.workflow, on_event=self.record, resources=self.resources)
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, result, self.pixels(result)

    def cold(self, seed: int) -> tuple[float, RunResult, np.ndarray]:
        """As after ``POST /free {"unload_models": true}``: nothing cached, no model loaded."""
        self.runner.cache.clear()
        for stats in self.rt.models.loaded():
            self.rt.models.unload(stats.kind, stats.name, timeout=60)
        return self.run(seed)

    def resident(self, seed: int, keep_vae_cache: bool) -> tuple[float, RunResult, np.ndarray]:
        """No node output cached, the models still loaded in the model manager."""
        self.runner.cache.clear()
        if not keep_vae_cache:
            forget_vae_encodings(self.rt)
        return self.run(seed)

    def record(self, event: WorkflowEvent) -> None:
        """Keep the events, and when each node started (the next ``executing`` ends it)."""
        self.events.append(event)
        if isinstance(event, Executing):
            self.stamps.append((event.node, time.perf_counter()))

    def node_ms(self) -> dict[str, float]:
        """The last run's time per node that ran, from one ``executing`` event to the next."""
        pairs = zip(self.stamps, self.stamps[1:], strict=False)
        return {node: (end - start) * 1000 for (node, start), (_, end) in pairs if node is not None}

    def pixels(self, result: RunResult) -> np.ndarray:
        """The image SaveImage wrote, as uint8 RGB: what a user gets back."""
        [saved] = [entry for ui in result.outputs.values() for entry in ui.get("images", [])]
        path = self.resources.sandbox.default_output_dir / saved["subfolder"] / saved["filename"]
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def cached_event(self) -> tuple[str, ...]:
        return next(e.nodes for e in self.events if isinstance(e, ExecutionCached))

    def label(self, node_ids: tuple[str, ...]) -> str:
        return ", ".join(f"{node_id} {self.classes[node_id]}" for node_id in node_ids) or "(none)"


def measure(name: str, models_dir: Path, data: Path, args: argparse.Namespace) -> tuple[Figures, Bench]:
    """First run, warm-up, then ``args.repeats`` interleaved cold / re-run pairs on a fresh runtime."""
    figures = Figures(name)
    with make_runtime(models_dir, data, args.size, args.device, args.threads) as rt:
        bench = Bench(rt, data / "inputs", name, args.size)
        figures.first_ms, _, image = bench.run(FIRST_SEED)
        figures.output_size = f"{image.shape[1]}x{image.shape[0]}"
        for index in range(args.warmup):
            bench.cold(FIRST_SEED + 2 * index + 1)
            bench.resident(FIRST_SEED + 2 * index + 1, args.keep_vae_cache)
            bench.run(FIRST_SEED + 2 * index + 2)
        previous: np.ndarray | None = None  # the last re-run's image, made with this cold run's seed
        for index in range(args.repeats):
            seed = BASE_SEED + index
            cold_ms, _, cold_image = bench.cold(seed)
            for node_id, ms in bench.node_ms().items():
                figures.cold_nodes.setdefault(node_id, []).append(ms)
            if previous is not None:
                figures.same_seed_equal.append(np.array_equal(previous, cold_image))
            resident_ms, _, resident_image = bench.resident(seed, args.keep_vae_cache)
            for node_id, ms in bench.node_ms().items():
                figures.resident_nodes.setdefault(node_id, []).append(ms)
            figures.resident_ms.append(resident_ms)
            figures.resident_equal.append(np.array_equal(cold_image, resident_image))
            rerun_ms, rerun, previous = bench.run(seed + 1)
            figures.seed_changes.append(not np.array_equal(cold_image, previous))
            figures.cold_ms.append(cold_ms)
            figures.rerun_ms.append(rerun_ms)
            figures.ran.add(rerun.executed)
            figures.cached.add(rerun.cached)
            figures.event_matches = figures.event_matches and bench.cached_event() == rerun.cached
    return figures, bench


def check(label: str, results: list[bool]) -> bool:
    passed = all(results) and bool(results)
    print(f"  check: {label}: {sum(results)}/{len(results)} {'ok' if passed else 'FAILED'}")
    return passed


def per_node_line(label: str, bench: Bench, nodes: dict[str, list[float]], rerun_nodes: set[str]) -> None:
    """One cold kind's median time per node, and the best ratio a cache could give against it."""
    per_node = {node_id: statistics.median(values) for node_id, values in nodes.items()}
    print(
        f"  {label}, median ms per node: "
        + ", ".join(f"{n} {bench.classes[n]} {ms:.1f}" for n, ms in per_node.items())
    )
    floor, total = sum(ms for n, ms in per_node.items() if n in rerun_nodes), sum(per_node.values())
    print(
        f"    the re-run's nodes take {floor:.1f} ms of it, the cached ones {total - floor:.1f} ms: "
        f"best possible ratio about {floor / total:.3f}"
    )


def report(figures: Figures, bench: Bench) -> tuple[bool, bool]:
    """Print one workflow's figures; returns (target met, every check passed)."""
    median = statistics.median
    cold, resident, rerun = median(figures.cold_ms), median(figures.resident_ms), median(figures.rerun_ms)
    # Judged per pair: a pair's runs sit side by side, so a slow spell of the machine shifts them
    # alike, where it can move one median and not the other (5 pairs are few on a busy machine).
    ratio = median(r / c for r, c in zip(figures.rerun_ms, figures.cold_ms, strict=True))
    ratio_resident = median(r / c for r, c in zip(figures.rerun_ms, figures.resident_ms, strict=True))
    met = ratio <= TARGET
    print(f"{figures.name}: output {figures.output_size}, {bench.sampler['inputs']['steps']} steps")
    print(f"  first run (process start-up included) {figures.first_ms:8.1f} ms")
    for label, value, runs in (
        ("cold (cache empty, no model loaded)", cold, figures.cold_ms),
        ("cold, models resident", resident, figures.resident_ms),
        ("re-run (new seed)", rerun, figures.rerun_ms),
    ):
        print(f"  {label + ', median':45s}{value:8.1f} ms   runs: {' '.join(f'{ms:.0f}' for ms in runs)}")
    for kind, found in (("ran", figures.ran), ("cached", figures.cached)):
        listed = " | ".join(bench.label(nodes) for nodes in sorted(found))
        print(f"  re-run {kind:6s} {listed}" + ("  (differs between re-runs)" if len(found) > 1 else ""))
    print(
        f"  ratio re-run/cold {ratio:.3f} (median of the per-pair ratios; of the medians {rerun / cold:.3f})"
        f"  target <= {TARGET}: {'met' if met else 'NOT met'}"
    )
    print(
        f"  ratio re-run/cold with the models resident {ratio_resident:.3f} (of the medians "
        f"{rerun / resident:.3f}; for information: what the node cache alone saves)"
    )
    # The floor no cache can beat: the re-run's own nodes, timed inside the cold runs.
    rerun_nodes = {node_id for nodes in figures.ran for node_id in nodes}
    per_node_line("cold", bench, figures.cold_nodes, rerun_nodes)
    per_node_line("cold, models resident", bench, figures.resident_nodes, rerun_nodes)
    ran_classes = {bench.classes[node_id] for nodes in figures.ran for node_id in nodes}
    passed = [
        check("a new seed changes the image", figures.seed_changes),
        check("the same seed on an empty cache gives identical pixels", figures.same_seed_equal),
        check("models resident or not, a cold run gives the same pixels", figures.resident_equal),
        check("execution_cached names the cached nodes", [figures.event_matches]),
        check("no loader or encoder re-ran", [ran_classes <= {"KSampler", "VAEDecode", "SaveImage"}]),
    ]
    return met, all(passed)


def workflow_cache(args: argparse.Namespace) -> int:
    """Part 1: every chosen workflow measured and reported; exit status 1 when a check fails."""
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp:
        models_dir, data = models_folder(Path(tmp)), Path(tmp) / "data"
        (data / "inputs").mkdir(parents=True)
        (data / "outputs").mkdir()
        for image in (PERSON, CLOTH):  # LoadImage reads them from ComfyUI's input folder
            (data / "inputs" / image).write_bytes((models_dir.parent / "images" / image).read_bytes())
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
        print(
            f"{args.repeats} interleaved cold / re-run pairs after {args.warmup} warm-up pair(s); "
            f"VAE encode cache {'kept' if args.keep_vae_cache else 'emptied'} before each cold run"
        )
        outcomes = []
        for name in args.workflow:
            figures, bench = measure(name, models_dir, data, args)
            outcomes.append(report(figures, bench))
    names = [name for name, (met, _) in zip(args.workflow, outcomes, strict=True) if not met]
    print(f"target ratio <= {TARGET}: " + (f"NOT met by {', '.join(names)}" if names else "met by all"))
    return 0 if all(ok for _, ok in outcomes) else 1


# The parts --part can run; part 2 (queue throughput through the bridge) will join as "queue".
PARTS: dict[str, Callable[[argparse.Namespace], int]] = {"cache": workflow_cache}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=sorted(PARTS), default="cache", help="what to measure")
    parser.add_argument(
        "--workflow",
        nargs="+",
        choices=DEMO_WORKFLOWS,
        default=["text-to-image", "image-edit"],
        help="demo workflows to measure (default: text-to-image image-edit)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed cold / re-run pairs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pairs after the first run (default 1)")
    parser.add_argument("--size", type=int, default=128, help="output side in pixels, a multiple of 32")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else cpu), cpu or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--keep-vae-cache",
        action="store_true",
        help="leave the VAE's encode cache warm for cold runs (cold then skips the VAE encodes)",
    )
    args = parser.parse_args(argv)
    if args.size % 32 or args.size < 64:
        parser.error("--size must be a multiple of 32, at least 64")
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (the same-seed check compares consecutive pairs)")
    return PARTS[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
