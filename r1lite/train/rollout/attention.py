"""What one decode step computes: grouped-query attention over the cache's window, logits in fp32.

    >>> use_grouped_decode_attention(model)          # the model's SDPA layers call `grouped_decode_attention`
    >>> logits = last_logits(runner, fp32_head(runner), input_ids=..., attention_mask=..., **{cache_kwarg(m): c})

Decode attention reads each K/V head once for its group of query heads (under `torch.compile` transformers' SDPA
path would expand K/V to every query head: 8x the bytes per step on Qwen2.5-3B), over the slots the cache's window
hands it (r1lite.train.rollout.buffers: those written so far). The logits of a half-precision head are folded in
fp32, as TRL folds the trainer's.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from r1lite.train.rollout.merged import base_model_of

ATTENTION = "r1lite_sdpa"


def grouped_decode_attention(
    module: Any,
    query: torch.Tensor,  # [B, Hq, q_len, D]
    key: torch.Tensor,  # [B, Hkv, L, D]
    value: torch.Tensor,  # [B, Hkv, L, D]
    attention_mask: torch.Tensor | None,  # [B, 1, q_len, L]
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA whose one-token decode step reads each K/V head once for its whole group of query heads.

    transformers packs the query heads of a group eagerly but, under torch.compile, expands K/V with
    `repeat_kv` to every query head (16 over 2 on Qwen2.5-3B: 8x the bytes a decode step reads). Here
    the group's query heads stand in for query positions of one KV head: [B, Hkv, G, D] against
    [B, Hkv, L, D], the same mask for each. Prefill and training (q_len > 1) use transformers' SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, _, dim = query.shape
    grouped = query.reshape(batch, heads // groups, groups, dim)  # [B, Hkv, G, D]
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None  # [B, 1, Hq, D]


def use_grouped_decode_attention(model: Any) -> bool:
    """Switch a model that uses SDPA to `grouped_decode_attention` (same numbers up to rounding; others are left
    alone)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, grouped_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    target = base_model_of(model)
    if target.config._attn_implementation == ATTENTION:
        return True
    if target.config._attn_implementation != "sdpa":
        return False
    target.set_attn_implementation(ATTENTION)
    return True


def cache_kwarg(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache`; use whichever this version's forward takes."""
    params = inspect.signature(base_model_of(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# Config fields with which a model's forward post-processes its LM head's output (as TRL's fused head lists them)
_LOGIT_SCALING = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def fp32_head(runner: Any) -> torch.nn.Linear | None:
    """The LM head the engine applies itself, in fp32: a plain half-precision head whose output is the logits.

    None where the model's own forward gives the logits: a head already in fp32 (the same numbers), a quantized
    or adapted head, logits the forward post-processes (softcapping, a scale), or a head off CUDA. On CPU the
    trainer's head (GRPOTrainer's plain head) takes the model's bf16 logits as well, so the engine matches it as
    it is; and CPU has no fp32-output matmul, so an fp32 head would copy the weight every step (the CPU demo took
    6.6 instead of 4.8 minutes).
    """
    base = base_model_of(runner)
    head = base.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.device.type != "cuda":
        return None
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype not in (torch.float16, torch.bfloat16):
        return None
    if any(getattr(config, key, None) not in (None, 1.0) for key in _LOGIT_SCALING):
        return None
    return head


def _fp32_linear(x: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """`head(x)` with the products accumulated and returned in fp32, without an fp32 copy of the weight on CUDA."""
    if x.device.type == "cuda" and torch.__version__ >= (2, 8):  # `out_dtype`: bf16/fp16 in, fp32 out
        out = torch.mm(x, head.weight.t(), out_dtype=torch.float32)
    else:
        out = x.float() @ head.weight.float().t()
    return out if head.bias is None else out + head.bias.float()


def last_logits(runner: Any, head: torch.nn.Linear | None, **inputs: Any) -> torch.Tensor:
    """`runner`'s logits [B, V] at the last position of `inputs`; through `head` in fp32 when given (`fp32_head`,
    looked up once, outside a compiled step).

    The sampled tokens' log-probs are compared with the trainer's (`rollout/logprob_gap`, the importance ratio),
    which TRL folds into log-probs in fp32; bf16 logits would add their rounding (steps of 0.125 at 16 <= |z| < 32)
    to that gap on a GPU. The head costs the same matmul either way.
    """
    if head is None:
        return runner(**inputs, logits_to_keep=1).logits[:, -1, :]
    hidden = base_model_of(runner).base_model(**inputs).last_hidden_state  # [B, L, H]: the model without its head
    return _fp32_linear(hidden[:, -1, :], head)
