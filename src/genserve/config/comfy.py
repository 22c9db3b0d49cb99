"""The ``comfy`` section: ComfyUI's own listener, where ComfyUI clients and its web UI connect."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genserve.config.base import Section


class ComfySettings(Section):
    """ComfyUI's API at its own paths (the root and ``/api/``) and ComfyUI's frontend as the web UI,
    on a port of their own, so a client pointed at ``http://host:8188`` works unchanged."""

    enabled: bool = Field(
        True,
        description="Run the ComfyUI listener with `genserve serve` (only when workflows.enabled).",
    )
    host: str = Field(
        "127.0.0.1", description="Address the ComfyUI listener binds; beyond loopback it needs API keys."
    )
    port: int = Field(8188, ge=0, le=65535, description="ComfyUI's port; 0 picks a free one.")
    user_dir: Path = Field(
        Path("data/comfy/users"),
        description="Per-user web UI settings and user data (saved workflows under workflows/), "
        "one folder per user: the Comfy-User header without keys, the key's id with them.",
    )
    max_userdata_bytes: int = Field(
        16 * 2**20, ge=1024, description="Largest user data file (a saved workflow, settings) accepted."
    )
    max_userdata_files: int = Field(
        10_000, ge=1, description="Most user data files one user may keep; beyond, saving answers 413."
    )
