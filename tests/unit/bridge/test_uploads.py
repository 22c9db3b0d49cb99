"""The bridge's uploads: real image bytes from Pillow, real files in tmp_path, and the multipart
reader behind a real uvicorn server driven by httpx, because the form parsing is the part that
breaks when Starlette or python-multipart change."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from genserve.bridge import uploads
from genserve.bridge.uploads import UploadPart, read_upload_parts, save_uploads
from genserve.errors import ErrorCode, GenserveError

MB = 1024 * 1024
HTTP_LIMIT = 200_000
HTTP_MAX_FILES = 3
SAVED = re.compile(r"^[0-9a-f]{12}_[A-Za-z0-9._-]+\.(png|jpg|webp|bmp|gif)$")


def image_bytes(fmt: str, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=0).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions but holds no pixels: a decompression bomb's shape, cheaply."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")


def part(field: str, filename: str, data: bytes = PNG) -> UploadPart:
    return UploadPart(field=field, filename=filename, content_type="image/png", data=data)


def refused(parts: list[UploadPart], folder: Path, max_file_bytes: int = MB) -> str:
    with pytest.raises(GenserveError) as info:
        save_uploads(parts, folder, max_file_bytes=max_file_bytes)
    assert info.value.code is ErrorCode.INVALID_INPUT
    return info.value.message


# --- save_uploads ---------------------------------------------------------------------------------


def test_saves_under_fresh_names_with_the_detected_extension(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    saved = save_uploads(
        [part("person", "me.png"), part("cloth", "photo.png", JPEG)], folder, max_file_bytes=MB
    )
    assert list(saved) == ["person", "cloth"]
    assert all(SAVED.match(name) for name in saved.values()), saved
    assert saved["person"].endswith("_me.png")
    assert saved["cloth"].endswith("_photo.jpg")  # a JPEG sent as .png is stored as what it is
    assert (folder / saved["person"]).read_bytes() == PNG
    assert (folder / saved["cloth"]).read_bytes() == JPEG
    assert sorted(p.name for p in folder.iterdir()) == sorted(saved.values())  # no temp files left


@pytest.mark.parametrize(("fmt", "extension"), [("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")])
def test_other_accepted_formats(tmp_path: Path, fmt: str, extension: str) -> None:
    saved = save_uploads([part("a", "x.png", image_bytes(fmt))], tmp_path, max_file_bytes=MB)
    assert saved["a"].endswith(f"_x.{extension}")


def test_one_file_name_twice_gives_two_names(tmp_path: Path) -> None:
    saved = save_uploads([part("a", "same.png"), part("b", "same.png")], tmp_path, max_file_bytes=MB)
    assert saved["a"] != saved["b"]
    assert len(list(tmp_path.iterdir())) == 2


def test_stem_is_sanitized_and_cut(tmp_path: Path) -> None:
    saved = save_uploads([part("a", "my phöto (1)" + "x" * 100 + ".png")], tmp_path, max_file_bytes=MB)
    stem = saved["a"][13:-4]
    assert len(stem) == 64
    assert stem.startswith("my_ph_to__1_x")


def test_text_renamed_png_is_not_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    message = refused([part("cloth", "notes.png", b"just some notes, honest\n")], folder)
    assert message == "upload part 'cloth': 'notes.png' is not an image (PNG, JPEG, WEBP, BMP or GIF)"
    assert not folder.exists()


def test_other_image_formats_are_named(tmp_path: Path) -> None:
    message = refused([part("scan", "scan.png", image_bytes("TIFF"))], tmp_path)
    assert "'scan'" in message and "TIFF" in message


def test_damaged_png_is_refused(tmp_path: Path) -> None:
    broken = PNG[:40] + bytes(b ^ 0xFF for b in PNG[40:60]) + PNG[60:]
    assert "'a'" in refused([part("a", "broken.png", broken)], tmp_path)


def test_oversize_is_refused(tmp_path: Path) -> None:
    message = refused([part("big", "big.png")], tmp_path, max_file_bytes=len(PNG) - 1)
    assert message.startswith("upload part 'big': larger than")
    with pytest.raises(GenserveError, match=r"upload part 'big': larger than 20.0 MB"):
        save_uploads([part("big", "big.png", bytes(20 * MB + 1))], tmp_path, max_file_bytes=20 * MB)


@pytest.mark.parametrize("filename", ["../x.png", "a/b.png", "..\\x.png", "/etc/x.png", "c:\\x.png"])
def test_path_tricks_are_refused(tmp_path: Path, filename: str) -> None:
    message = refused([part("person", filename)], tmp_path / "inputs")
    assert message == f"upload part 'person': file name {filename!r} must be a plain name (no folders)"
    assert not (tmp_path / "inputs").exists()
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("filename", [".hidden.png", "..", ".", "", "   ", "x\x00.png"])
def test_hidden_empty_and_nul_names_are_refused(tmp_path: Path, filename: str) -> None:
    assert refused([part("person", filename)], tmp_path).startswith("upload part 'person': ")


def test_field_names_must_be_present_short_and_unique(tmp_path: Path) -> None:
    assert "appears twice" in refused([part("a", "1.png"), part("a", "2.png")], tmp_path)
    assert "empty" in refused([part("", "1.png")], tmp_path)
    assert "longer than 200" in refused([part("f" * 201, "1.png")], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_later_part_writes_nothing(tmp_path: Path) -> None:
    refused([part("good", "good.png"), part("bad", "bad.png", b"GIF89a but not really")], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_removes_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = uploads.write_bytes
    calls: list[Path] = []

    def flaky(path: Path, data: bytes, durable: bool = False) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise GenserveError(ErrorCode.OUTPUT_DIR_NOT_WRITABLE, "disk full")
        return real(path, data, durable=durable)

    monkeypatch.setattr(uploads, "write_bytes", flaky)
    with pytest.raises(GenserveError, match="upload part 'second'") as info:
        save_uploads([part("first", "1.png"), part("second", "2.png")], tmp_path, max_file_bytes=MB)
    assert info.value.code is ErrorCode.OUTPUT_DIR_NOT_WRITABLE
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_too_many_megapixels_is_refused(tmp_path: Path) -> None:
    big = image_bytes("PNG", (8000, 8000), mode="1")  # 64 MP, a few kB compressed
    assert len(big) < MB
    message = refused([part("huge", "huge.png", big)], tmp_path)
    assert "8000x8000" in message and "storage.max_image_pixels" in message


def test_decompression_bomb_is_refused_without_decoding(tmp_path: Path) -> None:
    for width, height in [(12_000, 12_000), (40_000, 40_000)]:  # Pillow's warning, then its error
        message = refused([part("bomb", "bomb.png", png_header_only(width, height))], tmp_path)
        assert message.startswith("upload part 'bomb': 'bomb.png' is ")
    assert list(tmp_path.iterdir()) == []


# --- read_upload_parts over real HTTP -----------------------------------------------------------


def upload_app(folder: Path) -> FastAPI:
    app = FastAPI()

    @app.post("/upload")
    async def upload(request: Request) -> JSONResponse:
        try:
            parts = await read_upload_parts(request, max_file_bytes=HTTP_LIMIT, max_files=HTTP_MAX_FILES)
            saved = await asyncio.to_thread(save_uploads, parts, folder, max_file_bytes=HTTP_LIMIT)
        except GenserveError as exc:
            return JSONResponse({"detail": exc.message}, status_code=400)
        return JSONResponse(saved)

    return app


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    folder = tmp_path_factory.mktemp("bridge") / "inputs"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(upload_app(folder), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    host, port = sock.getsockname()
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield client, folder
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_http_success_shape(live: tuple[httpx.Client, Path]) -> None:
    client, folder = live
    response = client.post(
        "/upload",
        files=[("person", ("me.png", PNG, "image/png")), ("cloth", ("photo.png", JPEG, "application/x-foo"))],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["person", "cloth"]
    assert body["person"].endswith("_me.png") and body["cloth"].endswith("_photo.jpg")
    assert (folder / body["person"]).read_bytes() == PNG


def test_http_text_field_instead_of_a_file(live: tuple[httpx.Client, Path]) -> None:
    client, _ = live
    response = client.post("/upload", data={"person": "me.png"}, files={"cloth": ("c.png", PNG)})
    assert response.status_code == 400
    assert response.json() == {"detail": "upload part 'person': expected a file, got a plain text field"}


def test_http_too_many_files(live: tuple[httpx.Client, Path]) -> None:
    client, _ = live
    files = [(f"f{i}", (f"{i}.png", PNG, "image/png")) for i in range(HTTP_MAX_FILES + 1)]
    response = client.post("/upload", files=files)
    assert response.status_code == 400
    assert response.json()["detail"] == (
        f"upload: more than {HTTP_MAX_FILES} parts, at most {HTTP_MAX_FILES} files per request"
    )
    mixed = client.post("/upload", files=files[:HTTP_MAX_FILES], data={"note": "x"})
    assert mixed.status_code == 400
    assert mixed.json()["detail"] == "upload part 'note': expected a file, got a plain text field"


def raw_multipart(*parts: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body from (Content-Disposition value, bytes) pairs, as the spec's clients send it."""
    boundary = "spec-client-boundary"
    body = b""
    for disposition, data in parts:
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        body += b"Content-Type: image/png\r\n\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_http_parts_without_a_name_are_the_specs_default_file(live: tuple[httpx.Client, Path]) -> None:
    """The spec: ``name`` is optional, default ``file``; its tutorial client sends ``attachment``."""
    client, folder = live
    body, headers = raw_multipart(('attachment; filename="x.png"', PNG))
    one = client.post("/upload", content=body, headers=headers)
    assert one.status_code == 200, one.text
    assert list(one.json()) == ["file"] and one.json()["file"].endswith("_x.png")
    assert (folder / one.json()["file"]).read_bytes() == PNG

    # Several unnamed parts do not collide, and never take a name another part gave.
    body, headers = raw_multipart(
        ('form-data; filename="a.png"', PNG),
        ('attachment; filename="b.png"', JPEG),
        ('form-data; name="file"; filename="c.png"', PNG),
    )
    several = client.post("/upload", content=body, headers=headers)
    assert several.status_code == 200, several.text
    saved = several.json()
    assert list(saved) == ["file_2", "file_3", "file"]
    assert saved["file_2"].endswith("_a.png") and saved["file_3"].endswith("_b.jpg")
    assert saved["file"].endswith("_c.png") and len(set(saved.values())) == 3


