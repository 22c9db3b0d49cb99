from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.artifacts import atomic_write, file_tag, load_tensors, open_image, save_tensors


def test_tensor_round_trip(tmp_path: Path) -> None:
    payload = {"latent": torch.randn(1, 16, 1, 4, 4), "sizes": [[1, 2]], "name": "x", "refs": [torch.ones(2)]}
    path = save_tensors(tmp_path / "a.pt", payload)
    loaded = load_tensors(path, "latent_file")
    assert torch.equal(loaded["latent"], payload["latent"]) and loaded["sizes"] == [[1, 2]]
    assert torch.equal(loaded["refs"][0], torch.ones(2))


def test_bare_tensor_and_garbage(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    assert torch.equal(load_tensors(tmp_path / "t.pt", "f")["tensor"], torch.zeros(3))
    (tmp_path / "g.pt").write_bytes(b"garbage")
    with pytest.raises(GenserveError) as info:
        load_tensors(tmp_path / "g.pt", "latent_file")
    assert info.value.code is ErrorCode.INVALID_INPUT and "latent_file" in info.value.message


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_open_image_converts_to_rgb(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4)).save(tmp_path / "a.png")
    assert open_image(tmp_path / "a.png", "image_path").mode == "RGB"


def test_file_tag_keeps_plain_ids_and_separates_the_rest() -> None:
    assert file_tag("job.1") == "job.1"
    assert file_tag("req-7_a") == "req-7_a"
    ids = ["job.1", "job1", "job/1", "job:1", "a" * 64, "a" * 65, "a" * 64 + "b", "//", ":"]
    tags = [file_tag(request_id) for request_id in ids]
    assert len(set(tags)) == len(ids)  # no two ids share output files
    for tag in tags:
        assert len(tag) <= 64 and "/" not in tag and ":" not in tag
        assert file_tag(tag) == tag  # a tag is already plain
    assert file_tag("job/1").startswith("job1-")
