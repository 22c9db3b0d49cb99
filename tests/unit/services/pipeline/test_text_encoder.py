from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from genserve.errors import ErrorCode


def _request(data_root: Path, **extra: object) -> dict[str, object]:
    return {
        "image1_path": str(data_root / "inputs/person.png"),
        "image2_path": str(data_root / "inputs/cloth.png"),
        "prompt": "by using the green masked area, put the cloth on the person",
        "negative_prompt": "",
        "clip_model_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
        "vae_model_name": "qwen_image_vae.safetensors",
        **extra,
    }


def test_encoding_files_keep_everything_sampling_needs(run, data_root: Path) -> None:
    response = run("text_encoder", _request(data_root))
    positive = torch.load(response.positive_encoding_file, weights_only=True)
    negative = torch.load(response.negative_encoding_file, weights_only=True)
    assert list(positive["prompt_embeds"].shape) == response.positive_shape
    assert list(negative["prompt_embeds"].shape) == response.negative_shape
    assert response.positive_shape[0] == 1 and response.positive_shape[2] == 128  # the demo's hidden size
    assert positive["prompt_mask"].shape == positive["prompt_embeds"].shape[:2]
    references = positive["reference_latents"]
    assert len(references) == 2 and all(r.shape[:3] == (1, 16, 1) for r in references)
    assert response.metadata["reference_latent_shapes"] == [list(r.shape) for r in references]
    assert positive["reference_sizes"] == [[96, 160], [128, 128]]  # ~128x128 area, multiples of 32
    assert not torch.equal(positive["prompt_embeds"][:, -5:], negative["prompt_embeds"][:, -5:])


def test_prompt_images_and_sizes_take_effect(run, data_root: Path) -> None:
    base = torch.load(run("text_encoder", _request(data_root)).positive_encoding_file, weights_only=True)
    other = torch.load(
        run("text_encoder", _request(data_root, prompt="make the shirt blue")).positive_encoding_file,
        weights_only=True,
    )
    assert not torch.equal(base["prompt_embeds"][:, -3:], other["prompt_embeds"][:, -3:])
    three = run("text_encoder", _request(data_root, image3_path=str(data_root / "inputs/cloth.png")))
    assert len(three.metadata["reference_latent_shapes"]) == 3
    assert three.positive_shape[1] > base["prompt_embeds"].shape[1]  # a third picture's vision tokens
    larger = run("text_encoder", _request(data_root, vision_reference_megapixels=0.05))
    assert larger.positive_shape[1] > base["prompt_embeds"].shape[1]
    no_vae = torch.load(run("text_encoder", _request(data_root, vae_model_name="")).positive_encoding_file)
    assert no_vae["reference_latents"] == []
    bigger_refs = run("text_encoder", _request(data_root, vae_reference_megapixels=0.05))
    assert bigger_refs.metadata["reference_latent_shapes"][0][-1] > base["reference_latents"][0].shape[-1]


def test_errors(fails, data_root: Path, demo_models: Path, tmp_path: Path) -> None:
    err = fails(
        ErrorCode.MODEL_NOT_FOUND, "text_encoder", _request(data_root, clip_model_name="clip_l.safetensors")
    )
    assert "clip_model_name" in err.message and "qwen_2.5_vl_7b_fp8_scaled" in err.message
    err = fails(ErrorCode.IMAGE_NOT_FOUND, "text_encoder", _request(data_root, image2_path="inputs/none.png"))
    assert "image2_path" in err.message
    fails(ErrorCode.INVALID_INPUT, "text_encoder", {"image1_path": "inputs/person.png"})  # no prompt
    fails(ErrorCode.INVALID_INPUT, "text_encoder", _request(data_root, prompt="x" * 20_001))


def test_mismatched_image_processor_is_encoding_failed(
    fails, data_root: Path, demo_models: Path, settings, tmp_path: Path
) -> None:
    """A text-encoder folder whose image processor does not fit its vision tower fails at encoding."""
    from genserve.app.runtime import build_runtime
    from tests.conftest import small_settings

    models = tmp_path / "models"
    shutil.copytree(demo_models, models)
    processor = models / "text_encoders/qwen_2.5_vl_7b_fp8_scaled/preprocessor_config.json"
    config = json.loads(processor.read_text())
    config["patch_size"] = 16
    processor.write_text(json.dumps(config))
    with build_runtime(small_settings(models, data_root)) as rt:
        try:
            rt.engine.run_sync("text_encoder", _request(data_root))
        except Exception as exc:
            assert getattr(exc, "code", None) is ErrorCode.ENCODING_FAILED, exc
            assert "text encoding" in str(exc)
        else:
            raise AssertionError("a mismatched processor must fail")


def test_image_to_edit_is_vae_encoded_once_per_request(run, runtime, data_root: Path) -> None:
    """At the default sizes image1's latent and its reference latent are the same encode: the
    VAE's cache serves the second, and a caller changing its copy cannot touch the cache."""
    latent = torch.load(run("latent_encoder", {"image_path": "inputs/person.png"}).latent_file_path)["latent"]
    with runtime.models.use("vae", "qwen_image_vae") as vae:
        cached = len(vae.encodings)
    encoding = torch.load(run("text_encoder", _request(data_root)).positive_encoding_file, weights_only=True)
    with runtime.models.use("vae", "qwen_image_vae") as vae:
        assert len(vae.encodings) == cached + 1  # only image2 was new
        key = next(iter(vae.encodings._items))
        copy = vae.encodings.get(key)
        copy.add_(1)
        assert not torch.equal(vae.encodings.get(key), copy)
    assert torch.equal(encoding["reference_latents"][0], latent)
