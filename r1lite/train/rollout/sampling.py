"""Sampling the next token: temperature, then top-k, then top-p (TRL/HF semantics), and the log-prob of what was drawn.

    >>> tokens, logps = sample(logits, Sampling(temperature=1.0))    # [B], [B]: log_softmax(logits / T) of the tokens

Returned log-probs are those of the distribution the trainer recomputes (temperature-scaled, unfiltered);
`r1lite.stages.grpo_rollout` refuses top-k/top-p with the engine for that reason. Non-finite logits (an fp16
overflow) get a non-finite log-prob and no device-side assert; the engine stops with `nonfinite_error` at its
next sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from r1lite.errors import PrecisionError


@dataclass
class Sampling:
    """How a rollout draws tokens; passed per call, so one engine's buffers serve greedy evals and sampled rollouts."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    # auto: `inverse_cdf` on CPU (one uniform per row; multinomial is a third of a CPU decode step), multinomial
    # on CUDA; multinomial: torch.multinomial everywhere, the draws of transformers' generate under one seed
    sampler: Literal["auto", "multinomial"] = "auto"


def sample(
    logits: torch.Tensor, s: Sampling, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] and their log-probs [B] under log_softmax(logits / temperature).

    A row whose logits are not finite (NaN or +inf: fp16 activations that overflowed) gets a non-finite log-prob
    and an arbitrary token, with no device-side assert (`torch.multinomial` on such a row kills a CUDA process);
    the engine raises `PrecisionError` at its next sync instead.
    """
    scaled = logits.float() if s.temperature == 1.0 else logits.float() / s.temperature  # [B, V]
    logp = torch.log_softmax(scaled, dim=-1)
    if s.greedy:
        tokens = scaled.argmax(dim=-1)
    else:
        filtered = scaled
        if s.top_k and s.top_k < filtered.shape[-1]:
            kth = torch.topk(filtered, s.top_k, dim=-1).values[:, -1:]
            filtered = filtered.masked_fill(filtered < kth, float("-inf"))
        if s.top_p < 1.0:
            sorted_logits, order = torch.sort(filtered, descending=True, dim=-1)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) > s.top_p  # keep the token that crosses top_p
            filtered = filtered.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(filtered, dim=-1)
        finite = torch.isfinite(probs.sum(dim=-1, keepdim=True))  # [B, 1]; NaN anywhere makes the sum NaN; no sync
        probs = torch.where(finite, probs, 1.0)  # a non-finite row is sampled as uniform
        if s.sampler == "multinomial" or probs.device.type != "cpu":
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            tokens = inverse_cdf(probs, generator)
    # not finite for a row with NaN or +inf logits (log_softmax spreads them over the row); finite otherwise, as
    # the chosen token has a probability above 0
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of CPU `probs` [B, V] (finite, not necessarily normalised), drawn by inverting the row's
    cumulative distribution.

    Draws B uniforms where `torch.multinomial` draws B x V exponentials on CPU (a third of a 135M model's
    decode step at 128 rows x 49k tokens). u is in (0, 1] and the CPU's cumsum adds in order, so the sums never
    decrease and the chosen token's interval has positive width: a token of probability 0 (masked by top-k/top-p)
    is never drawn. CUDA's parallel cumsum promises neither, which is why CUDA keeps multinomial.
    """
    cdf = probs.cumsum(dim=-1)
    u = 1.0 - torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def nonfinite_error(dtype: torch.dtype) -> PrecisionError:
    """The one-line error for NaN/inf logits in `dtype`, naming the settings that widen it."""
    wider = "--set model.dtype=float32 --set quantization.compute_dtype=float32"
    if dtype == torch.float16:
        bf16 = "--set model.dtype=bfloat16 --set quantization.compute_dtype=bfloat16"
        fix = f"use bf16 on a GPU that has it ({bf16}) or fp32 ({wider})"
    else:
        fix = f"rerun with {wider}"
    return PrecisionError(
        f"rollout: the policy's next-token logits are NaN or infinite in {str(dtype).removeprefix('torch.')} "
        f"(activations overflowed, or the weights diverged); {fix}"
    )


def all_stopped(done: torch.Tensor, logps: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every row has stopped, in one device->host sync that also raises `PrecisionError` when a sampled
    token's log-prob is not finite (its logits were not)."""
    stopped, broken = torch.stack([done.all(), ~torch.isfinite(logps).all()]).tolist()
    if broken:
        raise nonfinite_error(dtype)
    return bool(stopped)
