"""The ``server`` section: where ``genserve serve`` listens and how it treats HTTP requests."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genserve.config.base import Section


class ServerSettings(Section):
    """The network server (``genserve serve``): where it listens and how it treats requests."""

    host: str = Field("127.0.0.1", description="Address the REST door listens on; 0.0.0.0 = every interface.")
    port: int = Field(
        8000, ge=0, le=65535, description="REST port; 0 picks a free one (printed at start-up)."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain: serve HTTPS and WSS (with tls_key_file); null = plain HTTP."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="Longest a request may run; an X-Request-Timeout header may ask for less."
    )
    shutdown_grace_s: float = Field(
        60.0, ge=0, description="On SIGTERM/SIGINT, how long in-flight requests get to finish."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 beyond).")
    max_json_depth: int = Field(
        64,
        ge=2,
        le=500,
        description="Deepest nesting of arrays and objects in a JSON body (and a drop-folder request); "
        "deeper is refused with 400 before anything parses it.",
    )
    max_header_bytes: int = Field(
        65_536,
        ge=4096,
        description="Largest request line plus headers of one HTTP request; beyond, the connection gets 400.",
    )
    retry_after_s: int = Field(
        1, ge=1, description="Retry-After (seconds) sent with 429 when the queue is full."
    )
    access_log: bool = Field(True, description="Log one line per HTTP request (with its request id).")
    keep_freed_memory_mb: int = Field(
        1024,
        ge=0,
        le=2047,
        description="glibc: allocations up to this size come from the heap, and freed memory up to it is "
        "kept for reuse instead of going back to the OS (large gRPC messages parse 3-5x quicker). 0 = off.",
    )
    trim_idle_s: float = Field(
        10.0,
        ge=0,
        description="glibc: once no work has run or waited this long, hand the heap's free memory back "
        "to the OS, so resident memory comes back down after a burst. 0 = never.",
    )
