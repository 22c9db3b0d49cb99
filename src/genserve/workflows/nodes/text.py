"""TextGenerate: ComfyUI's LLM node, run by genserve's text_generation service.

The ``clip`` input names the model: CLIPLoader hands on an LLM from ``models/llm/`` (a
transformers folder) or a ComfyUI single-file LLM from ``text_encoders/`` (Qwen-Image 2.1's Qwen3.5
prompt enhancers) when given one's name, and the node calls the same ``generation.run`` the
OpenAI-compatible routes and the cluster use, with the node's cancel flag. The prompt goes
through the model's chat template (``use_default_template``, ComfyUI's default) with
``system_prompt`` as the system message, or is continued as plain text; ``thinking`` is the
template's thinking switch (ComfyUI's tokenizer does the same), refused where there is none.
Sampling ``on`` maps to the service's seeded sampler (temperature, top_k, top_p, min_p, seed) and
its penalties (repetition, presence); ``off`` is greedy with no penalties, as ComfyUI's. An
``image`` (every image of the batch) is shown to a vision-language model before the prompt, as
ComfyUI's does; a text-only model refuses it, and video or audio is refused rather than unseen.
``mtp`` is ComfyUI's speculative decoding with a checkpoint's multi-token-prediction head: genserve
decodes without it (it loads no MTP head), which is what ``off`` asks and what ``auto`` amounts to
(it changes speed, not which text is likely); a pinned draft depth (2-5) cannot be honoured and is
refused naming the input.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from pydantic import ValidationError

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.text import generation
from genserve.workflows.inputs import (
    Boolean,
    Combo,
    DynamicCombo,
    Float,
    InputSpec,
    Int,
    Linked,
    Option,
    String,
    with_options,
)
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.values import ClipRef, resources_of, tensor_to_images

THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
MODE = "sampling_mode."
# The node's input for a request field it fills from elsewhere than sampling_mode.
INPUT_NAMES = {"messages": "prompt", "prompt": "prompt", "max_tokens": "max_length", "thinking": "thinking"}
# What sampling_mode "on" adds, ComfyUI's defaults included; "off" adds nothing.
SAMPLING_ON: dict[str, InputSpec] = {
    "temperature": Float(0.7, min=0.01, max=2.0, step=0.000001),
    "top_k": Int(64, min=0, max=1000),
    "top_p": Float(0.95, min=0.0, max=1.0, step=0.01),
    "min_p": Float(0.05, min=0.0, max=1.0, step=0.01),
    "repetition_penalty": Float(1.05, min=0.0, max=5.0, step=0.01),
    "seed": Int(0, min=0, max=0xFFFFFFFFFFFFFFFF),
}
SAMPLING_ON_OPTIONAL = {"presence_penalty": Float(0.0, min=0.0, max=5.0, step=0.01)}
SAMPLING_INPUTS = {**SAMPLING_ON, **SAMPLING_ON_OPTIONAL}
MTP_CHOICES = ("auto", "off", "2", "3", "4", "5")
MTP_HONOURED = ("auto", "off")  # no MTP head is loaded: decoding is plain, as "off" asks


def _llm_name(ctx: NodeContext, clip: ClipRef) -> str:
    """The LLM the CLIP value names: CLIPLoader's LLM, or an LLM of the text encoder's name."""
    if clip.kind is ModelKind.LLM:
        return clip.clip_name
    registry = resources_of(ctx).models.registry
    if registry.find(ModelKind.LLM, clip.clip_name) is not None:
        return clip.clip_name
    raise GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"clip: {clip.clip_name} is a text encoder; TextGenerate needs an LLM under llm/ or a "
        "single-file LLM in text_encoders/ "
        f"(available: {', '.join(registry.available(ModelKind.LLM)) or 'none'})",
        field="clip",
    )


def split_thinking(text: str) -> tuple[str, str]:
    """``<think>...</think>`` blocks apart from the answer: (answer, thinking)."""
    thinking = "\n".join(part.strip() for part in THINK.findall(text))
    return THINK.sub("", text).strip(), thinking


def _sampling(options: dict[str, Any]) -> dict[str, Any]:
    """sampling_mode "on"'s inputs as the service's fields; one left out takes its default."""
    given = {name: options.get(MODE + name, spec.default) for name, spec in SAMPLING_INPUTS.items()}
    return {
        "temperature": float(given["temperature"]),
        "top_k": int(given["top_k"]) or None,
        "top_p": float(given["top_p"]) or None,
        "min_p": float(given["min_p"]),
        "repetition_penalty": float(given["repetition_penalty"]),
        "presence_penalty": float(given["presence_penalty"]),
        "seed": int(given["seed"]),
    }


def _request(
    model: str, prompt: str, system_prompt: str, max_length: int, options: dict[str, Any]
) -> generation.TextGenerationRequest:
    fields: dict[str, Any] = {"model": model, "max_tokens": min(max_length, generation.MAX_TOKENS)}
    thinking = bool(options.get("thinking", False))
    if options.get("use_default_template", True):
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        fields["messages"] = [*system, {"role": "user", "content": prompt}]
        fields["thinking"] = thinking
    else:
        fields["prompt"] = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
        fields["thinking"] = thinking or None  # no template: nothing to switch off
    if options.get("sampling_mode", "on") == "on":
        fields.update(_sampling(options))
    else:
        fields["temperature"] = 0.0
    try:
        return generation.TextGenerationRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "sampling_mode"
        name = INPUT_NAMES.get(field, MODE + field)
        raise GenserveError(ErrorCode.INVALID_INPUT, f"{name}: {error['msg']}", field=name) from None


def _text_generate(
    ctx: NodeContext,
    clip: ClipRef,
    prompt: str,
    max_length: int,
    image: torch.Tensor | None = None,
    video: torch.Tensor | None = None,
    audio: Any = None,
    system_prompt: str = "",
    **options: Any,
) -> tuple[str, str]:
    mtp = str(options.pop("mtp", "auto"))
    if mtp not in MTP_HONOURED:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"mtp: a draft depth of {mtp} asks for speculative decoding with an MTP head, which genserve "
            "does not run (it decodes token by token, as ComfyUI without MTP weights); choose auto or off",
            field="mtp",
        )
    for name, given in (("video", video), ("audio", audio)):
        if given is not None:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{name}: genserve's text generation reads text and images only; disconnect the {name}",
                field=name,
            )
    request = _request(_llm_name(ctx, clip), prompt, system_prompt, max_length, options)
    pictures = tensor_to_images(image) if image is not None else []
    if pictures and request.messages is None:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            "image: images are shown through the chat template; turn use_default_template on",
            field="image",
        )
    try:
        response = generation.generate(request, resources_of(ctx).run_context(ctx), pictures)
    except GenserveError as exc:
        if exc.details.get("field") == "images":  # the node calls it image
            raise GenserveError(
                exc.code, exc.message.replace("images:", "image:", 1), field="image"
            ) from None
        raise
    return split_thinking(response.text)


def text_node_types() -> list[NodeType]:
    return [
        NodeType(
            "TextGenerate",
            _text_generate,
            required={
                "clip": Linked("CLIP"),
                "prompt": String("", multiline=True),
                "max_length": Int(512, min=1, max=32768),
                "sampling_mode": with_options(
                    DynamicCombo([Option("on", SAMPLING_ON, SAMPLING_ON_OPTIONAL), Option("off")]),
                    display_name="Sampling Mode",
                ),
            },
            optional={
                "image": Linked("IMAGE"),
                "video": Linked("IMAGE"),
                "audio": Linked("AUDIO"),
                # A socket in ComfyUI's templates, never a widget.
                "system_prompt": with_options(String("", multiline=True), forceInput=True),
                "thinking": Boolean(False),
                "use_default_template": Boolean(True),
                "mtp": Combo(
                    MTP_CHOICES,
                    default="auto",
                    tooltip="Speculative decoding with the checkpoint's multi-token-prediction head "
                    "(ComfyUI's). genserve decodes without it: auto and off give the same text; "
                    "a pinned depth is refused.",
                ),
            },
            return_types=("STRING", "STRING"),
            return_names=("generated_text", "thinking"),
            display_name="Generate Text",
            category="text",
        ),
    ]
