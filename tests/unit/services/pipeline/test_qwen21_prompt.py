"""Qwen-Image 2.1 prompt encoding follows ComfyUI's TextEncodeQwenImage21: the template, the
system turn dropped, each image's vision tokens dropped with its slot recorded (or kept), and the
last decoder layer's output before the final norm; a Qwen2.5-VL encoder is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER
from genserve.models.demo.qwen21_text import DEMO_QWEN21_TEXT_ENCODER, build_qwen21_text_encoder
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.text_encoder import TextEncoder, make_text_encoder_loader
from genserve.services.pipeline.qwen21_prompt import encode_qwen21, prompt_text

CPU = torch.device("cpu")
PROMPT = "put the red hat from picture one on the person in picture two"


def load(root: Path, path: Path) -> TextEncoder:
    entry = ModelEntry(ModelKind.TEXT_ENCODER, path.name, path)
    return make_text_encoder_loader(root)(entry, CPU, torch.float32).model


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    root = tmp_path_factory.mktemp("qwen21")
    path = build_qwen21_text_encoder(root / "text_encoders" / DEMO_QWEN21_TEXT_ENCODER, seed=0)
    return load(root, path)


@pytest.fixture
def images() -> list[Image.Image]:
    """Two references at multiples of 32: 2x3 and 2x2 merged vision tokens."""
    return [Image.new("RGB", (64, 96), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]


def ids(encoder: TextEncoder, text: str) -> list[int]:
    return encoder.processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def token(encoder: TextEncoder, name: str) -> int:
    return encoder.processor.tokenizer.convert_tokens_to_ids(name)


def reference_run(encoder: TextEncoder, text: str, images: list[Image.Image]) -> tuple[torch.Tensor, ...]:
    """The whole model over ``text`` (with its image pads expanded), returning the input ids, the
    last decoder layer's output caught by a forward hook, and transformers' hidden_states[-1]."""
    processor = encoder.processor
    vision = processor.images(images)
    input_ids = processor.text([text], vision, padding=False)["input_ids"]
    caught: list[torch.Tensor] = []
    layer = encoder.model.model.language_model.layers[-1]
    handle = layer.register_forward_hook(
        lambda _m, _a, out: caught.append(out[0] if isinstance(out, tuple) else out)
    )
    extra = {}
    if vision:
        extra = {
            "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"],
            "mm_token_type_ids": (input_ids == encoder.model.config.image_token_id).int(),
        }
    try:
        with torch.no_grad():
            out = encoder.model(input_ids=input_ids, output_hidden_states=True, use_cache=False, **extra)
    finally:
        handle.remove()
    return input_ids[0], caught[0], out.hidden_states[-1]


def user_part(text: str) -> str:
    """The text from the second ``<|im_start|>`` on: what is kept."""
    first = text.index("<|im_start|>")
    return text[text.index("<|im_start|>", first + 1) :]


def test_without_images_the_system_turn_is_gone_and_the_rest_encoded(encoder: TextEncoder) -> None:
    encoded = encode_qwen21(encoder, PROMPT, [], keep_vision=False)
    text = prompt_text(PROMPT, 0)
    assert encoded.hidden.shape == (1, len(ids(encoder, user_part(text))), 128)
    assert encoded.hidden.dtype == torch.float32 and encoded.hidden.device == CPU
    assert encoded.image_slots == []
    input_ids, last_layer, _ = reference_run(encoder, text, [])
    second = (input_ids == token(encoder, "<|im_start|>")).nonzero().flatten()[1]
    assert torch.equal(encoded.hidden, last_layer[:, second:])


def test_the_encoding_is_the_last_layer_before_the_final_norm(encoder: TextEncoder) -> None:
    text = prompt_text(PROMPT, 0)
    input_ids, last_layer, normed = reference_run(encoder, text, [])
    second = int((input_ids == token(encoder, "<|im_start|>")).nonzero().flatten()[1])
    encoded = encode_qwen21(encoder, PROMPT, [])
    norm = encoder.model.model.language_model.norm
    assert torch.equal(encoded.hidden, last_layer[:, second:])
    assert torch.allclose(norm(encoded.hidden), normed[:, second:], atol=1e-6)
    assert not torch.allclose(encoded.hidden, normed[:, second:], atol=1e-3)
    # Encoding leaves the model as it was: hidden_states[-1] is still the normed output.
    assert torch.equal(reference_run(encoder, text, [])[2], normed)


def test_two_images_leave_slots_where_their_vision_tokens_were(
    encoder: TextEncoder, images: list[Image.Image]
) -> None:
    encoded = encode_qwen21(encoder, PROMPT, images, keep_vision=False)
    kept = encode_qwen21(encoder, PROMPT, images, keep_vision=True)
    text = prompt_text(PROMPT, 2)
    counts = [6, 4]
    assert kept.image_slots == [] and kept.hidden.shape[1] == len(ids(encoder, user_part(text))) - 2 + sum(
        counts
    )
    assert encoded.hidden.shape[1] == kept.hidden.shape[1] - sum(counts)
    # Each slot is the count of text tokens before that image's <|image_pad|>, less the earlier pads.
    part = user_part(text)
    pads = [i for i in range(len(part)) if part.startswith("<|image_pad|>", i)]
    expected = [len(ids(encoder, part[:at])) - n for n, at in enumerate(pads)]
    assert encoded.image_slots == expected and expected[0] < expected[1]
    # What is left is the keep_vision encoding with exactly the vision tokens taken out.
    input_ids, last_layer, _ = reference_run(encoder, text, images)
    second = int((input_ids == token(encoder, "<|im_start|>")).nonzero().flatten()[1])
    assert torch.allclose(kept.hidden, last_layer[:, second:], atol=1e-5)
    vision = (input_ids[second:] == encoder.model.config.image_token_id).tolist()
    assert sum(vision) == sum(counts)
    assert torch.equal(encoded.hidden, kept.hidden[:, [i for i, v in enumerate(vision) if not v]])
    # The tokens around each slot are the image's <|vision_start|> and <|vision_end|>.
    remaining = [t for t in input_ids[second:].tolist() if t != encoder.model.config.image_token_id]
    for slot in encoded.image_slots:
        assert remaining[slot - 1] == token(encoder, "<|vision_start|>")
        assert remaining[slot] == token(encoder, "<|vision_end|>")


def test_the_template_names_each_image_before_the_prompt() -> None:
    block = "<|vision_start|><|image_pad|><|vision_end|>"
    assert prompt_text("a cat", 2) == (
        "<|im_start|>system\nComprehend and analyze the provided prompt.<|im_end|>\n"
        f"<|im_start|>user\n<image1>{block} <image2>{block}a cat<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt_text("a {cat}", 0).endswith("user\na {cat}<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_text("", 0) == prompt_text(" ", 0)  # prevent_empty_text
    assert prompt_text("", 0, prevent_empty_text=False).count("user\n<|im_end|>") == 1
    assert "a (red) hat" in prompt_text("a \\(red\\) hat", 0)  # ComfyUI's unescaping


def test_an_empty_prompt_encodes_as_one_space(encoder: TextEncoder) -> None:
    assert torch.equal(encode_qwen21(encoder, "", []).hidden, encode_qwen21(encoder, " ", []).hidden)


def test_a_prompt_with_its_own_chat_turns_is_used_as_written(encoder: TextEncoder) -> None:
    raw = "<|im_start|>user\na cat<|im_end|>\n"  # one turn: nothing before a second <|im_start|>
    encoded = encode_qwen21(encoder, raw, [])
    assert encoded.hidden.shape[1] == len(ids(encoder, raw))


def test_image_placeholders_must_match_the_images(encoder: TextEncoder, images: list[Image.Image]) -> None:
    with pytest.raises(GenserveError) as info:
        encode_qwen21(encoder, "a <|image_pad|> here", images)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == "prompt"


def test_a_qwen25_vl_text_encoder_is_refused_by_name(demo_models: Path) -> None:
    qwen25 = load(demo_models, demo_models / "text_encoders" / DEMO_TEXT_ENCODER)
    assert qwen25.family == "qwen2.5-vl"
    with pytest.raises(GenserveError) as info:
        encode_qwen21(qwen25, PROMPT, [])
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert info.value.details["field"] == "clip_model_name"
    assert (
        f"{DEMO_TEXT_ENCODER} is a Qwen2.5-VL text encoder; Qwen-Image 2.1 needs its Qwen3-VL one"
        in info.value.message
    )
