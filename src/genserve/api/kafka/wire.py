"""The Kafka door's wire format: topic names, the spec's request message, replies and dead letters.

A request message is exactly the spec's::

    {"request_id": "uuid", "service": "latent_encoder", "input": {...},
     "output": {"topic": "latent-encoder-responses", "key": "request_id"}}

``output`` is optional: replies go to ``output.topic`` or the service's response topic, keyed by
the request id, or by ``output.key`` when it names another value (the spec's literal
``"request_id"`` means the id itself). Everything here is pure data handling, so that every way a
message can be wrong is decided in one place and reported as the spec's INVALID_INPUT, naming the
field, before any work starts.

The answers topic (``kafka.answers_topic``) holds one record per answer: the key
``<service>/<request_id>`` (service names have no ``/``, so the first one splits it), the value the
answer's JSON exactly as it goes to the response topic, and the request's digest in a header, so a
reused id with a different request is still told apart on another host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from genserve.api.json_limits import check_json_depth
from genserve.api.request_ids import RULE as REQUEST_ID_RULE
from genserve.config import KafkaSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import Service, parse_request
from genserve.storage.responses import encode_json, request_digest

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's own rule for topic names
KEY_IS_REQUEST_ID = "request_id"
MAX_JSON_DEPTH = 64  # as server.max_json_depth's default: no request nests nearly that deep
DIGEST_HEADER = "genserve.digest"


def dashed(service: str) -> str:
    return service.replace("_", "-")


def request_topic(settings: KafkaSettings, service: str) -> str:
    return settings.request_topics.get(service) or f"{dashed(service)}-requests"


def response_topic(settings: KafkaSettings, service: str) -> str:
    return settings.response_topics.get(service) or f"{dashed(service)}-responses"


def dead_letter_topic(service: str) -> str:
    return f"{dashed(service)}-dlq"


def consumer_group(settings: KafkaSettings, service: str) -> str:
    return f"{settings.group_prefix}{service}-group"


def store_scope(service: str) -> str:
    """Where a service's answers live in the response store, apart from other services' ids."""
    return f"kafka:{service}"


def answer_key(service: str, request_id: str) -> bytes:
    return f"{service}/{request_id}".encode()


def read_answer_key(key: bytes | None) -> tuple[str, str] | None:
    """(service, request id) of an answers-topic key; None for keys that name no answer (markers)."""
    try:
        service, sep, request_id = (key or b"").decode("utf-8").partition("/")
    except UnicodeDecodeError:
        return None
    return (service, request_id) if sep and service and request_id else None


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str | None = None
    key: str | None = None


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str
    service: str
    input: dict[str, Any]
    output: _Output | None = None


@dataclass(frozen=True)
class Reply:
    """Where the answer to one message goes."""

    topic: str
    key: str
    default_topic: str  # the service's response topic, the fallback when ``topic`` cannot be written


@dataclass(frozen=True)
class Incoming:
    """One request message, read. ``problem`` is set when it must not run (it then goes to the
    dead-letter topic); ``request_id`` is None when the message has no usable id to answer to."""

    request_id: str | None
    reply: Reply
    request: BaseModel | None = None
    digest: str = ""
    problem: GenserveError | None = None


def _invalid(message: str, **details: Any) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, message, **details)


def _usable_id(data: Any) -> str | None:
    raw = data.get("request_id") if isinstance(data, dict) else None
    return raw if isinstance(raw, str) and _REQUEST_ID.fullmatch(raw) else None


def _reply_of(
    data: Any, request_id: str | None, default_topic: str, forbidden_topics: frozenset[str] = frozenset()
) -> Reply:
    """The reply address the message asks for, as far as it is well-formed; the defaults otherwise,
    so that even a broken message gets its error answer somewhere the client listens."""
    output = data.get("output") if isinstance(data, dict) else None
    topic = key = None
    if isinstance(output, dict):
        topic = output.get("topic") if isinstance(output.get("topic"), str) else None
        key = output.get("key") if isinstance(output.get("key"), str) else None
    if topic is None or not _TOPIC.fullmatch(topic) or topic in forbidden_topics:
        topic = default_topic
    if key is None or key == KEY_IS_REQUEST_ID or not key:
        key = request_id or ""
    return Reply(topic=topic, key=key, default_topic=default_topic)


def read_message(
    value: bytes | None, service: Service[Any, Any], default_topic: str, forbidden_topics: frozenset[str]
) -> Incoming:
    """Decode and validate one request message for ``service``; never raises."""
    try:
        if value:  # before parsing: a deeply nested message would exhaust the parser's stack
            check_json_depth(value, MAX_JSON_DEPTH, "the Kafka door's limit", "the message")
        data = json.loads(value) if value else None
    except GenserveError as exc:
        return Incoming(None, _reply_of(None, None, default_topic), problem=exc)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Incoming(None, _reply_of(None, None, default_topic), problem=_invalid(f"not JSON: {exc}"))
    if not isinstance(data, dict):
        kind = "an empty message" if data is None else f"a JSON {type(data).__name__}"
        problem = _invalid(f"a request message must be a JSON object, got {kind}")
        return Incoming(None, _reply_of(None, None, default_topic), problem=problem)
    rid = _usable_id(data)
    reply = _reply_of(data, rid, default_topic, forbidden_topics)
    if rid is None:
        problem = _invalid(f"request_id: must be {REQUEST_ID_RULE}", field="request_id")
        return Incoming(None, reply, problem=problem)
    problem = _envelope_problem(data, service, forbidden_topics)
    if problem is not None:
        return Incoming(rid, reply, problem=problem)
    try:
        request = parse_request(service, data["input"])
    except GenserveError as exc:
        return Incoming(rid, reply, problem=exc)
    digest = request_digest({"service": service.name, "input": data["input"]})
    return Incoming(rid, reply, request=request, digest=digest)


def _envelope_problem(
    data: dict[str, Any], service: Service[Any, Any], forbidden_topics: frozenset[str]
) -> GenserveError | None:
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()]
        fields = [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
        return _invalid("invalid request message: " + "; ".join(problems), fields=fields)
    if envelope.service != service.name:
        return _invalid(
            f"service: this topic carries {service.name} requests, got {envelope.service!r}", field="service"
        )
    topic = envelope.output.topic if envelope.output else None
    if topic is not None and not _TOPIC.fullmatch(topic):
        return _invalid(
            "output.topic: must be 1-249 characters of letters, digits and ._-", field="output.topic"
        )
    if topic in forbidden_topics:
        return _invalid(
            f"output.topic: {topic!r} is one of the door's own request, dead-letter or answers topics",
            field="output.topic",
        )
    return None


def encode_body(body: dict[str, Any]) -> bytes:
    return encode_json(body).encode("utf-8")


def dead_letter_headers(
    original: Any, reason: GenserveError, *, topic: str, partition: int, offset: int, request_id: str | None
) -> list[tuple[str, bytes]]:
    """The original headers plus why and from where, so the dead letter can be read and replayed."""
    headers = [(str(k), bytes(v or b"")) for k, v in (original or ())]
    headers += [
        ("genserve.dlq.reason", reason.message.encode("utf-8")),
        ("genserve.dlq.error_code", reason.code.value.encode()),
        ("genserve.dlq.topic", topic.encode()),
        ("genserve.dlq.partition", str(partition).encode()),
        ("genserve.dlq.offset", str(offset).encode()),
    ]
    if request_id is not None:
        headers.append(("genserve.request_id", request_id.encode()))
    return headers
