"""Causal language model loader: a transformers folder (config, weights, tokenizer) from ``models/llm/``.

The demo chat model and real checkpoints (Qwen, Llama, Mistral folders as published) load through
the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` pair, so whatever the manager holds for the
``llm`` kind is one ``CausalLM`` bundle, pinned and evicted like every other model.

A vision-language folder (its config has a ``vision_config``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL)
loads as ``AutoModelForImageTextToText`` with its PIL image processor, so chats may show it
images. transformers' own processor for these models insists on a video processor that needs
torchvision; the text encoder's ``EditPromptProcessor`` does the same token expansion without it.

A ComfyUI single-file LLM in ``text_encoders/`` (Qwen-Image 2.1's Qwen3.5 prompt enhancers, a
Qwen3 file; formats/llm_single_file) loads through ``load_single_file`` (bf16, fp8 or int8 ConvRot,
dequantised at load) into the family's transformers class, with a config from its shapes (a
``config.json`` in its sidecar wins) and its tokenizer from that sidecar,
``text_encoders/<stem>.tokenizer/``: the file holds weights only, and no other tokenizer has
Qwen3.5's vocabulary. A tokenizer without a chat template gets ComfyUI's (llm_single_file), so
TextGenerate prompts the model as ComfyUI does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats import llm_single_file, qwen3_vl
from genserve.models.formats.safetensors_header import is_safetensors, read_header
from genserve.models.formats.tokenizer_files import TOKENIZER_CONFIG, has_tokenizer, sidecar_folder
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.loaders.single_file import load_single_file
from genserve.models.loaders.text_encoder import EditPromptProcessor
from genserve.models.registry import ModelEntry

log = logging.getLogger("genserve.models.loaders")
FIELD = "model"


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
    if folder.is_file() and is_safetensors(folder):
        bundle = _from_single_file(entry, device, dtype)
        return LoadedModel(model=bundle, memory_bytes=module_bytes(bundle.model), device=device)
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


def _from_single_file(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> CausalLM:
    """A ComfyUI single-file LLM (see the module docstring); refused, naming the file, when its
    tensors are not a causal LM genserve knows or its tokenizer is not beside it."""
    from transformers import AutoConfig, GenerationConfig

    header = read_header(entry.path, FIELD)
    kind = llm_single_file.detect(header)
    if kind is None:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{FIELD}: {entry.name} is not a single-file LLM genserve loads (a Qwen3.5 or Qwen3 causal LM "
            "in ComfyUI's or transformers' key layout)",
            field=FIELD,
        )
    side = sidecar_folder(entry.path)
    tokenizer = _tokenizer(entry, side, kind)
    if (side / "config.json").is_file():
        config = AutoConfig.from_pretrained(side)
    else:
        config = llm_single_file.derive_config(header, kind, tokenizer, FIELD)
    model_class = llm_single_file.model_class(kind)
    log.info("language model %s (%s): tokenizer from %s/", entry.name, kind.label, side.name)
    model = load_single_file(
        lambda: model_class(config),
        header,
        device,
        dtype,
        lambda key: llm_single_file.module_key(key, kind),
        FIELD,
        convert=_tie_missing_head,
    )
    stops = [tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config = GenerationConfig(
        eos_token_id=[i for i in stops if i is not None], pad_token_id=stops[1]
    )
    processor = None
    if kind.vision:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        # ComfyUI's preprocessing for Qwen3.5's tower is Qwen3-VL's (mean and std 0.5, bilinear).
        image_processor = Qwen2VLImageProcessorPil(**qwen3_vl.image_processor_options(config))
        processor = EditPromptProcessor(tokenizer, image_processor)
    return CausalLM(model, tokenizer, processor)


def _tokenizer(entry: ModelEntry, side: Any, kind: llm_single_file.LlmFile) -> Any:
    from transformers import AutoTokenizer

    if not has_tokenizer(side):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{FIELD}: {entry.name} holds the weights only; its tokenizer was not found. Put "
            f"tokenizer.json (or vocab.json and merges.txt) and {TOKENIZER_CONFIG} of the {kind.label} "
            f"model (Qwen/Qwen3.5-9B's, or ComfyUI's comfy/text_encoders/qwen35_tokenizer/ for Qwen3.5) "
            f"in text_encoders/{side.name}/",
            field=FIELD,
        )
    tokenizer = AutoTokenizer.from_pretrained(side)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = llm_single_file.CHAT_TEMPLATE
    return tokenizer


def _tie_missing_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file without ``lm_head`` ties it to the embeddings (the small Qwen3.5 and Qwen3 sizes do,
    and their configs then say tied): the same tensor, no invented weights."""
    if "lm_head.weight" in state:
        return state
    for embed in ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"):
        if embed in state:
            state["lm_head.weight"] = state[embed]
    return state
