"""The real model's size on a GPU, with no download: load time, memory per mode, step speed.

Builds the full-size Qwen-Image-Edit transformer (60 blocks, 24 heads of 128, 20.4B parameters)
with random weights straight on the device in bf16, writes it as a ComfyUI fp8 single file
(``*_fp8_e4m3fn.safetensors`` with the ``model.diffusion_model.`` prefix), then through genserve's
own loader and model manager measures:

1. the load time from that file (fp8 -> bf16 on the device, tensor by tensor);
2. the peak device memory of a sampling step per memory mode (resident, offloaded, streamed), and
   of the automatic mode under a 24 GB pool budget (it must fit under 24 GB);
3. seconds per sampling step at 1024x1024 (with one 1024x1024 reference latent, as the edit
   pipeline has) through genserve's sampling function against the same transformer called in a
   bare diffusers-style Euler loop, interleaved: the ratio genserve/bare (target <= 1.03).

``--smoke`` runs the same code on a tiny config on the CPU in seconds (the test suite does), so
the script stays runnable; its figures mean nothing. One GPU run takes a few minutes:

    .venv/bin/python benchmarks/gpu_full_size.py [--smoke] [--steps 3] [--work /tmp/gpu-bench]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights

from genserve.app.runtime import memory_modes
from genserve.config import PipelineSettings
from genserve.models.kinds import ModelKind
from genserve.models.loaders import default_loaders
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelRegistry
from genserve.services.base import RunContext
from genserve.services.pipeline import sampling
from genserve.services.pipeline.imaging import pack
from genserve.services.pipeline.text_encoder import Encoding

FULL = {"num_layers": 60, "num_attention_heads": 24, "joint_attention_dim": 3584}
SMOKE = {"num_layers": 2, "num_attention_heads": 1, "joint_attention_dim": 128}
NAME = "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
GIB = 1024**3


def build_random(config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The transformer with random bf16 weights allocated on ``device`` directly (never in fp32)."""
    from diffusers import QwenImageTransformer2DModel

    with init_empty_weights():
        model = QwenImageTransformer2DModel(**config)
    generator = torch.Generator(device=device).manual_seed(0)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            data = torch.empty(param.shape, dtype=torch.bfloat16, device=device)
            data.normal_(0.0, 0.02, generator=generator) if data.dim() > 1 else data.fill_(
                1.0 if "norm" in name else 0.0
            )
            module._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
    return model.eval()


def write_comfy_fp8(model: torch.nn.Module, path: Path) -> float:
    """The ComfyUI layout: prefixed keys, matrices cast to fp8 e4m3fn (no scales); returns GB."""
    from safetensors.torch import save_file

    state = {}
    for key, value in model.state_dict().items():
        stored = value.to(torch.float8_e4m3fn) if value.dim() == 2 else value
        state[f"model.diffusion_model.{key}"] = stored.contiguous().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path.stat().st_size / 1e9


