"""The parts ``generate()`` is driven with: incremental text with stop strings, cancellation,
penalties and seeded sampling.

Kept apart from the text generation service so its request/response contract reads on its own;
these are transformers hooks (a streamer, a stopping criterion, a logits processor) and hold no
protocol or engine knowledge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that do not (yet) make a whole character

TextSink = Callable[[str, int], None]  # (new text, tokens generated so far)


class IncrementalText(BaseStreamer):
    """Turns the token ids ``generate()`` pushes into new text, released piece by piece.

    Decoding one token at a time breaks characters that span tokens (UTF-8 bytes split across
    byte-level BPE tokens) and drops the leading spaces some tokenizers add per word. So each step
    decodes a short window ending at the newest token and releases what it adds to the window
    before it; text ending in an incomplete character waits for the next token. Text that may be
    the start of a stop string is held back until it is known not to be one, so a stop string is
    never released, and once one appears the streamer asks generation to stop (``stopped``).
    ``text`` is everything released: the concatenation of the pieces, by construction.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], sink: TextSink) -> None:
        self._tokenizer = tokenizer
        self._stops = [s for s in stops if s]
        self._sink = sink
        self._prompt_seen = False
        self.ids: list[int] = []
        self._prefix = 0  # window start: the tokens before the last released ones give context
        self._read = 0  # ids[:_read] are decoded into _decoded
        self._decoded = ""
        self.text = ""
        self.stopped = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() pushes the prompt first; it is not new text
            self._prompt_seen = True
            return
        if self.stopped:
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._decode(final=False)
        self._release(final=False)

    def end(self) -> None:
        if not self.stopped:
            self._decode(final=True)
            self._release(final=True)

    def _decode(self, final: bool) -> None:
        before = self._tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        window = self._tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if (window.endswith(REPLACEMENT) and not final) or len(window) < len(before):
            return
        self._decoded += window[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)

    def _release(self, final: bool) -> None:
        start = len(self.text)
        hits = [
            found
            for stop in self._stops
            if (found := self._decoded.find(stop, max(0, start - len(stop) + 1))) >= 0
        ]
        if hits:
            end = min(hits)
            self.stopped = True
        else:
            end = len(self._decoded) - (0 if final else self._held_back())
        if end > start:
            piece = self._decoded[start:end]
            self.text += piece
            self._sink(piece, len(self.ids))

    def _held_back(self) -> int:
        """Characters at the end that could still grow into a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._decoded)), longest, -1):
                if self._decoded.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class StopWhen(StoppingCriteria):
    """Ends generation after the current token once the run is cancelled or a stop string appeared."""

    def __init__(self, cancel: Callable[[], bool], text: IncrementalText) -> None:
        self._cancel = cancel
        self._text = text

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = self._cancel() or self._text.stopped
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class PresencePenalty(LogitsProcessor):
    """Subtracts ``penalty`` once from each token already generated, as OpenAI defines it.

    Unlike the repetition penalty (which scales, and counts the prompt too), this is additive and
    counts only the completion: a token the answer has used, however often, loses the same amount.
    """

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self._penalty = penalty
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self._prompt_length :]
        if generated.shape[1] == 0:
            return scores
        used = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
        return scores - used.to(scores.dtype) * self._penalty  # type: ignore[return-value]


def penalties(
    repetition_penalty: float | None, presence_penalty: float | None, prompt_length: int
) -> list[LogitsProcessor]:
    """The penalty processors a request asks for, to run before sampling (or the greedy pick).

    The repetition penalty is transformers' (prompt included, as ``generate(repetition_penalty=)``);
    1.0 and 0 penalties change nothing and are left out.
    """
    chain: list[LogitsProcessor] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if presence_penalty:
        chain.append(PresencePenalty(float(presence_penalty), prompt_length))
    return chain


class SeededSampler(LogitsProcessor):
    """Samples the next token with a private ``torch.Generator`` and leaves only it possible.

    ``generate()`` samples with torch's global RNG and takes no generator, so seeding it would need
    a process-wide lock to stay deterministic under concurrent requests. Instead generation runs
    greedy and this processor, last in the chain (after the penalties), applies temperature, top-k,
    top-p and min-p (the same transformers warpers, in the same order, as ``do_sample=True``), draws
    from its own generator and masks every other token: same seed and request, same text, whatever
    else runs alongside.
    """

    def __init__(
        self,
        seed: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        min_p: float | None = None,
    ) -> None:
        self._seed = seed
        self._generator: torch.Generator | None = None
        self._warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
        if top_k:
            self._warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            self._warpers.append(TopPLogitsWarper(top_p))
        if min_p:
            self._warpers.append(MinPLogitsWarper(min_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._generator is None:
            self._generator = torch.Generator(device=scores.device)
            self._generator.manual_seed(self._seed % 2**64)
        warped = scores.float()
        for warper in self._warpers:
            warped = warper(input_ids, warped)
        probs = torch.softmax(warped, dim=-1)
        choice = torch.multinomial(probs, num_samples=1, generator=self._generator)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, choice, 0.0)  # type: ignore[return-value]
