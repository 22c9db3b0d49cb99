"""ComfyUI's Qwen3-VL text encoder files (Qwen-Image 2.1) load through the real loader from their
shapes alone, in every key layout ComfyUI accepts, to the file's exact weights; they are told
apart from Qwen2.5-VL files both ways; a sidecar config.json wins over the derived config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER
from genserve.models.demo.qwen21_text import (
    DEEPSTACK_TAPS,
    DEMO_QWEN21_TEXT_ENCODER,
    TEXT_LAYERS,
    VISION_DEPTH,
    build_qwen21_text_encoder,
)
from genserve.models.demo.single_files import write_text_encoder_files
from genserve.models.formats import qwen3_vl, qwen_vl
from genserve.models.formats.safetensors_header import read_header
from genserve.models.formats.tokenizer_files import sidecar_folder
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.text_encoder import TextEncoder, make_text_encoder_loader

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen3vl")
    build_qwen21_text_encoder(root / "text_encoders" / DEMO_QWEN21_TEXT_ENCODER, seed=0)
    return root


@pytest.fixture(scope="module")
def demo_file(models: Path) -> Path:
    return models / "text_encoders" / DEMO_QWEN21_TEXT_ENCODER


def load(models: Path, path: Path, dtype: torch.dtype = torch.float32) -> TextEncoder:
    loaded = make_text_encoder_loader(models)(ModelEntry(ModelKind.TEXT_ENCODER, path.name, path), CPU, dtype)
    return loaded.model


def relayout(source: Path, target: Path, rename) -> Path:
    """The demo file written again with its keys renamed (``rename`` None drops a key), with a
    copy of its tokenizer sidecar."""
    state = {rename(key): value for key, value in load_file(str(source)).items()}
    save_file({key: value for key, value in state.items() if key is not None}, str(target))
    shutil.copytree(sidecar_folder(source), sidecar_folder(target), dirs_exist_ok=True)
    return target


def new_layout(key: str) -> str:
    """transformers' current names, the layout ComfyUI's sd.py detects Qwen3-VL by."""
    return qwen3_vl.model_key(key)


def comfy_internal_layout(key: str) -> str:
    """ComfyUI's own module names: ``model.*``, ``visual.*``, ``model.lm_head.*``."""
    key = qwen3_vl.model_key(key)
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    if key.startswith("model.visual."):
        return key[len("model.") :]
    return "model." + key


def test_the_demo_file_is_small_bf16_in_comfyuis_published_layout(demo_file: Path) -> None:
    header = read_header(demo_file)
    assert demo_file.stat().st_size < 8_000_000
    assert header.dtypes() == {"BF16"}
    names = set(header.names())
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names
    assert {
        "model.visual.deepstack_merger_list.0.norm.weight",
        "model.visual.merger.linear_fc2.weight",
    } <= names
    assert not any(key.startswith(("visual.", "model.language_model.")) for key in names)


def test_the_demo_file_loads_to_its_exact_weights_with_a_derived_config(
    models: Path, demo_file: Path
) -> None:
    encoder = load(models, demo_file)
    assert encoder.family == "qwen3-vl" and encoder.family_label == "Qwen3-VL"
    assert encoder.name == DEMO_QWEN21_TEXT_ENCODER
    loaded = encoder.model.state_dict()
    for key, value in load_file(str(demo_file)).items():
        assert torch.equal(loaded[qwen3_vl.model_key(key)], value.float()), key
    config = encoder.model.config
    tokenizer = encoder.processor.tokenizer
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (128, TEXT_LAYERS, 2)
    assert (text.num_key_value_heads, text.head_dim, text.vocab_size) == (1, 128, len(tokenizer))
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["rope_theta"] == 5e6
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.patch_size) == (
        VISION_DEPTH,
        128,
        16,
        16,
    )
    assert len(vision.deepstack_visual_indexes) == DEEPSTACK_TAPS
    assert vision.num_position_embeddings == 256 and vision.out_hidden_size == 128
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") != 151655
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert text.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_the_image_processor_is_comfyuis_preprocessing() -> None:
    images = encoder_processor_settings()
    assert images.patch_size == 16 and images.merge_size == 2 and images.temporal_patch_size == 2
    assert list(images.image_mean) == [0.5, 0.5, 0.5] and list(images.image_std) == [0.5, 0.5, 0.5]
    assert images.size["shortest_edge"] == 3136 and images.size["longest_edge"] == 12_845_056