def conditions(
    device: torch.device, dtype: torch.dtype, side: int, text_dim: int
) -> tuple[Encoding, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latent_side = side // 8
    embeds = torch.randn(1, 120, text_dim, generator=generator).to(device, dtype)
    reference = torch.randn(1, 16, 1, latent_side, latent_side, generator=generator)
    encoding = Encoding(embeds, torch.ones(1, 120, dtype=torch.long, device=device), [reference], {})
    latent = torch.randn(1, 16, 1, latent_side, latent_side, generator=generator)
    return encoding, latent


def settings(steps: int) -> dict[str, Any]:
    base = PipelineSettings()
    return {"cfg": 1.0, "scheduler": "simple", "steps": steps, "shift": base.shift, "denoise": 1.0,
            "seed": 0, "cfg_norm_strength": 1.0, "sampler_name": "euler", "lora_strength": 1.0}  # fmt: skip


def genserve_steps(model: Any, encoding: Encoding, latent: torch.Tensor, steps: int) -> float:
    ctx = RunContext(models=None, sandbox=None, defaults=PipelineSettings())  # type: ignore[arg-type]
    started = time.perf_counter()
    sampling.sample(model, None, encoding, None, latent, settings(steps), ctx)
    _sync(model.device)
    return (time.perf_counter() - started) / steps


def bare_steps(transformer: torch.nn.Module, encoding: Encoding, latent: torch.Tensor, steps: int) -> float:
    """The same transformer in a plain Euler flow-matching loop, as diffusers' pipeline runs it."""
    device, dtype = next(transformer.parameters()).device, torch.bfloat16
    _, _, _, height, width = latent.shape
    x = pack(torch.randn(latent.shape)).to(device, dtype)
    reference = pack(encoding.reference_latents[0]).to(device, dtype)
    shapes = [[(1, height // 2, width // 2), (1, height // 2, width // 2)]]
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(steps):
            out = transformer(hidden_states=torch.cat([x, reference], dim=1),
                              timestep=torch.full((1,), float(sigmas[i]), device=device, dtype=dtype),
                              encoder_hidden_states=encoding.prompt_embeds, encoder_hidden_states_mask=None,
                              img_shapes=shapes, return_dict=False)[0][:, : x.shape[1]]  # fmt: skip
            x = x + (sigmas[i + 1] - sigmas[i]) * out
    _sync(device)
    return (time.perf_counter() - started) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def manager(root: Path, device: torch.device, mode: str, budget_gb: float | None = None) -> ModelManager:
    budget = {str(device): int(budget_gb * GIB)} if budget_gb else {}
    return ModelManager(ModelRegistry(root), default_loaders(models_root=root), default_device=str(device),
                        dtype="bfloat16", memory_budget_bytes=budget,
                        memory_modes=memory_modes("auto", {"diffusion_models": mode}))  # fmt: skip


def run(args: argparse.Namespace) -> int:
    device = torch.device("cpu" if args.smoke else "cuda")
    config = SMOKE if args.smoke else FULL
    side = 64 if args.smoke else 1024
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    root = work / "models"
    built = build_random(config, device)
    params = sum(p.numel() for p in built.parameters()) / 1e9
    gb = write_comfy_fp8(built, root / "diffusion_models" / NAME)
    del built
    reset_peak(device)
    print(f"device {device}; transformer {params:.2f}B parameters; ComfyUI fp8 file {gb:.2f} GB")
    encoding, latent = conditions(device, torch.bfloat16, side, config["joint_attention_dim"])
    results: dict[str, dict[str, float]] = {}
    for mode, budget in (("resident", None), ("offloaded", None), ("streamed", None), ("auto", 24.0)):
        reset_peak(device)
        models = manager(root, device, mode, budget if not args.smoke else None)
        started = time.perf_counter()
        stats = models.load(ModelKind.DIFFUSION, NAME)
        load_s = time.perf_counter() - started
        with models.use(ModelKind.DIFFUSION, NAME) as model:
            step = genserve_steps(model, encoding, latent, args.steps)
        label = f"{mode}{' (24 GB budget)' if budget and not args.smoke else ''}"
        results[label] = {
            "load_s": load_s,
            "step_s": step,
            "peak_gb": peak_gb(device),
            "mode": stats.memory_mode,
        }
        accounted = stats.memory_bytes / GIB
        print(f"  {label:<24} got {stats.memory_mode:<9} load {load_s:6.1f} s  step {step:6.2f} s  "
              f"peak {results[label]['peak_gb']:6.1f} GiB  accounted {accounted:6.2f} GiB")  # fmt: skip
        models.close()
    ratio = compare(root, device, encoding, latent, args)
    print(f"sampling step genserve / bare loop (resident, median of {args.pairs} pairs): {ratio:.3f}"
          " (target <= 1.03)")  # fmt: skip
    auto = results.get("auto (24 GB budget)")
    if auto is not None:
        print(f"auto under a 24 GB budget: {auto['mode']}, peak {auto['peak_gb']:.1f} GiB (target < 24)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def compare(
    root: Path, device: torch.device, encoding: Encoding, latent: torch.Tensor, args: argparse.Namespace
) -> float:
    models = manager(root, device, "resident")
    ratios = []
    with models.use(ModelKind.DIFFUSION, NAME) as model:
        genserve_steps(model, encoding, latent, 1)  # warm-up (kernels, allocator)
        for _ in range(args.pairs):
            ours = genserve_steps(model, encoding, latent, args.steps)
            bare = bare_steps(model.transformer, encoding, latent, args.steps)
            ratios.append(ours / bare)
    models.close()
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny config on the CPU (figures mean nothing)"
    )
    parser.add_argument("--steps", type=int, default=3, help="sampling steps per timed run")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved genserve/bare pairs")
    parser.add_argument("--work", default=None, help="where to write the file (kept when given)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
