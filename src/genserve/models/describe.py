"""What a model on disk is, read from its files (never its name): the format genserve detected and
its weights' dtype, for ``genserve models list`` and ``/api/v1/models``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from genserve.errors import GenserveError
from genserve.models.formats import (
    fp8,
    int8_convrot,
    llm_single_file,
    qwen3_vl,
    qwen21_transformer,
    qwen21_vae,
    qwen_control,
    qwen_transformer,
    qwen_vl,
    wan_vae,
)
from genserve.models.formats.layouts import CACHE_FOLDER, snapshot_of
from genserve.models.formats.safetensors_header import Header, is_safetensors, read_header
from genserve.models.formats.sizes import weight_files
from genserve.models.kinds import ModelEntry, ModelKind


def describe(entry: ModelEntry) -> tuple[str, str]:
    """(format, dtype); an unreadable file says so rather than failing the listing."""
    try:
        return _format(entry), _dtype(entry)
    except (GenserveError, OSError, ValueError):
        return "unreadable", ""


def _format(entry: ModelEntry) -> str:
    path = entry.path
    if entry.kind is ModelKind.LIPSYNC:
        return "ONNX lip-sync folder"
    if path.is_dir():
        snapshot = snapshot_of(path)
        cache = " (Hugging Face cache)" if CACHE_FOLDER.match(path.name) else ""
        if (snapshot / "model_index.json").is_file():
            return "diffusers snapshot" + cache
        library = "transformers" if entry.kind in (ModelKind.TEXT_ENCODER, ModelKind.LLM) else "diffusers"
        return (
            f"{library} folder{cache}"
            if (snapshot / "config.json").is_file()
            else "folder without config.json"
        )
    if not is_safetensors(path):
        return f"{path.suffix.lstrip('.') or 'unknown'} file"
    header = read_header(path)
    return _single_file(entry.kind, header)


def _single_file(kind: ModelKind, header: Header) -> str:
    quant = _quantisation(header)
    if kind is ModelKind.DIFFUSION and qwen21_transformer.is_qwen21_transformer(header):
        keys = "prefixed" if any(k.startswith(qwen21_transformer.PREFIX) for k in header.names()) else "bare"
        return f"ComfyUI single file (Qwen-Image 2.1, {keys} keys{quant})"
    if kind is ModelKind.VAE and qwen21_vae.is_qwen21_vae(header):
        return "Qwen-Image 2.1 VAE single file (RGBA)"
    if kind is ModelKind.TEXT_ENCODER and qwen3_vl.is_qwen3_vl(header):
        return f"ComfyUI single file (Qwen3-VL{quant})"
    if kind is ModelKind.LLM and (found := llm_single_file.detect(header)) is not None:
        return f"ComfyUI single file ({found.label}{quant})"
    if kind is ModelKind.DIFFUSION and qwen_transformer.is_qwen_transformer(header):
        keys = "prefixed" if any(k.startswith(qwen_transformer.PREFIX) for k in header.names()) else "bare"
        marker = ", Edit-2511" if header.has(qwen_transformer.ZERO_COND_MARKER) else ""
        marker += ", Layered" if header.has(qwen_transformer.LAYERED_KEY) else ""
        return f"ComfyUI single file ({keys} keys{quant}{marker})"
    if kind is ModelKind.VAE and wan_vae.is_wan_vae(header):
        rgba = header.shape("encoder.conv1.weight")[1] == 4
        return "Wan-2.1 single file" + (" (RGBA, Layered)" if rgba else "")
    if kind is ModelKind.TEXT_ENCODER and qwen_vl.is_old_layout(header):
        return f"ComfyUI single file (Qwen2.5-VL{quant})"
    if kind is ModelKind.CONTROLNET and qwen_control.is_fun(header):
        return f"VideoX-Fun ControlNet single file{quant}"
    if kind is ModelKind.CONTROLNET and qwen_control.is_instantx(header):
        inpainting = qwen_control.instantx_config(header)["extra_condition_channels"] > 0
        return f"InstantX ControlNet single file ({'inpainting' if inpainting else 'union'}{quant})"
    if kind is ModelKind.MODEL_PATCH and qwen_control.is_blockwise(header):
        return f"DiffSynth block-wise ControlNet{quant}"
    if kind is ModelKind.LORA:
        from genserve.models.loaders.lora import LAYOUTS

        counts = {name: sum(bool(p.fullmatch(k)) for k in header.names()) for name, p in LAYOUTS.items()}
        best = max(counts, key=lambda name: counts[name])
        return f"{best} LoRA" if counts[best] == len(header.tensors) else "not a Qwen-Image LoRA"
    return f"safetensors file of another model{quant}"


def _quantisation(header: Header) -> str:
    """What follows the format: ``, fp8 scaled``, ``, int8 convrot`` (both in a mixed file), or the
    comfy_quant formats genserve refuses to load, so a listing shows why such a file will not."""
    int8 = int8_convrot.scan(header)
    known = (int8_convrot.FORMAT, *int8_convrot.FP8_FORMATS)
    refused = sorted(name for name in int8.formats if name not in known)
    if refused:
        return f", {' + '.join(refused)}: not loadable"
    labels = [label for label in (fp8.detect(header).label, int8.label) if label]
    return "".join(f", {label}" for label in labels)


def _dtype(entry: ModelEntry) -> str:
    """The dtype holding most of the weights' bytes (F8_E4M3, BF16, F32, ...)."""
    files: list[Path] = weight_files(entry) if entry.kind is not ModelKind.LIPSYNC else []
    weights: Counter[str] = Counter()
    for file in files:
        for key, info in read_header(file).tensors.items():
            if key not in fp8.MARKERS and not key.endswith(fp8.SCALE_SUFFIXES):
                weights[info.dtype] += info.numel
    return weights.most_common(1)[0][0] if weights else ""
