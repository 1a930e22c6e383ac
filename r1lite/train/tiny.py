"""Tiny random models built in code, for tests, the CPU smoke benchmark and offline experiments.

    >>> path = build_tiny_model(tmp_path / "tiny")            # 2-layer Qwen2, ~0.1M params
    >>> path = build_tiny_model(tmp_path / "tiny", arch="llama", hidden=64)

The tokenizer is a byte-level BPE trained in code on Countdown text, so no download is needed and
tags such as `</think>` are ordinary text (TRL decodes with skip_special_tokens=True).
"""

from __future__ import annotations

import random
from pathlib import Path

from r1lite.tasks import countdown

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = []
    task = countdown.Countdown()
    for ex in countdown.generate(64, seed=0):
        corpus.append(task.render_prompt(ex, "base"))
        corpus.append(countdown.make_trace(ex["nums"], ex["target"], rng, max_dead_ends=2))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out: str | Path, arch: str = "qwen2", hidden: int = 64, layers: int = 2, seed: int = 0, init_std: float = 0.02
) -> Path:
    """Save a random-weight causal LM + tokenizer to `out` and return the folder.

    `init_std` is the weights' initial standard deviation. At the usual 0.02 a tiny model's logits stay
    within about +-1 whatever its hidden state, so RL cannot make any token likely; learning tests
    use a larger one so a reward's optimum is reachable.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out)
    tok = build_tokenizer()
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
