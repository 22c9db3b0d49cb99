"""The ``models`` section: the models folder, and the rules of the default model pool (every kind
but lip-sync, whose pool the ``lipsync`` section sets)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from genserve.config.base import Section


class ModelsSettings(Section):
    dir: Path = Field(Path("models"), description="Models folder: one sub-folder per kind (vae/, ...).")
    max_loaded: int = Field(
        8,
        ge=1,
        description="Most models kept loaded at once, all devices together (lip-sync: lipsync.max_models).",
    )
    memory_budget_mb: dict[str, int] = Field(
        default_factory=dict,
        description="Per-device memory budget in MiB for loaded models, e.g. {cpu: 8192, 'cuda:0': 20000}. "
        "A device not named has no budget beyond its count limit.",
    )
    default_device: str = Field(
        "auto", description="'auto' (first CUDA device, else cpu), 'cpu' or 'cuda:N'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: auto = float32 on CPU, bfloat16 on CUDA."
    )
    eviction_policy: Literal["lru", "lfu"] = Field(
        "lru", description="Which idle model makes room: least recently or least frequently used."
    )
    idle_timeout_s: float = Field(
        0.0, ge=0, description="Unload a model unused this long; 0 = keep until evicted."
    )
    memory_mode: Literal["auto", "resident", "offloaded", "streamed"] = Field(
        "auto",
        description="How the pipeline's models sit on a GPU: auto picks resident when the model fits beside "
        "what the pool keeps there and its largest offloaded model, offloaded (on the GPU only while in use, "
        "in turn with the other offloaded ones) when it fits beside what the pool keeps there, streamed "
        "(blocks brought in by groups; transformers only) otherwise. On a CPU auto is resident.",
    )
    memory_modes: dict[str, Literal["auto", "resident", "offloaded", "streamed"]] = Field(
        default_factory=dict,
        description="memory_mode per kind, e.g. {text_encoders: offloaded, diffusion_models: streamed}.",
    )
    fp8_storage: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep an unscaled fp8 transformer file's weights in fp8 in memory (half of bf16), "
        "computing in the compute dtype: on always, auto only where the bf16 weights would not be resident "
        "but the fp8 ones would, off never. Scaled fp8 files are always dequantised. true/false: on/off.",
    )

    @field_validator("fp8_storage", mode="before")
    @classmethod
    def _fp8_switch(cls, value: object) -> object:
        # YAML reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    hf_home: Path | None = Field(
        None,
        description="The Hugging Face home whose hub cache (hub/models--<org>--<name>) is searched for "
        "tokenizers and snapshots; null = $HF_HOME, else ~/.cache/huggingface.",
    )
    allow_downloads: bool = Field(
        False,
        description="Let a load fetch what a single file lacks (the text encoder's tokenizer and image "
        "processor) into the hub cache when the host is online. Off: nothing is ever downloaded.",
    )
    capacity_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long a load waits when every max_loaded slot (or the memory budget) is held by "
        "models in use, for one to become free; 0 = refuse at once (429 / RESOURCE_EXHAUSTED).",
    )
