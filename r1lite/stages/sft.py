"""LoRA SFT warm-up: teach the answer format (and, from solver traces, a search pattern).

    >>> adapter = run(recipe, Path("runs/countdown-cpu"))     # -> runs/countdown-cpu/sft/adapter

TRL's SFTTrainer on a prompt/completion dataset, so the loss covers the completion only; the base
may be 4-bit (QLoRA). Completions are the task's solver-made reasoning traces (Countdown's
`make_trace`, seeded by the recipe, so a rerun trains on the same text) or, for tasks without a
solver, answer-only completions that close the think block and give the answer (`sft.completions`).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.errors import RecipeError
from r1lite.fileio import atomic_dir, write_text
from r1lite.machine import distributed
from r1lite.recipe.config import Recipe, build_trl_config
from r1lite.runs import resume
from r1lite.runs.rundir import Run
from r1lite.runs.tracking import RunMonitor, quiet_library_output
from r1lite.stages import data
from r1lite.train import models


def build_dataset(recipe: Recipe, tokenizer: Any) -> list[dict[str, str]]:
    """Prompt/completion pairs: the recipe's prompt template and a trace (or the bare answer) after it."""
    task, traces = recipe.data.make_task(), recipe.sft_completions() == "traces"
    rng = random.Random(recipe.seed)
    rows = []
    for ex in data.load_split(recipe.data, "train")[: recipe.sft.examples]:
        prompt = task.render_prompt(ex, recipe.data.prompt_format, tokenizer)
        if traces:
            completion = task.trace(ex, rng, recipe.sft.trace_style, recipe.sft.max_dead_ends)
        else:
            completion = task.answer_only(ex)
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def check_lengths(rows: list[dict[str, str]], tokenizer: Any, max_length: int) -> None:
    """Say when sft.max_length cuts completions off; stop when it leaves nothing to learn from."""
    prompts = tokenizer([r["prompt"] for r in rows])["input_ids"]
    full = tokenizer([r["prompt"] + r["completion"] for r in rows])["input_ids"]
    cut = sum(len(f) > max_length for f in full)
    if all(len(p) >= max_length for p in prompts):
        longest = max(len(f) for f in full)
        raise RecipeError(
            f"sft.max_length ({max_length} tokens) is shorter than every prompt; the warm-up would see no "
            f"completion. Raise it (the longest prompt + completion is {longest} tokens)"
        )
    if cut:
        ui.warn(f"sft: {cut} of {len(rows)} examples are longer than sft.max_length ({max_length}); their ends are cut")


def total_steps(rows: int, rows_per_batch: int, accumulation: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps of the warm-up, counted as the Trainer counts them (`max_steps` wins when set)."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(rows / rows_per_batch)
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(epochs * per_epoch)


def carry_token_count(trainer: Any) -> Any:
    """A callback that keeps TRL's logged `num_tokens` counting across a resume.

    SFTTrainer counts the tokens it trained on in an attribute that no checkpoint holds, so a continued
    warm-up logged the count from 0 again. The count rides in the trainer state's `num_input_tokens_seen`
    (saved with every checkpoint, left alone by transformers unless `include_num_input_tokens_seen` is on).
    """
    from transformers import TrainerCallback

    class CarryTokenCount(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if hasattr(trainer, "_total_train_tokens"):  # TRL's name for it (1.x)
                trainer._total_train_tokens = state.num_input_tokens_seen  # 0, or the count at the checkpoint

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # before this step's checkpoint is written
            state.num_input_tokens_seen = getattr(trainer, "_total_train_tokens", state.num_input_tokens_seen)

    return CarryTokenCount()


def run(recipe: Recipe, run_dir: Path, tracker: Any = None, restart: bool = False) -> Path:
    """Train a LoRA adapter on traces; returns `run_dir/sft/adapter` (written atomically).

    Continues from the last good checkpoint written for the same settings (more epochs or steps extend a
    finished warm-up); `restart` starts over.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg, out = recipe.sft, Run(run_dir).stage_dir("sft")
    path = models.resolve_model(recipe.model.name)
    tokenizer = models.load_tokenizer(path, recipe.model.revision)
    rows = build_dataset(recipe, tokenizer)
    check_lengths(rows, tokenizer, cfg.max_length)
    # batch_size x grad_accum is the global batch of one optimizer step, whatever the processes
    micro, accumulation = distributed.split_batch(
        cfg.batch_size * cfg.grad_accum, cfg.batch_size, distributed.world_size(), "sft"
    )
    steps = total_steps(len(rows), micro * distributed.world_size(), accumulation, cfg.epochs, cfg.max_steps)
    checkpoint = resume.continue_from(out, "sft", resume.resume_key(recipe, "sft"), restart, steps)
    what = "traces" if recipe.sft_completions() == "traces" else "answer-only completions"
    ui.log(f"sft: {len(rows)} {what} on {recipe.model.name} ({recipe.quantization.mode}), LoRA r={recipe.lora.r}")
    model = models.load_model(path, recipe.model, recipe.quantization)
    on_cuda = models.pick_device(recipe.model) == "cuda"
    ours = dict(
        output_dir=str(out / "trainer"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_length=cfg.max_length,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="steps",  # checkpoints to continue from (r1lite.runs.signals); the last step's too
        save_steps=cfg.save_every,
        save_total_limit=2,
        **models.trainer_defaults(recipe, on_cuda),
    )
    args = build_trl_config(SFTConfig, ours, cfg.trl, "sft")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=models.lora_config(recipe.lora),
    )
    models.keep_fp32_adapters(trainer.model)  # TRL stores adapters in bf16 on a quantized base
    quiet_library_output(trainer)
    trainer.add_callback(RunMonitor("sft", out, tracker, total_steps=trainer.args.max_steps))
    trainer.add_callback(carry_token_count(trainer))
    resume.train(trainer, "sft", checkpoint, cfg.max_nonfinite, steps)
    if distributed.is_main():  # one writer for the run directory
        with atomic_dir(Run(run_dir).adapter("sft")) as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_text(out / "sample.txt", rows[0]["prompt"] + rows[0]["completion"] + "\n")
    distributed.wait_for_everyone()
    return Run(run_dir).adapter("sft")
