"""text_generation shows images to a vision-language model (the demo ``tiny-vl-chat``, a Qwen2.5-VL
folder) and refuses them where they cannot be seen: a text-only model, a plain prompt, a path
outside the read roots, too many."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from genserve.app.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.llm import DEMO_LLM
from genserve.models.demo.vision_chat import DEMO_VL_LLM
from genserve.services.text.generation import MAX_IMAGES, TextGenerationRequest

CHAT = {
    "model": DEMO_VL_LLM,
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is this?"}],
    "max_tokens": 8,
    "temperature": 0,
}


def test_the_image_changes_what_a_vision_model_says(
    runtime: Runtime, run: Callable[..., Any], data_root: Path
) -> None:
    with runtime.models.use("llm", DEMO_VL_LLM) as llm:
        assert llm.sees_images and llm.context_length == 4096
    person, cloth = (str(data_root / "inputs" / name) for name in ("person.png", "cloth.png"))
    seen = run("text_generation", {**CHAT, "images": [person]})
    assert seen.completion_tokens > 0
    # Each image is turned into its vision tokens: the prompt grows by them.
    plain = run("text_generation", CHAT)
    assert seen.prompt_tokens > plain.prompt_tokens + 10
    assert run("text_generation", {**CHAT, "images": [person]}).text == seen.text
    other = run("text_generation", {**CHAT, "images": [cloth]})
    both = run("text_generation", {**CHAT, "images": [person, cloth]})
    assert len({seen.text, other.text, plain.text}) == 3
    assert both.prompt_tokens > seen.prompt_tokens


def test_images_are_refused_where_they_cannot_be_seen(
    fails: Callable[..., GenserveError], data_root: Path
) -> None:
    person = str(data_root / "inputs" / "person.png")
    refused = fails(
        ErrorCode.INVALID_INPUT, "text_generation", {**CHAT, "model": DEMO_LLM, "images": [person]}
    )
    assert refused.details["field"] == "images" and "reads text only" in refused.message
    outside = fails(ErrorCode.PERMISSION_DENIED, "text_generation", {**CHAT, "images": ["/etc/hostname"]})
    assert outside.details["field"] == "images[0]" and "read_roots" in outside.message
    missing = fails(ErrorCode.IMAGE_NOT_FOUND, "text_generation", {**CHAT, "images": [person + ".nope"]})
    assert missing.details["field"] == "images[0]"


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"prompt": "Describe", "messages": None}, "send messages"),
        ({"images": ["a.png"] * (MAX_IMAGES + 1)}, "at most"),
        ({"images": [""]}, "at least 1"),
    ],
)
def test_image_fields_are_checked_before_any_work(fields: dict[str, Any], why: str) -> None:
    body = {**CHAT, "images": ["a.png"], **fields}
    with pytest.raises(ValidationError, match=why):
        TextGenerationRequest.model_validate({k: v for k, v in body.items() if v is not None})


def test_a_data_url_is_the_same_image_as_its_file(
    run: Callable[..., Any], fails: Callable[..., GenserveError], data_root: Path
) -> None:
    person = data_root / "inputs" / "person.png"
    url = "data:image/png;base64," + base64.b64encode(person.read_bytes()).decode()
    assert (
        run("text_generation", {**CHAT, "images": [url]}).text
        == run("text_generation", {**CHAT, "images": [str(person)]}).text
    )
    broken = fails(
        ErrorCode.INVALID_INPUT, "text_generation", {**CHAT, "images": ["data:image/png;base64,@@@"]}
    )
    assert broken.details["field"] == "images[0]" and "base64" in broken.message
    text = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    junk = fails(ErrorCode.INVALID_INPUT, "text_generation", {**CHAT, "images": [text]})
    assert junk.details["field"] == "images[0]" and "not an image" in junk.message
