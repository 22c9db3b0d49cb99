"""text_generation: a prompt or a chat -> generated text, streamed as it is produced.

One service behind every door that speaks LLM (the OpenAI-compatible REST routes, the
titancompute.v1 cluster): a causal LM from ``models/llm/`` continues a plain prompt, or a chat
rendered with the model's own chat template. Each new piece of text is emitted as a
``TextGenerationChunk`` (``Engine.stream`` relays them; ``submit`` drops them) and the response
carries the whole text, so streamed and plain callers see the same result.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from PIL import Image
from pydantic import Field, model_validator

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.storage.images import load_image, reading_image

if TYPE_CHECKING:
    from genserve.models.loaders.llm import CausalLM

MAX_TOKENS = 4096
MAX_PROMPT_CHARS = 200_000
MAX_STOPS = 4
MAX_IMAGES = 8
MAX_IMAGE_CHARS = 16 * 1024 * 1024  # a data: URL of a 12 MB image; a path is far shorter
DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)


class ChatMessage(ServiceModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class TextGenerationRequest(ServiceModel):
    model: str = Field(description="A transformers folder name under models/llm/.", examples=["tiny-chat"])
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="Text to continue.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=1024, description="A chat, rendered with the model's chat template."
    )
    max_tokens: int = Field(100, ge=1, le=MAX_TOKENS, description="Most tokens to generate.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy (deterministic).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k likeliest tokens; 0 = no limit.")
    min_p: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Sample only tokens at least min_p times as likely as the likeliest (after "
        "temperature); none or 0 = off. Greedy (temperature 0) always takes the likeliest anyway.",
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="Divide the scores of tokens already in the prompt or the text by this (above 1 "
        "repeats less, below 1 more); none or 1 = off. Applies to greedy generation too.",
    )
    presence_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=5.0,
        description="Subtract this from the score of every token the generated text already holds "
        "(not the prompt), once however often it occurs, as OpenAI defines it; none or 0 = off.",
    )
    thinking: bool | None = Field(
        None,
        description="For chat templates with a thinking switch (enable_thinking, as Qwen3's): true "
        "turns thinking on, false off; none = the template's default. True is refused for a "
        "plain prompt or a template without the switch.",
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_STOPS,
        description="Generation ends when the text contains one; the stop string is not returned.",
    )
    seed: int | None = Field(
        None, ge=-(2**63), lt=2**64, description="Same seed and request, same text; none = random."
    )
    images: list[Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_IMAGES,
        description="Images shown to a vision-language model before the text of the last user "
        "message, each a file inside a read root or a data: URL (data:image/png;base64,...); needs "
        "messages. A text-only model refuses them.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> TextGenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.images and self.messages is None:
            raise ValueError("images are shown in a chat: send messages, not a prompt")
        return self


class TextGenerationChunk(ServiceModel):
    index: int = Field(description="0, 1, 2, ... per emitted piece.")
    text: str = Field(description="The new text since the previous chunk.")
    token_count: int = Field(description="Tokens generated so far.")


class TextGenerationResponse(ServiceModel):
    model: str
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    seed: int | None = Field(description="The seed sampling used (None when greedy).")


# -- string options (gRPC map<string,string>) ---------------------------------------------------


def _stop_option(raw: str) -> list[str]:
    """A JSON list of strings, or one plain string (which may itself be anything, even '[')."""
    if raw.lstrip().startswith("["):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return [raw]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("a JSON list of strings")
        return value
    return [raw]


_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "top_p": (float, "a number in (0, 1]"),
    "top_k": (int, "a whole number >= 0"),
    "seed": (int, "a whole number"),
    "stop": (_stop_option, "a JSON list of strings or one string"),
}


def options_to_fields(options: Mapping[str, str]) -> dict[str, Any]:
    """Request fields from a string map, for doors whose wire has only ``map<string,string>``.

    An unknown key is refused rather than ignored, so a typo never silently changes nothing.
    Ranges are checked by the request model, which names the field the same way.
    """
    fields: dict[str, Any] = {}
    accepted = ", ".join(_OPTIONS)
    for key, raw in options.items():
        option = _OPTIONS.get(key)
        if option is None:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{key}: not a text generation option; accepted options: {accepted}",
                field=key,
            )
        parse, expected = option
        try:
            fields[key] = parse(str(raw).strip() if key != "stop" else str(raw))
        except ValueError:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{key}: must be {expected}, got {raw!r}", field=key
            ) from None
    return fields


# -- running ------------------------------------------------------------------------------------


def _prompt_inputs(
    llm: CausalLM, request: TextGenerationRequest, images: Sequence[Image.Image]
) -> dict[str, torch.Tensor]:
    """``input_ids`` (and, with images, the pixel patches and their grids) for ``generate``."""
    tokenizer = llm.tokenizer
    vision: dict[str, torch.Tensor] = {}
    if images and llm.processor is None:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"images: model {request.model} reads text only; give a vision-language model or no images",
            field="images",
        )
    if request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"messages: model {request.model} has no chat template; send a prompt instead",
                field="messages",
            )
        chat: list[dict[str, Any]] = [message.model_dump() for message in request.messages]
        if images:
            chat = _with_images(chat, len(images))
        switch = _thinking_switch(tokenizer, request)
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **switch)
        if images:
            assert llm.processor is not None
            vision = llm.processor.images(images)
            text = llm.processor.text([text], vision, padding=False)["input_ids"]
            ids = text if isinstance(text, torch.Tensor) else torch.tensor(text)
        else:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        field = "messages"
    else:
        if request.thinking:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                "thinking: a plain prompt has no chat template to switch thinking on; send messages",
                field="thinking",
            )
        ids = tokenizer(request.prompt, return_tensors="pt")["input_ids"]
        field = "prompt"
    if ids.shape[1] == 0:
        raise GenserveError(ErrorCode.INVALID_INPUT, f"{field}: must not be empty", field=field)
    limit = llm.context_length
    if limit is not None and ids.shape[1] >= limit:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {ids.shape[1]} tokens; model {request.model} takes fewer than {limit}",
            field=field,
        )
    return {"input_ids": ids, **vision}


def _with_images(chat: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The chat with ``count`` images before the text of its last user message (content parts,
    as vision-language chat templates read them)."""
    users = [i for i, message in enumerate(chat) if message["role"] == "user"]
    if not users:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, "images: the chat has no user message to show them in", field="images"
        )
    last = users[-1]
    parts = [{"type": "image"}] * count + [{"type": "text", "text": chat[last]["content"]}]
    return [*chat[:last], {"role": "user", "content": parts}, *chat[last + 1 :]]


