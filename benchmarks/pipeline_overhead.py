"""What genserve's split pipeline costs over diffusers' own pipeline on the same models.

Measures in one process, with interleaved runs (A, B, A, B, ...):

A. genserve's split pipeline as production runs it: latent_encoder, text_encoder, sampling and
   decoding, each called through ``runtime.engine.run_sync``, each writing its file and the next
   one reading it back.
B. diffusers' ``QwenImageEditPlusPipeline`` called directly on the very same loaded model
   objects, with the same inputs, seed, output size and reference sizes, saving its image too.

Prints the medians of A and B, the median of the per-pair ratios A/B (target <= 1.15) and, for
each of A's services, the median wall time around ``run_sync`` next to the model compute time the
service reports in its response (the rest is file I/O, image decoding and resizing, validation
and the engine's thread hop). ``--profile`` adds a cProfile of A's services, taken on the engine's
worker thread where they run. The demo models (tiny, random weights, real formats) are built
into a temporary folder, or reused from ``.genserve-cache/`` when the test suite built them.

    .venv/bin/python benchmarks/pipeline_overhead.py [--runs 15] [--size 128] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genserve.app.runtime import Runtime, build_runtime
from genserve.config import load_settings
from genserve.engine.engine import Engine
from genserve.models.demo import pipeline as demo

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".genserve-cache"
PROMPT = "by using the green masked area, put the cloth on the person"
SEED = 42
STEPS = 4
SERVICES = ("latent_encoder", "text_encoder", "sampling", "decoding")
# The model compute each service reports in its response: (service, key, what it is, getter).
COMPUTE: list[tuple[str, str, str, Callable[[Any], Any]]] = [
    ("latent_encoder", "encode_ms", "VAE encode of image1", lambda r: r.metadata.get("encode_ms")),
    (
        "text_encoder",
        "reference_encode_ms",
        "VAE encode of the references",
        lambda r: r.metadata.get("timings", {}).get("reference_encode_ms"),
    ),
    (
        "text_encoder",
        "text_encode_ms",
        "text encode, positive + negative",
        lambda r: r.metadata.get("timings", {}).get("text_encode_ms"),
    ),
    ("sampling", "sample_ms", "sampling", lambda r: r.sampling_metadata.get("sample_ms")),
    ("decoding", "decode_ms", "VAE decode", lambda r: r.metadata.get("decode_ms")),
]


def models_folder(work: Path) -> Path:
    """The test suite's cached demo models when current, else a fresh build under ``work``."""
    digest = hashlib.sha1(Path(demo.__file__).read_bytes()).hexdigest()[:12]
    cached = CACHE / f"demo-{digest}"
    if demo.demo_present(cached / "models") and (cached / "images" / "person.png").is_file():
        return cached / "models"
    demo.build_demo(work / "demo" / "models", images_dir=work / "demo" / "images")
    return work / "demo" / "models"


