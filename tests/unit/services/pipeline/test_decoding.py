from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from genserve.errors import ErrorCode


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_spec_request_writes_image(run, chain, data_root: Path, fmt: str) -> None:
    response = run(
        "decoding",
        {
            "latent_file": chain["latent_file"],
            "vae_model_name": "qwen_image_vae.safetensors",
            "output_filename": "test_male_1",
            "output_dir": str(data_root / "outputs"),
            "output_format": fmt,
        },
        request_id="123",
    )
    path = Path(response.image_file_path)
    assert path.name == f"test_male_1_123.{fmt}"
    assert response.file_size == path.stat().st_size > 0
    latent = torch.load(chain["latent_file"], weights_only=True)["latent"]
    assert response.image_shape == [latent.shape[3] * 8, latent.shape[4] * 8, 3]
    with Image.open(path) as image:
        assert image.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
        assert [image.height, image.width, 3] == response.image_shape


def test_default_format_comes_from_config(run, chain) -> None:
    response = run("decoding", {"latent_file": chain["latent_file"]})
    assert response.image_file_path.endswith(".jpg") and Path(response.image_file_path).name.startswith(
        "image_"
    )


def test_decoding_errors(fails, chain, data_root: Path) -> None:
    latent = chain["latent_file"]
    err = fails(ErrorCode.INVALID_INPUT, "decoding", {"latent_file": latent, "output_filename": "../escape"})
    assert "output_filename" in err.message
    fails(ErrorCode.INVALID_INPUT, "decoding", {"latent_file": latent, "output_format": "gif"})
    fails(ErrorCode.NOT_FOUND, "decoding", {"latent_file": "outputs/none.pt"})
    fails(
        ErrorCode.MODEL_NOT_FOUND,
        "decoding",
        {"latent_file": latent, "vae_model_name": "sdxl_vae.safetensors"},
    )
    blocker = data_root / "outputs/blocker"
    blocker.write_text("a file where a folder should be")
    err = fails(
        ErrorCode.OUTPUT_DIR_NOT_WRITABLE, "decoding", {"latent_file": latent, "output_dir": str(blocker)}
    )
    assert "output_dir" in err.message
    four = data_root / "outputs/four.pt"
    torch.save({"latent": torch.zeros(1, 4, 1, 8, 8)}, four)
    err = fails(ErrorCode.INVALID_INPUT, "decoding", {"latent_file": str(four)})
    assert "latent channels" in err.message


def test_unencodable_image_is_decoding_failed(fails, data_root: Path) -> None:
    wide = data_root / "outputs/wide.pt"  # 16 x 16,400 pixels: past WebP's 16,383-pixel limit
    torch.save({"latent": torch.zeros(1, 16, 1, 2, 2050)}, wide)
    err = fails(ErrorCode.DECODING_FAILED, "decoding", {"latent_file": str(wide), "output_format": "webp"})
    assert "webp" in err.message
