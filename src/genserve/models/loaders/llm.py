"""Causal language model loader: a transformers folder (config, weights, tokenizer) from ``models/llm/``.

The demo chat model and real checkpoints (Qwen, Llama, Mistral folders as published) load through
the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` pair, so whatever the manager holds for the
``llm`` kind is one ``CausalLM`` bundle, pinned and evicted like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.registry import ModelEntry


@dataclass
class CausalLM:
    """What ``manager.use('llm', name)`` yields: the model in eval mode and its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer (fast or slow); typed loosely as transformers does

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Positions the model was built for, when its config says (prompts longer than this fail)."""
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
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
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model=CausalLM(model, tokenizer), memory_bytes=module_bytes(model), device=device)
