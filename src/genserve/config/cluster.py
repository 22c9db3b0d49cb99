"""The ``cluster`` section: the LLM coordinator and agents (titancompute.v1).

One section serves both roles, because a host often runs both and because both must agree on the
heartbeat, the issuer and the TLS files.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from genserve.config.base import Section


class ClusterSettings(Section):
    # -- the coordinator ------------------------------------------------------------------------
    coordinator_host: str = Field(
        "127.0.0.1", description="Address the coordinator listens on; 0.0.0.0 = every interface."
    )
    coordinator_port: int = Field(50051, ge=0, le=65535, description="Coordinator port; 0 picks a free one.")
    heartbeat_interval_s: int = Field(
        5, ge=1, le=3600, description="How often agents send health (told to them when they register)."
    )
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="An agent without health for this long is dropped and not routed to."
    )
    key_file: Path = Field(
        Path("data/cluster/coordinator_key.pem"),
        description="The coordinator's RS256 signing key (PEM, mode 0600); made on first start and "
        "reused after restarts, so tokens and agents survive a restart.",
    )
    token_lifetime_s: int = Field(
        300, ge=5, le=86400, description="How long a session token may be used to start a stream."
    )
    issuer: str = Field("genserve-coordinator", min_length=1, description="The tokens' iss claim.")
    clock_skew_s: float = Field(
        5.0, ge=0, le=300, description="Leeway agents allow on exp/nbf/iat for clocks that differ."
    )
    degraded_cpu_percent: float = Field(
        90.0,
        ge=0,
        le=100,
        description="An agent above this CPU use is degraded: chosen only when no healthy agent has room. "
        "100 = never for CPU (CPU-only agents run near 100 % while generating). Agents apply it too, "
        "in GetStatus, so set it alike on both roles.",
    )
    tls_cert_file: Path | None = Field(
        None, description="Coordinator server certificate (PEM); null = plaintext."
    )
    tls_key_file: Path | None = Field(None, description="Private key of tls_cert_file (PEM).")
    tls_client_ca_file: Path | None = Field(
        None, description="If set, the coordinator requires client certificates signed by this CA (mTLS)."
    )
    # -- the agent ------------------------------------------------------------------------------
    coordinator_address: str = Field(
        "127.0.0.1:50051", description="host:port where agents reach the coordinator (--coordinator wins)."
    )
    coordinator_ca_file: Path | None = Field(
        None,
        description="CA (PEM) that signed the coordinator's certificate; set = agents connect with TLS.",
    )
    agent_host: str = Field(
        "127.0.0.1", description="Address the agent listens on; 0.0.0.0 = every interface."
    )
    agent_port: int = Field(50052, ge=0, le=65535, description="Agent port; 0 picks a free one.")
    agent_id: str = Field(
        "", description="This agent's id; empty = <hostname>-<port>. Keep it stable across restarts."
    )
    advertised_endpoint: str = Field(
        "",
        description="host:port clients use to reach this agent; empty = agent_host (or this host's "
        "name when listening on 0.0.0.0) and the bound port.",
    )
    max_jobs: int = Field(4, ge=1, le=4096, description="Streams this agent runs at once.")
    preload: list[str] = Field(
        default_factory=list,
        description="LLMs (names under models/llm/) an agent loads before it registers, so that its first "
        "stream does not wait for a load and the coordinator prefers it for them; ['*'] = every one.",
    )
    agent_state_dir: Path = Field(
        Path("data/cluster/agent"),
        description="Where an agent keeps the ids of session tokens it has served (used_tokens.sqlite3), "
        "until they expire, so a token cannot be replayed after the agent restarts. Keep it across restarts.",
    )
    reconnect_initial_s: float = Field(
        0.5, gt=0, le=60, description="First wait before re-registering after the coordinator is lost."
    )
    reconnect_max_s: float = Field(10.0, gt=0, le=600, description="Longest wait between re-register tries.")
    agent_tls_cert_file: Path | None = Field(
        None,
        description="Agent server certificate (PEM); null = plaintext. Also the client certificate the "
        "agent shows the coordinator when it requires one.",
    )
    agent_tls_key_file: Path | None = Field(None, description="Private key of agent_tls_cert_file (PEM).")
    agent_tls_client_ca_file: Path | None = Field(
        None, description="If set, the agent requires client certificates signed by this CA (mTLS)."
    )

    @model_validator(mode="after")
    def _pairs(self) -> ClusterSettings:
        for cert, key in (("tls_cert_file", "tls_key_file"), ("agent_tls_cert_file", "agent_tls_key_file")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.agent_tls_client_ca_file is not None and self.agent_tls_cert_file is None:
            raise ValueError("agent_tls_client_ca_file needs agent_tls_cert_file and agent_tls_key_file")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be longer than heartbeat_interval_s")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        return self
