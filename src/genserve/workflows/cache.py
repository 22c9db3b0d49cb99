"""The output cache: node results kept across runs, keyed by graph.cache_keys, evicted least recently used.

Bounded by entries, not bytes: one entry may hold a loaded model or a latent, and the model
manager (which pins what is in use) owns memory; the cache only decides which results may be
reused. ``max_entries=0`` disables it (every node runs every time).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from genserve.workflows.nodes.base import NodeResult


class OutputCache:
    """A thread-safe LRU map from cache-key digests to node results."""

    def __init__(self, max_entries: int = 64) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, NodeResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> NodeResult | None:
        """The cached result, marked as just used; None when absent."""
        with self._lock:
            result = self._entries.get(key)
            if result is not None:
                self._entries.move_to_end(key)
            return result

    def put(self, key: str, result: NodeResult) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget every result (ComfyUI's ``POST /free``), dropping references to models and tensors."""
        with self._lock:
            self._entries.clear()