def encoder_processor_settings():
    from transformers import Qwen3VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**qwen3_vl.image_processor_options(Qwen3VLConfig()))


@pytest.mark.parametrize(
    "layout", [new_layout, comfy_internal_layout], ids=["transformers", "comfy-internal"]
)
def test_every_layout_comfyui_accepts_loads_to_the_same_model(models: Path, demo_file: Path, layout) -> None:
    path = relayout(demo_file, demo_file.parent / f"layout_{layout.__name__}.safetensors", layout)
    header = read_header(path)
    assert qwen3_vl.is_qwen3_vl(header) and not qwen_vl.is_old_layout(header)
    got, want = load(models, path).model.state_dict(), load(models, demo_file).model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_file_without_the_lm_head_ties_it_to_the_embeddings(models: Path, demo_file: Path) -> None:
    path = relayout(
        demo_file,
        demo_file.parent / "headless.safetensors",
        lambda k: None if k.startswith("lm_head.") else k,
    )
    model = load(models, path).model
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)


def test_detection_is_exclusive_both_ways(demo_models: Path, demo_file: Path, tmp_path: Path) -> None:
    qwen25 = write_text_encoder_files(demo_models / "text_encoders" / DEMO_TEXT_ENCODER, tmp_path)
    for path in qwen25:
        header = read_header(path)
        assert qwen_vl.is_old_layout(header) and not qwen3_vl.is_qwen3_vl(header), path.name
    header = read_header(demo_file)
    assert qwen3_vl.is_qwen3_vl(header) and not qwen_vl.is_old_layout(header)


def test_a_sidecar_config_json_wins_over_the_derived_config(models: Path, demo_file: Path) -> None:
    path = relayout(demo_file, demo_file.parent / "configured.safetensors", lambda k: k)
    derived = load(models, demo_file).model.config.to_dict()
    derived["text_config"]["rms_norm_eps"] = 1e-5
    (sidecar_folder(path) / "config.json").write_text(json.dumps(derived))
    assert load(models, path).model.config.text_config.rms_norm_eps == 1e-5
    assert load(models, demo_file).model.config.text_config.rms_norm_eps == 1e-6


def test_shapes_of_another_architecture_are_refused_by_name(models: Path, demo_file: Path) -> None:
    def cut_heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = "model.layers.0.self_attn.q_proj.weight"
        return {**state, key: state[key][:100]}

    path = demo_file.parent / "odd_heads.safetensors"
    save_file(cut_heads(load_file(str(demo_file))), str(path))
    shutil.copytree(sidecar_folder(demo_file), sidecar_folder(path), dirs_exist_ok=True)
    with pytest.raises(GenserveError) as info:
        load(models, path)
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "odd_heads.safetensors does not have the shapes of a Qwen3-VL text encoder" in info.value.message


def test_deepstack_taps_are_the_published_ones_for_published_depths() -> None:
    assert qwen3_vl.deepstack_indexes(27, 3) == [8, 16, 24]  # 8B
    assert qwen3_vl.deepstack_indexes(24, 3) == [5, 11, 17]  # 2B, 4B
    spread = qwen3_vl.deepstack_indexes(VISION_DEPTH, DEEPSTACK_TAPS)
    assert len(set(spread)) == DEEPSTACK_TAPS and all(0 <= i < VISION_DEPTH for i in spread)


def test_keys_map_to_transformers_names_from_every_layout() -> None:
    key = qwen3_vl.model_key
    assert key("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert key("model.language_model.norm.weight") == "model.language_model.norm.weight"
    assert key("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert key("model.visual.pos_embed.weight") == "model.visual.pos_embed.weight"
    assert key("model.lm_head.weight") == key("lm_head.weight") == "lm_head.weight"
