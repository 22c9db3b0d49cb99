"""Text-to-image prompt encoding: Qwen-Image's own template, no images.

The edit pipeline's text encoder (``text_encoder.encode_prompts``) runs Qwen2.5-VL over the edit
template with reference images; text-to-image runs the same encoder over Qwen-Image's
text-to-image template, as diffusers' ``QwenImagePipeline`` does, and drops the same 34 leading
hidden states (its ``prompt_template_encode_start_idx``: the system prefix with the real
tokenizer). diffusers silently truncates the embeddings to ``max_sequence_length``; here a prompt
longer than ``MAX_PROMPT_TOKENS`` (diffusers' upper bound for that setting) is refused instead.
"""

from __future__ import annotations

import time

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext
from genserve.services.pipeline.text_encoder import Encoding, encode_prompts

T2I_PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
T2I_PREFIX_TOKENS = 34
MAX_PROMPT_TOKENS = 1024


def _check_length(tokenizer, field: str, text: str) -> int:
    count = len(tokenizer(T2I_PROMPT_TEMPLATE.format(text))["input_ids"]) - T2I_PREFIX_TOKENS
    if count > MAX_PROMPT_TOKENS:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {count} tokens with the prompt template, at most {MAX_PROMPT_TOKENS}",
            field=field,
        )
    return count


def encode_text_prompts(
    prompt: str, negative_prompt: str | None, clip_model_name: str, ctx: RunContext
) -> tuple[Encoding, Encoding | None, float]:
    """(positive, negative or None, milliseconds): the negative is encoded only when given (not None)."""
    fields = [("prompt", prompt)] + (
        [("negative_prompt", negative_prompt)] if negative_prompt is not None else []
    )
    started = time.perf_counter()
    with ctx.use_model(ModelKind.TEXT_ENCODER, clip_model_name, "clip_model_name") as text_encoder:
        ctx.check_cancelled()
        counts = [_check_length(text_encoder.processor.tokenizer, field, text) for field, text in fields]
        try:
            encoded = encode_prompts(
                text_encoder,
                [text for _, text in fields],
                [],
                template=T2I_PROMPT_TEMPLATE,
                prefix_tokens=T2I_PREFIX_TOKENS,
            )
        except GenserveError:
            raise
        except Exception as exc:
            raise GenserveError(
                ErrorCode.ENCODING_FAILED, f"text encoding of the prompts failed: {type(exc).__name__}: {exc}"
            ) from exc
    results = [
        Encoding(
            embeds,
            mask,
            [],
            {
                "clip_model_name": clip_model_name,
                "role": field,
                "template": "qwen_image_t2i",
                "tokens": count,
            },
        )
        for (field, _), (embeds, mask), count in zip(fields, encoded, counts, strict=True)
    ]
    elapsed = round((time.perf_counter() - started) * 1000, 3)
    return results[0], (results[1] if len(results) > 1 else None), elapsed
