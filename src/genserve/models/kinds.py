"""Model kinds (one folder each, as ComfyUI lays them out) and the entry that names one model's files."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from genserve.errors import ErrorCode, GenserveError

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf")


class ModelKind(StrEnum):
    VAE = "vae"
    TEXT_ENCODER = "text_encoders"
    DIFFUSION = "diffusion_models"
    LORA = "loras"
    CONTROLNET = "controlnet"
    MODEL_PATCH = "model_patches"
    LIPSYNC = "lipsync"
    LLM = "llm"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    ModelKind.VAE: "VAE model",
    ModelKind.TEXT_ENCODER: "text encoder model",
    ModelKind.DIFFUSION: "diffusion model",
    ModelKind.LORA: "LoRA",
    ModelKind.CONTROLNET: "ControlNet",
    ModelKind.MODEL_PATCH: "model patch",
    ModelKind.LIPSYNC: "lip-sync model",
    ModelKind.LLM: "language model",
}


# A diffusion model asked for in another storage dtype (UNETLoader's weight_dtype) is a model of
# its own, named ``<file>#<storage>``: its weights rounded to that fp8 type at load, as ComfyUI does.
STORAGE_MARK = "#"
STORAGES = ("fp8_e4m3fn", "fp8_e5m2")


@dataclass(frozen=True)
class ModelEntry:
    kind: ModelKind
    name: str
    path: Path
    storage: str | None = None  # one of STORAGES: keep the weights rounded to that fp8 type

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind.value, self.name)

    @property
    def label(self) -> str:
        return f"{self.kind.value}/{self.name}"

    def disk_bytes(self) -> int:
        """Size on disk: the first estimate of memory before a model is loaded."""
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def parse_kind(kind: ModelKind | str) -> ModelKind:
    """A kind from the wire or a caller, or INVALID_INPUT naming the kinds there are."""
    try:
        return ModelKind(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in ModelKind)
        message = f"kind: {kind!r} is not a model kind; choose one of {kinds}"
        raise GenserveError(ErrorCode.INVALID_INPUT, message, field="kind") from None
