from __future__ import annotations

import os
from pathlib import Path

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.paths import Sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.png").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    return Sandbox([tmp_path / "in"], [tmp_path / "out"], tmp_path / "out")


def test_inside_roots(sandbox: Sandbox, tmp_path: Path) -> None:
    assert (
        sandbox.readable_file(str(tmp_path / "in/a.png"), "f", ErrorCode.IMAGE_NOT_FOUND)
        == tmp_path / "in/a.png"
    )
    assert sandbox.readable_file("a.png", "f", ErrorCode.IMAGE_NOT_FOUND) == tmp_path / "in/a.png"
    assert sandbox.output_dir(None) == tmp_path / "out"
    assert sandbox.output_dir(str(tmp_path / "out/new/deeper")).is_dir()
    assert sandbox.output_dir("sub") == tmp_path / "out/sub"


@pytest.mark.parametrize(
    "raw", ["../secret.txt", "{root}/secret.txt", "{root}/in/../secret.txt", "/etc/passwd"]
)
def test_escapes_are_refused(sandbox: Sandbox, tmp_path: Path, raw: str) -> None:
    with pytest.raises(GenserveError) as info:
        sandbox.readable_file(raw.format(root=tmp_path), "image_path", ErrorCode.IMAGE_NOT_FOUND)
    assert info.value.code is ErrorCode.PERMISSION_DENIED and "image_path" in info.value.message


def test_symlink_out_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret.txt", tmp_path / "in/link.txt")
    with pytest.raises(GenserveError) as info:
        sandbox.readable_file("link.txt", "f", ErrorCode.IMAGE_NOT_FOUND)
    assert info.value.code is ErrorCode.PERMISSION_DENIED
    os.symlink(tmp_path, tmp_path / "out/up")
    with pytest.raises(GenserveError) as info:
        sandbox.output_dir("up/in")
    assert info.value.code is ErrorCode.OUTPUT_DIR_NOT_WRITABLE


def test_missing_and_unwritable(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(GenserveError) as info:
        sandbox.readable_file("b.png", "image2_path", ErrorCode.IMAGE_NOT_FOUND)
    assert info.value.code is ErrorCode.IMAGE_NOT_FOUND and "image2_path" in info.value.message
    with pytest.raises(GenserveError) as info:
        sandbox.output_dir(str(tmp_path / "in"))  # readable, not writable
    assert info.value.code is ErrorCode.OUTPUT_DIR_NOT_WRITABLE
    (tmp_path / "out/file").write_text("x")
    with pytest.raises(GenserveError) as info:
        sandbox.output_dir("file")
    assert info.value.code is ErrorCode.OUTPUT_DIR_NOT_WRITABLE
    for bad in ["", "a\x00b"]:
        with pytest.raises(GenserveError):
            sandbox.readable_file(bad, "f", ErrorCode.IMAGE_NOT_FOUND)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "..\\x", "n\x00"])
def test_output_names_are_plain(sandbox: Sandbox, name: str) -> None:
    with pytest.raises(GenserveError) as info:
        sandbox.output_name(name, "output_filename")
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_output_names_leave_room_for_the_request_id(sandbox: Sandbox, tmp_path: Path) -> None:
    longest = "é" * 92 + "a"  # 185 bytes in UTF-8
    assert sandbox.output_name(longest, "output_filename") == longest
    (tmp_path / f"{longest}_{'r' * 64}.webp").write_bytes(b"")  # the whole name still fits
    with pytest.raises(GenserveError) as info:
        sandbox.output_name("é" * 93, "output_filename")
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == "output_filename"
    assert "186 bytes" in info.value.message
