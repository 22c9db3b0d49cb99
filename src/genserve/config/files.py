"""The ``files`` section: the drop-folder door."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genserve.config.base import Section


class FilesSettings(Section):
    """The drop-folder door: request_{id}.json in, outputs and response_{id}.json out."""

    enabled: bool = Field(False, description="Start the drop-folder door with `genserve serve`.")
    input_dir: Path = Field(Path("data/drop"), description="Where writers rename request_{id}.json in.")
    output_dir: Path = Field(Path("data/outputs/drop"), description="Where outputs and responses go.")
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="How often the input folder is scanned.")
    max_in_flight: int = Field(2, ge=1, le=256, description="Requests worked on at once.")
    max_request_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request file read; only regular files are read, never through a symlink.",
    )
