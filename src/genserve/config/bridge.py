"""The ``bridge`` section: the workflow bridge's queue, uploads, and the backends it balances."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from genserve.config.base import Section

LOCAL = "local"


class BackendSettings(Section):
    """One backend: this process's own runner (``url: local``) or a ComfyUI-API server by URL."""

    name: str = Field(..., min_length=1, description="Shown in logs and metrics; unique.")
    url: str = Field(
        LOCAL,
        description="'local' (the runner in this process), or http(s)://host:port of a ComfyUI "
        "server or of another genserve's ComfyUI API (http://host:8000/comfy).",
    )
    max_inflight: int = Field(
        2, ge=1, description="Jobs handed to this backend at once (one running, the next waiting)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != LOCAL and not value.startswith(("http://", "https://")):
            raise ValueError("must be 'local' or start with http:// or https://")
        return value.rstrip("/")


class BridgeSettings(Section):
    enabled: bool = Field(
        True, description="Serve the bridge endpoints (/ws, /workflow-list, /generate-based-workflow...)."
    )
    workflows_dir: Path = Field(Path("data/workflows"), description="API-format workflow JSON files.")
    alias_file: Path = Field(
        Path("data/workflows/workflow_alias.json"),
        description="Aliases -> workflow file and exposed inputs; the demo set is written if missing.",
    )
    foreign_nodes: bool = Field(
        False, description="Accept node types the local runner lacks (backends are real ComfyUI servers)."
    )
    jobs_db: Path = Field(Path("data/bridge/jobs.sqlite3"), description="The durable queue (SQLite).")
    results_dir: Path = Field(
        Path("data/bridge/results"), description="Finished outputs waiting for GET /history."
    )
    retention_hours: float = Field(
        24.0, gt=0, description="Results not fetched within this time are deleted."
    )
    max_upload_mb: float = Field(20.0, gt=0, description="Largest file accepted by POST /upload.")
    max_upload_files: int = Field(16, ge=1, description="Most parts in one POST /upload.")
    backends: list[BackendSettings] = Field(
        default_factory=lambda: [BackendSettings(name=LOCAL, url=LOCAL)],
        description="Where jobs run; picked by queue length with affinity for loaded models.",
    )
    probe_interval_s: float = Field(2.0, gt=0, description="Seconds between health probes of a backend.")
    probe_timeout_s: float = Field(
        5.0, gt=0, description="A probe slower than this marks the backend down (dead or too slow)."
    )
    affinity_weight: float = Field(
        1.0, ge=0, description="Queue places a backend with the workflow's models loaded is worth."
    )
    listening_interval_s: float = Field(
        5.0, gt=0, description="Seconds between 'listening' keep-alive messages on an idle /ws."
    )
    max_queued_per_client: int = Field(
        16,
        ge=1,
        description="Jobs one clientId may have waiting; past it POST /generate-based-workflow is 429.",
    )
    max_queued: int = Field(
        256, ge=1, description="Jobs waiting in all; past it POST /generate-based-workflow is 429."
    )
    retry_after_s: int = Field(
        10, ge=1, description="Retry-After (seconds) sent with the 429 of a full bridge queue."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> BridgeSettings:
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backends: duplicate name(s) {', '.join(duplicates)}")
        if not self.backends:
            raise ValueError("backends: at least one backend is needed")
        return self
