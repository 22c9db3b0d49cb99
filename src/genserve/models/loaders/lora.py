"""LoRA loader: a safetensors file in the kohya, ComfyUI, peft, diffusers or Lightning key layout.

Loading a LoRA only reads and converts its tensors; it is applied to a transformer per run by
``AdapterGate`` (see transformer.py), so one loaded transformer serves any LoRA and strength.

Every layout is turned into one form: diffusers keys (``transformer.<module>.lora_A.weight`` and
``.lora_B.weight``) with the LoRA's scale (alpha / rank, from ``.alpha`` keys or the adapter config
in the file's metadata) folded into the weights, and no adapter config. peft then infers
``lora_alpha == r`` per module, so strength s applies exactly s times the LoRA's own delta, whatever
layout it came in. The layout is detected from the keys alone (file names say nothing reliable).

diffusers converts kohya underscores, ``lora_down``/``lora_up`` names and alphas correctly, so that
conversion is reused. What it gets wrong is fixed here before it runs: bare (Lightning) keys without
``.alpha`` are passed through unconverted and unprefixed, so peft would load nothing; peft's
``base_model.model.`` prefix is kept, so no module matches; a diffusers-layout file with ``.alpha``
keys gets a doubled ``transformer.`` prefix; and a ``lora_adapter_metadata`` config without the
``transformer.`` prefix (or one missing fields) is filtered to a config peft cannot build an adapter
from. Each of these either loads nothing, silently, or fails on the first run that uses the LoRA.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel
from genserve.models.registry import ModelEntry

FIELD = "lora_model_name"
SHOWN_KEYS = 3  # offending keys quoted in an error
METADATA_KEY = "lora_adapter_metadata"  # where diffusers keeps a LoRA's adapter config

# The Qwen-Image (and 2.1) transformers' top-level modules: a key naming anything else is not a
# LoRA for them.
_ROOTS = (
    "transformer_blocks", "img_in", "txt_in", "txt_norm", "time_text_embed", "norm_out", "proj_out",
    "modulation",
)  # fmt: skip
_MODULE = rf"(?P<module>(?:{'|'.join(_ROOTS)})(?:\.\w+)*)"
_PART = r"(?:(?P<part>lora_A|lora_B|lora_down|lora_up)\.weight|(?P<alpha>alpha))"
# peft's model.state_dict() names the adapter between the part and ".weight" (".lora_A.default.weight").
_PEFT_PART = r"(?:(?P<part>lora_A|lora_B)(?:\.\w+)?\.weight|(?P<alpha>alpha))"
_KOHYA_MODULE = rf"(?P<module>(?:{'|'.join(_ROOTS)})\w*)"
# No key fits two of these: a prefix is never one of the Qwen-Image top-level module names.
LAYOUTS: dict[str, re.Pattern[str]] = {
    "kohya": re.compile(
        rf"lora_unet_{_KOHYA_MODULE}\.(?:(?P<part>lora_down|lora_up)\.weight|(?P<alpha>alpha))"
    ),
    "ComfyUI": re.compile(rf"diffusion_model\.{_MODULE}\.{_PART}"),
    "peft": re.compile(rf"base_model\.model\.{_MODULE}\.{_PEFT_PART}"),
    "diffusers": re.compile(rf"transformer\.{_MODULE}\.{_PART}"),
    "Lightning": re.compile(rf"{_MODULE}\.{_PART}"),
}
_DOWN = {"lora_A": "lora_down", "lora_B": "lora_up", "lora_down": "lora_down", "lora_up": "lora_up"}


@dataclass(frozen=True)
class LoraWeights:
    name: str
    adapter_name: str  # a peft-safe identifier derived from the file name and contents
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None  # always None: the scale is folded into the weights
    layout: str = "diffusers"  # the key layout the file was written in, for logs and errors


def load_lora(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    if not entry.path.is_file() or entry.path.suffix != ".safetensors":
        raise _refuse(entry, "is not a .safetensors file")
    tensors, config = _read(entry)
    layout, groups = _detect(entry, tensors)
    bare = _bare_state_dict(entry, layout, groups, config)
    state_dict = _to_diffusers(entry, bare)
    digest = hashlib.sha1(f"{entry.name}:{entry.path.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    state_dict = {key: value.to(dtype=dtype).contiguous() for key, value in state_dict.items()}
    weights = LoraWeights(entry.name, f"lora_{digest}", state_dict, None, layout)
    size = sum(t.numel() * t.element_size() for t in state_dict.values())
    return LoadedModel(model=weights, memory_bytes=size, device=torch.device("cpu"))


def _refuse(entry: ModelEntry, why: str, keys: list[str] | None = None) -> GenserveError:
    """INVALID_INPUT naming the file as the caller did (never its absolute path) and the first keys."""
    shown = ""
    if keys:
        more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
        shown = ": " + ", ".join(keys[:SHOWN_KEYS]) + more
    return GenserveError(ErrorCode.INVALID_INPUT, f"{FIELD}: {entry.name} {why}{shown}", field=FIELD)


def _read(entry: ModelEntry) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors in float32 (alphas are folded in before the cast to the run's dtype) and the
    adapter config from the metadata, ``{}`` when there is none."""
    from safetensors import safe_open

    try:
        with safe_open(str(entry.path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key).to(torch.float32) for key in reader.keys()}  # noqa: SIM118
        config = json.loads(metadata[METADATA_KEY]) if metadata.get(METADATA_KEY) else {}
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}".replace(str(entry.path), entry.name)
        raise _refuse(entry, f"is not a readable LoRA file ({detail})") from exc
    if not isinstance(config, dict):
        raise _refuse(entry, f"has a {METADATA_KEY} entry in its metadata that is not a JSON object")
    # diffusers writes the config with a "transformer." prefix on every key; a peft dump has none.
    return tensors, {key.removeprefix("transformer."): value for key, value in config.items()}