def _thinking_switch(tokenizer: Any, request: TextGenerationRequest) -> dict[str, bool]:
    """``enable_thinking`` for a template that reads it; a template without it cannot think on
    request, so ``thinking: true`` is refused there and ``false`` has nothing to switch off."""
    if request.thinking is None:
        return {}
    if "enable_thinking" in str(tokenizer.chat_template):
        return {"enable_thinking": request.thinking}
    if request.thinking:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"thinking: model {request.model}'s chat template has no thinking switch (enable_thinking)",
            field="thinking",
        )
    return {}


def _eos_ids(llm: CausalLM) -> set[int]:
    configured = getattr(llm.model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(llm.tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


def _pad_id(llm: CausalLM) -> int | None:
    pad = llm.tokenizer.pad_token_id
    return pad if pad is not None else llm.tokenizer.eos_token_id


def run(request: TextGenerationRequest, ctx: RunContext) -> TextGenerationResponse:
    images = [_image(raw, f"images[{i}]", ctx) for i, raw in enumerate(request.images)]
    return generate(request, ctx, images)


def _image(raw: str, field: str, ctx: RunContext) -> Image.Image:
    """A data: URL decoded (within storage.max_image_pixels), else a file inside a read root."""
    found = DATA_URL.match(raw)
    if found is None:
        return load_image(ctx.sandbox, raw, field)
    try:
        data = base64.b64decode(raw[found.end() :], validate=True)
    except binascii.Error:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{field}: the data: URL's base64 does not decode", field=field
        ) from None
    with reading_image(data, field, "the data: URL", ctx.sandbox.max_image_pixels) as image:
        image.load()
        return image.convert("RGB")


def generate(
    request: TextGenerationRequest, ctx: RunContext, images: Sequence[Image.Image] = ()
) -> TextGenerationResponse:
    """``run`` with the request's images already in memory (a workflow's IMAGE)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from genserve.services.text.token_stream import IncrementalText, SeededSampler, StopWhen, penalties

    if len(images) > MAX_IMAGES:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"images: at most {MAX_IMAGES} images, got {len(images)}", field="images"
        )
    with ctx.use_model(ModelKind.LLM, request.model, "model") as llm:
        inputs = {k: v.to(llm.device) for k, v in _prompt_inputs(llm, request, images).items()}
        prompt = inputs.pop("input_ids")
        sampling = request.temperature > 0
        seed = (request.seed if request.seed is not None else secrets.randbelow(2**31)) if sampling else None
        emitted = 0

        def send(piece: str, token_count: int) -> None:
            nonlocal emitted
            ctx.emit(TextGenerationChunk(index=emitted, text=piece, token_count=token_count))
            ctx.progress(token_count, request.max_tokens, stage="generate")
            emitted += 1

        streamer = IncrementalText(llm.tokenizer, request.stop, send)
        # Penalties first, then sampling's warpers: the order transformers' do_sample=True uses.
        processors = LogitsProcessorList(
            penalties(request.repetition_penalty, request.presence_penalty, prompt.shape[1])
        )
        if seed is not None:
            processors.append(
                SeededSampler(seed, request.temperature, request.top_k, request.top_p, request.min_p)
            )
        ctx.check_cancelled()
        try:
            output = llm.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                **inputs,
                max_new_tokens=request.max_tokens,
                do_sample=False,  # sampling, when asked for, is SeededSampler's: see its docstring
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([StopWhen(ctx.cancel_event.is_set, streamer)]),
                streamer=streamer,
                pad_token_id=_pad_id(llm),
            )
        except GenserveError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise GenserveError(ErrorCode.INTERNAL, f"text generation failed: {exc}") from exc
        ctx.check_cancelled()
        generated = output[0, prompt.shape[1] :].tolist()
        ended_by_eos = bool(generated) and generated[-1] in _eos_ids(llm)
        return TextGenerationResponse(
            model=request.model,
            text=streamer.text,
            finish_reason="stop" if streamer.stopped or ended_by_eos else "length",
            prompt_tokens=int(prompt.shape[1]),
            completion_tokens=len(generated),
            seed=seed,
        )


SERVICE = Service(
    "text_generation",
    TextGenerationRequest,
    TextGenerationResponse,
    run,
    description="Generate text with a causal LM from models/llm/: a prompt to continue, or chat messages "
    "rendered with the model's chat template. Streams chunks through Engine.stream.",
)
