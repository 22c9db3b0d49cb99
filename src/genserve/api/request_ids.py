"""Request ids as every door takes them: given by the client (checked) or made here."""

from __future__ import annotations

import re
import uuid

from genserve.errors import ErrorCode, GenserveError

_VALID_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
RULE = "1-128 characters of letters, digits and ._:@+=/-"


def new_request_id() -> str:
    return str(uuid.uuid4())


def checked_request_id(given: str | None, source: str) -> str:
    """The client's id if it is usable in file names, headers and logs; a new one if none."""
    if not given:
        return new_request_id()
    if _VALID_ID.fullmatch(given):
        return given
    raise GenserveError(ErrorCode.INVALID_INPUT, f"{source}: must be {RULE}", field=source)
