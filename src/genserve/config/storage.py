"""The ``storage`` section: the roots requests may read from and write into, and how large an
image a request may hand in."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from genserve.config.base import Section

# 4096x4096: four times the pipeline's largest default working size (1 MP), and room for
# photos up to 16 MP; larger images are refused from their header, before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # a 48 MP phone photo passes; RGB decode about 150 MB
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): it warns above it and
# refuses at twice it, so a larger setting could not take effect.
PILLOW_MAX_IMAGE_PIXELS = 89_478_485


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
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        gt=0,
        le=PILLOW_MAX_IMAGE_PIXELS,
        description="Largest image (width x height) any door accepts: pipeline image paths, "
        "LoadImage, ComfyUI's /upload/image and the bridge's /upload. Checked from the file's "
        "header before decoding; a larger image is INVALID_INPUT naming the field.",
    )

    @field_validator("read_roots", "write_roots")
    @classmethod
    def _not_empty(cls, roots: list[Path]) -> list[Path]:
        if not roots:
            raise ValueError("at least one root is required")
        return roots
