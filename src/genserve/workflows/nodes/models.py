"""Loader and model-patching node types: UNETLoader, CLIPLoader, VAELoader, LoraLoaderModelOnly,
ModelSamplingAuraFlow, CFGNorm.

A loader checks that the model exists and warms it in the ModelManager (unpinned), then returns
a reference by name (nodes_values): the output cache may keep the reference for as long as it
likes without holding memory, and the nodes that compute borrow the weights with ``use()``.
Model names are combos over the models folder, read fresh at each validation; a diffusers folder
is listed under its own name and with ``.safetensors`` too, so workflows written for ComfyUI's
single files (``qwen_image_vae.safetensors``) validate and reach the folder model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from genserve.errors import ErrorCode, GenserveError
from genserve.models.kinds import STORAGE_MARK
from genserve.models.loaders.transformer import is_qwen21_file
from genserve.models.registry import ModelKind, ModelRegistry
from genserve.models.slots import ModelStats
from genserve.workflows.inputs import Combo, Float, InputSpec, Linked, String
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.values import QWEN21, QWEN_IMAGE, ClipRef, ModelRef, VaeRef, resources_of

# ComfyUI's CLIPLoader types. genserve tells a model's family from its file, so the type only
# has to be one ComfyUI knows: text_encoders/ entries load as Qwen-Image text encoders, llm/
# entries as the causal LMs TextGenerate runs.
CLIP_TYPES = (
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
    "ovis", "ideogram4",
)  # fmt: skip
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
# weight_dtype -> the storage of the model's copy (no fp8 matmul here: _fast stores as e4m3fn).
STORAGE_OF = {
    "default": None,
    "fp8_e4m3fn": "fp8_e4m3fn",
    "fp8_e4m3fn_fast": "fp8_e4m3fn",
    "fp8_e5m2": "fp8_e5m2",
}


def model_names(registry: ModelRegistry, kind: ModelKind) -> Callable[[], list[str]]:
    """Choices for a model combo: every entry of the kind's folder, folders also as ``name.safetensors``."""

    def names() -> list[str]:
        found: list[str] = []
        for entry in registry.entries(kind):
            found.append(entry.name)
            if entry.path.is_dir():
                found.append(f"{entry.name}.safetensors")
        return found

    return names


def model_input(registry: ModelRegistry | None, kind: ModelKind, tooltip: str) -> InputSpec:
    """A combo over the folder when the registry is known; a free string otherwise (checked at run)."""
    if registry is None:
        return String("", tooltip=tooltip)
    return Combo(model_names(registry, kind), tooltip=tooltip)


def clip_input(registry: ModelRegistry | None) -> InputSpec:
    """CLIPLoader's ``clip_name``: text encoders, then LLMs (TextGenerate's models)."""
    tooltip = "text encoder under text_encoders/ or LLM under llm/"
    if registry is None:
        return String("", tooltip=tooltip)
    encoders, llms = model_names(registry, ModelKind.TEXT_ENCODER), model_names(registry, ModelKind.LLM)
    return Combo(lambda: [*encoders(), *llms()], tooltip=tooltip)


def warm(ctx: NodeContext, kind: ModelKind, name: str, field: str) -> str:
    """Resolve (MODEL_NOT_FOUND naming the input) and load without pinning; the canonical name."""
    return warm_stats(ctx, kind, name, field).name


def warm_stats(ctx: NodeContext, kind: ModelKind, name: str, field: str) -> ModelStats:
    """``warm``, answering the manager's view of the loaded model (its name, memory mode, fp8)."""
    res = resources_of(ctx)
    entry = res.models.registry.resolve(kind, name, field)
    ctx.check_cancelled()
    return res.models.load(entry.kind, entry.name, device=res.device)


def _unet_loader(ctx: NodeContext, unet_name: str, weight_dtype: str = "default") -> tuple[ModelRef]:
    """``weight_dtype`` default takes the manager's choice. An fp8 choice keeps the weights in that
    fp8 type: as they are where the manager already keeps the file's exact fp8 values, else in a
    copy of the model of its own (``<file>#fp8_e4m3fn``) whose weights are rounded to it at load,
    as ComfyUI rounds them; computing is in the compute dtype either way (no fp8 matmul, so
    ``fp8_e4m3fn_fast`` stores as ``fp8_e4m3fn``)."""
    stats = warm_stats(ctx, ModelKind.DIFFUSION, unet_name, "unet_name")
    name = stats.name
    storage = STORAGE_OF[weight_dtype]
    if storage is not None and not (storage == "fp8_e4m3fn" and stats.fp8_stored):
        name = warm(ctx, ModelKind.DIFFUSION, f"{name}{STORAGE_MARK}{storage}", "unet_name")
    entry = resources_of(ctx).models.registry.resolve(ModelKind.DIFFUSION, name, "unet_name")
    return (ModelRef(name, family=QWEN21 if is_qwen21_file(entry.path) else QWEN_IMAGE),)


