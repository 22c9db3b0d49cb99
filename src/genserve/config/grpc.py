"""The ``grpc`` section: the gRPC door started beside REST."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from genserve.config.base import Section


class GrpcSettings(Section):
    """The gRPC door, started by ``genserve serve`` beside the REST door."""

    enabled: bool = Field(True, description="Serve gRPC at all.")
    host: str = Field("127.0.0.1", description="Address the gRPC ports listen on; 0.0.0.0 = every interface.")
    ports: list[int] = Field(
        default_factory=lambda: [50053],
        description="Ports serving every gRPC service, e.g. [50053, 7859]; 0 picks a free one.",
    )
    max_message_mb: int = Field(100, ge=1, le=2047, description="Largest gRPC message either way, in MiB.")
    keepalive_time_s: float = Field(60.0, gt=0, description="Ping an idle connection this often.")
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="Drop a connection whose ping goes unanswered."
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long in-flight RPCs get to finish on stop.")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain: serve gRPC over TLS (with tls_key_file); null = plaintext."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    upload_max_mb: int = Field(
        32768, ge=1, description="Largest model file UploadFile accepts, in MiB (the stream is cut beyond)."
    )

    @field_validator("ports")
    @classmethod
    def _valid_ports(cls, ports: list[int]) -> list[int]:
        if not ports or any(not 0 <= p <= 65535 for p in ports):
            raise ValueError("one or more ports between 0 and 65535 are required")
        return ports
