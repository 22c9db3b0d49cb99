"""Loaders for the Qwen-Image control models: InstantX ControlNets (``controlnet/``, diffusers'
``QwenImageControlNetModel``, a diffusers folder or ComfyUI's single file) and DiffSynth
block-wise ControlNet patches (``model_patches/``, a single file; the module is genserve's, as
neither diffusers nor transformers has one). Formats: ``formats/qwen_control``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats import qwen_control
from genserve.models.formats.layouts import diffusers_folder
from genserve.models.formats.safetensors_header import is_safetensors, read_header
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.loaders.single_file import load_single_file
from genserve.models.registry import ModelEntry


@dataclass
class ControlNet:
    """What ``manager.use('controlnet', ...)`` yields: an InstantX ``QwenImageControlNetModel``
    or a VideoX-Fun ``FunControlNet`` (``fun``)."""

    module: torch.nn.Module

    @property
    def fun(self) -> bool:
        return isinstance(self.module, FunControlNet)

    @property
    def in_features(self) -> int:
        """Packed control features per token it is given: 64, or 68 with the inpainting mask (a
        Fun ControlNet is given the control latent's 64 and pads its unused inputs itself)."""
        if self.fun:
            return qwen_control.PACKED
        return int(self.module.controlnet_x_embedder.in_features)

    @property
    def takes_mask(self) -> bool:
        return self.in_features > qwen_control.PACKED


def _fun_block(dim: int, heads: int, head_dim: int, first: bool) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

    block = QwenImageTransformerBlock(dim, heads, head_dim)
    if first:
        block.before_proj = torch.nn.Linear(dim, dim)
    block.after_proj = torch.nn.Linear(dim, dim)
    return block


class FunControlNet(torch.nn.Module):
    """VideoX-Fun's Qwen-Image ControlNet (``Qwen-Image-2512-Fun-Controlnet-Union``): Qwen blocks
    over the control tokens that borrow the base model's input layers, each giving one hint
    (``after_proj``) for every ``stride``-th base block (blocks 0, 12, 24, 36, 48 of 60)."""

    def __init__(self, in_features: int, dim: int, heads: int, head_dim: int, blocks: int) -> None:
        super().__init__()
        self.control_img_in = torch.nn.Linear(in_features, dim)
        self.control_blocks = torch.nn.ModuleList(
            _fun_block(dim, heads, head_dim, first=i == 0) for i in range(blocks)
        )

    def hints(
        self,
        base: torch.nn.Module,
        x_tokens: torch.Tensor,
        control: torch.Tensor,
        embeds: torch.Tensor,
        timestep: torch.Tensor,
        img_shapes: list,
    ) -> list[torch.Tensor]:
        """One hint per control block, for ``x_tokens`` (packed image tokens) under ``embeds``;
        the text mask is not used inside the control blocks, as in VideoX-Fun."""
        from diffusers.models.transformers.transformer_qwenimage import compute_text_seq_len_from_mask

        width = self.control_img_in.in_features
        if control.shape[-1] < width:
            control = torch.nn.functional.pad(control, (0, width - control.shape[-1]))
        hidden = base.img_in(x_tokens)
        text = base.txt_in(base.txt_norm(embeds))
        text_len, _, _ = compute_text_seq_len_from_mask(text, None)
        temb = base.time_text_embed(timestep, hidden)
        rope = base.pos_embed(img_shapes, max_txt_seq_len=text_len, device=hidden.device)
        state = self.control_img_in(control)
        hints = []
        for index, block in enumerate(self.control_blocks):
            if index == 0:
                state = block.before_proj(state) + hidden
            text, state = block(
                hidden_states=state,
                encoder_hidden_states=text,
                encoder_hidden_states_mask=None,
                temb=temb,
                image_rotary_emb=rope,
            )
            hints.append(block.after_proj(state))
        return hints


class _BlockwiseBlock(torch.nn.Module):
    """One block of a DiffSynth block-wise ControlNet: RMSNorm both inputs, add, Linear-GELU-Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x_rms = torch.nn.RMSNorm(dim, eps=1e-6)
        self.y_rms = torch.nn.RMSNorm(dim, eps=1e-6)
        self.input_proj = torch.nn.Linear(dim, dim)
        self.act = torch.nn.GELU()
        self.output_proj = torch.nn.Linear(dim, dim)

    def forward(self, image: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        return self.output_proj(self.act(self.input_proj(self.x_rms(image) + self.y_rms(control))))


class BlockwiseControlNet(torch.nn.Module):
    """What ``manager.use('model_patches', ...)`` yields: ``embed`` the packed control latent once,
    then ``blocks[i](image_tokens, embedded)`` is what block ``i`` adds to the image tokens."""

    def __init__(self, num_layers: int, dim: int, additional_in_dim: int = 0) -> None:
        super().__init__()
        self.additional_in_dim = additional_in_dim
        self.img_in = torch.nn.Linear(qwen_control.PACKED + additional_in_dim, dim)
        self.controlnet_blocks = torch.nn.ModuleList(_BlockwiseBlock(dim) for _ in range(num_layers))

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.controlnet_blocks

    @property
    def in_features(self) -> int:
        return int(self.img_in.in_features)

    def embed(self, packed: torch.Tensor) -> torch.Tensor:
        return self.img_in(packed.to(self.img_in.weight.dtype))


def _single_file(entry: ModelEntry, field_name: str):  # -> Header
    if not (entry.path.is_file() and is_safetensors(entry.path)):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {entry.name} is not a safetensors file of a Qwen-Image control model",
            field=field_name,
        )
    return read_header(entry.path, field_name)


def load_controlnet(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """An InstantX Qwen-Image ControlNet: a diffusers folder (``config.json`` + weights, as the
    InstantX repos publish it) or ComfyUI's single file (the same keys, bf16 or fp8); or a
    VideoX-Fun ControlNet single file."""
    from diffusers import QwenImageControlNetModel

    field_name = "control_net_name"
    folder = diffusers_folder(entry.path, "controlnet")
    if folder is not None:
        module = QwenImageControlNetModel.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        module.requires_grad_(False)
    else:
        header = _single_file(entry, field_name)
        if qwen_control.is_fun(header):
            fun = qwen_control.fun_config(header, field_name)
            module = load_single_file(
                lambda: FunControlNet(**fun), header, device, dtype, lambda k: k, field_name
            )
            return LoadedModel(
                model=ControlNet(module), memory_bytes=module_bytes(module), device=device, move=module.to
            )
        if not qwen_control.is_instantx(header):
            raise GenserveError(
                ErrorCode.MODEL_NOT_FOUND,
                f"{field_name}: {entry.name} is not a Qwen-Image InstantX ControlNet (no transformer "
                "blocks with controlnet_x_embedder); DiffSynth patches go in model_patches/",
                field=field_name,
            )
        config = qwen_control.instantx_config(header, field_name)
        module = load_single_file(
            lambda: QwenImageControlNetModel(**config), header, device, dtype, lambda k: k, field_name
        )
    return LoadedModel(
        model=ControlNet(module), memory_bytes=module_bytes(module), device=device, move=module.to
    )


def load_model_patch(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A DiffSynth block-wise ControlNet patch (single file, bf16 or fp8)."""
    field_name = "name"
    header = _single_file(entry, field_name)
    if not qwen_control.is_blockwise(header):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {entry.name} is not a model patch genserve runs (a DiffSynth block-wise "
            "ControlNet for Qwen-Image)",
            field=field_name,
        )
    config = qwen_control.blockwise_config(header, field_name)
    module = load_single_file(
        lambda: BlockwiseControlNet(**config), header, device, dtype, lambda k: k, field_name
    )
    return LoadedModel(model=module, memory_bytes=module_bytes(module), device=device, move=module.to)
