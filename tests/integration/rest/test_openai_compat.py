"""The OpenAI-compatible door driven by the real ``openai`` client against a live server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from genserve.models.demo.llm import DEMO_LLM
from genserve.models.demo.vision_chat import DEMO_VL_LLM
from tests.integration.conftest import LiveServer


@pytest.fixture
def ai(server: LiveServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()


def test_models_lists_the_demo_llm(ai: openai.OpenAI) -> None:
    assert DEMO_LLM in [model.id for model in ai.models.list()]
    assert ai.models.retrieve(DEMO_LLM).id == DEMO_LLM


def test_streamed_chat_completion(ai: openai.OpenAI) -> None:
    stream = ai.chat.completions.create(
        model=DEMO_LLM,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in with_choices][-1] in ("length", "stop")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 12
    # The same request without streaming gives the same text (temperature 0 is greedy).
    plain = ai.chat.completions.create(
        model=DEMO_LLM,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        max_tokens=12,
        temperature=0,
    )
    assert plain.choices[0].message.content == text
    assert plain.usage is not None and plain.usage.completion_tokens == chunks[-1].usage.completion_tokens


def test_non_streamed_completion(ai: openai.OpenAI) -> None:
    done = ai.completions.create(model=DEMO_LLM, prompt="Once upon a time", max_tokens=8, seed=7)
    assert done.object == "text_completion" and done.model == DEMO_LLM
    assert done.choices[0].finish_reason in ("length", "stop") and isinstance(done.choices[0].text, str)
    assert done.usage is not None and done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    again = ai.completions.create(model=DEMO_LLM, prompt="Once upon a time", max_tokens=8, seed=7)
    assert again.choices[0].text == done.choices[0].text


def test_streamed_completion_ends_with_done(server: LiveServer) -> None:
    body = {"model": DEMO_LLM, "prompt": "Hi", "max_tokens": 5, "stream": True, "temperature": 0}
    with server.client() as http, http.stream("POST", "/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"object": "text_completion"' in events[0] and '"finish_reason": "length"' in events[-2]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"temperature": 5}, "temperature")],
)
def test_bad_field_is_a_400_naming_it(ai: openai.OpenAI, extra: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ai.chat.completions.create(
            model=DEMO_LLM, messages=[{"role": "user", "content": "hi"}], max_tokens=2, **extra
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_max_completion_tokens_error_names_it(server: LiveServer) -> None:
    body = {"model": DEMO_LLM, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_completion_tokens"


def test_unknown_model_is_a_404(ai: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as info:
            ai.chat.completions.create(
                model="no-such-llm", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
        error = info.value.body
        assert isinstance(error, dict) and error["code"] == "model_not_found"
        assert "no-such-llm" in error["message"]


def test_client_disconnect_cancels_the_stream(server: LiveServer) -> None:
    from genserve.engine.events import RunRecord
    from tests.integration.conftest import wait_for

    records: list[RunRecord] = []
    server.runtime.engine.observers.append(records.append)
    try:
        body = {"model": DEMO_LLM, "prompt": "Once", "max_tokens": 4096, "stream": True, "seed": 1}
        with server.client() as http, http.stream("POST", "/v1/completions", json=body) as answer:
            first = next(line for line in answer.iter_lines() if line.startswith("data: "))
            assert '"text_completion"' in first
        # Leaving the block closed the connection mid-stream: the run ends long before 4096 tokens.
        wait_for(lambda: any(r.service == "text_generation" for r in records), 10, "the run to end")
    finally:
        server.runtime.engine.observers.remove(records.append)
    assert [r.outcome for r in records if r.service == "text_generation"] in (["CANCELLED"], ["cancelled"])


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_a_vision_llm_reads_image_url_parts(ai: openai.OpenAI, demo_images: Path) -> None:
    """OpenAI's vision message shape (text and image_url parts, inline data: URLs) on the demo
    vision-language model; a text-only model and a remote URL are refused naming messages."""

    def ask(model: str, *images: Path, url: str | None = None) -> Any:
        parts: list[dict[str, Any]] = [{"type": "text", "text": "What is this?"}]
        parts += [{"type": "image_url", "image_url": {"url": url or _data_url(p)}} for p in images]
        return ai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": parts}], max_tokens=6, temperature=0
        )

    person, cloth = demo_images / "person.png", demo_images / "cloth.png"
    blind, seen, other = ask(DEMO_VL_LLM), ask(DEMO_VL_LLM, person), ask(DEMO_VL_LLM, cloth)
    assert seen.usage is not None and blind.usage is not None
    assert seen.usage.prompt_tokens > blind.usage.prompt_tokens + 10
    assert seen.choices[0].message.content != other.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        ask(DEMO_LLM, person)
    assert "reads text only" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        ask(DEMO_VL_LLM, person, url="https://example.com/cat.png")
    assert info.value.body["param"] == "messages" and "data: URL" in str(info.value)  # type: ignore[index]
