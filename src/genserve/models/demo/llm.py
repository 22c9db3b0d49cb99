"""The demo chat model: a tiny transformers causal LM with random weights and a locally trained tokenizer.

Nothing can be downloaded on a fresh machine, yet the LLM service and the OpenAI-compatible door
must be exercised end to end. This builds a real Qwen2 transformers folder (config.json,
safetensors, generation_config.json, tokenizer.json, tokenizer_config.json, a chat template), so
the loader that serves it serves real checkpoints dropped into ``models/llm/`` unchanged. The
text it writes is gibberish: the weights are random, only the formats are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEMO_LLM = "tiny-chat"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
LLM_SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]

# ChatML, the layout most open chat models use; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A small English corpus: enough merges for whole common words, so tokens are multi-byte.
_LLM_CORPUS = [
    "Once upon a time there was a little robot who liked to count the stars at night.",
    "The weather today is sunny with a light breeze from the west, and the sea is calm.",
    "Please write a short poem about the moon, the river and the quiet town by the hills.",
    "You are a helpful assistant. Answer the question briefly and clearly.",
    "What is the capital of France? The capital of France is Paris.",
    "She opened the window, looked at the garden and smiled at the blue sky.",
    "Numbers like 1, 2, 3, 42 and 100 appear in stories, recipes and shopping lists.",
    "Café, naïve, über, 東京 and emoji such as 🙂 are text too, made of several bytes each.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat.",
    "Tell me a story about a dragon that learned to bake bread for the whole village.",
]
_VOCAB_SIZE = 600


def train_llm_tokenizer() -> Any:  # -> tokenizers.Tokenizer
    """Byte-level BPE (GPT-2 style): any UTF-8 text encodes, so no prompt is ever out of vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=LLM_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_LLM_CORPUS * 4, trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Plain prompts start with BOS (so even an empty prompt has a token to continue from); the
    # chat template writes its own BOS and is tokenised without added special tokens.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)]),
        ]
    )
    return tokenizer


def build_llm(folder: Path, seed: int) -> None:
    """Write the demo chat model's transformers folder (a second or two on CPU)."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_llm_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLM_SPECIAL_TOKENS}
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        # Wider than the usual 0.02: with tiny random weights that init makes greedy decoding repeat
        # one token forever, which hides streaming and stop-string behaviour in the demo.
        initializer_range=0.2,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[IM_END]], pad_token_id=ids[PAD]
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
