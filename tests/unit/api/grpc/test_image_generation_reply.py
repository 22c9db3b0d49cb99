"""GenerateImage's reply-size check: past the send limit, a named error instead of gRPC's bare one."""

from __future__ import annotations

import pytest

from genserve.api.grpc.gen import image_generation_pb2 as pb
from genserve.api.grpc.image_generation import ImageGeneration
from genserve.errors import ErrorCode, GenserveError


def servicer(limit: int | None) -> ImageGeneration:
    return ImageGeneration(None, None, 1, 1.0, reply_max_bytes=limit)  # type: ignore[arg-type]


def test_a_reply_over_the_send_limit_names_what_to_change() -> None:
    reply = pb.ImageGenerationResponse(images=[b"x" * 600_000, b"y" * 600_000], info="{}")
    with pytest.raises(GenserveError) as info:
        servicer(1024 * 1024)._check_reply_size(reply)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "2 images" in info.value.message and "grpc.max_message_mb (1 MB)" in info.value.message
    servicer(2 * 1024 * 1024)._check_reply_size(reply)  # within the limit: nothing to say
    servicer(None)._check_reply_size(reply)
