"""``genserve agent``: titancompute.v1.AgentService over the normal runtime's LLMs.

A client that got a session token from the coordinator calls StreamInference here directly.
The token is checked before any work (auth.py): without the coordinator's public key the agent
refuses every stream (UNAUTHENTICATED) instead of trusting tokens it cannot check. The text comes
from ``engine.stream("text_generation", ...)``, so admission, queue limits, cancellation on a
client's disconnect and logging are the engine's own.

Wire semantics the proto leaves open, decided here:
- max_tokens 0 (unset) means 100, the spec's default; negative is INVALID_ARGUMENT.
- temperature: proto3 cannot tell an unset float from 0, so 0 (or unset) means greedy, as the
  spec says "0 = greedy"; a client wanting the spec's usual 0.7 sends 0.7.
- options: text_generation's string options (top_p, top_k, seed, stop); an unknown key is
  INVALID_ARGUMENT naming it.
- stream=false sends only the final message; stream=true also sends one message per piece.
- Each piece is a message with token = content = the new text; the final message has done=true,
  content = the whole text, and metadata finish_reason, prompt_tokens, completion_tokens, seed,
  model, job_id, agent_id. created_at is unix seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from genserve.cluster import machine
from genserve.cluster.agent_link import LinkState
from genserve.cluster.auth import ReplayGuard, TokenVerifier
from genserve.cluster.routing import DEGRADED_SHARE
from genserve.cluster.transport import abort
from genserve.config_cluster import ClusterSettings
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.models.registry import ModelKind
from genserve.runtime import Runtime
from genserve.services.text_generation import TextGenerationChunk, TextGenerationResponse, options_to_fields

log = logging.getLogger("genserve.cluster.agent")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AgentService"].full_name
DEFAULT_MAX_TOKENS = 100
SPEED_SMOOTHING = 0.3  # weight of the newest job in the measured tokens per second


class AgentServicer(rpc.AgentServiceServicer):
    def __init__(self, settings: ClusterSettings, runtime: Runtime, agent_id: str) -> None:
        self.settings = settings
        self.runtime = runtime
        self.agent_id = agent_id
        self.verifier: TokenVerifier | None = None
        self.replay = ReplayGuard()
        self.active_sessions = 0
        self.total_requests = 0
        self.tokens_per_second = 0.0
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

    def queued(self) -> int:
        return sum(load.waiting for load in self.runtime.engine.loads())

    def status_word(self, figures: machine.MemoryFigures) -> str:
        if self.link is None or not self.link.registered:
            return "disconnected"
        total, free = (
            (figures.total_vram_mb, figures.free_vram_mb)
            if figures.total_vram_mb
            else (figures.total_ram_mb, figures.free_ram_mb)
        )
        # Memory only: reading the CPU share here would reset the interval the health stream reports.
        return "degraded" if total and free / total < DEGRADED_SHARE else "healthy"

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
            fields = _fields(request)
            if self.active_sessions >= self.settings.max_jobs:
                raise GenserveError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"agent {self.agent_id} is at max_jobs ({self.settings.max_jobs})",
                )
            # Claimed last: a request refused above may be corrected and sent again with its token.
            if not self.replay.claim(str(claims["jti"]), float(claims["exp"]) + self.settings.clock_skew_s):
                raise GenserveError(
                    ErrorCode.UNAUTHENTICATED, "session_token was already used (jti replayed)"
                )
        except GenserveError as err:
            await abort(context, err)
        job_id = str(claims["jti"])
        self.active_sessions += 1
        started = time.perf_counter()
        try:
            final: TextGenerationResponse | None = None
            stream = self.runtime.engine.stream("text_generation", fields, request_id=job_id)
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
            self.total_requests += 1

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
    """The text_generation request: the proto's fields with the defaults above, then the options."""
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
            f"temperature: must be 0 (greedy) or more (got {request.temperature})",
            field="temperature",
        )
    return {
        "model": request.model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": round(float(request.temperature), 6),  # float32 on the wire: 0.7 -> 0.699999988
        **options_to_fields(dict(request.options)),
    }
