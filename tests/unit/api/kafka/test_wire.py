"""A Kafka request message nested too deep is refused before any parser sees it."""

from __future__ import annotations

from genserve.api.kafka.wire import MAX_JSON_DEPTH, read_message
from genserve.errors import ErrorCode
from genserve.services.builtin import SERVICES


def test_a_deeply_nested_message_is_an_invalid_input_not_a_crash() -> None:
    deep = b'{"request_id": "r1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    incoming = read_message(deep, SERVICES["decoding"], "decoding-responses", frozenset())
    assert incoming.problem is not None and incoming.problem.code is ErrorCode.INVALID_INPUT
    assert f"at most {MAX_JSON_DEPTH}" in incoming.problem.message
