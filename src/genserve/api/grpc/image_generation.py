"""drawthings.ImageGenerationService: Echo, FilesExist, GenerateImage and UploadFile.

GenerateImage runs the core's ``image_generation`` service. proto3 cannot tell "not set" from 0,
so a zero width, height, steps, cfg_scale, denoising_strength, batch size or count, and an empty
sampler, take the server's defaults; every value that is set is checked by the service, which
names the field when it refuses one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from genserve.api.grpc.calls import REQUEST_ID_KEY, abort, deadline, guarded, request_id_of
from genserve.api.grpc.gen import image_generation_pb2 as pb
from genserve.api.grpc.gen import image_generation_pb2_grpc as rpc
from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelRegistry
from genserve.models.uploads import ModelUpload, file_status

Context = grpc.aio.ServicerContext
MAX_FILES = 1000
MIB = 1024 * 1024
CANCEL_SETTLE_S = 0.02
log = logging.getLogger("genserve.grpc")
_ZERO_IS_DEFAULT = (
    "width",
    "height",
    "steps",
    "cfg_scale",
    "denoising_strength",
    "batch_size",
    "batch_count",
)


def generation_request(request: pb.ImageGenerationRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "restore_faces": request.restore_faces,
        "enable_hr": request.enable_hr,
    }
    for name in _ZERO_IS_DEFAULT:
        value = getattr(request, name)
        if value:
            body[name] = value
    if request.sampler:
        body["sampler"] = request.sampler
    return body


def _take_back_if_cancelled(context: Context, committed: list[Path]) -> None:
    if context.cancelled():
        for path in committed:
            path.unlink(missing_ok=True)
            log.warning("upload %s was cancelled by its client after the last chunk; removed", path.name)


class ImageGeneration(rpc.ImageGenerationServiceServicer):
    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        upload_max_bytes: int,
        timeout_s: float,
        reply_max_bytes: int | None = None,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._upload_max = upload_max_bytes
        self._timeout = timeout_s
        self._reply_max = reply_max_bytes

    async def Echo(self, request: pb.EchoRequest, context: Context) -> pb.EchoResponse:
        return pb.EchoResponse(message="HELLO")

    async def FilesExist(self, request: pb.FilesExistRequest, context: Context) -> pb.FilesExistResponse:
        if len(request.files) > MAX_FILES:
            err = GenserveError(
                ErrorCode.INVALID_INPUT, f"files: at most {MAX_FILES} names per call", field="files"
            )
            await abort(context, err, None)
        answers = [file_status(self._registry, name) for name in request.files]
        return pb.FilesExistResponse(
            files=list(request.files),
            exists=[exists for exists, _ in answers],
            errors=[error for _, error in answers if error],
        )

    async def GenerateImage(
        self, request: pb.ImageGenerationRequest, context: Context
    ) -> pb.ImageGenerationResponse:
        request_id: str | None = None
        try:
            request_id = request_id_of(request, context)
        except GenserveError as err:
            await abort(context, err, None)

        async def work() -> pb.ImageGenerationResponse:
            result: Any = await self._engine.submit(
                "image_generation",
                generation_request(request),
                request_id=request_id,
                timeout=deadline(context, self._timeout),
            )
            info = result.info if isinstance(result.info, str) else json.dumps(result.info)
            reply = pb.ImageGenerationResponse(
                images=list(result.images), info=info, events=list(result.events)
            )
            self._check_reply_size(reply)
            context.set_trailing_metadata(((REQUEST_ID_KEY, str(request_id)),))
            return reply

        return await guarded(context, request_id, work)

    def _check_reply_size(self, reply: pb.ImageGenerationResponse) -> None:
        """PNG sizes are known only once encoded. Past the send limit gRPC itself would fail the
        call with a bare RESOURCE_EXHAUSTED; this one says why and what to change."""
        size = reply.ByteSize()
        if self._reply_max is not None and size > self._reply_max:
            raise GenserveError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"batch_size, batch_count: {len(reply.images)} images make a {size / MIB:.1f} MB reply, over "
                f"grpc.max_message_mb ({self._reply_max / MIB:g} MB); ask for fewer or smaller images",
                field="batch_size",
            )

    async def UploadFile(
        self, request_iterator: AsyncIterator[pb.UploadFileRequest], context: Context
    ) -> pb.UploadFileResponse:
        upload: ModelUpload | None = None
        committed: list[Path] = []

        async def work() -> pb.UploadFileResponse:
            nonlocal upload
            async for chunk in request_iterator:
                if upload is None:
                    if not chunk.filename:
                        raise GenserveError(
                            ErrorCode.INVALID_INPUT,
                            "filename: the first message must name the file",
                            field="filename",
                        )
                    upload = ModelUpload(self._registry, chunk.filename, self._upload_max)
                elif chunk.filename and chunk.filename != upload.name:
                    raise GenserveError(
                        ErrorCode.INVALID_INPUT,
                        f"filename: changed from {upload.name!r} to {chunk.filename!r} within one upload",
                        field="filename",
                    )
                if chunk.data:
                    await asyncio.to_thread(upload.write, chunk.data)
            if upload is None:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT, "filename: the stream was empty", field="filename"
                )
            # grpc.aio ends the request stream the same way for a client's half-close and for a
            # call the client cancelled (it died mid-upload); the cancellation is only known a
            # moment later. A short yield lets most arrive before the commit, and a commit that
            # the call's end shows was cancelled is taken back: the client never got an answer.
            await asyncio.sleep(CANCEL_SETTLE_S)
            if context.cancelled():
                raise GenserveError(ErrorCode.CANCELLED, "the upload was cancelled before its end")
            context.add_done_callback(lambda ctx: _take_back_if_cancelled(ctx, committed))
            path = await asyncio.to_thread(upload.commit)
            committed.append(path)
            return pb.UploadFileResponse(
                message=f"uploaded {upload.name} ({upload.size} bytes) into the models folder"
            )

        try:
            return await guarded(context, None, work)
        finally:
            if upload is not None:
                upload.abort()  # a no-op once committed; removes the partial file otherwise
