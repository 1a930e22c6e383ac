"""Rollout benchmark: TRL's own generation, transformers' continuous batching and our engine, side by side on the
same model and batch.

    python bench/rollout.py --shape tiny                                  # CPU smoke test (seconds)
    python bench/rollout.py --shape qwen2.5-3b --prompts 8 --generations 8 --tokens 256
    python bench/rollout.py --model smollm2-135m-instruct --quant none --prompts 16 --generations 8 --tokens 96 \
        --no-grad-ckpt --backends trl,trl-cb,engine --backend-timeout 900     # the CPU peers (README)
    python bench/rollout.py --suite                                      # the three GPU cases of the notes

For each backend it builds a fresh GRPOTrainer on the same model (random weights in a real architecture's
shape, or `--model`; NF4 + LoRA r16 all-linear, gradient checkpointing, beta 0), runs `--steps` GRPO steps with
EOS disabled (every completion is full length), and reports completion tokens/s during generation,
steady-state GRPO step time (median after the first, warm-up step) and peak GPU memory. Backends: `trl` (TRL's
generation: HF generate), `trl-cb` (TRL with transformers' continuous batching), `engine` (ours, decode step
captured on CUDA) and `engine-eager` (ours, not captured), all through r1lite's GRPOTrainer (TRL's, plus the
engine's importance-sampling correction) with fp32 adapters. Each backend runs in a process of its own (nothing
one leaves behind, such as the engine's registered attention, meets the next), stopped after --backend-timeout
seconds; the JSON (--out) is rewritten after every backend, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from r1lite.fileio import write_json


def qwen_config(name: str) -> dict[str, Any]:
    """A Qwen config's fields for a shape from r1lite's planner table (one copy of the published shapes); Qwen3's
    per-head q/k norms make it a Qwen3 config."""
    from r1lite.plan.shapes import SHAPES as PLAN_SHAPES

    return PLAN_SHAPES[f"qwen/{name}"].qwen_config()


SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-1.7b": qwen_config("qwen3-1.7b"),  # the consumer default's model
    "qwen2.5-3b": qwen_config("qwen2.5-3b"),
    "qwen2.5-1.5b": qwen_config("qwen2.5-1.5b"),
    "tiny": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    ),
}
SUITE = [("qwen2.5-3b", 8, 8, 256), ("qwen2.5-3b", 16, 8, 1024), ("qwen2.5-1.5b", 16, 8, 1024)]
PROMPT_TOKENS = 150  # about a Countdown prompt in the base template


def word_tokenizer(vocab: int) -> Any:
    """A tokenizer with exactly `vocab` tokens ("t0", "t1", ...) so any sampled id decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1", pad_token="t0")


