"""What ``genserve test`` asks a server: Echo, then the overall and per-service health."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.api.grpc.gen import image_generation_pb2 as pb
from genserve.api.grpc.gen import image_generation_pb2_grpc as rpc

SERVICES = (
    "",
    "drawthings.ImageGenerationService",
    "LatentEncoder",
    "TextEncoder",
    "Sampler",
    "Decoder",
    "Editor",
)


@dataclass
class ProbeReport:
    target: str
    lines: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def healthy(self) -> bool:
        return self.problem is None


def probe(target: str, timeout: float) -> ProbeReport:
    report = ProbeReport(target)
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            report.problem = f"no gRPC server answered within {timeout:g} s"
            return report
        try:
            echo = rpc.ImageGenerationServiceStub(channel).Echo(pb.EchoRequest(), timeout=timeout).message
        except grpc.RpcError as exc:
            report.problem = f"Echo failed: {exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
            return report
        report.lines.append(f"{target}: Echo -> {echo}")
        if echo != "HELLO":
            report.problem = f"Echo answered {echo!r}, not 'HELLO'"
            return report
        health = health_pb2_grpc.HealthStub(channel)
        for service in SERVICES:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.RpcError as exc:
                status = exc.code().name  # type: ignore[attr-defined]
            report.lines.append(f"{target}: health {service or '(server)'} -> {status}")
            if status != "SERVING" and report.problem is None:
                report.problem = f"health of {service or 'the server'} is {status}"
    return report
