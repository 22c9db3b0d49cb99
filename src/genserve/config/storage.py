"""The ``storage`` section: the roots requests may read from and write into."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from genserve.config.base import Section


class StorageSettings(Section):
    read_roots: list[Path] = Field(
        default_factory=lambda: [Path("data")],
        description="Folders that requests may read images and tensors from. Output roots are readable too.",
    )
    write_roots: list[Path] = Field(
        default_factory=lambda: [Path("data/outputs")],
        description="Folders that requests may write into (output_dir must lie inside one).",
    )
    default_output_dir: Path = Field(
        Path("data/outputs"), description="Where outputs go when a request names none."
    )

    @field_validator("read_roots", "write_roots")
    @classmethod
    def _not_empty(cls, roots: list[Path]) -> list[Path]:
        if not roots:
            raise ValueError("at least one root is required")
        return roots