def build_model(shape: str, folder: Path, dtype: torch.dtype) -> Path:
    """Random weights in `shape`'s architecture, saved with a tokenizer that decodes every id."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    fields = dict(SHAPES[shape])
    config_class = Qwen3Config if fields.pop("model_type") == "qwen3" else Qwen2Config
    config = config_class(**fields, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None  # every completion runs to full length
    model.save_pretrained(folder)
    word_tokenizer(config.vocab_size).save_pretrained(folder)
    del model
    return folder


def random_reward(completions: list[Any], **_: Any) -> list[float]:
    """Varied rewards so advantages (and hence the loss and its backward) are not all zero."""
    return [random.random() for _ in completions]


def run_backend(backend: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from trl import GRPOConfig

    from r1lite.recipe.config import LoraConfig, ModelConfig, QuantizationConfig
    from r1lite.runs.tracking import quiet_library_output
    from r1lite.stages.grpo_rollout import make_rollout_func
    from r1lite.train.grpo_trainer import GRPOTrainer
    from r1lite.train.models import keep_fp32_adapters, load_model, load_tokenizer, lora_config
    from r1lite.train.rollout.engine import RolloutSettings
    from r1lite.train.rollout.registry import release_engines

    cuda = torch.cuda.is_available()
    model_cfg = ModelConfig(name=str(model_dir), gradient_checkpointing=args.grad_ckpt)
    quant = QuantizationConfig(mode=args.quant, compute_dtype="bfloat16" if cuda else "float32")
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), model_cfg, quant)
    rng = random.Random(0)
    vocab = len(tokenizer)
    words = args.prompt_tokens
    prompts = [" ".join(f"t{rng.randrange(2, vocab)}" for _ in range(words)) for _ in range(args.prompts * 4)]
    total = args.prompts * args.generations
    micro = min(total, args.micro_batch)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=total // micro,
        num_generations=args.generations,
        learning_rate=1e-5,
        beta=0.0,
        loss_type="dr_grpo",
        max_completion_length=args.tokens,
        temperature=1.0,
        gradient_checkpointing=args.grad_ckpt,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        generation_kwargs={"eos_token_id": None, "suppress_tokens": None},
        seed=0,
        use_transformers_continuous_batching=backend == "trl-cb",
    )
    rollout = None
    if backend.startswith("engine"):
        settings = RolloutSettings(
            max_new_tokens=args.tokens, merge=args.merge, stop_at_eos=False, compile=backend == "engine"
        )
        rollout = make_rollout_func(settings)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=random_reward,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        peft_config=lora_config(LoraConfig(r=16, alpha=32, dropout=0.0)),
        rollout_func=rollout,
    )
    keep_fp32_adapters(trainer.model)  # as r1lite trains (TRL would store them in bf16 on NF4)
    quiet_library_output(trainer)  # one JSON line per case, not one dict per step
    gen_time, gen_tokens, step_times, logs_seen = [0.0], [0], [], []
    original = trainer._generate

    def timed_generate(prompts_: list[Any]) -> Any:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = original(prompts_)
        if cuda:
            torch.cuda.synchronize()
        gen_time.append(time.perf_counter() - start)
        gen_tokens.append(sum(len(c) for c in result[1]))
        return result

    trainer._generate = timed_generate
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - self.t)

        def on_log(self, *a: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
            logs_seen.append(dict(logs or {}))

    trainer.add_callback(StepTimer())
    trainer.train()
    # steady state: drop the first (warm-up / capture) generation and step
    gens = list(zip(gen_time[1:], gen_tokens[1:], strict=True))
    steady = gens[1:] or gens
    result = {
        "backend": backend,
        "completion_tokens_per_s": round(sum(n for _, n in steady) / max(sum(t for t, _ in steady), 1e-9), 1),
        "step_s_median": round(statistics.median(step_times[1:] or step_times), 3),
        "step_s_all": [round(t, 3) for t in step_times],
        "generation_s_all": [round(t, 3) for t, _ in gens],
        "tokens_per_generation": gens[0][1] if gens else 0,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    for key in ("rollout/merged", "rollout/logprob_gap"):  # the engine's merge choice and sampler/trainer gap
        values = [log[key] for log in logs_seen if key in log]
        if values:
            result[key.split("/")[1]] = round(statistics.fmean(values), 4)
    release_engines(trainer.model, pinned=True)  # its merged copy, cache and captured step, now
    del trainer, model
    return result


def fresh_start() -> None:
    """Free what the previous backend left before the next one starts, and zero the peak it is measured by.

    Its policy and trainer sit in reference cycles (gc), its compiled decode step in dynamo's caches together
    with the CUDA-graph memory pool it captured into (`torch._dynamo.reset`), and its blocks in the allocator's
    cache: without this a later backend's peak may include an earlier one's policy and graph pool.
    """
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_case(
    shape: str, prompts: int, generations: int, tokens: int, args: argparse.Namespace, saved: Any = None
) -> dict[str, Any]:
    """Every backend on one case, each in its own process (`--isolate`, the default) or in this one; `saved(out)`
    is called after each backend with the case as it stands."""
    case = argparse.Namespace(**{**vars(args), "prompts": prompts, "generations": generations, "tokens": tokens})
    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {
        "shape": args.model or shape,
        "weights": "pretrained" if args.model else "random (published shape)",
        "batch": f"{prompts}x{generations}x{tokens}",
        "quant": args.quant,
        "steps": args.steps,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "results": {},
    }
    with tempfile.TemporaryDirectory() as d:
        if args.model:  # a real model (r1lite resolves names such as smollm2-135m-instruct, the offline one)
            from r1lite.train.models import resolve_model

            model_dir = Path(resolve_model(args.model))
        else:
            model_dir = build_model(shape, Path(d) / "model", torch.bfloat16 if cuda else torch.float32)
        for backend in args.backends.split(","):
            if args.isolate:
                out["results"][backend] = run_isolated(backend, model_dir, case, Path(d))
            else:
                fresh_start()
                out["results"][backend] = run_backend(backend, model_dir, case)
            _ratios(out)
            if saved:
                saved(out)
        fresh_start()
    return out


def run_isolated(backend: str, model_dir: Path, case: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One backend in a child process of this script, stopped after `case.backend_timeout` seconds."""
    import subprocess

    part = work / f"{backend}.json"
    command = [sys.executable, __file__, "--child-backend", backend, "--child-model", str(model_dir)]
    command += ["--child-out", str(part), "--prompts", str(case.prompts), "--generations", str(case.generations)]
    command += ["--tokens", str(case.tokens), "--steps", str(case.steps), "--micro-batch", str(case.micro_batch)]
    command += ["--quant", case.quant, "--prompt-tokens", str(case.prompt_tokens), "--merge", case.merge]
    command += [] if case.grad_ckpt else ["--no-grad-ckpt"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=case.backend_timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "error": f"did not finish in {case.backend_timeout:g} s"}
    if part.is_file():
        return json.loads(part.read_text())
    return {"backend": backend, "error": f"exit {done.returncode}: {(done.stdout + done.stderr)[-400:]}"}


