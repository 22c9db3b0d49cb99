"""The demo vision-language chat model: ``llm/tiny-vl-chat``, a tiny Qwen2.5-VL with random weights.

ComfyUI's TextGenerate templates show their LLM an image (Qwen3-VL, Qwen3.5); this folder has what
a published Qwen2.5-VL folder has (config with a ``vision_config``, safetensors, tokenizer with a
chat template that places images, the PIL image processor's ``preprocessor_config.json``), so the
loader and the text generation service that serve it serve real vision-language folders.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_VL_LLM = "tiny-vl-chat"

# ChatML whose content may be a list of parts, images drawn as Qwen2-VL's vision placeholder.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_vision_chat(folder: Path, seed: int) -> None:
    """Write the demo vision-language chat model's transformers folder."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from genserve.models.demo.pipeline import demo_text_encoder_config, train_demo_tokenizer

    tokenizer = Qwen2Tokenizer(
        tokenizer_object=train_demo_tokenizer(seed),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    config = demo_text_encoder_config(tokenizer)
    torch.manual_seed(seed + 7)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)
