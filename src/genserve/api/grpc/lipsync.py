"""monolithic.MonolithicService: the lip-sync server's six RPCs.

As the spec says, application errors come back in the response (``success=false`` and the
message) and only transport-level trouble is a gRPC status: a full queue (RESOURCE_EXHAUSTED),
a server shutting down (UNAVAILABLE), a deadline (DEADLINE_EXCEEDED), a cancelled call.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc

from genserve.api.grpc.calls import REQUEST_ID_KEY, abort, deadline, request_id_of
from genserve.api.grpc.gen import monolithic_pb2 as pb
from genserve.api.grpc.gen import monolithic_pb2_grpc as rpc
from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.services.lipsync.admin import LipsyncAdmin
from genserve.services.lipsync.service import LipsyncRequest, LipsyncResponse

Context = grpc.aio.ServicerContext
M = TypeVar("M", pb.ModelInfo, pb.ModelStats)
# Not the request's fault: the client should retry or stop, so these stay gRPC statuses.
_TRANSPORT = {ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.CANCELLED}


def _is_transport(err: GenserveError) -> bool:
    """A refusal naming a lip-sync setting (a model that cannot get a lipsync.max_models slot) is
    the server's answer to this request, like a missing model: it goes in the response."""
    return err.code in _TRANSPORT and "setting" not in err.details


class LipsyncServicer(rpc.MonolithicServiceServicer):
    """Inference through the engine; the admin RPCs through the one lip-sync admin object."""

    def __init__(
        self, engine: Engine, admin: LipsyncAdmin, timeout_s: float, unload_timeout_s: float
    ) -> None:
        self._engine = engine
        self._admin = admin
        self._timeout = timeout_s
        self._unload_timeout = unload_timeout_s

    async def InferBatchComposite(
        self, request: pb.CompositeBatchRequest, context: Context
    ) -> pb.CompositeBatchResponse:
        try:
            request_id = request_id_of(request, context)
        except GenserveError as err:
            return pb.CompositeBatchResponse(success=False, error=err.message, gpu_id=-1)
        # Built field by field: the frames are ~15 MB, so no dict or JSON detour (and no copy).
        body = LipsyncRequest.model_construct(
            model_id=request.model_id,
            visual_frames=request.visual_frames,
            raw_audio=request.raw_audio,
            audio_features=request.audio_features,
            batch_size=request.batch_size,
            start_frame_idx=request.start_frame_idx,
            sample_rate=request.sample_rate,
        )
        try:
            result = await self._engine.submit(
                "lipsync", body, request_id=request_id, timeout=deadline(context, self._timeout)
            )
        except GenserveError as err:
            if _is_transport(err):
                await abort(context, err, request_id)
            return pb.CompositeBatchResponse(success=False, error=err.message, gpu_id=-1)
        except Exception as exc:  # the last line of defence: a message, never a traceback
            return pb.CompositeBatchResponse(success=False, error=as_genserve_error(exc).message, gpu_id=-1)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        assert isinstance(result, LipsyncResponse)
        return pb.CompositeBatchResponse(**result.model_dump(), success=True)

    async def Health(self, request: pb.HealthRequest, context: Context) -> pb.HealthResponse:
        found = await asyncio.to_thread(self._admin.health, self._engine.accepting)
        return pb.HealthResponse(
            healthy=found.healthy,
            loaded_models=found.loaded_models,
            max_models=found.max_models,
            gpu_ids=found.gpu_ids,
            gpu_memory_used_gb=found.gpu_memory_used_gb,
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        # Discovery: a model that cannot load (a file missing) is left out; Health names it, and
        # GetModelStats keeps its row for its history.
        return pb.ListModelsResponse(models=await self._rows(pb.ModelInfo, only_available=True))

    async def GetModelStats(
        self, request: pb.GetModelStatsRequest, context: Context
    ) -> pb.GetModelStatsResponse:
        return pb.GetModelStatsResponse(models=await self._rows(pb.ModelStats))

    async def _rows(self, message: type[M], only_available: bool = False) -> list[M]:
        """Every model's stats as ``message``: the fields it has, by name (ModelInfo is a subset)."""
        rows = await asyncio.to_thread(self._admin.model_stats)
        names = [f.name for f in message.DESCRIPTOR.fields]
        return [
            message(**{name: getattr(r, name) for name in names})
            for r in rows
            if r.available or not only_available
        ]

    async def LoadModel(self, request: pb.LoadModelRequest, context: Context) -> pb.LoadModelResponse:
        try:
            gpu_id, load_ms = await asyncio.to_thread(
                self._admin.load_model,
                request.model_id,
                request.preferred_gpu,
                deadline(context, self._timeout),
            )
        except Exception as exc:
            return pb.LoadModelResponse(success=False, error=as_genserve_error(exc).message, gpu_id=-1)
        return pb.LoadModelResponse(success=True, gpu_id=gpu_id, load_time_ms=load_ms)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context: Context) -> pb.UnloadModelResponse:
        try:
            await asyncio.to_thread(self._admin.unload_model, request.model_id, self._unload_timeout)
        except Exception as exc:
            return pb.UnloadModelResponse(success=False, error=as_genserve_error(exc).message)
        return pb.UnloadModelResponse(success=True)


def service_name() -> str:
    return pb.DESCRIPTOR.services_by_name["MonolithicService"].full_name
