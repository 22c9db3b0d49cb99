"""What flows along the links of the pipeline node types, and what those nodes borrow to run.

ComfyUI passes loaded model objects along links; here MODEL, CLIP and VAE values only *name* a
model (plus the LoRAs, shift and CFGNorm strength a MODEL carries), so a value kept in the output
cache never pins a model in memory: the node that needs the weights borrows them from the
ModelManager for just the time it runs, and the manager stays free to evict between runs.

- MODEL: ``ModelRef``; CLIP: ``ClipRef``; VAE: ``VaeRef``; CONTROL_NET: ``ControlNetRef``;
  MODEL_PATCH: ``ModelPatchRef``.
- CONDITIONING: ``text_encoder.Encoding`` (embeddings, mask, reference latents), as the services use.
- LATENT: ``{"samples": tensor}`` with genserve's 5-D Qwen-Image latent ``[B, 16, 1, H/8, W/8]``,
  normalised as the VAE service stores it (ComfyUI's own dict shape, genserve's tensor layout).
- IMAGE: float tensor ``[B, H, W, 3]`` in 0..1, as ComfyUI; MASK: ``[B, H, W]`` in 0..1.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from genserve.config import PipelineSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import ProgressEvent, RunContext
from genserve.services.pipeline.control import BlockPatch
from genserve.storage.paths import Sandbox
from genserve.workflows.nodes.base import NodeContext

log = logging.getLogger("genserve.workflows.nodes")

if TYPE_CHECKING:
    from genserve.engine.runtime import Runtime
    from genserve.models.manager import ModelManager


QWEN_IMAGE = "qwen-image"
QWEN21 = "qwen-image-2.1"


@dataclass(frozen=True)
class ModelRef:
    """A diffusion model by name, with what the model-patching nodes add to it.

    ``loras`` holds (LoRA name, strength) in chain order, one per LoraLoaderModelOnly node: all
    apply at once, as ComfyUI patches each on top of the last. ``shift`` and ``cfg_norm_strength``
    None mean the pipeline defaults. genserve's sampler always applies CFGNorm (at the default
    strength when no CFGNorm node set one); with cfg 1 it is the identity, so only guided runs see
    the difference from ComfyUI without a CFGNorm node.
    """

    unet_name: str
    loras: tuple[tuple[str, float], ...] = ()
    shift: float | None = None
    cfg_norm_strength: float | None = None
    patches: tuple[BlockPatch, ...] = ()  # QwenImageDiffsynthControlnet, in chain order
    family: str = QWEN_IMAGE  # QWEN21 for Qwen-Image 2.1's files: its own defaults and nodes
    prefix_cache: tuple[str, str] | None = None  # QwenImage21Cache: (device, dtype)


@dataclass(frozen=True)
class ControlNetRef:
    """CONTROL_NET: a ControlNet by name; ``takes_mask`` for the inpainting ones (68 inputs)."""

    control_net_name: str
    takes_mask: bool = False


@dataclass(frozen=True)
class ModelPatchRef:
    """MODEL_PATCH: a block-wise ControlNet patch by name."""

    name: str


@dataclass(frozen=True)
class ClipRef:
    """A text encoder by name (ComfyUI's CLIP), or an LLM for TextGenerate (``kind`` LLM)."""

    clip_name: str
    kind: ModelKind = ModelKind.TEXT_ENCODER


@dataclass(frozen=True)
class VaeRef:
    """A VAE by name."""

    vae_name: str


@dataclass(frozen=True)
class PipelineResources:
    """What the pipeline nodes need besides their inputs; the runner hands it on as ``ctx.resources``.

    ``input_dir`` is where ``LoadImage`` names files (ComfyUI's input folder; it must lie inside a
    sandbox read root); ``output_dir`` is where ``SaveImage`` writes (default: the sandbox's
    default output folder); ``temp_dir`` is where ``PreviewImage`` writes (ComfyUI's temp folder,
    default: ``temp/`` in the output folder).
    """

    models: ModelManager
    sandbox: Sandbox
    defaults: PipelineSettings
    input_dir: Path
    output_dir: Path | None = None
    device: str | None = None
    temp_dir: Path | None = None
    confined: str | None = None  # the API key whose folders a prompt's files are kept to (owners.py)
    # The run's saved files are taken away after it (the workflow bridge collects and deletes
    # them), so it writes its own: another run's files, reused, would vanish under it or them.
    own_outputs: bool = False

    @classmethod
    def from_runtime(
        cls, runtime: Runtime, input_dir: Path | None = None, output_dir: Path | None = None
    ) -> PipelineResources:
        return cls(
            models=runtime.models,
            sandbox=runtime.sandbox,
            defaults=runtime.settings.pipeline,
            input_dir=Path(input_dir) if input_dir is not None else default_input_dir(runtime.sandbox),
            output_dir=output_dir,
        )

    def output_root(self) -> Path:
        """The folder SaveImage's ``subfolder`` is relative to (``/view?type=output``)."""
        return self.output_dir if self.output_dir is not None else self.sandbox.default_output_dir

    def temp_root(self) -> Path:
        """The folder PreviewImage's ``subfolder`` is relative to (``/view?type=temp``)."""
        return self.temp_dir if self.temp_dir is not None else self.output_root() / "temp"

    def clear_temp(self) -> int:
        """Empty the temp folder, as ComfyUI does at start-up; returns how many entries went.

        Previews belong to the session that made them and nothing else removes them. Only the
        folder's contents go, and only when it lies strictly inside the output folder: a temp
        folder that resolves anywhere else (a symlink, a misplaced ``temp_dir``) is left alone.
        """
        root = self.output_root().resolve()
        temp = self.temp_root()
        if not temp.is_dir():
            return 0
        resolved = temp.resolve()
        if temp.is_symlink() or resolved == root or os.path.commonpath([resolved, root]) != str(root):
            log.warning("temp folder %s is not inside the output folder %s: not emptied", temp, root)
            return 0
        removed = 0
        for entry in resolved.iterdir():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
            except OSError as exc:
                log.warning("could not remove %s from the temp folder: %s", entry.name, exc)
        return removed

    def run_context(self, ctx: NodeContext) -> RunContext:
        """A service RunContext for one node: its cancel flag and sampler steps go to the node ctx,
        so the service functions that nodes reuse report progress and stop as the runner expects."""

        def relay(event: ProgressEvent) -> None:
            if event.stage == "step":
                ctx.progress(event.step, event.total)

        return RunContext(
            models=self.models,
            sandbox=self.sandbox,
            defaults=self.defaults,
            request_id=f"{ctx.prompt_id}-{ctx.node_id}",
            progress_sink=relay,
            cancel_event=ctx.cancel_event if ctx.cancel_event is not None else threading.Event(),
            device=self.device,
        )


def default_input_dir(sandbox: Sandbox) -> Path:
    """ComfyUI's input folder under the first read root: ``inputs/`` or ``input/`` when present."""
    root = sandbox.read_roots[0]
    for name in ("inputs", "input"):
        if (root / name).is_dir():
            return root / name
    return root


def resources_of(ctx: NodeContext) -> PipelineResources:
    """The node's PipelineResources; a runner started without them is a caller's mistake, said plainly."""
    if not isinstance(ctx.resources, PipelineResources):
        raise GenserveError(
            ErrorCode.INTERNAL,
            f"node {ctx.node_id} ({ctx.class_type}) needs PipelineResources as the runner's resources",
        )
    return ctx.resources


def image_to_tensor(images: list[Image.Image], keep_alpha: bool = False) -> torch.Tensor:
    """Images of one size -> ComfyUI's IMAGE ``[B, H, W, 3]`` float in 0..1; ``[B, H, W, 4]`` with
    ``keep_alpha`` when every image has an alpha channel (Qwen-Image-Layered's VAE decodes RGBA)."""
    mode = "RGBA" if keep_alpha and all(image.mode == "RGBA" for image in images) else "RGB"
    arrays = [np.asarray(image.convert(mode), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays))


def tensor_to_images(images: torch.Tensor, keep_alpha: bool = False) -> list[Image.Image]:
    """IMAGE ``[B, H, W, C]`` -> RGB images (RGBA with ``keep_alpha`` for a 4-channel IMAGE, as
    ComfyUI saves one); exact for tensors that came from 8-bit images."""
    if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"expected an IMAGE [B, H, W, C], got {list(images.shape)}"
        )
    alpha = keep_alpha and images.shape[-1] == 4
    array = (
        (images[..., : 4 if alpha else 3].float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return [Image.fromarray(item, "RGBA" if alpha else "RGB") for item in array]


def latent_samples(latent: Any) -> torch.Tensor:
    """The 5-D tensor of a LATENT value, checked, so a wrong layout fails naming what it got.
    ``T`` is 1 for an image, ``layers + 1`` for Qwen-Image-Layered's latent."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 5 or samples.shape[2] < 1:
        shape = list(samples.shape) if isinstance(samples, torch.Tensor) else None
        raise GenserveError(ErrorCode.INVALID_INPUT, f"expected a LATENT [B, C, T, H, W], got {shape}")
    return samples
