"""The running core a door talks to: settings, the model manager, the sandbox, the engine, and the
lip-sync admin when lip-sync is served.

Built by the composition root (``app/``) and handed to every door, so no door constructs a part
or reaches for a global. Closing it lets running work finish, then unloads every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from genserve.config import Settings
from genserve.engine.engine import Engine
from genserve.models.manager import ModelManager
from genserve.services.lipsync.admin import LipsyncAdmin
from genserve.storage.paths import Sandbox


@dataclass
class Runtime:
    settings: Settings
    models: ModelManager
    sandbox: Sandbox
    engine: Engine
    lipsync: LipsyncAdmin | None = None
    # What else the root built that must stop with it (the lip-sync compositing pool), run last.
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Engine first (lets running work finish), then the models, then the rest."""
        self.engine.close()
        self.models.close()
        for close in self.closers:
            close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
