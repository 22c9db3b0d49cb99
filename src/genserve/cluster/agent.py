"""``genserve agent``: titancompute.v1.AgentService over the normal runtime's LLMs.

A client that got a session token from the coordinator calls StreamInference here directly.
The token is checked before any work (auth.py): without the coordinator's public key the agent
refuses every stream (UNAUTHENTICATED) instead of trusting tokens it cannot check. The text comes
from ``engine.stream("text_generation", ...)``, so admission, queue limits, cancellation on a
client's disconnect and logging are the engine's own.

Wire semantics the proto leaves open, decided here:
- max_tokens 0 (unset) means 100, the spec's default; negative is INVALID_ARGUMENT.
- temperature: the spec says "Default: 0.7", and proto3 cannot tell an unset float from 0, so 0
  (or unset) means 0.7. Greedy decoding is asked for explicitly with options {"greedy": "true"}
  (with temperature left at 0: a non-zero temperature and greedy contradict each other).
- options: "greedy" and text_generation's string options (top_p, top_k, seed, stop); an unknown
  key is INVALID_ARGUMENT naming it.
- Every field is checked against text_generation's own request model (the same limits the
  service applies, e.g. max_tokens <= 4096, temperature <= 2) and the model must be one this agent
  has, all BEFORE the token's jti is claimed: a refused request can be corrected and sent again
  with its token. Only streams that get past these checks count in total_requests_processed.
- stream=false sends only the final message; stream=true also sends one message per piece.
- Each piece is a message with token = content = the new text; the final message has done=true,
  content = the whole text, and metadata finish_reason, prompt_tokens, completion_tokens, seed,
  model, job_id, agent_id. created_at is unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from genserve.cluster import machine
from genserve.cluster.agent_link import LinkState
from genserve.cluster.auth import ReplayGuard, TokenVerifier
from genserve.cluster.routing import free_share, is_degraded
from genserve.config.cluster import ClusterSettings
from genserve.engine.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.models.registry import ModelKind
from genserve.rpc.errors import abort
from genserve.services.base import parse_request
from genserve.services.text.generation import SERVICE as TEXT_GENERATION
from genserve.services.text.generation import (
    TextGenerationChunk,
    TextGenerationRequest,
    TextGenerationResponse,
    options_to_fields,
)

log = logging.getLogger("genserve.cluster.agent")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AgentService"].full_name
DEFAULT_MAX_TOKENS = 100
DEFAULT_TEMPERATURE = 0.7  # the spec's default, which a 0 on the wire stands for
GREEDY = "greedy"  # the option that asks for greedy decoding
OPTIONS = (GREEDY, "top_p", "top_k", "seed", "stop")  # options_to_fields takes all but greedy
TRUE, FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})
SPEED_SMOOTHING = 0.3  # weight of the newest job in the measured tokens per second


class AgentServicer(rpc.AgentServiceServicer):
    def __init__(
        self, settings: ClusterSettings, runtime: Runtime, agent_id: str, replay: ReplayGuard
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.agent_id = agent_id
        self.verifier: TokenVerifier | None = None
        self.replay = replay  # persisted by the agent (cluster.agent_state_dir): survives a restart
        self.active_sessions = 0  # streams admitted and not ended: generating or waiting
        self.total_requests = 0
        self.tokens_per_second = 0.0
        self.cpu_percent = 0.0  # the health stream's latest reading, which GetStatus reuses
        self.link: LinkState | None = None  # the coordinator link's state, set by the agent

    def set_key(self, answer: pb.PublicKeyResponse) -> None:
        """Called with every GetPublicKey answer (each registration), so a new key is picked up."""
        self.verifier = TokenVerifier(
            answer.public_key_pem, answer.issuer, self.agent_id, self.settings.clock_skew_s
        )

    # -- figures shared with the health stream and GetStatus ---------------------------------------

    def models(self) -> list[str]:
        return self.runtime.models.registry.available(ModelKind.LLM)

    def loaded_models(self) -> list[str]:
        return sorted(s.name for s in self.runtime.models.loaded() if s.kind == ModelKind.LLM.value)

    def job_counts(self) -> tuple[int, int]:
        """(running, queued) over this agent's admitted streams, each counted once.

        The engine's running count says how many runs are generating (only streams use this
        agent's engine); the other admitted streams wait, in the engine's queue or just before it.
        Reporting all sessions as running and the engine's waiting count as queued counted a
        waiting stream twice, and the coordinator saw the agent full while it had free slots.
        """
        generating = sum(load.running for load in self.runtime.engine.loads())
        running = min(self.active_sessions, generating)
        return running, self.active_sessions - running

    def status_word(self, figures: machine.MemoryFigures) -> str:
        if self.link is None or not self.link.registered:
            return "disconnected"
        share = (
            free_share(figures.total_vram_mb, figures.free_vram_mb)
            if figures.total_vram_mb
            else free_share(figures.total_ram_mb, figures.free_ram_mb)
        )
        # The coordinator's rule and limit. The CPU figure is the health stream's last reading:
        # reading psutil here would reset the interval that the stream reports.
        degraded = is_degraded(share, self.cpu_percent, self.settings.degraded_cpu_percent)
        return "degraded" if degraded else "healthy"

    # -- RPCs --------------------------------------------------------------------------------------

    async def GetStatus(
        self, request: pb.AgentStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.AgentStatusResponse:
        if request.agent_id and request.agent_id != self.agent_id:
            await abort(
                context,
                GenserveError(
                    ErrorCode.NOT_FOUND, f"agent_id: this is agent {self.agent_id}, not {request.agent_id}"
                ),
            )
        figures = machine.memory(self.runtime.engine.devices)
        return pb.AgentStatusResponse(
            agent_id=self.agent_id,
            status=self.status_word(figures),
            free_vram_mb=figures.free_vram_mb,
            free_ram_mb=figures.free_ram_mb,
            active_sessions=self.active_sessions,
            total_requests_processed=self.total_requests,
            model_loaded=",".join(self.loaded_models()),
        )

    async def StreamInference(
        self, request: pb.StreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        try:
            claims = self._authorise(request)
            parsed = self._request(request)
            if self.active_sessions >= self.settings.max_jobs:
                raise GenserveError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"agent {self.agent_id} is at max_jobs ({self.settings.max_jobs})",
                )
        except GenserveError as err:
            await abort(context, err)
        job_id = str(claims["jti"])
        # The slot is held across the claim's await, so two streams never both take the last one.
        self.active_sessions += 1
        try:
            # Claimed last: a request refused above may be corrected and sent again with its token.
            await self._claim(job_id, float(claims["exp"]) + self.settings.clock_skew_s)
        except GenserveError as err:
            self.active_sessions -= 1
            await abort(context, err)
        except BaseException:
            self.active_sessions -= 1
            raise
        started = time.perf_counter()
        try:
            final: TextGenerationResponse | None = None
            stream = self.runtime.engine.stream(TEXT_GENERATION, parsed, request_id=job_id)
            async with contextlib.aclosing(stream) as items:  # a client gone closes the run
                async for item in items:
                    if isinstance(item, TextGenerationResponse):
                        final = item
                    elif isinstance(item, TextGenerationChunk) and request.stream:
                        yield pb.StreamResponse(
                            session_token=request.session_token,
                            content=item.text,
                            token=item.text,
                            created_at=int(time.time()),
                            metadata={
                                "index": str(item.index),
                                "token_count": str(item.token_count),
                                "job_id": job_id,
                            },
                        )
            if final is None:
                raise GenserveError(ErrorCode.INTERNAL, "text_generation ended without a response")
            self._measure(final.completion_tokens, time.perf_counter() - started)
            yield pb.StreamResponse(
                session_token=request.session_token,
                content=final.text,
                done=True,
                created_at=int(time.time()),
                metadata={
                    "finish_reason": str(final.finish_reason),
                    "prompt_tokens": str(final.prompt_tokens),
                    "completion_tokens": str(final.completion_tokens),
                    "seed": "" if final.seed is None else str(final.seed),
                    "model": final.model,
                    "job_id": job_id,
                    "agent_id": self.agent_id,
                },
            )
        except GenserveError as err:
            await abort(context, err)
        except (grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:  # the last line of defence: a status, never a traceback
            log.exception("stream %s failed", job_id)
            await abort(context, as_genserve_error(exc))
        finally:
            self.active_sessions -= 1
            self.total_requests += 1  # admitted streams only: the refusals above returned earlier

    def _request(self, request: pb.StreamRequest) -> TextGenerationRequest:
        """The request as text_generation will run it, with every limit it applies checked now."""
        parsed = parse_request(TEXT_GENERATION, _fields(request))
        self.runtime.models.registry.resolve(ModelKind.LLM, parsed.model, "model")
        return parsed

    async def _claim(self, jti: str, expires_at: float) -> None:
        """Marks the token used (a disk write, so off the event loop); UNAUTHENTICATED on a replay."""
        try:
            fresh = await asyncio.to_thread(self.replay.claim, jti, expires_at)
        except sqlite3.Error as exc:
            raise GenserveError(
                ErrorCode.UNAVAILABLE, f"agent {self.agent_id} cannot record the used token: {exc}"
            ) from None
        if not fresh:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "session_token was already used (jti replayed)")

    def _authorise(self, request: pb.StreamRequest) -> dict[str, Any]:
        if self.verifier is None:
            raise GenserveError(
                ErrorCode.UNAUTHENTICATED,
                "this agent has no coordinator public key yet; it cannot check tokens",
            )
        if not request.model:
            raise GenserveError(ErrorCode.INVALID_INPUT, "model: is required", field="model")
        return self.verifier.verify(request.session_token, request.model)

    def _measure(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        speed = tokens / seconds
        self.tokens_per_second = (
            speed
            if not self.tokens_per_second
            else (1 - SPEED_SMOOTHING) * self.tokens_per_second + SPEED_SMOOTHING * speed
        )


def _fields(request: pb.StreamRequest) -> dict[str, Any]:
    """The text_generation request's fields: the proto's with the defaults above, then the options.

    Ranges are left to text_generation's request model (``parse_request``), which names the field.
    """
    if not request.prompt:
        raise GenserveError(ErrorCode.INVALID_INPUT, "prompt: is required", field="prompt")
    if request.max_tokens < 0:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"max_tokens: must not be negative (got {request.max_tokens})",
            field="max_tokens",
        )
    if not math.isfinite(request.temperature) or request.temperature < 0:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"temperature: must be 0 (the default) or more (got {request.temperature})",
            field="temperature",
        )
    options = dict(request.options)
    for key in options:
        if key not in OPTIONS:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{key}: not a text generation option; accepted options: {', '.join(OPTIONS)}",
                field=key,
            )
    # float32 on the wire: 0.7 arrives as 0.699999988, hence the rounding.
    temperature = round(float(request.temperature), 6) if request.temperature else DEFAULT_TEMPERATURE
    if _greedy(options.pop(GREEDY, "")):
        if request.temperature:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"greedy: true contradicts temperature {temperature}; leave temperature at 0",
                field=GREEDY,
            )
        temperature = 0.0
    return {
        "model": request.model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": temperature,
        **options_to_fields(options),
    }


def _greedy(raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE or value in FALSE:
        return value in TRUE
    raise GenserveError(ErrorCode.INVALID_INPUT, f"greedy: must be true or false, got {raw!r}", field=GREEDY)
