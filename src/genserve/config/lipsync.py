"""The ``lipsync`` section: the original lip-sync server's config.yaml keys, kept by name, and
its models by id."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from genserve.config.base import Section

# Default file names inside a model's folder models/lipsync/<id>/ (what `genserve models demo` writes).
MODEL_FILE = "model.onnx"
AUDIO_ENCODER_FILE = "audio_encoder.onnx"
FRAMES_DIR = "frames"
CROP_RECTS_FILE = "crop_rects.json"


class LipsyncModelSettings(Section):
    """One model id. Relative paths are inside the model's folder ``<models.dir>/lipsync/<id>/``."""

    model_path: Path = Field(Path(MODEL_FILE), description="The lip-sync ONNX file.")
    audio_encoder_path: Path = Field(Path(AUDIO_ENCODER_FILE), description="Mel window -> 512-d ONNX file.")
    background_dir: Path = Field(Path(FRAMES_DIR), description="Background frames frame_%04d.png|jpg.")
    crop_rects_path: Path = Field(Path(CROP_RECTS_FILE), description="[[x1,y1,x2,y2], ...] per frame.")
    preload: bool = Field(False, description="Load at start-up instead of on the first request.")
    preferred_gpu: int = Field(-1, ge=-1, description="GPU to load on; -1 = automatic.")


class LipsyncSettings(Section):
    enabled: bool = Field(True, description="Serve monolithic.MonolithicService on the gRPC ports.")
    max_models: int = Field(40, ge=1, description="Most lip-sync models loaded at once.")
    max_memory_gb: float | None = Field(
        None, gt=0, description="Memory budget per device for loaded lip-sync models; none = count only."
    )
    eviction_policy: Literal["lru", "lfu"] = Field(
        "lru", description="Which idle model makes room: least recently or least frequently used."
    )
    capacity_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a request for a model that is not loaded waits, when every max_models "
        "slot (or the memory budget) is held by models in use, for one to become free; also bounded "
        "by the request's deadline. 0 = refuse at once.",
    )
    idle_timeout_minutes: float = Field(
        0, ge=0, description="Unload a model unused this long; 0 = keep until evicted."
    )
    max_audio_s: float = Field(
        10.0,
        gt=0,
        description="Longest raw_audio accepted, in seconds at its sample_rate (the spec sends 0.64 s); "
        "longer audio is refused before it is decoded.",
    )
    jpeg_quality: int = Field(75, ge=1, le=100, description="Quality of the composited JPEG frames.")
    composite_workers: int = Field(0, ge=0, description="Threads compositing frames; 0 = one per core.")
    workers: int = Field(16, ge=1, description="Requests worked on at once (audio, inference, compositing).")
    queue_size: int = Field(64, ge=0, description="Requests waiting beyond the workers before refusal.")
    batching: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Merge concurrent requests for one model into one ONNX run: on, off, or auto = on for "
        "models on a GPU, off on the CPU (where the cores are busy with concurrent runs anyway).",
    )

    @field_validator("batching", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        # YAML reads a bare on/off/true/false as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    max_batch_frames: int = Field(64, ge=1, le=1024, description="Most frames in one merged ONNX run.")
    max_batch_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="Longest a request waits for others to join its ONNX run."
    )
    models: dict[str, LipsyncModelSettings] = Field(
        default_factory=dict,
        description="Model ids and their files. Folders under <models.dir>/lipsync/ that hold a "
        "model.onnx are served too, with the default file names.",
    )

    @field_validator("models")
    @classmethod
    def _ids_are_names(cls, models: dict[str, LipsyncModelSettings]) -> dict[str, LipsyncModelSettings]:
        for model_id in models:
            if not model_id or model_id.startswith(".") or any(c in model_id for c in "/\\\x00"):
                raise ValueError(f"{model_id!r} is not a model id (a plain name)")
        return models