def test_http_unnamed_parts_keep_every_check(live: tuple[httpx.Client, Path]) -> None:
    client, _ = live

    def refused(*parts: tuple[str, bytes]) -> str:
        body, headers = raw_multipart(*parts)
        response = client.post("/upload", content=body, headers=headers)
        assert response.status_code == 400, response.text
        return str(response.json()["detail"])

    assert refused(('attachment; filename="big.png"', PNG + bytes(HTTP_LIMIT))) == (
        "upload part 'file': larger than 0.2 MB"
    )
    assert refused(("attachment", b"no file name")) == (
        "upload part 'file': expected a file, got a plain text field"
    )
    assert "not an image" in refused(('attachment; filename="t.png"', b"text"))
    assert "plain name" in refused(('attachment; filename="../t.png"', PNG))
    many = [('attachment; filename="m.png"', PNG)] * (HTTP_MAX_FILES + 1)
    assert refused(*many).startswith(f"upload: more than {HTTP_MAX_FILES} parts")
    cut = client.post(
        "/upload",
        content=b'--b\r\nContent-Disposition: attachment; filename="x.png"\r\n\r\n' + PNG,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert cut.status_code == 400
    assert cut.json()["detail"].startswith("upload: cannot read the multipart body: ")


def test_http_oversized_file(live: tuple[httpx.Client, Path]) -> None:
    client, _ = live
    response = client.post("/upload", files={"big": ("big.png", PNG + bytes(HTTP_LIMIT))})
    assert response.status_code == 400
    assert response.json() == {"detail": "upload part 'big': larger than 0.2 MB"}


def test_http_not_multipart_or_empty(live: tuple[httpx.Client, Path]) -> None:
    client, _ = live
    assert "multipart/form-data" in client.post("/upload", json={"a": 1}).json()["detail"]
    empty = client.post(
        "/upload", content=b"--x--\r\n", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert empty.status_code == 400
    assert empty.json() == {"detail": "upload: no file parts in the request"}
    broken = client.post("/upload", content=b"garbage", headers={"content-type": "multipart/form-data"})
    assert broken.status_code == 400
    assert broken.json()["detail"].startswith("upload: cannot read the multipart body: ")


def test_http_path_trick_refused(live: tuple[httpx.Client, Path]) -> None:
    client, folder = live
    before = set(folder.iterdir()) if folder.exists() else set()
    response = client.post("/upload", files={"person": ("../x.png", PNG, "image/png")})
    assert response.status_code == 400
    assert (
        response.json()["detail"]
        == "upload part 'person': file name '../x.png' must be a plain name (no folders)"
    )
    assert (set(folder.iterdir()) if folder.exists() else set()) == before


# --- the bridge's uploads folder: where they go, which a graph names, the sweep ---------------------


def test_bridge_uploads_go_to_their_own_subfolder(tmp_path: Path) -> None:
    saved = uploads.save_bridge_uploads([part("face", "me.png")], tmp_path, max_file_bytes=MB)
    assert saved["face"].startswith(f"{uploads.BRIDGE_UPLOADS}/") and saved["face"].endswith("_me.png")
    assert (tmp_path / saved["face"]).read_bytes() == PNG


def test_referenced_uploads_are_plain_names_in_the_subfolder() -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"{uploads.BRIDGE_UPLOADS}/a_me.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "3": {"class_type": "X", "inputs": {"other": f"{uploads.BRIDGE_UPLOADS}/../../etc/passwd"}},
        "4": {"class_type": "X", "inputs": {"link": ["1", 0], "n": 3}},
    }
    assert uploads.referenced_uploads(graph) == {"a_me.png"}


def test_sweep_removes_old_uploads_but_keeps_those_in_use(tmp_path: Path) -> None:
    old = time.time() - 3600
    for name in ("old.png", "in-use.png", "new.png"):
        (tmp_path / name).write_bytes(PNG)
    for name in ("old.png", "in-use.png"):
        os.utime(tmp_path / name, (old, old))
    assert uploads.sweep_uploads(tmp_path, 60, keep={"in-use.png"}) == ["old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-use.png", "new.png"]
    assert uploads.sweep_uploads(tmp_path / "missing", 60, keep=()) == []
