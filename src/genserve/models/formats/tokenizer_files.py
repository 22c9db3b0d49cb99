"""Where a single-file text encoder's tokenizer and image processor come from.

The file holds weights only. In this order:
1. a sidecar folder beside it, ``text_encoders/<stem>.tokenizer/`` (tokenizer files and
   ``preprocessor_config.json``; a ``config.json`` there is the model's config too);
2. a diffusers snapshot in the models folder (its ``tokenizer/`` and ``processor/``), a hub-cache
   folder's current snapshot included;
3. the Hugging Face cache of ``Qwen/Qwen2.5-VL-7B-Instruct`` under ``HF_HOME``, and a download
   into it only when the host may download (``models.allow_downloads``).
Where none is present, the error names exactly which files to put where.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.layouts import cache_folder_name, is_snapshot, snapshot_of

log = logging.getLogger("genserve.models.loaders")

TOKENIZER_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"
PROCESSOR_FILE = "preprocessor_config.json"
# A tokenizer folder has its config and either the fast tokenizer or the vocab and merges.
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
DOWNLOADED = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", PROCESSOR_FILE]


@dataclass(frozen=True)
class TokenizerSource:
    tokenizer: Path  # a folder AutoTokenizer reads
    processor: Path  # a folder with preprocessor_config.json
    config: Path | None  # a config.json for the model, when the sidecar has one
    origin: str  # where it was found, for the log


def sidecar_folder(file: Path) -> Path:
    return file.parent / f"{file.stem}.tokenizer"


def find_tokenizer(
    file: Path, models_root: Path, hf_home: Path | None, allow_downloads: bool, field_name: str
) -> TokenizerSource:
    side = sidecar_folder(file)
    if has_tokenizer(side) and (side / PROCESSOR_FILE).is_file():
        config = side / "config.json"
        return TokenizerSource(side, side, config if config.is_file() else None, f"{side.name}/")
    for snapshot in _snapshots(models_root):
        if has_tokenizer(snapshot / "tokenizer") and (snapshot / "processor" / PROCESSOR_FILE).is_file():
            return TokenizerSource(
                snapshot / "tokenizer", snapshot / "processor", None, f"snapshot {snapshot.name}"
            )
    hub = _hub(hf_home)
    if hub is not None:
        cached = snapshot_of(hub / cache_folder_name(TOKENIZER_REPO))
        if has_tokenizer(cached) and (cached / PROCESSOR_FILE).is_file():
            return TokenizerSource(cached, cached, None, f"the Hugging Face cache ({TOKENIZER_REPO})")
        if allow_downloads:
            return _download(hub, field_name)
    raise GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{field_name}: {file.name} holds the weights only; its tokenizer and image processor were not "
        f"found. Put tokenizer.json (or vocab.json and merges.txt), {TOKENIZER_CONFIG} and {PROCESSOR_FILE} "
        f"from {TOKENIZER_REPO} in text_encoders/{side.name}/ (a config.json there is used as the model's "
        "config), or place a diffusers snapshot of Qwen-Image-Edit (with tokenizer/ and processor/) in the "
        f"models folder, or the Hugging Face cache of {TOKENIZER_REPO} under HF_HOME; with "
        "models.allow_downloads on, an online host fetches them into that cache",
        field=field_name,
    )


def has_tokenizer(folder: Path) -> bool:
    if not (folder / TOKENIZER_CONFIG).is_file():
        return False
    return any(all((folder / name).is_file() for name in files) for files in TOKENIZER_SETS)


def _snapshots(models_root: Path) -> list[Path]:
    found = []
    for kind_folder in (
        sorted(p for p in Path(models_root).iterdir() if p.is_dir()) if Path(models_root).is_dir() else []
    ):
        for child in sorted(kind_folder.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and is_snapshot(child):
                found.append(snapshot_of(child))
    return found


def _hub(hf_home: Path | None) -> Path | None:
    return None if hf_home is None else Path(hf_home).expanduser() / "hub"


def _download(hub: Path, field_name: str) -> TokenizerSource:
    from huggingface_hub import snapshot_download

    log.info(
        "downloading the tokenizer and image processor of %s into the Hugging Face cache", TOKENIZER_REPO
    )
    try:
        folder = Path(snapshot_download(TOKENIZER_REPO, allow_patterns=DOWNLOADED, cache_dir=str(hub)))
    except Exception as exc:  # offline, refused, rate-limited: the same answer to the client
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: the tokenizer and image processor of {TOKENIZER_REPO} are not here, and the "
            f"download failed ({type(exc).__name__})",
            field=field_name,
        ) from None
    return TokenizerSource(folder, folder, None, f"a download of {TOKENIZER_REPO}")
