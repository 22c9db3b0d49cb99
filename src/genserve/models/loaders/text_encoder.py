"""Text encoder loader. Qwen2.5-VL (Qwen-Image): a transformers folder with its tokenizer and
image processor, a diffusers snapshot's ``text_encoder/`` (with its ``tokenizer/`` and
``processor/``), or ComfyUI's single file (older key layout, bf16 or fp8 plain or scaled).
Qwen3-VL (Qwen-Image 2.1): ComfyUI's single file (formats/qwen3_vl). A single file's tokenizer is
found beside it, in a snapshot, or in the Hugging Face cache; ComfyUI encodes Qwen3-VL prompts with
the Qwen2.5 tokenizer too, whose ids for every token the templates use are Qwen3-VL's. The bundle
says which family it holds, so a pipeline refuses the wrong one by name.

``Qwen2VLProcessor`` cannot be built here (it insists on a video processor that needs
torchvision), and the real checkpoint's processor fails the same way. ``EditPromptProcessor``
does the part the edit pipeline needs, images and text only, from the tokenizer and the PIL image
processor, with no global patching of library classes. It has the processor's call signature, so
diffusers' pipelines accept it as their ``processor``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats import llm_single_file, qwen3_vl, qwen_vl
from genserve.models.formats.layouts import diffusers_folder
from genserve.models.formats.safetensors_header import Header, is_safetensors, read_header
from genserve.models.formats.tokenizer_files import TokenizerSource, find_tokenizer
from genserve.models.loaders.base import LoadedModel, Loader, module_bytes
from genserve.models.loaders.single_file import load_single_file
from genserve.models.registry import ModelEntry

log = logging.getLogger("genserve.models.loaders")

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


Family = Literal["qwen2.5-vl", "qwen3-vl"]
FAMILY_LABELS: dict[str, str] = {"qwen2.5-vl": "Qwen2.5-VL", "qwen3-vl": "Qwen3-VL"}


@dataclass
class TextEncoder:
    """What ``manager.use('text_encoders', ...)`` yields."""

    model: torch.nn.Module
    processor: EditPromptProcessor
    family: Family = "qwen2.5-vl"
    name: str = ""  # the model's name under text_encoders/, for messages

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS[self.family]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


FIELD = "clip_model_name"


def make_text_encoder_loader(
    models_root: Path, hf_home: Path | None = None, allow_downloads: bool = False
) -> Loader:
    """The loader, knowing where to look for a single file's tokenizer (see tokenizer_files)."""

    def load_text_encoder(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        family: Family = "qwen2.5-vl"
        if entry.path.is_file() and is_safetensors(entry.path):
            header = read_header(entry.path, FIELD)
            _refuse_llm(entry, header)
            source = find_tokenizer(entry.path, models_root, hf_home, allow_downloads, FIELD)
            if qwen3_vl.is_qwen3_vl(header):
                model, processor = _qwen3_from_single_file(entry, header, source, device, dtype)
                family = "qwen3-vl"
            else:
                model = _from_single_file(entry, source, device, dtype)
                processor = EditPromptProcessor(
                    _tokenizer(source.tokenizer), _image_processor(source.processor)
                )
        else:
            model, tokenizer_dir, processor_dir = _from_folder(entry, device, dtype)
            processor = EditPromptProcessor(_tokenizer(tokenizer_dir), _image_processor(processor_dir))
        model.requires_grad_(False)
        bundle = TextEncoder(model=model, processor=processor, family=family, name=entry.name)
        return LoadedModel(model=bundle, memory_bytes=module_bytes(model), device=device, move=model.to)

    return load_text_encoder


def _refuse_llm(entry: ModelEntry, header: Header) -> None:
    """A prompt enhancer (a causal LM in text_encoders/) is TextGenerate's model, not a text encoder:
    said by name rather than as a layout it does not have."""
    kind = llm_single_file.detect(header)
    if kind is not None:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{FIELD}: {entry.name} is a {kind.label} language model (an LLM for TextGenerate), "
            "not a text encoder; give the text encoder node a Qwen2.5-VL or Qwen3-VL text encoder",
            field=FIELD,
        )


def _from_folder(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> tuple[Any, Path, Path]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = diffusers_folder(entry.path, "text_encoder")
    snapshot = (
        folder is not None
        and folder.name == "text_encoder"
        and (folder.parent / "model_index.json").is_file()
    )
    tokenizer_dir = folder.parent / "tokenizer" if snapshot and folder else folder
    processor_dir = folder.parent / "processor" if snapshot and folder else folder
    missing = [] if folder is not None else ["config.json"]
    if folder is not None and not (processor_dir / "preprocessor_config.json").is_file():
        missing.append("processor/preprocessor_config.json" if snapshot else "preprocessor_config.json")
    if missing:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"text encoder {entry.name} is not a Qwen2.5-VL folder with tokenizer and image processor "
            f"(missing: {', '.join(missing)})",
            field=FIELD,
        )
    assert folder is not None and tokenizer_dir is not None and processor_dir is not None
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer_dir, processor_dir


def _from_single_file(
    entry: ModelEntry, source: TokenizerSource, device: torch.device, dtype: torch.dtype
) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    header = read_header(entry.path, FIELD)
    if not qwen_vl.is_old_layout(header):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{FIELD}: {entry.name} is not a Qwen2.5-VL text encoder in ComfyUI's layout "
            "(model.embed_tokens and visual.patch_embed weights)",
            field=FIELD,
        )
    if source.config is not None:
        config = Qwen2_5_VLConfig.from_pretrained(source.config.parent)
    else:
        config = qwen_vl.derive_config(header, _tokenizer(source.tokenizer), FIELD)
    log.info("text encoder %s: tokenizer and image processor from %s", entry.name, source.origin)
    return load_single_file(
        lambda: Qwen2_5_VLForConditionalGeneration(config),
        header,
        device,
        dtype,
        qwen_vl.model_key,
        FIELD,
        convert=_tie_missing_head,
    )


def _qwen3_from_single_file(
    entry: ModelEntry, header: Header, source: TokenizerSource, device: torch.device, dtype: torch.dtype
) -> tuple[Any, EditPromptProcessor]:
    """Qwen3-VL from ComfyUI's file. The image processor is ComfyUI's preprocessing for this
    vision tower (patch and merge sizes from the config, mean and std 0.5), not whatever
    ``preprocessor_config.json`` came with the tokenizer: a Qwen-Image snapshot's is Qwen2.5-VL's."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(source.tokenizer)
    if source.config is not None:
        config = Qwen3VLConfig.from_pretrained(source.config.parent)
    else:
        config = qwen3_vl.derive_config(header, tokenizer, FIELD)
    log.info("text encoder %s (Qwen3-VL): tokenizer from %s", entry.name, source.origin)
    model = load_single_file(
        lambda: Qwen3VLForConditionalGeneration(config),
        header,
        device,
        dtype,
        qwen3_vl.model_key,
        FIELD,
        convert=_tie_missing_head,
    )
    image_processor = Qwen2VLImageProcessorPil(**qwen3_vl.image_processor_options(config))
    return model, EditPromptProcessor(tokenizer, image_processor)


def _tie_missing_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's files may leave out the LM head, which the pipeline never runs: the embeddings
    stand in for it (tied), so the model is whole without inventing weights."""
    if "lm_head.weight" not in state and "model.language_model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    return state


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _image_processor(folder: Path) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(folder)
