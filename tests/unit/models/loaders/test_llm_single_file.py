"""ComfyUI's single-file LLMs in text_encoders/ (Qwen-Image 2.1's Qwen3.5 prompt enhancers): told
apart from the text encoders both ways, listed and found under the llm kind only, loaded from their
shapes (bf16 and int8 ConvRot) to the file's exact weights with the MTP head left out, prompted with
ComfyUI's template, generating the same text for the same input; a broken file, a key the model does
not have, or a missing tokenizer is refused naming the field."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.qwen21_text import (
    DEMO_QWEN21_TEXT_ENCODER,
    build_qwen21_text_encoder,
    demo_tokenizer,
)
from genserve.models.demo.qwen35_llm import DEMO_QWEN35_LLM, DEMO_QWEN35_LLM_INT8, build_qwen35_llm
from genserve.models.formats import llm_single_file
from genserve.models.formats.llm_single_file import QWEN3, QWEN35, LlmFile
from genserve.models.formats.safetensors_header import read_header
from genserve.models.formats.tokenizer_files import sidecar_folder
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.llm import CausalLM, load_llm
from genserve.models.loaders.text_encoder import make_text_encoder_loader
from genserve.models.registry import ModelRegistry

CPU = torch.device("cpu")
PROMPT = [{"role": "user", "content": "Describe a red fox."}]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm_files")
    folder = root / "text_encoders"
    build_qwen35_llm(folder / DEMO_QWEN35_LLM, seed=0)
    build_qwen35_llm(folder / DEMO_QWEN35_LLM_INT8, seed=0, int8=True)
    build_qwen21_text_encoder(folder / DEMO_QWEN21_TEXT_ENCODER, seed=0)
    return root


@pytest.fixture(scope="module")
def demo_file(models: Path) -> Path:
    return models / "text_encoders" / DEMO_QWEN35_LLM


def load(path: Path, dtype: torch.dtype = torch.float32) -> CausalLM:
    bundle = load_llm(ModelEntry(ModelKind.LLM, path.name, path), CPU, dtype).model
    assert isinstance(bundle, CausalLM)
    return bundle


def rewrite(source: Path, target: Path, change: Any) -> Path:
    """The demo file written again as ``change(state)`` makes it, with its tokenizer sidecar."""
    save_file(change(load_file(str(source))), str(target))
    shutil.copytree(sidecar_folder(source), sidecar_folder(target), dirs_exist_ok=True)
    return target


def greedy(llm: CausalLM, messages: list[dict[str, Any]] = PROMPT, tokens: int = 10, **kw: Any) -> str:
    text = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kw)
    ids = llm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = llm.model.generate(input_ids=ids, max_new_tokens=tokens, do_sample=False)
    return llm.tokenizer.decode(out[0, ids.shape[1] :])


def test_the_prompt_enhancer_is_an_llm_and_the_text_encoders_are_not(models: Path, demo_file: Path) -> None:
    folder = models / "text_encoders"
    assert llm_single_file.detect(read_header(demo_file)) == LlmFile(QWEN35, vision=True)
    assert llm_single_file.detect_file(folder / DEMO_QWEN35_LLM_INT8) == LlmFile(QWEN35, vision=True)
    assert llm_single_file.detect_file(folder / DEMO_QWEN21_TEXT_ENCODER) is None  # Qwen3-VL
    assert llm_single_file.detect_file(sidecar_folder(demo_file)) is None
    registry = ModelRegistry(models)
    assert registry.available(ModelKind.LLM) == sorted([DEMO_QWEN35_LLM, DEMO_QWEN35_LLM_INT8])
    assert registry.available(ModelKind.TEXT_ENCODER) == [DEMO_QWEN21_TEXT_ENCODER]
    assert registry.find(ModelKind.LLM, DEMO_QWEN35_LLM) == demo_file
    assert registry.find(ModelKind.LLM, DEMO_QWEN21_TEXT_ENCODER) is None
    assert registry.find(ModelKind.LLM, f"../text_encoders/{DEMO_QWEN35_LLM}") is None
    assert registry.resolve(ModelKind.LLM, DEMO_QWEN35_LLM).path == demo_file


def test_a_text_encoder_node_refuses_the_enhancer_by_name(models: Path, demo_file: Path) -> None:
    loader = make_text_encoder_loader(models)
    with pytest.raises(GenserveError) as info:
        loader(ModelEntry(ModelKind.TEXT_ENCODER, demo_file.name, demo_file), CPU, torch.float32)
    assert info.value.details["field"] == "clip_model_name" and "Qwen3.5" in info.value.message


def test_the_demo_loads_from_its_shapes_to_the_files_weights(demo_file: Path) -> None:
    llm = load(demo_file)
    config = llm.model.config.text_config
    assert type(llm.model).__name__ == "Qwen3_5ForConditionalGeneration" and llm.sees_images
    assert config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 32)
    assert (config.linear_num_key_heads, config.linear_num_value_heads, config.linear_key_head_dim) == (
        2,
        4,
        16,
    )
    assert config.rope_parameters["mrope_section"] == [2, 1, 1]
    assert llm.model.config.vision_config.num_heads == 16 and llm.context_length == 262_144
    file = load_file(str(demo_file))
    state = llm.model.state_dict()
    assert not any(key.startswith("mtp.") for key in state)  # the MTP head is left out
    assert any(key.startswith("mtp.") for key in file)
    for key in ("model.language_model.layers.0.linear_attn.A_log", "model.visual.blocks.1.attn.qkv.weight"):
        assert torch.equal(state[key], file[key].float())
    assert not torch.equal(state["lm_head.weight"], state["model.language_model.embed_tokens.weight"])


def test_comfyuis_template_and_thinking(demo_file: Path) -> None:
    tokenizer = load(demo_file).tokenizer
    system = [{"role": "system", "content": "Rewrite."}, *PROMPT]
    assert tokenizer.apply_chat_template(system, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nRewrite.<|im_end|>\n<|im_start|>user\nDescribe a red fox.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n</think>\n"
    )
    on = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=False, enable_thinking=True
    )
    assert on.endswith("<|im_start|>assistant\n")
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Edit it."}]}]
    shown = tokenizer.apply_chat_template(image, add_generation_prompt=True, tokenize=False)
    assert shown.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Edit it.<|im_end|>")


def test_generation_is_deterministic_and_sees_images(demo_file: Path) -> None:
    llm = load(demo_file)
    text = greedy(llm)
    assert text and greedy(load(demo_file)) == text
    assert greedy(llm, enable_thinking=True) != text
    picture = Image.new("RGB", (64, 48), (200, 40, 10))
    chat = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert llm.processor is not None
    vision = llm.processor.images([picture])
    ids = llm.processor.text([chat], vision, padding=False)["input_ids"]
    out = llm.model.generate(input_ids=ids, **vision, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 6


def test_the_int8_convrot_file_loads_close_to_the_bf16_one(models: Path, demo_file: Path) -> None:
    plain, quantised = load(demo_file), load(models / "text_encoders" / DEMO_QWEN35_LLM_INT8)
    key = "model.language_model.layers.3.self_attn.q_proj.weight"
    exact, rounded = plain.model.state_dict()[key], quantised.model.state_dict()[key]
    assert not torch.equal(exact, rounded) and torch.allclose(
        exact, rounded, atol=0.02 * float(exact.abs().max())
    )
    assert greedy(quantised)


def test_a_text_only_file_without_a_head_loads_as_a_tied_causal_lm(demo_file: Path, tmp_path: Path) -> None:
    def text_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if not k.startswith(("model.visual.", "lm_head.", "mtp."))}

    path = rewrite(demo_file, tmp_path / "qwen35_text.safetensors", text_only)
    assert llm_single_file.detect_file(path) == LlmFile(QWEN35, vision=False)
    llm = load(path)
    assert type(llm.model).__name__ == "Qwen3_5ForCausalLM" and not llm.sees_images
    state = llm.model.state_dict()
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    assert greedy(llm)


def test_a_qwen3_dense_file_is_an_llm(tmp_path: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = demo_tokenizer(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    state = {k: v for k, v in Qwen3ForCausalLM(config).state_dict().items() if k != "lm_head.weight"}
    path = tmp_path / "text_encoders" / "qwen_3_tiny.safetensors"
    path.parent.mkdir()
    save_file(state, str(path))
    tokenizer.save_pretrained(sidecar_folder(path))
    assert llm_single_file.detect_file(path) == LlmFile(QWEN3, vision=False)
    llm = load(path)
    assert llm.model.config.num_attention_heads == 2 and llm.model.config.tie_word_embeddings
    assert greedy(llm)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda s: {k: v for k, v in s.items() if not k.endswith("3.self_attn.q_norm.weight")}, "q_norm"),
        (lambda s: {**s, "model.language_model.layers.0.extra.weight": torch.zeros(2)}, "extra.weight"),
        (lambda s: {k: (v[:-8] if "in_proj_z" in k else v) for k, v in s.items()}, "in_proj_z"),
    ],
)
def test_a_broken_file_is_refused_naming_the_field(
    demo_file: Path, tmp_path: Path, change: Any, said: str
) -> None:
    path = rewrite(demo_file, tmp_path / "broken.safetensors", change)
    with pytest.raises(GenserveError) as info:
        load(path)
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and info.value.details["field"] == "model"
    assert said in info.value.message and path.name in info.value.message


def test_a_missing_tokenizer_is_named_and_a_sidecar_config_wins(demo_file: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    shutil.copy(demo_file, bare)
    with pytest.raises(GenserveError) as info:
        load(bare)
    assert info.value.details["field"] == "model" and "text_encoders/bare.tokenizer/" in info.value.message
    path = rewrite(demo_file, tmp_path / "configured.safetensors", lambda s: s)
    config = load(demo_file).model.config
    config.text_config.rms_norm_eps = 1e-5
    config.save_pretrained(sidecar_folder(path))
    assert load(path).model.config.text_config.rms_norm_eps == 1e-5
