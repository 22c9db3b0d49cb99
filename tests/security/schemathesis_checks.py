"""Schemathesis checks loaded into its run (``SCHEMATHESIS_HOOKS``): no answer carries a server
path or a traceback. A path the request itself sent may come back (a refusal names the bad
value); any other absolute path under the roots in ``HOSTILE_SERVER_ROOTS`` is a leak."""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

_ROOTS = [root for root in os.environ.get("HOSTILE_SERVER_ROOTS", "").split(os.pathsep) if root]
_TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "/')


def _sent(case: Any) -> str:
    parts = [case.path_parameters, case.query, case.headers, case.cookies]
    body = getattr(case, "body", None)
    text = json.dumps([p for p in parts if p], default=str)
    if isinstance(body, (bytes, bytearray)):
        return text + body.decode("utf-8", errors="replace")
    return text + json.dumps(body, default=str)


@schemathesis.check
def no_server_path_or_traceback(ctx: Any, response: Any, case: Any) -> bool | None:
    text = response.content.decode("utf-8", errors="replace") if response.content else ""
    header_text = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    answer = f"{header_text}\n{text}"
    for mark in _TRACEBACK_MARKS:
        if mark in answer:
            raise AssertionError(f"the answer carries a traceback ({mark!r})")
    sent = _sent(case)
    for root in _ROOTS:
        if root in answer and root not in sent:
            at = answer.index(root)
            raise AssertionError(f"the answer names a server path: {answer[max(at - 60, 0) : at + 80]!r}")
    return None
