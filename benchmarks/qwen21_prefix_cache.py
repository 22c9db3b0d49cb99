"""Qwen-Image 2.1's prefix cache: sampling steps with the prompt and references' keys and values
computed once (QwenImage21Cache device auto) against recomputed every step (device off).

A random-weight 2.1 transformer (the real architecture at a reduced width and depth) samples an
edit: a prompt of ``--text`` tokens, ``--refs`` reference images and the target, all at
``--side`` x ``--side`` latent pixels (64 is a 1024 px image), for ``--steps`` steps, both ways in
one run, alternating. It prints the seconds of each and the ratio off / cached, and checks the
results agree.

    .venv/bin/python benchmarks/qwen21_prefix_cache.py [--side 32] [--refs 1] [--text 200]
        [--steps 8] [--layers 4] [--width 512] [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from genserve.models.arch.prefix_cache import CacheOptions, make_cache
from genserve.models.arch.qwen21_transformer import Qwen21Config, Qwen21Transformer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=32, help="latent side of the target and references")
    parser.add_argument("--refs", type=int, default=1, help="reference images")
    parser.add_argument("--text", type=int, default=200, help="prompt tokens")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=512, help="model width (heads of 128)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = Qwen21Config(
        num_layers=args.layers,
        num_attention_heads=args.width // 128,
        context_in_dim=args.width,
        mlp_hidden_dim=3 * args.width,
    )
    torch.manual_seed(0)
    model = Qwen21Transformer(config).to(device, dtype).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 64, args.side, args.side, generator=g).to(device, dtype)
    context = torch.randn(1, args.text, args.width, generator=g).to(device, dtype)
    refs = [torch.randn(1, 64, args.side, args.side, generator=g).to(device, dtype) for _ in range(args.refs)]
    slots = [args.text // 2] * args.refs
    sigmas = torch.linspace(1.0, 0.0, args.steps + 1)[:-1]

    def run(device_option: str) -> tuple[float, torch.Tensor]:
        cache = make_cache(CacheOptions(device=device_option), device)
        started = time.perf_counter()
        out = x
        with torch.no_grad():
            for sigma in sigmas:
                out = model(
                    x, torch.full((1,), float(sigma), device=device, dtype=dtype), context, refs, slots, cache
                )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out

    timings: dict[str, list[float]] = {"off": [], "auto": []}
    outputs = {}
    for _ in range(args.rounds):
        for option in ("off", "auto"):
            seconds, outputs[option] = run(option)
            timings[option].append(seconds)
    off, cached = min(timings["off"]), min(timings["auto"])
    prefix = args.text + args.refs * args.side * args.side
    difference = float((outputs["off"] - outputs["auto"]).abs().max())
    print(
        f"device {device}, {args.layers} layers of width {args.width}, prefix {prefix} tokens, "
        f"target {args.side * args.side}, {args.steps} steps"
    )
    print(
        f"recomputed every step: {off:.3f} s; prefix cached: {cached:.3f} s; max difference {difference:.2e}"
    )
    print(f"ratio off / cached: {off / cached:.2f}")


if __name__ == "__main__":
    main()