def prepare_inputs(images: Path, inputs: Path, size: int) -> tuple[Path, Path]:
    """image1: the demo person padded to a square of 2 x size, so its latent is size x size."""
    inputs.mkdir(parents=True, exist_ok=True)
    with Image.open(images / "person.png") as person:
        side = max(person.size)
        square = Image.new("RGB", (side, side), person.getpixel((0, 0)))
        square.paste(person, ((side - person.width) // 2, (side - person.height) // 2))
    image1 = inputs / "person.png"
    square.resize((2 * size, 2 * size), Image.Resampling.LANCZOS).save(image1)
    image2 = inputs / "cloth.png"
    shutil.copy(images / "cloth.png", image2)
    return image1, image2


def fresh_image(image1: Path, index: int) -> Path:
    """A copy of an input with a corner patch changed, so no run can reuse an earlier run's VAE encode.

    genserve caches VAE encodes by their pixels: inside one request that removes the second
    encode of image1 (latent + reference), which is real; across runs of the same image it
    would flatter A, since B encodes every time.
    """
    with Image.open(image1) as image:
        variant = image.convert("RGB")
    patch = np.random.default_rng(index).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    variant.paste(Image.fromarray(patch), (0, 0))  # survives the downscale, unlike a single pixel
    path = image1.with_name(f"{image1.stem}_{index}{image1.suffix}")
    variant.save(path)
    return path


def make_runtime(models_dir: Path, data: Path, size: int, device: str = "auto", threads: int = 0) -> Runtime:
    mp = size * size / 1_000_000
    environ = {
        "GENSERVE_MODELS__DEFAULT_DEVICE": device,
        "GENSERVE_ENGINE__TORCH_THREADS": str(threads),
        "GENSERVE_MODELS__DIR": str(models_dir),
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data}]",
        "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data / 'outputs'}]",
        "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data / "outputs"),
        "GENSERVE_PIPELINE__MEGAPIXELS": str(mp),
        "GENSERVE_PIPELINE__VAE_REFERENCE_MEGAPIXELS": str(mp),
        "GENSERVE_PIPELINE__VISION_REFERENCE_MEGAPIXELS": str((size // 2) ** 2 / 1_000_000),
        "GENSERVE_PIPELINE__OUTPUT_FORMAT": "png",
        "GENSERVE_LOGGING__LEVEL": "WARNING",  # one log line per request would clutter the report
    }
    return build_runtime(load_settings(environ=environ))


class SplitPipeline:
    """A: the four services through the engine, files in between, as in production."""

    def __init__(self, engine: Engine, image1: Path, image2: Path) -> None:
        self.engine = engine
        self.image1 = str(image1)
        self.image2 = str(image2)
        self.wall: dict[str, float] = {}
        self.responses: dict[str, Any] = {}
        self.scaled_size: tuple[int, int] | None = None

    def _call(self, service: str, request: dict[str, Any]) -> Any:
        started = time.perf_counter()
        response = self.engine.run_sync(service, request)
        self.wall[service] = (time.perf_counter() - started) * 1000
        self.responses[service] = response
        return response

    def compute_ms(self) -> dict[tuple[str, str], float]:
        """The compute times the last run's responses report; keys they lack are skipped."""
        found = {}
        for service, key, _, get in COMPUTE:
            value = get(self.responses[service])
            if isinstance(value, int | float):
                found[(service, key)] = float(value)
        return found

    def __call__(self, seed: int) -> Path:
        latent = self._call("latent_encoder", {"image_path": self.image1})
        encoding = self._call(
            "text_encoder", {"image1_path": self.image1, "image2_path": self.image2, "prompt": PROMPT}
        )
        sampled = self._call(
            "sampling",
            {
                "positive_encoding_file": encoding.positive_encoding_file,
                "negative_encoding_file": encoding.negative_encoding_file,
                "latent_file": latent.latent_file_path,
                "lora_model_name": "",
                "sampling_params": {
                    "seed": seed,
                    "steps": STEPS,
                    "cfg": 1.0,
                    "sampler_name": "euler",
                    "scheduler": "simple",
                },
            },
        )
        decoded = self._call("decoding", {"latent_file": sampled.sampled_latent_file, "output_format": "png"})
        width, height = latent.metadata["scaled_size"]
        self.scaled_size = (width, height)
        return Path(decoded.image_file_path)


class DiffusersPipeline:
    """B: QwenImageEditPlusPipeline on the runtime's own loaded models, saving a PNG."""

    def __init__(self, rt: Runtime, stack: ExitStack, image1: Path, image2: Path, out: Path) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline

        defaults = rt.settings.pipeline
        # Pinned for the whole benchmark: the same objects the services use, never reloaded.
        vae = stack.enter_context(rt.models.use("vae", defaults.vae_model_name))
        text_encoder = stack.enter_context(rt.models.use("text_encoders", defaults.clip_model_name))
        diffusion = stack.enter_context(rt.models.use("diffusion_models", defaults.unet_model_name))
        self.pipe = QwenImageEditPlusPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=defaults.shift, use_dynamic_shifting=False),
            vae=vae.module,
            text_encoder=text_encoder.model,
            tokenizer=text_encoder.processor.tokenizer,
            processor=text_encoder.processor,
            transformer=diffusion.transformer,
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.image1, self.image2, self.out = image1, image2, out
        self.count = 0

    def __call__(self, seed: int, width: int, height: int) -> Path:
        images = [Image.open(path).convert("RGB") for path in (self.image1, self.image2)]
        image = self.pipe(
            image=images,
            prompt=PROMPT,
            true_cfg_scale=1.0,
            height=height,
            width=width,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        self.count += 1
        path = self.out / f"diffusers_{self.count}.png"
        image.save(path)
        return path


@contextmanager
def diffusers_reference_sizes(size: int) -> Iterator[None]:
    """diffusers fixes the reference areas as module constants: match genserve's settings, then restore."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus

    saved = edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE
    edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = size * size, (size // 2) ** 2
    try:
        yield
    finally:
        edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = saved


def profiling_engine(rt: Runtime, profiler: cProfile.Profile) -> Engine:
    """An engine like the runtime's whose services run under ``profiler`` on the worker thread.

    cProfile sees only the thread it is enabled on, and the services run on the engine's thread.
    """

    def wrap(service: Any) -> Any:
        def run(request: Any, ctx: Any) -> Any:
            profiler.enable()
            try:
                return service.run(request, ctx)
            finally:
                profiler.disable()

        return dataclasses.replace(service, run=run)

    services = {name: wrap(rt.engine.service(name)) for name in SERVICES}
    return Engine(rt.models, rt.sandbox, rt.settings.pipeline, services=services, devices=rt.engine.devices)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def max_pixel_diff(a: Path, b: Path) -> int:
    with Image.open(a) as first, Image.open(b) as second:
        x = np.asarray(first.convert("RGB"), dtype=np.int16)
        y = np.asarray(second.convert("RGB"), dtype=np.int16)
    return int(np.abs(x - y).max()) if x.shape == y.shape else -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="timed A/B pairs (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each first (default 2)")
    parser.add_argument("--size", type=int, default=128, help="output side in pixels, a multiple of 32")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else cpu), cpu or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--profile", action="store_true", help="then cProfile A's services (untimed runs) and print the top"
    )
    args = parser.parse_args(argv)
    if args.size % 32 or args.size < 64:
        parser.error("--size must be a multiple of 32, at least 64")

    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        models_dir = models_folder(work)
        data = work / "data"
        (data / "outputs").mkdir(parents=True)
        image1, image2 = prepare_inputs(models_dir.parent / "images", data / "inputs", args.size)
        rt = stack.enter_context(make_runtime(models_dir, data, args.size, args.device, args.threads))
        stack.enter_context(diffusers_reference_sizes(args.size))
        split = SplitPipeline(rt.engine, image1, image2)
        split(SEED)  # loads the models through the manager
        assert split.scaled_size is not None
        width, height = split.scaled_size
        direct = DiffusersPipeline(rt, stack, image1, image2, data / "outputs")
        device, dtype = direct.pipe.transformer.device, direct.pipe.transformer.dtype

        for _ in range(args.warmup):
            split(SEED)
            direct(SEED, width, height)
        diff = max_pixel_diff(split(SEED), direct(SEED, width, height))

        a_ms: list[float] = []
        b_ms: list[float] = []
        wall: dict[str, list[float]] = {name: [] for name in SERVICES}
        compute: dict[tuple[str, str], list[float]] = {}
        for index in range(args.runs):
            split.image1, split.image2 = str(fresh_image(image1, index)), str(fresh_image(image2, index))
            direct.image1, direct.image2 = Path(split.image1), Path(split.image2)
            a, _ = timed(lambda: split(SEED))
            b, _ = timed(lambda: direct(SEED, width, height))
            a_ms.append(a)
            b_ms.append(b)
            for name in SERVICES:
                wall[name].append(split.wall[name])
            for key, value in split.compute_ms().items():
                compute.setdefault(key, []).append(value)

        profile_text = ""
        if args.profile:
            profiler = cProfile.Profile()
            profiled = SplitPipeline(profiling_engine(rt, profiler), image1, image2)
            try:
                for _ in range(args.runs):
                    profiled(SEED)
            finally:
                profiled.engine.close()
            out = io.StringIO()
            out.write(f"cProfile of A's services over {args.runs} runs (divide the times by the runs)\n")
            stats = pstats.Stats(profiler, stream=out)
            # genserve's own code and the I/O around the models: where overhead outside compute lives.
            stats.sort_stats("cumulative").print_stats(r"genserve/|fsync|serialization\.py|PIL/Image\.py", 45)
            stats.sort_stats("tottime").print_stats(20)
            profile_text = out.getvalue().replace(str(REPO) + "/", "")

    median = statistics.median
    median_a, median_b = median(a_ms), median(b_ms)
    ratio = median(x / y for x, y in zip(a_ms, b_ms, strict=True))
    print(
        f"torch {torch.__version__} on {device} ({dtype}), {torch.get_num_threads()} CPU threads; "
        f"output {width}x{height}"
    )
    print(f"reference sizes: VAE {args.size}x{args.size} area, vision {args.size // 2}x{args.size // 2} area")
    print(f"runs: {args.runs} timed pairs after {args.warmup} warm-up runs each")
    print(f"max pixel difference A vs B (same seed): {diff}")
    print(f"A  genserve split pipeline   median {median_a:8.1f} ms")
    print(f"B  diffusers pipeline        median {median_b:8.1f} ms")
    print(f"median ratio A/B: {ratio:.3f}  (target <= 1.15)")
    print("A per service, median ms: wall (around run_sync) = compute (reported) + outside compute")
    for name in SERVICES:
        parts = [median(v) for (service, _), v in compute.items() if service == name]
        reported = sum(parts) if parts else float("nan")
        outside = median(wall[name]) - reported
        print(f"   {name:16s} {median(wall[name]):8.1f} = {reported:8.1f} + {outside:6.1f}")
    print("A compute, median ms (what the services report):")
    for service, key, label, _ in COMPUTE:
        if (service, key) in compute:
            print(f"   {service:16s} {key:20s} {median(compute[(service, key)]):8.1f}  {label}")
    if profile_text:
        print(profile_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
