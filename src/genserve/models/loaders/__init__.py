"""One loader per model kind and format; ``default_loaders()`` is what the composition root wires
into the manager. Imports the registry's types, storage and config only."""

from __future__ import annotations

from pathlib import Path

from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.models.loaders.base import LoadedModel, Loader, module_bytes
from genserve.models.registry import ModelKind


def default_loaders(
    lipsync: LipsyncRegistry | None = None,
    models_root: Path | None = None,
    hf_home: Path | None = None,
    allow_downloads: bool = False,
) -> dict[ModelKind, Loader]:
    """Every kind's loader; lip-sync's reads its files through ``lipsync`` (none: not loaded here);
    the text encoder's looks for a single file's tokenizer under ``models_root`` and ``hf_home``."""
    from transformers.utils import logging as transformers_logging

    from genserve.models.loaders.control import load_controlnet, load_model_patch
    from genserve.models.loaders.llm import load_llm
    from genserve.models.loaders.lora import load_lora
    from genserve.models.loaders.text_encoder import make_text_encoder_loader
    from genserve.models.loaders.transformer import load_transformer
    from genserve.models.loaders.vae import load_vae

    # The manager logs every load with its time; transformers' per-load "Loading weights" bar would
    # only add carriage-return noise to the server's log.
    transformers_logging.disable_progress_bar()
    loaders: dict[ModelKind, Loader] = {
        ModelKind.VAE: load_vae,
        ModelKind.TEXT_ENCODER: make_text_encoder_loader(
            models_root or Path("models"), hf_home, allow_downloads
        ),
        ModelKind.DIFFUSION: load_transformer,
        ModelKind.LORA: load_lora,
        ModelKind.CONTROLNET: load_controlnet,
        ModelKind.MODEL_PATCH: load_model_patch,
        ModelKind.LLM: load_llm,
    }
    if lipsync is not None:
        from genserve.models.loaders.lipsync import make_lipsync_loader

        loaders[ModelKind.LIPSYNC] = make_lipsync_loader(lipsync)
    return loaders


__all__ = ["LoadedModel", "Loader", "default_loaders", "module_bytes"]
