"""Credentials on the ComfyUI listener, for every route and static file alike (a middleware, since
the frontend's files are a mount that no route dependency reaches).

The same Guard as the REST door checks the key. A browser opening the web UI cannot send a Bearer
header, so ``GET /?token=<key>`` (any page) is checked once and answered with a redirect to the
same page without the key, setting it as an HttpOnly, SameSite=Strict cookie: the key leaves the
address bar and history, scripts on the page cannot read it, and other sites' pages cannot send
it. Later requests and the WebSocket present the cookie. A Bearer header is taken as on the REST
door; a WebSocket may also send ``?token=``, as there.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from genserve.api.rest.errors import error_response
from genserve.auth.guard import Guard, bearer
from genserve.errors import ErrorCode, GenserveError

COOKIE = "genserve_token"
TOKEN_PARAM = "token"
WS_POLICY_VIOLATION = 1008


class ComfyAuthMiddleware:
    """Records the caller as ``state.principal`` (what the routes' ``principal`` reads), or
    refuses: 401 in genserve's error body, a WebSocket closed with 1008 before it opens."""

    def __init__(self, app: ASGIApp, *, guard: Guard, secure_cookie: bool = False) -> None:
        self.app = app
        self.guard = guard
        self.secure_cookie = secure_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        websocket = scope["type"] == "websocket"
        from_query = conn.query_params.get(TOKEN_PARAM)
        token = bearer(conn.headers.get("authorization"))
        if token is None and from_query and (websocket or scope["method"] == "GET"):
            token = from_query
        else:
            from_query = None
        token = token or conn.cookies.get(COOKIE)
        try:
            caller = self.guard.principal(token)
        except GenserveError as exc:
            await self._refuse(scope, receive, send, exc, websocket)
            return
        scope.setdefault("state", {})["principal"] = caller
        if from_query and not websocket and not self.guard.open:
            await self._keep_in_cookie(conn, from_query)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _keep_in_cookie(self, conn: HTTPConnection, token: str) -> RedirectResponse:
        query = urlencode([(k, v) for k, v in conn.query_params.multi_items() if k != TOKEN_PARAM])
        target = URL(path=conn.url.path, query=query)
        answer = RedirectResponse(str(target), status_code=303)
        answer.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=self.secure_cookie, path="/"
        )
        answer.headers["Cache-Control"] = "no-store"
        return answer

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, exc: GenserveError, websocket: bool
    ) -> None:
        if websocket:
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": exc.message[:120]})
            return
        if exc.code is ErrorCode.UNAUTHENTICATED:
            exc = GenserveError(
                exc.code,
                f"{exc.message}; in a browser open this page once as /?{TOKEN_PARAM}=<key> "
                "(it is then kept in a cookie)",
            )
        request_id = scope.get("state", {}).get("request_id")
        await error_response(exc, request_id)(scope, receive, send)
