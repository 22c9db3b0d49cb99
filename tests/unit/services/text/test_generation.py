"""text_generation over the demo LLM: limits, determinism, seeds, stop strings, streaming, options."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.app.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.llm import DEMO_LLM
from genserve.services.text.generation import TextGenerationChunk, TextGenerationResponse, options_to_fields

PROMPT = {"model": DEMO_LLM, "prompt": "Once upon a time"}
GREEDY = {**PROMPT, "temperature": 0, "max_tokens": 30}


def test_max_tokens_bounds_the_completion(run: Callable[..., Any]) -> None:
    done = run("text_generation", {**GREEDY, "max_tokens": 5})
    assert isinstance(done, TextGenerationResponse)
    assert (done.finish_reason, done.completion_tokens) == ("length", 5)
    assert done.prompt_tokens == 5 and done.model == DEMO_LLM


def test_greedy_is_deterministic_and_sampling_follows_the_seed(run: Callable[..., Any]) -> None:
    greedy = [run("text_generation", GREEDY) for _ in range(2)]
    assert greedy[0].text == greedy[1].text and greedy[0].seed is None
    seeded = [run("text_generation", {**GREEDY, "temperature": 1.0, "seed": 11}) for _ in range(2)]
    assert seeded[0].text == seeded[1].text and seeded[0].seed == 11
    other = run("text_generation", {**GREEDY, "temperature": 1.0, "seed": 12})
    assert len({greedy[0].text, seeded[0].text, other.text}) == 3
    drawn = run("text_generation", {**GREEDY, "temperature": 1.0})  # no seed: one is drawn and reported
    assert isinstance(drawn.seed, int)
    assert run("text_generation", {**GREEDY, "temperature": 1.0, "seed": drawn.seed}).text == drawn.text


def test_top_k_one_is_greedy(run: Callable[..., Any]) -> None:
    greedy = run("text_generation", GREEDY)
    assert run("text_generation", {**GREEDY, "temperature": 1.5, "top_k": 1, "seed": 3}).text == greedy.text


def test_stop_string_ends_generation_and_is_not_returned(run: Callable[..., Any]) -> None:
    full = run("text_generation", GREEDY).text
    stop = full[9:12]
    cut = full.index(stop)
    done = run("text_generation", {**GREEDY, "stop": ["never appears", stop]})
    assert done.text == full[:cut] and done.finish_reason == "stop"
    assert done.completion_tokens < 30


def _stream(runtime: Runtime, request: dict[str, Any]) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in runtime.engine.stream("text_generation", request)]

    return asyncio.run(collect())


def test_chunks_concatenate_to_the_final_text(runtime: Runtime) -> None:
    items = _stream(runtime, {**PROMPT, "max_tokens": 40, "seed": 5, "stop": ["zzz"]})
    *chunks, final = items
    assert isinstance(final, TextGenerationResponse) and chunks
    assert all(isinstance(c, TextGenerationChunk) and c.text for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    counts = [c.token_count for c in chunks]
    assert counts == sorted(counts) and counts[-1] <= final.completion_tokens
    assert "".join(c.text for c in chunks) == final.text


def test_chat_messages_use_the_chat_template(runtime: Runtime) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    done = runtime.engine.run_sync(
        "text_generation", {"model": DEMO_LLM, "messages": messages, "max_tokens": 3}
    )
    with runtime.models.use("llm", DEMO_LLM) as llm:
        rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expected = len(llm.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert rendered.endswith("<|im_start|>assistant\n") and done.prompt_tokens == expected


def test_cancel_stops_generation_at_the_next_token(runtime: Runtime) -> None:
    flag = threading.Event()

    async def scenario() -> None:
        await runtime.engine.submit(
            "text_generation",
            {**PROMPT, "max_tokens": 4096, "seed": 1},
            cancel=flag,
            chunks=lambda _: flag.set(),
        )

    with pytest.raises(GenserveError) as info:
        asyncio.run(scenario())
    assert info.value.code is ErrorCode.CANCELLED


def test_multibyte_text_streams_whole_characters(demo_models: Path) -> None:
    from transformers import AutoTokenizer

    from genserve.services.text.token_stream import IncrementalText

    tokenizer = AutoTokenizer.from_pretrained(demo_models / "llm" / DEMO_LLM)
    text = "café 東京 🙂 naïve"
    pieces: list[str] = []
    streamer = IncrementalText(tokenizer, [], lambda piece, _: pieces.append(piece))
    streamer.put(torch.tensor([[1, 2]]))  # the prompt, skipped
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == streamer.text == text and not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 1


@pytest.mark.parametrize(
    ("request_", "code", "named"),
    [
        ({"model": DEMO_LLM}, ErrorCode.INVALID_INPUT, "prompt or messages"),
        ({**PROMPT, "messages": [{"role": "user", "content": "x"}]}, ErrorCode.INVALID_INPUT, "messages"),
        ({**PROMPT, "max_tokens": 0}, ErrorCode.INVALID_INPUT, "max_tokens"),
        ({**PROMPT, "max_tokens": 5000}, ErrorCode.INVALID_INPUT, "max_tokens"),
        ({**PROMPT, "temperature": 2.5}, ErrorCode.INVALID_INPUT, "temperature"),
        ({**PROMPT, "stop": ["a", "b", "c", "d", "e"]}, ErrorCode.INVALID_INPUT, "stop"),
        ({**PROMPT, "stop": [""]}, ErrorCode.INVALID_INPUT, "stop"),
        ({**PROMPT, "model": "no-such-llm"}, ErrorCode.MODEL_NOT_FOUND, "no-such-llm"),
    ],
)
def test_bad_requests_are_refused_by_name(
    fails: Callable[..., GenserveError], request_: dict[str, Any], code: ErrorCode, named: str
) -> None:
    assert named in fails(code, "text_generation", request_).message


def test_options_to_fields_accepts_the_known_options() -> None:
    fields = options_to_fields({"top_p": "0.9", "top_k": " 40 ", "seed": "7", "stop": '["\\n", "END"]'})
    assert fields == {"top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n", "END"]}
    assert options_to_fields({"stop": "###"}) == {"stop": ["###"]}
    assert options_to_fields({}) == {}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"temperature_x": "1"}, "temperature_x"),
        ({"top_p": "high"}, "top_p"),
        ({"top_k": "1.5"}, "top_k"),
        ({"seed": ""}, "seed"),
        ({"stop": "[1, 2]"}, "stop"),
    ],
)
def test_options_to_fields_refuses_by_name(options: dict[str, str], named: str) -> None:
    with pytest.raises(GenserveError) as info:
        options_to_fields(options)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.message.startswith(named)
    if named == "temperature_x":
        assert "top_p, top_k, seed, stop" in info.value.message
