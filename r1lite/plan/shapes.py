"""Model shapes: the published layer sizes r1lite plans with, or those of a loaded model's config.

    >>> SHAPES["qwen/qwen2.5-3b"].params                # 3.09e9
    >>> Shape.from_config(model.config).lora_params(16, "all-linear")

Torch-free and without r1lite imports: the planner, the rollout engine and the GPU check count bytes from the
same `Shape`, so they agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int = 0  # 0: hidden // heads
    tied: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False  # Qwen3 normalises q and k per head (two more norms a layer; their weights are not counted)
    source: str = ""

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder-layer linear."""
        h, q, kv, i = self.hidden, self.heads * self.d, self.kv_heads * self.d, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def other_params(self) -> int:
        """Embeddings (and an untied LM head), norms, attention biases: never quantized."""
        bias = (self.heads + 2 * self.kv_heads) * self.d if self.qkv_bias else 0
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * (2 * self.hidden + bias) + self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        names = LORA_TARGETS if targets == "all-linear" else [t for t in targets if t in LORA_TARGETS]
        return self.layers * sum(r * sum(self.linear_shapes()[n]) for n in names)

    @classmethod
    def from_config(cls, config: Any, source: str = "config.json") -> Shape:
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        get = (lambda k, d=None: c.get(k, d)) if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
        return cls(
            vocab=get("vocab_size"),
            hidden=get("hidden_size"),
            intermediate=get("intermediate_size"),
            layers=get("num_hidden_layers"),
            heads=get("num_attention_heads"),
            kv_heads=get("num_key_value_heads") or get("num_attention_heads"),
            head_dim=get("head_dim") or 0,
            tied=bool(get("tie_word_embeddings", True)),
            qkv_bias=get("model_type") == "qwen2" or bool(get("attention_bias", False)),
            qk_norm=get("model_type") == "qwen3",
            source=source,
        )

    def qwen_config(self) -> dict[str, Any]:
        """The fields of a Qwen config in this shape, the way back from `from_config` (Qwen3's per-head q/k norms
        make it a Qwen3 config): what the benchmarks build random-weight models from."""
        return dict(
            model_type="qwen3" if self.qk_norm else "qwen2",
            head_dim=self.d,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
            tie_word_embeddings=self.tied,
            rope_theta=1e6,
            max_position_embeddings=32768,
        )


_QWEN = "published config.json on the Hugging Face hub"
SHAPES: dict[str, Shape] = {
    "qwen/qwen2.5-0.5b": Shape(151936, 896, 4864, 24, 14, 2, qkv_bias=True, source=_QWEN),
    "qwen/qwen2.5-1.5b": Shape(151936, 1536, 8960, 28, 12, 2, qkv_bias=True, source=_QWEN),
    "qwen/qwen2.5-3b": Shape(151936, 2048, 11008, 36, 16, 2, qkv_bias=True, source=_QWEN),
    "qwen/qwen2.5-7b": Shape(152064, 3584, 18944, 28, 28, 4, tied=False, qkv_bias=True, source=_QWEN),
    # Qwen3-1.7B(-Base): 8 KV heads of 128 (4x Qwen2.5-3B's KV cache per token), no q/k/v bias, tied embeddings;
    # q_norm/k_norm (2 x 128 weights a layer) are left out of the count
    "qwen/qwen3-1.7b": Shape(151936, 2048, 6144, 28, 16, 8, head_dim=128, qk_norm=True, source=_QWEN),
    "smollm2-135m-instruct": Shape(49152, 576, 1536, 30, 9, 3, source="SmolLM2-135M-Instruct config.json"),
}
SHAPES["huggingfacetb/smollm2-135m-instruct"] = SHAPES["smollm2-135m-instruct"]
