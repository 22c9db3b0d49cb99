"""text_generation's sampling options on the demo LLM: min-p, the repetition and presence penalties
and the chat template's thinking switch each change the result (or are refused) deterministically."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import LogitsProcessorList

from genserve.app.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.llm import CHAT_TEMPLATE, DEMO_LLM
from genserve.models.loaders.llm import CausalLM
from genserve.services.text.generation import TextGenerationRequest, _prompt_inputs
from genserve.services.text.token_stream import PresencePenalty, penalties

GREEDY = {"model": DEMO_LLM, "prompt": "Once upon a time", "temperature": 0, "max_tokens": 30}
SAMPLED = {**GREEDY, "temperature": 1.5, "seed": 3}
COOL = {**GREEDY, "temperature": 0.3, "seed": 3}  # sampled, yet close enough to greedy to repeat
CHAT = {
    "model": DEMO_LLM,
    "messages": [{"role": "user", "content": "Hello"}],
    "max_tokens": 3,
    "temperature": 0,
}
# Qwen3's switch, reduced: thinking off pre-fills an empty think block.
THINKING_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ '<|im_start|>assistant\\n' }}",
    "{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is defined and not enable_thinking %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}",
)


def test_min_p_one_keeps_only_the_likeliest_token(run: Callable[..., Any]) -> None:
    greedy = run("text_generation", GREEDY).text
    sampled = run("text_generation", SAMPLED).text
    assert sampled != greedy
    assert run("text_generation", {**SAMPLED, "min_p": 1.0}).text == greedy
    assert run("text_generation", {**SAMPLED, "min_p": 0.0}).text == sampled  # 0 is off
    some = [run("text_generation", {**SAMPLED, "min_p": 0.2}).text for _ in range(2)]
    assert some[0] == some[1] and some[0] not in (greedy, sampled)


@pytest.mark.parametrize(("option", "value"), [("repetition_penalty", 10.0), ("presence_penalty", 5.0)])
@pytest.mark.parametrize("base", [GREEDY, COOL], ids=["greedy", "sampled"])
def test_penalties_change_greedy_and_sampled_text_deterministically(
    run: Callable[..., Any], option: str, value: float, base: dict[str, Any]
) -> None:
    plain = run("text_generation", base).text
    penalised = [run("text_generation", {**base, option: value}).text for _ in range(2)]
    assert penalised[0] == penalised[1] != plain
    neutral = {"repetition_penalty": 1.0, "presence_penalty": 0.0}[option]
    assert run("text_generation", {**base, option: neutral}).text == plain  # the neutral value is off


def _generated_ids(runtime: Runtime, chain: LogitsProcessorList) -> tuple[list[int], list[int]]:
    """Greedy ids after the prompt, with the service's penalty processors, on the real demo model."""
    with runtime.models.use("llm", DEMO_LLM) as llm:
        prompt = llm.tokenizer(GREEDY["prompt"], return_tensors="pt")["input_ids"]
        output = llm.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=30,
            do_sample=False,
            logits_processor=chain,
            pad_token_id=llm.tokenizer.eos_token_id,
        )
    return prompt[0].tolist(), output[0, prompt.shape[1] :].tolist()


def test_huge_penalties_stop_repeated_tokens(runtime: Runtime) -> None:
    prompt, plain = _generated_ids(runtime, LogitsProcessorList())
    assert len(set(plain)) < len(plain)  # the random demo model repeats itself when greedy
    _, repetition = _generated_ids(runtime, LogitsProcessorList(penalties(50.0, None, len(prompt))))
    assert len(set(repetition)) == len(repetition) and not set(repetition) & set(prompt)
    _, presence = _generated_ids(runtime, LogitsProcessorList(penalties(None, 100.0, len(prompt))))
    assert len(set(presence)) == len(presence)


def test_presence_penalty_counts_each_generated_token_once_and_not_the_prompt() -> None:
    prompt_then_generated = torch.tensor([[5, 5, 7, 3, 3, 9]])
    scores = torch.zeros(1, 10)
    penalised = PresencePenalty(0.5, prompt_length=3)(prompt_then_generated, scores)  # type: ignore[arg-type]
    expected = torch.zeros(1, 10)
    expected[0, [3, 9]] = -0.5
    assert torch.equal(penalised, expected)
    assert torch.equal(PresencePenalty(0.5, prompt_length=6)(prompt_then_generated, scores), scores)  # type: ignore[arg-type]


def test_thinking_without_a_template_switch_is_refused_by_name(
    run: Callable[..., Any], fails: Callable[..., GenserveError]
) -> None:
    plain = run("text_generation", CHAT)
    assert run("text_generation", {**CHAT, "thinking": False}).text == plain.text  # nothing to switch off
    refused = fails(ErrorCode.INVALID_INPUT, "text_generation", {**CHAT, "thinking": True})
    assert refused.details["field"] == "thinking" and "enable_thinking" in refused.message
    refused = fails(ErrorCode.INVALID_INPUT, "text_generation", {**GREEDY, "thinking": True})
    assert refused.details["field"] == "thinking" and "messages" in refused.message


def test_thinking_sets_the_chat_templates_switch(runtime: Runtime) -> None:
    with runtime.models.use("llm", DEMO_LLM) as llm:
        tokenizer = copy.deepcopy(llm.tokenizer)
        tokenizer.chat_template = THINKING_TEMPLATE
        switched = CausalLM(llm.model, tokenizer)

        def rendered(thinking: bool | None) -> str:
            request = TextGenerationRequest.model_validate({**CHAT, "thinking": thinking})
            return str(tokenizer.decode(_prompt_inputs(switched, request, ())["input_ids"][0]))

        off, on, default = rendered(False), rendered(True), rendered(None)
    assert off.endswith("<think>\n\n</think>\n\n") and on == default and not on.endswith("</think>\n\n")


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_p", 1.5), ("repetition_penalty", 0.0), ("presence_penalty", -3.0), ("presence_penalty", 6.0)],
)
def test_out_of_range_options_are_refused_by_name(
    fails: Callable[..., GenserveError], field: str, value: float
) -> None:
    assert field in fails(ErrorCode.INVALID_INPUT, "text_generation", {**GREEDY, field: value}).message
