"""The ``workflows`` section: the native ComfyUI-compatible API and its prompt queue."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genserve.config.base import Section


class WorkflowsSettings(Section):
    """The native ComfyUI-compatible backend: /prompt, /queue, /history, /view, /upload/image, /ws."""

    enabled: bool = Field(
        True, description="Serve ComfyUI's API (POST /prompt, WS /ws, ...) on the REST door."
    )
    input_dir: Path = Field(
        Path("data/inputs"),
        description="ComfyUI's input folder (LoadImage, /upload/image); inside a read root.",
    )
    output_dir: Path = Field(
        Path("data/outputs/workflows"), description="Where SaveImage writes; inside a write root."
    )
    cache_size: int = Field(64, ge=0, description="Node results kept for re-runs (0: no cache).")
    queue_size: int = Field(
        64, ge=1, description="Prompts that may wait; beyond that POST /prompt is refused."
    )
