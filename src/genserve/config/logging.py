"""The ``logging`` section: level, line format and line length."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genserve.config.base import Section


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(False, description="One JSON object per line instead of plain text.")
    max_line_bytes: int = Field(
        16_384,
        ge=1024,
        description="Longest log line (UTF-8 bytes); a longer message or traceback is cut in its middle.",
    )
