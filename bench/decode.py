"""The rollout engine's decode step on CPU, where its time goes, side by side in ONE process.

    python bench/decode.py                        # the cpu-rl shape: SmolLM2-135M, 128 rows, 67-token prompt, 96 new
    python bench/decode.py --rows 32 --dtypes float32
    python bench/decode.py --ending               # rows that end early: real prompts, the model's own EOS

For each dtype (bf16 is what the CPU profiles decode in where the CPU has AVX512-BF16 or AMX; fp32 elsewhere)
it times one rollout of `--rows` completions (8 per prompt, EOS off, so every row decodes `--tokens` steps)
three ways on the same merged model: `before` (torch.multinomial, attention over the whole static cache: the
engine until 2026-12-06), `sampler` (inverse-CDF sampling only) and `now` (inverse-CDF sampling and attention
over the written slots only). `matmuls` is the time of the step's matrix products alone at the same batch
(every linear layer and the LM head as plain `torch.mm` on the model's weights): the part of a step no
change to the engine removes. Prints one JSON object per dtype, with milliseconds per decode step.

`--ending` times instead a greedy rollout of real Countdown prompts in the compact format, where the model stops
each row at its own EOS: the whole cache read and every row computed to the end (`full`), against the written
slots of the live rows only (`now`); milliseconds per rollout, and the tokens it produced.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def model_and_tokenizer(name: str) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from r1lite.train.models import load_tokenizer, resolve_model

    path = resolve_model(name)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")), load_tokenizer(path)


def rollout_ms(model: Any, tok: Any, rows: list[list[int]], group: int, tokens: int, **settings: Any) -> tuple:
    """(milliseconds of the second of two rollouts, its completions): the first builds the engine's buffers."""
    from r1lite.train.rollout.engine import RolloutSettings
    from r1lite.train.rollout.registry import engine_for, release_engines

    release_engines(model, pinned=True)
    engine = engine_for(model, tok, RolloutSettings(max_new_tokens=tokens, merge="merged", compile=False, **settings))
    generator = torch.Generator().manual_seed(0)
    engine.generate(rows, num_generations=group, generator=generator)
    start = time.perf_counter()
    out = engine.generate(rows, num_generations=group, generator=generator)
    return (time.perf_counter() - start) * 1000, out.completion_ids


def ms_per_step(model: Any, tok: Any, args: argparse.Namespace, dtype: str, sampler: str, cut: bool) -> float:
    """Milliseconds per decode step of one rollout of `args.rows` rows, every row to `args.tokens` tokens."""
    prompt = tok("Make 72 from [79, 55, 96] with + - * /, each number once. " * 8)["input_ids"][: args.prompt]
    window = {} if cut else {"window": "full", "compact": False}
    ms, completions = rollout_ms(
        model, tok, [prompt] * args.rows, 8, args.tokens, dtype=dtype, stop_at_eos=False, sampler=sampler, **window
    )
    return ms / max(len(c) for c in completions)


def ending(model: Any, tok: Any, args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """A greedy rollout of real prompts whose rows end at the model's own EOS: every row to the end vs live rows."""
    from r1lite.tasks.registry import load_task

    task = load_task("countdown")
    examples = task.splits(0, args.rows, seed=7)["test"]
    prompts = [tok(text=task.render_prompt(e, "compact", tok))["input_ids"] for e in examples]
    full, expected = rollout_ms(
        model, tok, prompts, 1, args.tokens, dtype=dtype, greedy=True, window="full", compact=False
    )
    now, completions = rollout_ms(model, tok, prompts, 1, args.tokens, dtype=dtype, greedy=True)
    lengths = [len(c) for c in completions]
    return {
        "dtype": dtype,
        "rows": args.rows,
        "tokens": args.tokens,
        "mean_length": sum(lengths) / len(lengths),
        "longest": max(lengths),
        "full_ms": full,
        "now_ms": now,
        "speedup": full / now,
        "same_tokens": completions == expected,
    }


def matmul_ms(model: Any, rows: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Milliseconds for every linear layer's and the LM head's product at `rows` rows, in `dtype`."""
    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name]
    weights = [m.weight.detach().to(dtype) for m in layers]  # the model's layers and head, not LoRA's factors
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype) for w in weights}
    for w in weights:
        torch.mm(inputs[w.shape[1]], w.t())
    start = time.perf_counter()
    for _ in range(repeats):
        for w in weights:
            torch.mm(inputs[w.shape[1]], w.t())
    return (time.perf_counter() - start) * 1000 / repeats


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=128, help="completions decoded together (8 per prompt)")
    p.add_argument("--prompt", type=int, default=67, help="prompt tokens (the cpu-rl prompt has 67)")
    p.add_argument("--tokens", type=int, default=96, help="decode steps")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--ending", action="store_true", help="real prompts, rows ending at their EOS: full vs live rows")
    args = p.parse_args(argv)
    model, tok = model_and_tokenizer(args.model)
    model.eval()
    results = []
    for dtype in args.dtypes.split(","):
        if args.ending:
            row = ending(model, tok, args, dtype)
        else:
            row = {"dtype": dtype, "rows": args.rows, "prompt": args.prompt, "tokens": args.tokens}
            row["before_ms"] = ms_per_step(model, tok, args, dtype, "multinomial", cut=False)
            row["sampler_ms"] = ms_per_step(model, tok, args, dtype, "auto", cut=False)
            row["now_ms"] = ms_per_step(model, tok, args, dtype, "auto", cut=True)
            row["matmuls_ms"] = matmul_ms(model, args.rows, getattr(torch, dtype))
            row["speedup"] = row["before_ms"] / row["now_ms"]
        row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


if __name__ == "__main__":
    main()
