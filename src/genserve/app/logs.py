"""Where genserve's log lines go and how they look: plain text, or one JSON object per line.

Every line is bounded (``logging.max_line_bytes``): a client can make a message long (a path, a
URL) or a traceback deep (a recursion), and one request must not write megabytes. A long part is
cut in its middle, so the start (what happened) and the end (the exception raised) both stay.
"""

from __future__ import annotations

import json
import logging
from typing import Any

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
_PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
_FIELD_BYTES = 1024  # a structured field (a path) in a JSON line
_DEFAULT_LINE_BYTES: int = LoggingSettings.model_fields["max_line_bytes"].default


def shortened(text: str, limit: int) -> str:
    """``text`` within ``limit`` UTF-8 bytes, its middle replaced by a note of what was cut."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    note = f" ... [{len(data) - limit} bytes cut] ... "
    keep = max(limit - len(note), 0)
    head = data[: keep * 2 // 3].decode("utf-8", errors="ignore")
    tail = data[len(data) - (keep - keep * 2 // 3) :].decode("utf-8", errors="ignore")
    return head + note + tail


class _Bounded(logging.Formatter):
    """Cuts the message and the exception text apart, each to its share of the line, so that a
    long message cannot push the exception's last line out (or the other way round)."""

    def __init__(self, max_line_bytes: int = _DEFAULT_LINE_BYTES, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.max_line_bytes = max_line_bytes

    def parts(self, record: logging.LogRecord) -> tuple[str, str]:
        message = record.getMessage()
        trace = ""
        if record.exc_info:
            trace = self.formatException(record.exc_info)
        if record.stack_info:
            trace = f"{trace}\n{self.formatStack(record.stack_info)}".strip("\n")
        budget = self.max_line_bytes - 256  # the level, logger name and fields around them
        if trace:
            message = shortened(message, budget // 4)
            trace = shortened(trace, budget - len(message.encode("utf-8", errors="replace")))
        else:
            message = shortened(message, budget)
        return message, trace

    def format(self, record: logging.LogRecord) -> str:
        message, trace = self.parts(record)
        record.message = message
        line = self.formatMessage(record)
        return f"{line}\n{trace}" if trace else line


class _JsonFormatter(_Bounded):
    def format(self, record: logging.LogRecord) -> str:
        message, trace = self.parts(record)
        payload: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key in _STRUCTURED_FIELDS:
            if hasattr(record, key):
                value = getattr(record, key)
                payload[key] = shortened(value, _FIELD_BYTES) if isinstance(value, str) else value
        if trace:
            payload["exc_info"] = trace
        return self._within_limit(payload)

    def _within_limit(self, payload: dict[str, Any]) -> str:
        """Escaping may lengthen text (a control character takes six bytes): cut the longer of the
        message and the traceback, in proportion to the overshoot, until the line fits."""
        line = json.dumps(payload)
        for _ in range(4):
            over = len(line) - self.max_line_bytes  # ASCII: characters are bytes
            if over <= 0:
                break
            key = max(("message", "exc_info"), key=lambda k: len(json.dumps(payload.get(k, ""))))
            text = payload[key]
            escaped = len(json.dumps(text))
            share = max(escaped - over - 64, 0) / escaped  # of the text, by its escaped length
            payload[key] = shortened(text, int(len(text.encode("utf-8", errors="replace")) * share))
            line = json.dumps(payload)
        return line


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
                _JsonFormatter(settings.max_line_bytes)
                if settings.json_lines
                else _Bounded(settings.max_line_bytes, _PLAIN_FORMAT)
            )
