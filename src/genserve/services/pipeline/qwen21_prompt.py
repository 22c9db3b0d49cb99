"""Qwen-Image 2.1's prompt encoding with its Qwen3-VL text encoder, as ComfyUI's
TextEncodeQwenImage21 does it (comfy/text_encoders/qwen_image21.py, qwen3vl.py, sd1_clip.py).

The rules, in order:
- an empty prompt becomes one space (the node's ``prevent_empty_text``);
- ``\\(`` and ``\\)`` become ``(`` and ``)`` (ComfyUI's tokenizer unescapes them even with prompt
  weights off);
- a prompt that starts with ``<|im_start|>`` is used as it is; any other goes into the template
  ``<|im_start|>system\\nComprehend and analyze the provided prompt.<|im_end|>\\n<|im_start|>user\\n
  {refs}{prompt}<|im_end|>\\n<|im_start|>assistant\\n``, where with images ``refs`` is
  ``<image1><|vision_start|><|image_pad|><|vision_end|>`` for each image, joined by spaces, and
  nothing else (no ``<think>`` block: the 2.1 tokenizer thinks by default);
- each ``<|image_pad|>`` stands for its image's merged vision tokens (32 pixels a side each);
- the encoding is the last decoder layer's output without the final RMSNorm (what transformers
  4.57 returned as ``hidden_states[-1]``, which Qwen's results are tuned to);
- the system turn goes: every token before the second ``<|im_start|>`` (none when there is only
  one); then, unless ``keep_vision``, each image's vision tokens go too, and its slot is the number
  of tokens kept before them: where the DiT splices the image's reference latents back in. The
  ``<|vision_start|>``/``<|vision_end|>`` around them stay.

Token ids come from the tokenizer (ComfyUI hard-codes the real ones, 151644 for ``<|im_start|>``).
ComfyUI's ``embedding:name`` syntax is not supported: no textual embeddings exist for this encoder.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.text_encoder import FAMILY_LABELS, FIELD, IMAGE_PAD, TextEncoder

VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
IM_START = "<|im_start|>"
T2I_TEMPLATE = (
    "<|im_start|>system\nComprehend and analyze the provided prompt.<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass
class Qwen21Prompt:
    """One conditioning. No attention mask: one prompt has no padding."""

    hidden: torch.Tensor  # [1, N, D], float32 on the CPU
    image_slots: list[int]  # per image, its position in ``hidden``; empty with keep_vision


def prompt_text(prompt: str, image_count: int, prevent_empty_text: bool = True) -> str:
    """The text the tokenizer sees, before each ``<|image_pad|>`` is expanded."""
    if prevent_empty_text and prompt == "":
        prompt = " "
    prompt = prompt.replace("\\(", "(").replace("\\)", ")")
    if prompt.startswith(IM_START):
        return prompt
    refs = " ".join(f"<image{i + 1}>{VISION_BLOCK}" for i in range(image_count))
    before, after = T2I_TEMPLATE.split("{}")
    return before + refs + prompt + after


@torch.no_grad()
def encode_qwen21(
    text_encoder: TextEncoder,
    prompt: str,
    images: list[Image.Image],
    keep_vision: bool = False,
    prevent_empty_text: bool = True,
    field_name: str = FIELD,
) -> Qwen21Prompt:
    """``prompt`` (with ``images``, PIL RGB at multiples of 32 pixels) encoded for Qwen-Image 2.1."""
    family = getattr(text_encoder, "family", "qwen2.5-vl")
    if family != "qwen3-vl":
        name = getattr(text_encoder, "name", "") or "this text encoder"
        label = FAMILY_LABELS.get(family, family)
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field_name}: {name} is a {label} text encoder; Qwen-Image 2.1 needs "
            "its Qwen3-VL one (text_encoders/qwen3vl_8b_*.safetensors)",
            field=field_name,
        )
    text = prompt_text(prompt, len(images), prevent_empty_text)
    if text.count(IMAGE_PAD) != len(images):
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"prompt: the prompt has {text.count(IMAGE_PAD)} {IMAGE_PAD} placeholders for "
            f"{len(images)} images",
            field="prompt",
        )
    processor = text_encoder.processor
    vision = processor.images(images)
    input_ids = processor.text([text], vision, padding=False)["input_ids"][0]
    hidden = _last_layer(text_encoder, input_ids, vision)
    keep = torch.ones(len(input_ids), dtype=torch.bool)
    im_start = processor.tokenizer.convert_tokens_to_ids(IM_START)
    starts = (input_ids == im_start).nonzero().flatten().tolist()
    if len(starts) > 1:
        keep[: starts[1]] = False
    slots: list[int] = []
    if not keep_vision:
        for start, size in _vision_spans(text_encoder, input_ids, vision):
            keep[start : start + size] = False
            slots.append(int(keep[:start].sum()))
    hidden = hidden[:, keep.to(hidden.device)]
    return Qwen21Prompt(hidden=hidden.float().cpu(), image_slots=slots)


def _last_layer(
    text_encoder: TextEncoder, input_ids: torch.Tensor, vision: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The last decoder layer's output over the prompt, [1, L, D], caught as it leaves the layer
    (transformers 5 ties ``hidden_states[-1]`` to the normed output). The hook lives for this call
    and takes only this thread's pass, so concurrent encodes on the shared model stay apart and
    the model is left as it was. The vision tower runs once, outside the language model."""
    model = text_encoder.model
    base = model.model
    device = text_encoder.device
    ids = input_ids.unsqueeze(0).to(device)
    extra: dict[str, object] = {}
    if vision:
        grid = vision["image_grid_thw"].to(device)
        features = base.get_image_features(vision["pixel_values"].to(device), grid, return_dict=True)
        extra = {
            "image_grid_thw": grid,
            "mm_token_type_ids": (ids == model.config.image_token_id).int(),
            "mm_encoder_outputs": {"image": features},
        }
    caught: list[torch.Tensor] = []
    thread = threading.get_ident()

    def catch(_module: torch.nn.Module, _args: object, output: object) -> None:
        if threading.get_ident() == thread:
            caught.append(output[0] if isinstance(output, tuple) else output)

    handle = base.language_model.layers[-1].register_forward_hook(catch)
    try:
        base(input_ids=ids, use_cache=False, **extra)
    finally:
        handle.remove()
    return caught[-1]


def _vision_spans(
    text_encoder: TextEncoder, input_ids: torch.Tensor, vision: dict[str, torch.Tensor]
) -> list[tuple[int, int]]:
    """(first position, count) of each image's vision tokens, in order: each ``<|image_pad|>`` was
    expanded in place to its image's count, so the n-th run of pads is the n-th image."""
    if not vision:
        return []
    merge = text_encoder.processor.image_processor.merge_size**2
    counts = [int(grid.prod()) // merge for grid in vision["image_grid_thw"]]
    positions = (input_ids == text_encoder.model.config.image_token_id).nonzero().flatten().tolist()
    spans, offset = [], 0
    for count in counts:
        spans.append((positions[offset], count))
        offset += count
    return spans
