from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from genserve.errors import ErrorCode
from tests.unit.services.conftest import load_latent


def test_spec_request_gives_real_5d_latent_file(run, data_root: Path) -> None:
    response = run(
        "latent_encoder",
        {
            "image_path": str(data_root / "inputs/person.png"),
            "vae_model_name": "qwen_image_vae.safetensors",
            "output_dir": str(data_root / "outputs"),
            "upscale_method": "lanczos",
            "megapixels": 0.016384,
        },
        request_id="req-1",
    )
    assert response.status == "success" and response.request_id == "req-1"
    path = Path(response.latent_file_path)
    assert path.parent == data_root / "outputs" and path.name == "latent_req-1.pt"
    latent = load_latent(str(path))
    assert list(latent.shape) == response.latent_shape
    width, height = response.metadata["scaled_size"]
    assert response.latent_shape == [1, 16, 1, height // 8, width // 8]
    assert width % 16 == 0 and height % 16 == 0
    assert response.metadata["source_size"] == [192, 256]
    assert abs(width * height - 16384) / 16384 < 0.15


def test_megapixels_and_upscale_method_take_effect(run, data_root: Path) -> None:
    image = str(data_root / "inputs/person.png")
    small = run("latent_encoder", {"image_path": image, "megapixels": 0.016384})
    large = run("latent_encoder", {"image_path": image, "megapixels": 0.04})
    assert large.latent_shape[3] * large.latent_shape[4] > small.latent_shape[3] * small.latent_shape[4]
    nearest = run("latent_encoder", {"image_path": image, "upscale_method": "nearest"})
    lanczos = run("latent_encoder", {"image_path": image, "upscale_method": "lanczos"})
    assert nearest.latent_shape == lanczos.latent_shape
    assert not torch.equal(load_latent(nearest.latent_file_path), load_latent(lanczos.latent_file_path))


def test_encoding_is_deterministic(run, data_root: Path) -> None:
    request = {"image_path": "inputs/person.png"}  # relative to the read root
    first, second = run("latent_encoder", request), run("latent_encoder", request)
    assert first.latent_file_path != second.latent_file_path
    assert torch.equal(load_latent(first.latent_file_path), load_latent(second.latent_file_path))


def test_errors_name_field_and_value(fails, data_root: Path, tmp_path: Path) -> None:
    image = str(data_root / "inputs/person.png")
    err = fails(
        ErrorCode.IMAGE_NOT_FOUND, "latent_encoder", {"image_path": str(data_root / "inputs/nope.png")}
    )
    assert "image_path" in err.message and "nope.png" in err.message
    err = fails(
        ErrorCode.MODEL_NOT_FOUND,
        "latent_encoder",
        {"image_path": image, "vae_model_name": "missing.safetensors"},
    )
    assert "missing.safetensors" in err.message and "qwen_image_vae" in err.message  # lists what is available
    err = fails(ErrorCode.INVALID_INPUT, "latent_encoder", {"image_path": image, "upscale_method": "cubic"})
    assert "upscale_method" in err.message
    fails(ErrorCode.INVALID_INPUT, "latent_encoder", {"image_path": image, "megapixels": 0})
    fails(ErrorCode.INVALID_INPUT, "latent_encoder", {"image_path": image, "surprise": 1})
    err = fails(
        ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
        "latent_encoder",
        {"image_path": image, "output_dir": str(tmp_path)},
    )
    assert "output_dir" in err.message
    not_image = data_root / "inputs/notes.png"
    not_image.write_text("not an image")
    err = fails(ErrorCode.INVALID_INPUT, "latent_encoder", {"image_path": str(not_image)})
    assert "image_path" in err.message
    strip = data_root / "inputs/strip.png"
    Image.new("RGB", (8000, 1)).save(strip)  # at 0.02 MP its short side would floor at 32 px
    err = fails(ErrorCode.INVALID_INPUT, "latent_encoder", {"image_path": str(strip), "megapixels": 0.02})
    assert "image_path" in err.message and "8000x1" in err.message and "elongated" in err.message


def test_sandbox_refuses_paths_outside_roots(fails, data_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    (data_root / "inputs/person.png").rename(outside)
    fails(ErrorCode.PERMISSION_DENIED, "latent_encoder", {"image_path": str(outside)})
    fails(ErrorCode.PERMISSION_DENIED, "latent_encoder", {"image_path": "../../secret.png"})
    link = data_root / "inputs/link.png"
    link.symlink_to(outside)
    fails(ErrorCode.PERMISSION_DENIED, "latent_encoder", {"image_path": str(link)})
    fails(
        ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
        "latent_encoder",
        {"image_path": str(link), "output_dir": "../../x"},
    )
