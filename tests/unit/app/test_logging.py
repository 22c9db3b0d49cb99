"""JSON-lines logs carry the request id and the HTTP fields as keys of their own."""

from __future__ import annotations

import json
import logging

from genserve.app.logs import _JsonFormatter


def test_json_lines_carry_structured_fields() -> None:
    record = logging.LogRecord("genserve.http", logging.INFO, __file__, 1, "POST %s", ("/x",), None)
    for key, value in {
        "request_id": "r-1",
        "method": "POST",
        "route": "/x",
        "status": 200,
        "duration_ms": 1.5,
    }.items():
        setattr(record, key, value)
    line = json.loads(_JsonFormatter().format(record))
    assert line["message"] == "POST /x" and line["level"] == "INFO" and line["logger"] == "genserve.http"
    assert (line["request_id"], line["method"], line["route"], line["status"]) == ("r-1", "POST", "/x", 200)
    assert "service" not in line  # absent fields are left out, not null
