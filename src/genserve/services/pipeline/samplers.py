"""Sigma schedules and samplers for flow-matching models, with ComfyUI's names and meanings.

The model's noise level is a sigma in [0, 1] (x = (1 - sigma) * x0 + sigma * noise). The
AuraFlow shift maps model time t to ``sigma = shift * t / (1 + (shift - 1) * t)``; with shift 3
and the ``simple`` schedule, 4 steps give sigmas 1.0, 0.9, 0.75, 0.5, 0.0, as ComfyUI's
ModelSamplingAuraFlow(shift=3) + KSampler(simple) does. Samplers work in k-diffusion form: the
model function returns the denoised estimate x0 for (x, sigma).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int], None]

TIMESTEPS = 1000  # the model's discrete time grid, as in ComfyUI's flow model sampling


def shift_sigma(t: float | torch.Tensor, shift: float) -> float | torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def _table(shift: float) -> torch.Tensor:
    t = torch.arange(1, TIMESTEPS + 1, dtype=torch.float64) / TIMESTEPS
    return shift_sigma(t, shift)


def _simple(steps: int, shift: float) -> list[float]:
    table = _table(shift)
    stride = len(table) / steps
    return [float(table[-(1 + int(i * stride))]) for i in range(steps)]


def _uniform_time(steps: int, shift: float, drop_last: bool) -> list[float]:
    t = torch.linspace(1.0, 1.0 / TIMESTEPS, steps + 1 if drop_last else steps, dtype=torch.float64)
    if drop_last:
        t = t[:-1]
    return [float(shift_sigma(v, shift)) for v in t]


def _karras(steps: int, shift: float, rho: float = 7.0) -> list[float]:
    sigma_min, sigma_max = float(_table(shift)[0]), 1.0
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [float(v) for v in (high + ramp * (low - high)) ** rho]


def _exponential(steps: int, shift: float) -> list[float]:
    sigma_min = float(_table(shift)[0])
    logs = torch.linspace(math.log(1.0), math.log(sigma_min), steps, dtype=torch.float64)
    return [float(v) for v in logs.exp()]


SCHEDULERS: dict[str, Callable[[int, float], list[float]]] = {
    "simple": _simple,
    "normal": lambda steps, shift: _uniform_time(steps, shift, drop_last=False),
    "sgm_uniform": lambda steps, shift: _uniform_time(steps, shift, drop_last=True),
    "karras": _karras,
    "exponential": _exponential,
}


def sigma_schedule(scheduler: str, steps: int, shift: float, denoise: float = 1.0) -> torch.Tensor:
    """``steps + 1`` sigmas ending in 0; denoise < 1 keeps the last steps of a longer schedule."""
    total = steps if denoise >= 1.0 else max(steps, int(steps / denoise))
    sigmas = [*SCHEDULERS[scheduler](total, shift), 0.0]
    return torch.tensor(sigmas[-(steps + 1) :], dtype=torch.float32)


def _euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Callable, callback: StepCallback):
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        derivative = (x - denoised) / sigma
        x = x + derivative * (sigma_next - sigma)
        callback(i + 1, steps)
    return x


def _euler_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Callable, callback: StepCallback
):
    """Rectified-flow ancestral Euler (eta 1): step down past sigma_next, then re-noise up to it."""
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_down = sigma_next * sigma_next / sigma
            alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
            renoise = max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0) ** 0.5
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * denoised
            x = (alpha_next / alpha_down) * x + noise(x) * renoise
        callback(i + 1, steps)
    return x


def _heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Callable, callback: StepCallback):
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        derivative = (x - model(x, sigma)) / sigma
        dt = sigma_next - sigma
        x_euler = x + derivative * dt
        if sigma_next == 0:
            x = x_euler
        else:
            derivative_next = (x_euler - model(x_euler, sigma_next)) / sigma_next
            x = x + (derivative + derivative_next) / 2 * dt
        callback(i + 1, steps)
    return x


def _dpmpp_2m(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Callable, callback: StepCallback
):
    steps = len(sigmas) - 1
    previous = None
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_next)
            h = t_next - t
            if previous is None or i == 0:
                estimate = denoised
            else:
                h_last = t - (-math.log(float(sigmas[i - 1])))
                r = h_last / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
        previous = denoised
        callback(i + 1, steps)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": _euler,
    "euler_ancestral": _euler_ancestral,
    "heun": _heun,
    "dpmpp_2m": _dpmpp_2m,
}


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float) -> torch.Tensor:
    if uncond is None:
        return cond
    return uncond + cfg * (cond - uncond)


def cfg_norm(
    denoised: torch.Tensor, cond: torch.Tensor, strength: float, channel_dim: int = -1
) -> torch.Tensor:
    """ComfyUI's CFGNorm: rescale the guided x0 so its per-pixel norm never exceeds the conditional
    one's, then multiply by ``strength`` (1 leaves an unguided prediction unchanged)."""
    cond_norm = torch.linalg.vector_norm(cond, dim=channel_dim, keepdim=True)
    pred_norm = torch.linalg.vector_norm(denoised, dim=channel_dim, keepdim=True)
    scale = (cond_norm / (pred_norm + 1e-8)).clamp(min=0.0, max=1.0)
    return denoised * scale * strength
