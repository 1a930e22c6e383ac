"""Eval: generate on held-out problems and score them — accuracy, pass@k, format, length, search, task metrics.

    >>> summary = run(recipe, run_dir, label="base")                  # the recipe's base model
    >>> summary = run(recipe, run_dir, adapter="runs/x/grpo/adapter", label="final")

Greedy decoding gives accuracy; `eval.pass_k > 0` also samples k completions per problem at
`eval.temperature` and reports avg@k (each problem's mean accuracy over its k samples, averaged: the
quantity GRPO maximizes at the training temperature, and an unbiased pass@1) and pass@k.
`eval.metric` declares which of greedy accuracy and avg@k a run's claims rest on; paired changes are
computed for both. Per-example completions and scores go to `eval/<label>.jsonl`, the summary to
`eval/<label>.json`.
"""

from __future__ import annotations

import statistics
import time
from math import comb
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.fileio import write_json, write_jsonl
from r1lite.machine.distributed import gather, is_main, shard, world_size
from r1lite.machine.precision import cpu_bf16
from r1lite.recipe.config import Recipe
from r1lite.runs.rundir import Run
from r1lite.runs.signals import current
from r1lite.stages import data
from r1lite.tasks.registry import load_task
from r1lite.tasks.rewards import get_reward, shows_search
from r1lite.train.models import load_for_inference, load_tokenizer, resolve_model
from r1lite.train.rollout.engine import RolloutSettings
from r1lite.train.rollout.registry import engine_for, release_engines


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    sample: bool = False,
    temperature: float = 1.0,
    n: int = 1,
    desc: str = "eval",
    engine: bool = False,
    merge: str = "auto",
    compile: bool | str = "auto",
    dtype: str | None = None,
) -> list[list[tuple[str, int]]]:
    """Completions for each prompt: n (text, token count) pairs per prompt, in batches.

    With `engine`, our rollout engine generates (exactly `model.generate`'s greedy tokens, much
    faster on CUDA; `merge` and `compile` as `grpo.rollout_merge` / `grpo.rollout_compile`);
    otherwise transformers' `generate` with left padding.
    """
    import torch

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    rollout = None
    if engine:
        sampling = RolloutSettings(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            greedy=not sample,
            merge=merge,
            compile=compile,
            dtype=dtype,
        )
        rollout = engine_for(model, tokenizer, sampling)  # inside GRPO: the training engine, same buffers
        live = rollout.batch_rows
        if rollout.pinned and live and live % n == 0:
            # decode in the rollout's own batch shape: a second batch size would need a second cache beside it
            batch_size = live // n
    out: list[list[tuple[str, int]]] = []
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    for batch in ui.track(batches, len(batches), desc):
        if world_size() == 1:  # a signal stops an eval at the end of a batch (with several processes, at its end)
            current().check(desc)
        # tokenized exactly as TRL tokenizes GRPO prompts, so eval sees what training saw
        if rollout is not None:
            ids = [p for p in tokenizer(text=batch)["input_ids"] for _ in range(n)]
            # a short last batch is padded with copies of its last prompt: one batch shape, one cache
            fill = (batch_size - len(batch)) * n
            rows = rollout.generate(ids + ids[-n:] * (fill // n), num_generations=n, sampling=sampling).completion_ids
            rows = rows[: len(ids)]
        else:
            enc = tokenizer(text=batch, return_tensors="pt", padding=True).to(device)
            kwargs = {"temperature": temperature, "top_p": 1.0, "top_k": 0} if sample else {}
            with torch.no_grad():
                seqs = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=tokenizer.pad_token_id,
                    do_sample=sample,
                    **kwargs,
                )
            rows = seqs[:, enc["input_ids"].shape[1] :].tolist()
        out += [[decode_completion(tokenizer, row) for row in rows[i : i + n]] for i in range(0, len(rows), n)]
    return out


def decode_completion(tokenizer: Any, row: list[int]) -> tuple[str, int]:
    """A completion's text and token count: up to and including its first EOS or pad, special tokens dropped.

    Every place that scores generated tokens decodes them here (the evals, `r1lite try`), so a completion
    scores the same wherever it was generated.
    """
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    length = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
    return tokenizer.decode(row[:length], skip_special_tokens=True), length


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def score(
    examples: list[dict[str, Any]], completions: list[tuple[str, int]], reward: str, task: Any = "countdown"
) -> list[dict[str, Any]]:
    """One row per completion: the example's public fields, the completion, correctness and why, format, search."""
    task = load_task(task) if isinstance(task, str) else task
    correct, main, fmt = get_reward(reward, task), get_reward(task.main_reward, task), get_reward("think_format", task)
    rows = []
    for ex, (text, length) in zip(examples, completions, strict=True):
        ok, why = correct(text, ex)
        rows.append(
            {
                **task.public(ex),
                "completion": text,
                "length": length,
                "correct": ok == 1.0,
                "reason": why,
                "reward": main(text, ex)[0],
                "format": fmt(text, ex)[0] == 1.0,
                "search": shows_search(text),
                **task.metrics(ex, text),
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]], extra: list[str] | tuple[str, ...] = ()) -> dict[str, float]:
    """Means over the rows: accuracy, format, reward, length, search, and the task's own metrics."""
    mean = lambda key: statistics.fmean(float(r[key]) for r in rows)  # noqa: E731
    return {
        "accuracy": mean("correct"),
        "format_rate": mean("format"),
        "mean_reward": mean("reward"),
        "mean_length": mean("length"),
        "search_rate": mean("search"),
        **{key: mean(key) for key in extra},
        "examples": len(rows),
    }


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    recipe: Recipe,
    max_new_tokens: int | None = None,
    desc: str = "eval",
    sample: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy (and, with `eval.pass_k` and `sample`, sampled) eval of a loaded model on `examples`.

    Under several processes each generates its share and every process gets all rows back, in order
    (a collective: every process calls it), so no process waits at a barrier while one evaluates alone.
    """
    cfg, task = recipe.eval, recipe.data.make_task()
    mine = shard(examples)
    prompts = [task.render_prompt(e, recipe.data.prompt_format, tokenizer) for e in mine]
    max_new = max_new_tokens or cfg.max_new_tokens
    # the backend GRPO rolls out with: our engine (same greedy tokens as generate, much faster on CUDA)
    # or transformers' generate
    on_cuda = next(model.parameters()).device.type == "cuda"
    engine = recipe.rollout_backend(on_cuda) == "engine"
    options = {"engine": engine, "merge": recipe.grpo.rollout_merge, "compile": recipe.grpo.rollout_compile}
    if cpu_bf16(recipe.model, on_cuda):
        options["dtype"] = "bfloat16"
    greedy = [g[0] for g in generate(model, tokenizer, prompts, max_new, cfg.batch_size, desc=desc, **options)]
    rows = score(mine, greedy, cfg.reward, task)
    k = cfg.pass_k if sample else 0
    if k:
        sampled = generate(
            model,
            tokenizer,
            prompts,
            max_new,
            max(1, cfg.batch_size // cfg.pass_k),
            sample=True,
            temperature=cfg.temperature,
            n=cfg.pass_k,
            desc=f"{desc} pass@{cfg.pass_k}",
            **options,
        )
        for ex, row, group in zip(mine, rows, sampled, strict=True):
            scored = score([ex] * len(group), group, cfg.reward, task)
            row["samples"] = [{"completion": s["completion"], "correct": s["correct"]} for s in scored]
    release_engines(model)  # inside GRPO, its cache and merged copy must not stay beside the training step
    rows = gather(rows)
    extra = list(task.metrics(examples[0], rows[0]["completion"])) if examples else []  # the task's own metrics
    summary = summarize(rows, extra)
    if k:
        hits = [sum(s["correct"] for s in row["samples"]) for row in rows]
        summary[f"avg@{k}"] = statistics.fmean(h / k for h in hits)
        summary[f"pass@{k}"] = statistics.fmean(pass_at_k(k, h, k) for h in hits)
    return summary, rows


def run(
    recipe: Recipe,
    run_dir: Path,
    model_path: str | None = None,
    adapter: str | None = None,
    label: str = "final",
    tracker: Any = None,
    sample: bool = True,
) -> dict[str, Any]:
    """Evaluate the recipe's model (+ adapter) on the test split and write eval/<label>.{jsonl,json};
    `sample=False` skips `eval.pass_k`'s samples (greedy only).

    Every process of a run calls it (each evaluates its share); the main one writes the files.
    """
    examples = data.load_split(recipe.data, recipe.eval.split)[: recipe.eval.examples]
    path = model_path or resolve_model(recipe.model.name)
    tokenizer = load_tokenizer(path, recipe.model.revision)
    model = load_for_inference(path, recipe.model, recipe.quantization, adapter)
    start = time.monotonic()
    summary, rows = evaluate(model, tokenizer, examples, recipe, desc=f"eval {label}", sample=sample)
    summary = {
        "label": label,
        "split": recipe.eval.split,
        "model": recipe.model.name,
        "adapter": adapter,
        **summary,
        "processes": world_size(),
        "seconds": round(time.monotonic() - start, 1),
    }
    if not is_main():
        return summary
    write_jsonl(Run(run_dir).eval_file(label, rows=True), rows)
    write_json(Run(run_dir).eval_file(label), summary)
    if tracker is not None:
        numbers = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        tracker.log(f"eval/{label}", numbers, 0)
        task = recipe.data.make_task()
        tracker.table(
            f"eval/{label}",
            "completions",
            ["problem", "completion", "correct", "reason"],
            [
                [task.label(ex), r["completion"], r["correct"], r["reason"]]
                for ex, r in zip(examples[:64], rows[:64], strict=True)
            ],
            0,
        )
    ui.log(
        f"eval {label}: accuracy {summary['accuracy']:.1%}, format {summary['format_rate']:.1%}, "
        f"mean length {summary['mean_length']:.0f} tokens"
    )
    return summary
