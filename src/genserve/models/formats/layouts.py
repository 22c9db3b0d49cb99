"""Folder layouts of Hugging Face models: a diffusers component folder, a whole diffusers snapshot,
and the hub cache's ``models--<org>--<name>/snapshots/<revision>``.

A snapshot (``model_index.json`` with ``transformer/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``processor/``) is used as a whole: the diffusion model folder named in a request
may be the snapshot itself, and each kind takes its own component from it.
"""

from __future__ import annotations

import re
from pathlib import Path

CACHE_FOLDER = re.compile(r"^models--([A-Za-z0-9][\w.-]*)--([\w.-]+)$")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def snapshot_of(path: Path) -> Path:
    """A hub cache folder's current snapshot (``refs/main``, else the newest); other paths as they are."""
    path = Path(path)
    snapshots = path / "snapshots"
    if not (CACHE_FOLDER.match(path.name) and snapshots.is_dir()):
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text().strip()
        if chosen.is_dir():
            return chosen
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else path


def is_snapshot(path: Path) -> bool:
    return (snapshot_of(path) / "model_index.json").is_file()


def diffusers_folder(path: Path, component: str) -> Path | None:
    """The folder holding ``component``'s ``config.json``: ``path`` itself, or ``path/component`` of a
    snapshot (cache layouts followed); None when ``path`` is neither."""
    path = snapshot_of(Path(path))
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file() and (path / component / "config.json").is_file():
        return path / component
    if (path / "config.json").is_file():
        return path
    return None


def cache_folder_name(repo_id: str) -> str:
    """``Qwen/Qwen-Image-Edit-2509`` -> ``models--Qwen--Qwen-Image-Edit-2509``."""
    org, name = repo_id.split("/", 1)
    return f"models--{org}--{name}"
