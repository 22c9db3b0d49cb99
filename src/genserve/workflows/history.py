"""ComfyUI's prompt history: a bounded record of finished prompts in ComfyUI's shape, each kept
with its owner (``owners``) and whether it is the bridge's (hidden from ComfyUI's API)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from genserve.auth.principal import Principal
from genserve.workflows.owners import sees


@dataclass
class _Entry:
    body: dict[str, Any]
    owner: str | None
    private: bool


class PromptHistory:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, prompt_id: str, body: dict[str, Any], owner: str | None, private: bool) -> None:
        with self._lock:
            self._entries[prompt_id] = _Entry(body, owner, private)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def read(
        self,
        prompt_id: str | None = None,
        max_items: int | None = None,
        *,
        include_private: bool = False,
        viewer: Principal | None = None,
    ) -> dict[str, Any]:
        """Every finished prompt the viewer may see (newest last), or just ``prompt_id`` ({} if
        unknown or not the viewer's)."""
        with self._lock:
            shown = [
                (key, entry.body)
                for key, entry in self._entries.items()
                if (prompt_id is None or key == prompt_id) and self._visible(entry, include_private, viewer)
            ]
        if prompt_id is None and max_items is not None:
            shown = shown[-max_items:] if max_items > 0 else []
        return dict(shown)

    def delete(
        self, prompt_ids: list[str] | None, *, include_private: bool = False, viewer: Principal | None = None
    ) -> None:
        with self._lock:
            chosen = list(self._entries) if prompt_ids is None else prompt_ids
            for prompt_id in chosen:
                entry = self._entries.get(prompt_id)
                if entry is not None and self._visible(entry, include_private, viewer):
                    del self._entries[prompt_id]

    @staticmethod
    def _visible(entry: _Entry, include_private: bool, viewer: Principal | None) -> bool:
        return (include_private or not entry.private) and sees(viewer, entry.owner)
