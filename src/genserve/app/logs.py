"""Where genserve's log lines go and how they look: plain text, or one JSON object per line."""

from __future__ import annotations

import json
import logging

from genserve.config import LoggingSettings

# Fields that loggers pass with ``extra=`` and JSON lines carry as keys of their own.
_STRUCTURED_FIELDS = (
    "request_id",
    "service",
    "device",
    "duration_ms",
    "outcome",
    "method",
    "path",
    "route",
    "status",
)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _STRUCTURED_FIELDS:
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(settings: LoggingSettings) -> None:
    root = logging.getLogger("genserve")
    root.setLevel(settings.level)
    if not any(getattr(h, "_genserve", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._genserve = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for handler in root.handlers:
        if getattr(handler, "_genserve", False):
            handler.setFormatter(
                _JsonFormatter()
                if settings.json_lines
                else logging.Formatter("%(levelname)s %(name)s: %(message)s")
            )
