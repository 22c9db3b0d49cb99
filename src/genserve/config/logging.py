"""The ``logging`` section: level and line format."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genserve.config.base import Section


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(False, description="One JSON object per line instead of plain text.")
