"""ControlNet node types: ControlNetLoader, ControlNetApplyAdvanced, ControlNetInpaintingAliMamaApply,
ModelPatchLoader and QwenImageDiffsynthControlnet, with ComfyUI's names, inputs and outputs.

The apply nodes attach what ComfyUI attaches (the control image, strength, step window, VAE) to
the CONDITIONING or MODEL value; the sampler (``services/pipeline/control``) encodes the image at
the latent's size and runs the control models beside the transformer.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind, ModelRegistry
from genserve.services.pipeline.control import BlockPatch, ControlHint, fit
from genserve.services.pipeline.text_encoder import Encoding
from genserve.workflows.inputs import Float, Linked
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.models import model_input, warm
from genserve.workflows.nodes.values import ControlNetRef, ModelPatchRef, ModelRef, VaeRef, resources_of


def _controlnet_loader(ctx: NodeContext, control_net_name: str) -> tuple[ControlNetRef]:
    name = warm(ctx, ModelKind.CONTROLNET, control_net_name, "control_net_name")
    with resources_of(ctx).run_context(ctx).use_model(ModelKind.CONTROLNET, name, "control_net_name") as cn:
        return (ControlNetRef(name, takes_mask=cn.takes_mask),)


def _check_window(start_percent: float, end_percent: float) -> None:
    if start_percent > end_percent:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"end_percent: {end_percent} is before start_percent {start_percent}; "
            "the ControlNet would never apply",
            field="end_percent",
        )


def _apply_advanced(
    ctx: NodeContext,
    positive: Encoding,
    negative: Encoding,
    control_net: ControlNetRef,
    image: torch.Tensor,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae: VaeRef | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[Encoding, Encoding]:
    """Both conditionings with one more ControlNet (ComfyUI chains them: every one applies)."""
    if strength == 0:
        return (positive, negative)
    _check_window(start_percent, end_percent)
    if vae is None:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            "vae: Qwen-Image ControlNets take the control image as a latent; connect the VAE input",
            field="vae",
        )
    hint = ControlHint(
        control_net.control_net_name, image, vae.vae_name, float(strength), start_percent, end_percent, mask
    )
    return (
        replace(positive, controls=(*positive.controls, hint)),
        replace(negative, controls=(*negative.controls, hint)),
    )


def _apply_inpainting(
    ctx: NodeContext,
    positive: Encoding,
    negative: Encoding,
    control_net: ControlNetRef,
    vae: VaeRef,
    image: torch.Tensor,
    mask: torch.Tensor,
    strength: float,
    start_percent: float,
    end_percent: float,
) -> tuple[Encoding, Encoding]:
    """For an inpainting ControlNet the masked area is blanked in the image and the kept area
    goes along as the mask channel; another ControlNet gets the image as it is, as in ComfyUI."""
    keep = None
    if control_net.takes_mask:
        keep = 1.0 - mask.float().reshape(-1, 1, *mask.shape[-2:])
        blank = fit(keep, image.shape[2], image.shape[1], "bilinear").round()
        blank = blank.repeat(-(-image.shape[0] // blank.shape[0]), 1, 1, 1)[: image.shape[0]]
        image = image[..., :3] * blank.movedim(1, -1)
    return _apply_advanced(
        ctx, positive, negative, control_net, image, strength, start_percent, end_percent, vae, keep
    )


def _model_patch_loader(ctx: NodeContext, name: str) -> tuple[ModelPatchRef]:
    return (ModelPatchRef(warm(ctx, ModelKind.MODEL_PATCH, name, "name")),)


def _diffsynth(
    ctx: NodeContext,
    model: ModelRef,
    model_patch: ModelPatchRef,
    vae: VaeRef,
    image: torch.Tensor,
    strength: float,
    mask: torch.Tensor | None = None,
) -> tuple[ModelRef]:
    keep = None if mask is None else 1.0 - mask.float().reshape(-1, 1, *mask.shape[-2:])
    patch = BlockPatch(model_patch.name, image[..., :3], vae.vae_name, float(strength), keep)
    return (replace(model, patches=(*model.patches, patch)),)


STRENGTH = Float(1.0, min=0.0, max=10.0, step=0.01)
START = Float(0.0, min=0.0, max=1.0, step=0.001)
END = Float(1.0, min=0.0, max=1.0, step=0.001)


def controlnet_node_types(registry: ModelRegistry | None) -> list[NodeType]:
    """The ControlNet node types; loader combos list ``registry``'s folders when given."""
    apply_inputs = {
        "positive": Linked("CONDITIONING"),
        "negative": Linked("CONDITIONING"),
        "control_net": Linked("CONTROL_NET"),
    }
    window = {"strength": STRENGTH, "start_percent": START, "end_percent": END}
    return [
        NodeType(
            "ControlNetLoader",
            _controlnet_loader,
            required={
                "control_net_name": model_input(
                    registry, ModelKind.CONTROLNET, "ControlNet under controlnet/"
                )
            },
            return_types=("CONTROL_NET",),
            display_name="Load ControlNet Model",
            category="loaders",
        ),
        NodeType(
            "ControlNetApplyAdvanced",
            _apply_advanced,
            required={**apply_inputs, "image": Linked("IMAGE"), **window},
            optional={"vae": Linked("VAE")},
            return_types=("CONDITIONING", "CONDITIONING"),
            return_names=("positive", "negative"),
            display_name="Apply ControlNet",
            category="conditioning/controlnet",
        ),
        NodeType(
            "ControlNetInpaintingAliMamaApply",
            _apply_inpainting,
            required={
                **apply_inputs,
                "vae": Linked("VAE"),
                "image": Linked("IMAGE"),
                "mask": Linked("MASK"),
                **window,
            },
            return_types=("CONDITIONING", "CONDITIONING"),
            return_names=("positive", "negative"),
            category="conditioning/controlnet",
        ),
        NodeType(
            "ModelPatchLoader",
            _model_patch_loader,
            required={
                "name": model_input(registry, ModelKind.MODEL_PATCH, "model patch under model_patches/")
            },
            return_types=("MODEL_PATCH",),
            category="advanced/loaders",
        ),
        NodeType(
            "QwenImageDiffsynthControlnet",
            _diffsynth,
            required={
                "model": Linked("MODEL"),
                "model_patch": Linked("MODEL_PATCH"),
                "vae": Linked("VAE"),
                "image": Linked("IMAGE"),
                "strength": Float(1.0, min=-10.0, max=10.0, step=0.01),
            },
            optional={"mask": Linked("MASK")},
            return_types=("MODEL",),
            category="advanced/loaders/qwen",
        ),
    ]