def _detect(entry: ModelEntry, tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The layout of the file, chosen as the one that most keys fit (every key must fit it), and
    per module its parts: ``lora_down``/``lora_up`` (``lora_A``/``lora_B`` renamed) and ``alpha``,
    with the original keys for error messages."""
    if not tensors:
        raise _refuse(entry, "holds no LoRA weights (it has no tensors)")
    keys = list(tensors)
    matches = {name: [pattern.fullmatch(key) for key in keys] for name, pattern in LAYOUTS.items()}
    layout = max(matches, key=lambda name: sum(m is not None for m in matches[name]))
    unmatched = [key for key, m in zip(keys, matches[layout], strict=True) if m is None]
    if len(unmatched) == len(keys) and not any("lora" in key.lower() for key in keys):
        raise _refuse(entry, "holds no LoRA weights (no key names a LoRA part); its keys include", keys)
    if unmatched:
        read_as = f"; the other keys read as {layout}" if len(unmatched) < len(keys) else ""
        why = f"has keys that match no Qwen-Image LoRA layout ({', '.join(LAYOUTS)}){read_as}"
        raise _refuse(entry, why, unmatched)
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"keys": []})
    for key, match in zip(keys, matches[layout], strict=True):
        group = groups[match["module"]]
        part = "alpha" if match["alpha"] else _DOWN[match["part"]]
        if part in group:
            raise _refuse(entry, f"holds the {part} of one module twice", [*group["keys"], key])
        group[part] = tensors[key]
        group["keys"].append(key)
    return layout, groups


def _bare_state_dict(
    entry: ModelEntry, layout: str, groups: dict[str, dict[str, Any]], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The form diffusers' Qwen conversion handles in full: ``<module>.lora_down.weight``,
    ``.lora_up.weight`` and ``.alpha``, with kohya's flat module names kept for it to resolve. A
    module without an ``.alpha`` key gets the adapter config's alpha, if the file has one."""
    broken = [key for group in groups.values() if not _is_pair(group) for key in group["keys"]]
    if broken:
        why = "has LoRA weights without their down/up pair, or whose ranks do not agree"
        raise _refuse(entry, why, broken)
    prefix = "lora_unet_" if layout == "kohya" else ""
    bare: dict[str, torch.Tensor] = {}
    for module, group in groups.items():
        base = f"{prefix}{module}"
        bare[f"{base}.lora_down.weight"] = group["lora_down"]
        bare[f"{base}.lora_up.weight"] = group["lora_up"]
        alpha = group.get("alpha")
        if alpha is None:
            alpha = _config_alpha(config, module, group["lora_down"].shape[0])
        if alpha is not None:
            bare[f"{base}.alpha"] = torch.as_tensor(alpha, dtype=torch.float32).reshape(())
    return bare


def _is_pair(group: dict[str, Any]) -> bool:
    down, up, alpha = group.get("lora_down"), group.get("lora_up"), group.get("alpha")
    if down is None or up is None or down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        return False
    return alpha is None or alpha.numel() == 1


def _config_alpha(config: dict[str, Any], module: str, rank: int) -> float | None:
    """The alpha peft would use for ``module`` under the file's adapter config (``lora_alpha``,
    ``alpha_pattern`` matched as peft matches it, rsLoRA's alpha / sqrt(rank) scale), expressed as
    an alpha over ``rank``; None without a config, which means scale 1."""
    if "lora_alpha" not in config:
        return None
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(value)
            break
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _to_diffusers(entry: ModelEntry, bare: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_qwen_lora_to_diffusers

    try:
        return _convert_non_diffusers_qwen_lora_to_diffusers(dict(bare))
    except Exception as exc:  # the pairs are checked above; this is a guard against a diffusers change
        raise _refuse(entry, f"could not be converted to diffusers' layout ({exc})") from exc
