"""How deep a JSON document nests, measured on its raw bytes before anything parses it.

Python's json parser and the code that walks a parsed document recurse once per level, so a body
of ``[`` repeated a thousand times ends in RecursionError (a 500) wherever it is read. Every door
that takes JSON from a client checks the depth first, against one setting, and refuses with
INVALID_INPUT naming it.

The scan stays linear, in C and numpy: escaped backslashes and quotes go first (so no quote
inside a string can hide), then a running parity of the quotes marks what lies inside strings
(so no bracket there counts), and the running sum of the brackets outside is the depth. Malformed
JSON is left for the parser to report; the scan only bounds the nesting.
"""

from __future__ import annotations

import json

import numpy as np

from genserve.errors import ErrorCode, GenserveError

_QUOTE = ord('"')
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (0 for a scalar)."""
    encoding = json.detect_encoding(body)
    if encoding not in ("utf-8", "utf-8-sig"):
        body = body.decode(encoding, errors="ignore").encode()
    # A run of backslashes pairs up from its left; a backslash left over escapes what follows.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = np.frombuffer(unescaped, dtype=np.uint8)
    in_string = np.bitwise_xor.accumulate((data == _QUOTE).view(np.uint8))
    steps = _STEP[data][in_string == 0]
    steps = steps[steps != 0]
    return int(steps.cumsum(dtype=np.int32).max()) if steps.size else 0


def check_json_depth(body: bytes, max_depth: int, setting: str, what: str = "the JSON body") -> None:
    """INVALID_INPUT when ``body`` nests deeper than ``max_depth``; ``setting`` names the limit."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return  # too few brackets to nest that deep, in any encoding
    depth = json_depth(body)
    if depth > max_depth:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{what} nests {depth} levels deep; at most {max_depth} are accepted ({setting})",
            limit=max_depth,
        )
