"""Malformed HTTP against a real server: deep JSON, bad multipart boundaries, huge headers. Each is
refused with a 4xx before any route parses it, and the server goes on answering."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import LiveServer

MAX_DEPTH = 64  # server.max_json_depth's default
# The routes the issue names, plus the other JSON bodies a client sends.
JSON_ROUTES = [
    "/comfy/prompt",
    "/prompt",
    "/generate-based-workflow",
    "/v1/chat/completions",
    "/v1/completions",
    "/comfy/queue",
    "/comfy/history",
    "/api/v1/latent/encode",
    "/api/v1/text/encode",
    "/api/v1/sampling/sample",
    "/api/v1/decoding/decode",
    "/api/v1/edit",
    "/api/v1/models/vae/qwen_image_vae/load",
]


UPLOADS = {"/upload", "/upload/image", "/comfy/upload/image", "/upload/mask", "/comfy/upload/mask"}


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def refused_as_too_deep(response: httpx.Response) -> None:
    assert response.status_code == 400, (response.request.url, response.status_code, response.text[:300])
    body = response.json()
    assert body["error_code"] == "INVALID_INPUT"
    assert "server.max_json_depth" in body["error_message"]


def every_body_route(client: httpx.Client) -> list[tuple[str, str]]:
    """Every POST/PUT/PATCH operation of the app's OpenAPI document, path parameters filled in."""
    found = []
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method in operations:
            if method in ("post", "put", "patch"):
                found.append((method, path.replace("{kind}", "vae").replace("{name}", "x")))
    return found


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("shape", [nested_arrays, nested_objects], ids=["arrays", "objects"])
def test_json_nested_1000_deep_is_refused_naming_the_limit(client: httpx.Client, path: str, shape) -> None:  # type: ignore[no-untyped-def]
    body = shape(1000)
    response = client.post(
        path, params={"clientId": "deep"}, content=body, headers={"content-type": "application/json"}
    )
    refused_as_too_deep(response)


def test_every_route_that_takes_a_body_refuses_deep_json(client: httpx.Client) -> None:
    """Whatever the declared type (ComfyUI clients send none, or text/plain)."""
    routes = every_body_route(client)
    assert len(routes) > 15, routes
    for method, path in routes:
        for content_type in ("application/json", "text/plain", None):
            headers = {"content-type": content_type} if content_type else {}
            response = client.request(
                method, path, params={"clientId": "deep"}, content=nested_arrays(1000), headers=headers
            )
            if path in UPLOADS:  # they read multipart only, and refuse anything else
                assert 400 <= response.status_code < 500, (path, response.text[:300])
            else:
                refused_as_too_deep(response)


def test_depth_at_the_limit_passes_the_check(client: httpx.Client) -> None:
    """At the limit the route itself answers (here: an unknown field), one beyond it the check."""
    inner = json.dumps({"x": 1})
    at_limit = (
        '{"image_path": "inputs/person.png", "extra": '
        + "[" * (MAX_DEPTH - 2)
        + inner
        + "]" * (MAX_DEPTH - 2)
        + "}"
    )
    response = client.post(
        "/api/v1/latent/encode", content=at_limit, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "extra" in response.json()["error_message"], response.text
    beyond = at_limit.replace('"extra": [', '"extra": [[', 1).replace("]}", "]]}", 1)
    refused_as_too_deep(client.post("/api/v1/latent/encode", content=beyond))


def test_brackets_inside_strings_do_not_count(client: httpx.Client) -> None:
    prompt = '\\"[' * 2000  # escaped quotes cannot end the string early
    body = json.dumps({"model": "none", "messages": [{"role": "user", "content": "[{" * 2000 + prompt}]})
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code != 400 or "max_json_depth" not in response.text, response.text
    assert response.status_code < 500, response.text


def test_a_deep_utf16_body_is_refused_too(client: httpx.Client) -> None:
    """json.loads reads UTF-16 and UTF-32 bodies as well, so the check does."""
    body = ("[" * 1000 + "]" * 1000).encode("utf-16")
    refused_as_too_deep(
        client.post("/comfy/prompt", content=body, headers={"content-type": "application/json"})
    )


def multipart_body(boundary: str) -> bytes:
    return (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
        f"not really a png\r\n--{boundary}--\r\n"
    ).encode()


@pytest.mark.parametrize("path", ["/upload", "/comfy/upload/image", "/upload/image", "/api/v1/edit"])
@pytest.mark.parametrize("boundary", ["x" * 5000, "x" * 71, ""], ids=["5000", "71", "empty"])
def test_a_bad_multipart_boundary_is_400(client: httpx.Client, path: str, boundary: str) -> None:
    content_type = f"multipart/form-data; boundary={boundary}" if boundary else "multipart/form-data"
    response = client.post(
        path,
        params={"clientId": "multi"},
        content=multipart_body(boundary or "b"),
        headers={"content-type": content_type},
    )
    assert response.status_code == 400, (path, response.status_code, response.text[:300])
    assert "boundary" in response.text


def test_a_boundary_of_70_characters_still_reaches_the_route(client: httpx.Client) -> None:
    boundary = "y" * 70
    response = client.post(
        "/upload",
        params={"clientId": "multi"},
        content=multipart_body(boundary),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code < 500 and "RFC 2046" not in response.text, response.text


def raw_request(url: str, head: bytes, body_chunks: int = 0, chunk: bytes = b"") -> bytes:
    """Send ``head`` (then ``body_chunks`` times ``chunk``) over a plain socket; what came back,
    or b"" when the server closed the connection while we were still sending."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for _ in range(body_chunks):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            pass
        return received


def test_a_10_mb_header_line_is_refused(server: LiveServer) -> None:
    head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
    answer = raw_request(server.url, head, 160, b"a" * 65536 + b"")  # 10 MiB, never ended
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    with httpx.Client(base_url=server.url, timeout=10) as fresh:
        assert fresh.get("/health/live").status_code == 200  # and the server goes on


def test_headers_over_the_limit_get_400_and_under_it_pass(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as fresh:
        assert fresh.get("/health/live", headers={"x-big": "a" * 32_000}).status_code == 200
    head = (
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    )
    answer = raw_request(server.url, head)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