def _clip_loader(
    ctx: NodeContext, clip_name: str, type: str = "qwen_image", device: str = "default"
) -> tuple[ClipRef]:
    """A text encoder by that name, else an LLM by that name (MODEL_NOT_FOUND lists the encoders).
    A text_encoders/ file whose tensors are a causal LM (a Qwen3.5 prompt enhancer) is that LLM:
    ComfyUI's templates load it with CLIPLoader for TextGenerate, and no text encoder node can use it."""
    registry = resources_of(ctx).models.registry
    llm = registry.find(ModelKind.LLM, clip_name)
    encoder = registry.find(ModelKind.TEXT_ENCODER, clip_name)
    if llm is not None and (encoder is None or encoder == llm):
        return (ClipRef(warm(ctx, ModelKind.LLM, clip_name, "clip_name"), kind=ModelKind.LLM),)
    return (ClipRef(warm(ctx, ModelKind.TEXT_ENCODER, clip_name, "clip_name")),)


def _vae_loader(ctx: NodeContext, vae_name: str) -> tuple[VaeRef]:
    return (VaeRef(warm(ctx, ModelKind.VAE, vae_name, "vae_name")),)


def _lora_loader(ctx: NodeContext, model: ModelRef, lora_name: str, strength_model: float) -> tuple[ModelRef]:
    """The model with one more LoRA on its chain: a chain applies every LoRA, each at its strength."""
    name = warm(ctx, ModelKind.LORA, lora_name, "lora_name")
    return (replace(model, loras=(*model.loras, (name, float(strength_model)))),)


def _aura_flow(ctx: NodeContext, model: ModelRef, shift: float) -> tuple[ModelRef]:
    if shift <= 0:
        raise GenserveError(ErrorCode.INVALID_INPUT, f"shift: must be > 0, got {shift}", field="shift")
    return (replace(model, shift=float(shift)),)


def _cfg_norm(ctx: NodeContext, model: ModelRef, strength: float) -> tuple[ModelRef]:
    return (replace(model, cfg_norm_strength=float(strength)),)


def model_node_types(registry: ModelRegistry | None) -> list[NodeType]:
    """The loader and patch node types; combos list ``registry``'s folders when given."""
    return [
        NodeType(
            "UNETLoader",
            _unet_loader,
            required={
                "unet_name": model_input(
                    registry, ModelKind.DIFFUSION, "diffusion model under diffusion_models/"
                ),
                "weight_dtype": Combo(WEIGHT_DTYPES, default="default"),
            },
            return_types=("MODEL",),
            display_name="Load Diffusion Model",
            category="advanced/loaders",
        ),
        NodeType(
            "CLIPLoader",
            _clip_loader,
            required={
                "clip_name": clip_input(registry),
                "type": Combo(CLIP_TYPES, default="qwen_image"),
            },
            optional={"device": Combo(("default", "cpu"), default="default")},
            return_types=("CLIP",),
            display_name="Load CLIP",
            category="advanced/loaders",
        ),
        NodeType(
            "VAELoader",
            _vae_loader,
            required={"vae_name": model_input(registry, ModelKind.VAE, "VAE under vae/")},
            return_types=("VAE",),
            display_name="Load VAE",
            category="loaders",
        ),
        NodeType(
            "LoraLoaderModelOnly",
            _lora_loader,
            required={
                "model": Linked("MODEL"),
                "lora_name": model_input(registry, ModelKind.LORA, "LoRA under loras/"),
                "strength_model": Float(1.0, min=-100.0, max=100.0, step=0.01),
            },
            return_types=("MODEL",),
            display_name="LoraLoaderModelOnly",
            category="loaders",
        ),
        NodeType(
            "ModelSamplingAuraFlow",
            _aura_flow,
            required={"model": Linked("MODEL"), "shift": Float(1.73, min=0.0, max=100.0, step=0.01)},
            return_types=("MODEL",),
            category="advanced/model",
        ),
        NodeType(
            "CFGNorm",
            _cfg_norm,
            required={"model": Linked("MODEL"), "strength": Float(1.0, min=0.0, max=100.0, step=0.01)},
            return_types=("MODEL",),
            return_names=("patched_model",),
            category="advanced/guidance",
        ),
    ]
