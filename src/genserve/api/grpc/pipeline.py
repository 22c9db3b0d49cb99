"""The pipeline services' servicers: one RPC each, each a call into the engine."""

from __future__ import annotations

import grpc

from genserve.api.grpc.calls import ServiceCall
from genserve.api.grpc.gen import pipeline_pb2 as pb
from genserve.api.grpc.gen import pipeline_pb2_grpc as rpc

Context = grpc.aio.ServicerContext


class LatentEncoder(rpc.LatentEncoderServicer):
    def __init__(self, call: ServiceCall) -> None:
        self._call = call

    async def EncodeImage(self, request: pb.EncodeRequest, context: Context) -> pb.EncodeResponse:
        return await self._call("latent_encoder", request, context, pb.EncodeResponse)


class TextEncoder(rpc.TextEncoderServicer):
    def __init__(self, call: ServiceCall) -> None:
        self._call = call

    async def EncodeText(self, request: pb.TextEncodeRequest, context: Context) -> pb.TextEncodeResponse:
        return await self._call("text_encoder", request, context, pb.TextEncodeResponse)


class Sampler(rpc.SamplerServicer):
    def __init__(self, call: ServiceCall) -> None:
        self._call = call

    async def Sample(self, request: pb.SampleRequest, context: Context) -> pb.SampleResponse:
        return await self._call("sampling", request, context, pb.SampleResponse)


class Decoder(rpc.DecoderServicer):
    def __init__(self, call: ServiceCall) -> None:
        self._call = call

    async def Decode(self, request: pb.DecodeRequest, context: Context) -> pb.DecodeResponse:
        return await self._call("decoding", request, context, pb.DecodeResponse)


class Editor(rpc.EditorServicer):
    def __init__(self, call: ServiceCall) -> None:
        self._call = call

    async def Edit(self, request: pb.EditRequest, context: Context) -> pb.EditResponse:
        return await self._call("edit", request, context, pb.EditResponse)


def pipeline_service_names() -> list[str]:
    """The five services' full names (for health and reflection)."""
    return [pb.DESCRIPTOR.services_by_name[name].full_name for name in pb.DESCRIPTOR.services_by_name]


def add_pipeline_services(server: grpc.aio.Server, call: ServiceCall) -> None:
    """Register the five servicers."""
    rpc.add_LatentEncoderServicer_to_server(LatentEncoder(call), server)
    rpc.add_TextEncoderServicer_to_server(TextEncoder(call), server)
    rpc.add_SamplerServicer_to_server(Sampler(call), server)
    rpc.add_DecoderServicer_to_server(Decoder(call), server)
    rpc.add_EditorServicer_to_server(Editor(call), server)
