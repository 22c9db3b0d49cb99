"""Per-request plumbing for every route: request id, body size and shape limits, metrics, access
log, and a last-resort INTERNAL answer.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, because the latter re-wraps
``receive`` and would hide the client's disconnect from the routes that watch for it.

Malformed bodies are refused here, before any route parses them, so that no route can answer one
with a 500: a body that may be JSON is read whole (within the size limit) and its nesting depth
checked on the raw bytes; a multipart body needs a boundary of 1 to 70 characters (RFC 2046), as
the form parsers assume. The route then reads the checked body as if it came from the client, and
later ``receive`` calls still report the client's disconnect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genserve.api.json_limits import check_json_depth
from genserve.api.request_ids import checked_request_id, new_request_id
from genserve.api.rest.errors import error_response
from genserve.api.rest.metrics import ServerMetrics
from genserve.errors import ErrorCode, GenserveError

log = logging.getLogger("genserve.http")

REQUEST_ID_HEADER = "x-request-id"
MAX_BOUNDARY_CHARS = 70  # RFC 2046
# Bodies no route reads as JSON: forms are parsed by the form parsers, whose input is checked apart.
_FORM_TYPES = (b"multipart/", b"application/x-www-form-urlencoded")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics,
        max_body_bytes: int,
        retry_after_s: int = 1,
        access_log: bool = True,
        body_limits: Mapping[str, int] | None = None,
        max_json_depth: int = 64,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        # Paths with a limit of their own (uploads take files far larger than a JSON request).
        self.body_limits = dict(body_limits or {})
        self.retry_after_s = retry_after_s
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        given = headers.get(REQUEST_ID_HEADER.encode())
        problem: GenserveError | None = None
        try:
            request_id = checked_request_id(given.decode("latin-1") if given else None, "X-Request-ID")
        except GenserveError as exc:
            request_id, problem = new_request_id(), exc
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500, "started": False}
        over_limit = False

        async def send_with_id(message: Message) -> None:
            if over_limit and not status["started"]:
                # A route that caught the size error while parsing (FastAPI turns any failure to
                # read a body into 400) answers a body it never got: the 413 below replaces it.
                return
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self.body_limits.get(scope["path"], self.max_body_bytes)
        problem = problem or self._header_problem(headers, limit)
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received, over_limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over_limit = True
                    raise _BodyTooLarge
            return message

        self.metrics.http_started()
        try:
            app_receive: Receive = bounded_receive
            if problem is None and self._may_be_json(scope["path"], headers.get(b"content-type", b"")):
                app_receive, problem = await self._checked_json(bounded_receive)
            if problem is not None:
                await error_response(problem, request_id, self.retry_after_s)(scope, receive, send_with_id)
            else:
                await self.app(scope, app_receive, send_with_id)
        except _BodyTooLarge:
            pass  # answered below
        except Exception:
            log.exception("unhandled error (request_id=%s)", request_id, extra={"request_id": request_id})
            if not status["started"]:
                err = GenserveError(ErrorCode.INTERNAL, "internal error; the server log has the details")
                await error_response(err, request_id)(scope, receive, send_with_id)
        finally:
            if over_limit and not status["started"]:
                over_limit = False  # let the 413 itself through
                await error_response(self._too_large(limit), request_id)(scope, receive, send_with_id)
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.http_finished(scope["method"], route, int(status["code"]), seconds)
            if self.access_log:
                self._log(scope, route, int(status["code"]), seconds, request_id)

    def _header_problem(self, headers: Mapping[bytes, bytes], limit: int) -> GenserveError | None:
        """What the headers alone show: a declared length over the limit, a bad multipart boundary."""
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return self._too_large(limit)
        return _multipart_problem(headers.get(b"content-type", b""))

    def _may_be_json(self, path: str, content_type: bytes) -> bool:
        """Routes parse JSON whatever the declared type (ComfyUI clients send none), so every body
        is checked but a form's and an upload route's (whose own limit may be far larger, and
        which reads nothing but multipart)."""
        return path not in self.body_limits and not content_type.lower().lstrip().startswith(_FORM_TYPES)

    async def _checked_json(self, receive: Receive) -> tuple[Receive, GenserveError | None]:
        """The whole body, read through ``receive`` (so the size limit holds), and a ``receive``
        that hands it to the route; or the refusal of a body nested too deep."""
        first: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            first.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_json_depth(body, self.max_json_depth, "server.max_json_depth")
        except GenserveError as exc:
            return receive, exc
        if first and first[0]["type"] == "http.request":
            first = [{"type": "http.request", "body": body, "more_body": False}, *first[len(chunks) :]]

        async def replay() -> Message:
            return first.pop(0) if first else await receive()

        return replay, None

    def _too_large(self, limit: int) -> GenserveError:
        key = "server.max_body_bytes" if limit == self.max_body_bytes else "this route's upload limit"
        return GenserveError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"request body larger than {limit} bytes ({key})", limit_bytes=limit
        )

    @staticmethod
    def _log(scope: Scope, route: str, status: int, seconds: float, request_id: str) -> None:
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        log.info(
            "%s %s %d %.1f ms request_id=%s",
            scope["method"],
            scope["path"],
            status,
            seconds * 1000,
            request_id,
            extra=fields,
        )


def _multipart_problem(content_type: bytes) -> GenserveError | None:
    if not content_type.lower().lstrip().startswith(b"multipart/"):
        return None
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if 0 < len(boundary) <= MAX_BOUNDARY_CHARS:
        return None
    return GenserveError(
        ErrorCode.INVALID_INPUT,
        f"Content-Type: a multipart body needs a boundary of 1 to {MAX_BOUNDARY_CHARS} characters (RFC 2046)",
        field="Content-Type",
    )


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/models/{kind}/{name}/load``), so labels stay few."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
