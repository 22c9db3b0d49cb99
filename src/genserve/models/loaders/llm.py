"""Causal language model loader: a transformers folder (config, weights, tokenizer) from ``models/llm/``.

The demo chat model and real checkpoints (Qwen, Llama, Mistral folders as published) load through
the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` pair, so whatever the manager holds for the
``llm`` kind is one ``CausalLM`` bundle, pinned and evicted like every other model.

A vision-language folder (its config has a ``vision_config``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL)
loads as ``AutoModelForImageTextToText`` with its PIL image processor, so chats may show it
images. transformers' own processor for these models insists on a video processor that needs
torchvision; the text encoder's ``EditPromptProcessor`` does the same token expansion without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.loaders.text_encoder import EditPromptProcessor
from genserve.models.registry import ModelEntry


@dataclass
class CausalLM:
    """What ``manager.use('llm', name)`` yields: the model in eval mode and its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer (fast or slow); typed loosely as transformers does
    processor: EditPromptProcessor | None = None  # vision-language models: images to tokens

    @property
    def sees_images(self) -> bool:
        return self.processor is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Positions the model was built for, when its config says (prompts longer than this fail)."""
        config = getattr(self.model, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        if value is None:  # vision-language configs keep it in their text config
            value = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None


def load_llm(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = entry.path
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"language model {entry.name} is not a transformers folder (config.json missing)",
            field="model",
        )
    config = json.loads((folder / "config.json").read_text())
    processor = None
    if "vision_config" in config:
        from transformers import AutoModelForImageTextToText
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        if not (folder / "preprocessor_config.json").is_file():
            raise GenserveError(
                ErrorCode.MODEL_NOT_FOUND,
                f"language model {entry.name} is a vision-language model without its image processor "
                "(preprocessor_config.json missing)",
                field="model",
            )
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = EditPromptProcessor(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(folder))
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model = model.to(device).eval()
    model.requires_grad_(False)
    bundle = CausalLM(model, tokenizer, processor)
    return LoadedModel(model=bundle, memory_bytes=module_bytes(model), device=device)
