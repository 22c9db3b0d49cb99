"""Qwen2.5-VL text encoder loader: a transformers folder with its tokenizer and image processor.

``Qwen2VLProcessor`` cannot be built here (it insists on a video processor that needs
torchvision), and the real checkpoint's processor fails the same way. ``EditPromptProcessor``
does the part the edit pipeline needs, images and text only, from the tokenizer and the PIL image
processor, with no global patching of library classes. It has the processor's call signature, so
diffusers' pipelines accept it as their ``processor``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.registry import ModelEntry

IMAGE_PAD = "<|image_pad|>"
# Qwen-Image-Edit's prompt template. Its system part is 64 tokens with the real tokenizer (and the
# demo's, which is trained to match); the pipeline drops those hidden states.
EDIT_PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency with "
    "the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEMPLATE_PREFIX_TOKENS = 64


class EditPromptProcessor:
    """Tokenises prompts with ``<|image_pad|>`` expanded to each image's vision-token count."""

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Image.Image] | Image.Image | None = None,
        padding: bool = True,
        return_tensors: str = "pt",
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        image_list = [images] if isinstance(images, Image.Image) else list(images or [])
        vision = self.images(image_list)
        return _TensorDict(
            {**vision, **self.text(texts, vision, padding=padding, return_tensors=return_tensors)}
        )

    def images(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Pixel patches and grids; done once per request, however many prompts share the images."""
        if not images:
            return {}
        vision = self.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}

    def text(
        self,
        texts: Sequence[str],
        vision: dict[str, torch.Tensor],
        padding: bool = True,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """Token ids with each ``<|image_pad|>`` expanded to its image's vision-token count."""
        if vision:
            merge = self.image_processor.merge_size**2
            counts = [int(grid.prod()) // merge for grid in vision["image_grid_thw"]]
            texts = [self._expand(t, counts) for t in texts]
        encoded = self.tokenizer(list(texts), padding=padding, return_tensors=return_tensors)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    @staticmethod
    def _expand(text: str, counts: list[int]) -> str:
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(counts):
            raise GenserveError(
                ErrorCode.ENCODING_FAILED,
                f"prompt has {len(pieces) - 1} image placeholders for {len(counts)} images",
            )
        out = [pieces[0]]
        for count, rest in zip(counts, pieces[1:], strict=True):
            out.append(IMAGE_PAD * count + rest)
        return "".join(out)


class _TensorDict(dict):
    """The ``.to(device)`` that diffusers calls on processor output."""

    def to(self, device: torch.device | str) -> _TensorDict:
        return _TensorDict({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


@dataclass
class TextEncoder:
    """What ``manager.use('text_encoders', ...)`` yields."""

    model: torch.nn.Module
    processor: EditPromptProcessor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_text_encoder(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = entry.path
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"text encoder {entry.name} is not a Qwen2.5-VL folder with tokenizer and image processor "
            f"(missing: {', '.join(missing) or 'folder'})",
            field="clip_model_name",
        )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    bundle = TextEncoder(model=model, processor=EditPromptProcessor(tokenizer, image_processor))
    return LoadedModel(model=bundle, memory_bytes=module_bytes(model), device=device)