def _ratios(out: dict[str, Any]) -> None:
    """Our engine over each peer: completion tokens/s and step time, where both finished."""
    results = out["results"]
    ours = results.get("engine") or results.get("engine-eager")
    for peer in ("trl", "trl-cb"):
        theirs = results.get(peer)
        if not ours or not theirs or "error" in ours or "error" in theirs:
            continue
        suffix = "" if peer == "trl" else "_vs_cb"
        out["throughput_ratio" + suffix] = round(
            ours["completion_tokens_per_s"] / max(theirs["completion_tokens_per_s"], 1e-9), 2
        )
        out["step_time_ratio" + suffix] = round(theirs["step_s_median"] / max(ours["step_s_median"], 1e-9), 2)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "bitsandbytes")}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=16, help="completions per forward/backward")
    p.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    p.add_argument("--model", help="a real model instead of random weights (e.g. smollm2-135m-instruct)")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS, help="words per random prompt")
    p.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false", help="as the cpu profile trains")
    p.add_argument("--merge", default="auto", choices=["auto", "merged", "unmerged"])
    p.add_argument("--backends", default="trl,engine")
    p.add_argument("--suite", action="store_true", help="run the three GPU cases of bench/NOTES.md")
    p.add_argument("--out", type=Path)
    p.add_argument("--in-process", dest="isolate", action="store_false", help="every backend in this process")
    p.add_argument("--backend-timeout", type=float, default=1800, help="seconds a backend's process may run")
    p.add_argument("--child-backend", help=argparse.SUPPRESS)  # internal: one backend, in a child process
    p.add_argument("--child-model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_backend:
        write_json(args.child_out, run_backend(args.child_backend, args.child_model, args))
        return []
    cases = SUITE if args.suite else [(args.shape, args.prompts, args.generations, args.tokens)]
    results: list[dict[str, Any]] = []

    def saved(case: dict[str, Any]) -> None:
        if args.out:
            write_json(args.out, [*results, {**case, "versions": versions()}])

    for case in cases:
        result = run_case(*case, args, saved)
        result["versions"] = versions()
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            write_json(args.out, results)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
