"""GRPO: reinforcement learning on the task's rewards with a (4-bit) policy and a LoRA adapter.

    >>> adapter = run(recipe, Path("runs/countdown-cpu"))            # -> .../grpo/adapter; continues its checkpoints
    >>> adapter = run(recipe, run_dir, restart=True)                   # start over

TRL's GRPOTrainer does the algorithm (group advantages, clipped policy-gradient loss, logging,
checkpoints); this module only wires the recipe into it: the dataset of rendered prompts, the
weighted reward functions, the optional SFT adapter to start from, the rollout backend, and a
periodic eval on the validation split. Checkpoints every `grpo.save_every` steps, at the last step and when a signal
stops the run (r1lite.runs.signals) let a rerun continue where it stopped, or extend a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.fileio import append_jsonl, atomic_dir
from r1lite.machine import distributed
from r1lite.plan import hardware
from r1lite.plan.planner import make_plan
from r1lite.recipe.config import Recipe, build_trl_config
from r1lite.runs import resume
from r1lite.runs.hub import STOP_WAIT_S, PushCheckpoints, hub_ready
from r1lite.runs.rundir import Run
from r1lite.runs.tracking import RunMonitor, quiet_library_output
from r1lite.stages import data
from r1lite.stages import evaluate as evaluate_stage
from r1lite.stages.grpo_rollout import make_rollout_func, settings_from_recipe
from r1lite.tasks.rewards import trl_reward_funcs
from r1lite.train import models
from r1lite.train.diagnostics import Diagnostics
from r1lite.train.grpo_trainer import GRPOTrainer


def build_dataset(recipe: Recipe, tokenizer: Any) -> list[dict[str, Any]]:
    """Rendered prompts, each with its example as JSON: the rewards get it whole, whatever its fields."""
    task = recipe.data.make_task()
    return [
        {"prompt": task.render_prompt(e, recipe.data.prompt_format, tokenizer), "example": json.dumps(e)}
        for e in data.load_split(recipe.data, "train")
    ]


class PeriodicEval(TrainerCallback):
    """Greedy accuracy on the validation split every `every` steps, logged next to the training metrics.

    Every process evaluates its share (`evaluate` gathers the rows), so none waits at a collective for long.
    """

    def __init__(self, recipe: Recipe, tokenizer: Any, path: Path, every: int, tracker: Any = None) -> None:
        self.recipe, self.tokenizer, self.path, self.every, self.tracker = recipe, tokenizer, path, every, tracker
        # a choice made by watching this curve (when to stop, which setting) must not see the test split
        self.examples = data.load_split(recipe.data, "validation")[: recipe.grpo.eval_examples]

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self.every or state.global_step % self.every or model is None:
            return
        was_training = model.training
        model.eval()
        summary, _ = evaluate_stage.evaluate(
            model,
            self.tokenizer,
            self.examples,
            self.recipe,
            max_new_tokens=self.recipe.grpo.max_completion_length,
            desc=f"eval @ {state.global_step}",
        )
        if was_training:
            model.train()
        if not state.is_world_process_zero:  # every process evaluated its share; the main one records it
            return
        metrics = {f"validation_{k}": v for k, v in summary.items()}
        append_jsonl(self.path, {"stage": "grpo", "step": state.global_step, **metrics})
        if self.tracker is not None:
            self.tracker.log("grpo", metrics, state.global_step)
        ui.log(f"grpo step {state.global_step}: validation accuracy {summary['accuracy']:.1%}")


def trainer_args(recipe: Recipe, out: Path, on_cuda: bool, backend: str) -> Any:
    from trl import GRPOConfig

    g = recipe.grpo
    # prompts_per_step x num_generations is the global batch of one optimizer step, whatever the processes
    micro, accumulation = distributed.split_batch(
        g.prompts_per_step * g.num_generations, g.micro_batch_size, distributed.world_size()
    )
    ours = dict(
        output_dir=str(out / "trainer"),
        max_steps=g.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_generations=g.num_generations,
        learning_rate=g.learning_rate,
        beta=g.beta,
        loss_type=g.loss_type,
        scale_rewards=g.reward_scaling(),
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        max_completion_length=g.max_completion_length,
        mask_truncated_completions=g.mask_truncated,
        reward_weights=[w for _, w in reward_plan(recipe)],
        use_vllm=backend == "vllm",
        **({"vllm_mode": g.vllm_mode} if backend == "vllm" else {}),
        logging_steps=g.log_every,
        save_strategy="steps",
        save_steps=g.save_every,
        save_total_limit=2,
        **models.trainer_defaults(recipe, on_cuda),
    )
    return build_trl_config(GRPOConfig, ours, g.trl, "grpo")


LOGGED = ("think_format", "search_behaviour", "self_check")


def reward_plan(recipe: Recipe) -> list[tuple[str, float]]:
    """The recipe's weighted rewards, plus accuracy, format and behaviours at weight 0 so TRL logs them every step."""
    plan = [(r.name, r.weight) for r in recipe.grpo.rewards]  # the recipe filled in the task's defaults
    return plan + [(name, 0.0) for name in (recipe.eval.reward, *LOGGED) if name not in dict(plan)]


def planned_merge(recipe: Recipe, stage: str) -> bool | None:
    """The plan's merge decision for `stage` on this machine's card (None without CUDA or for an unknown model),
    logged beside the engine's own."""
    card = hardware.detected_card()
    if card is None:
        return None
    try:
        return make_plan(recipe, card, distributed.world_size(), verdicts=False).merge.get(stage)
    except R1liteError:
        return None


def build_trainer(
    recipe: Recipe,
    run_dir: Path,
    init_adapter: Path | None = None,
    callbacks: list | None = None,
    tracker: Any = None,
) -> Any:
    """A ready GRPOTrainer for the recipe (used by `run` and by the benchmark)."""
    from datasets import Dataset

    out = Run(run_dir).stage_dir("grpo")
    path = models.resolve_model(recipe.model.name)
    tokenizer = models.load_tokenizer(path, recipe.model.revision)
    on_cuda = models.pick_device(recipe.model) == "cuda"
    backend = recipe.rollout_backend(on_cuda)
    model = models.load_model(path, recipe.model, recipe.quantization)
    peft_config = models.lora_config(recipe.lora)
    masters: dict[str, Any] = {}
    if init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        peft_config = None
        masters = models.fp32_masters(model)  # the adapter as loaded (as the warm-up eval scored it), before TRL's cast
    rollout_func = None
    if backend == "engine":
        planned = planned_merge(recipe, "grpo_rollout") if on_cuda else None
        rollout_func = make_rollout_func(settings_from_recipe(recipe, planned))
    ui.log(
        f"grpo: {recipe.model.name} ({recipe.quantization.mode}), rollouts by {backend}, "
        f"{recipe.grpo.prompts_per_step} prompts x {recipe.grpo.num_generations} completions per step"
        + (f", starting from {init_adapter}" if init_adapter else "")
        + (", CONTROL ARM: each step's rewards shuffled" if recipe.grpo.reward_control == "shuffle" else "")
    )
    reward_funcs = trl_reward_funcs([name for name, _ in reward_plan(recipe)], recipe.data.make_task())
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=trainer_args(recipe, out, on_cuda, backend),
        train_dataset=Dataset.from_list(build_dataset(recipe, tokenizer)),
        processing_class=tokenizer,
        peft_config=peft_config,
        rollout_func=rollout_func,
        is_cap=recipe.grpo.rollout_is_cap,
        dynamic_sampling_rounds=recipe.grpo.dynamic_sampling_rounds if recipe.grpo.dynamic_sampling else 0,
        reward_control=recipe.grpo.reward_control,
    )
    models.keep_fp32_adapters(trainer.model, masters)  # TRL stores adapters in bf16 on a quantized base
    quiet_library_output(trainer)
    trainer.add_callback(
        RunMonitor(
            "grpo",
            out,
            tracker,
            recipe.grpo.max_steps,
            reward_funcs,
            recipe.tracking.sample_every,
            diagnostics=Diagnostics(recipe),
            correct_reward=recipe.eval.reward,
        )
    )
    trainer.add_callback(
        PeriodicEval(recipe, tokenizer, Run(run_dir).metrics_file("grpo"), recipe.grpo.eval_every, tracker)
    )
    for callback in callbacks or []:
        trainer.add_callback(callback)
    return trainer


def checkpoint_pusher(recipe: Recipe) -> Any:
    """`tracking.push_to_hub`'s uploader of checkpoints (main process only), after checking the login; else None."""
    repo = recipe.tracking.push_to_hub
    if not repo or not distributed.is_main():
        return None
    user = hub_ready(repo, "tracking.push_to_hub")
    ui.log(f"grpo: each checkpoint goes to a branch of {repo} on the Hugging Face Hub (logged in as {user})")
    return PushCheckpoints(repo, "grpo", private=recipe.tracking.hub_private)


def run(
    recipe: Recipe,
    run_dir: Path,
    init_adapter: Path | None = None,
    restart: bool = False,
    callbacks: list | None = None,
    tracker: Any = None,
) -> Path:
    """Train with GRPO; returns `run_dir/grpo/adapter`.

    Continues from the last good checkpoint written for the same settings (more `max_steps` extend a
    finished run); `restart` clears the checkpoints and starts at step 0.
    """
    out = Run(run_dir).stage_dir("grpo")
    pusher = checkpoint_pusher(recipe)  # before any work: a push that cannot work fails first
    key = resume.resume_key(recipe, "grpo", init_adapter)
    checkpoint = resume.continue_from(out, "grpo", key, restart, recipe.grpo.max_steps)
    trainer = build_trainer(recipe, run_dir, init_adapter, [*(callbacks or []), *([pusher] if pusher else [])], tracker)
    g = recipe.grpo
    try:
        resume.train(trainer, "grpo", checkpoint, g.max_nonfinite, g.max_steps, g.max_minutes)
    except KeyboardInterrupt:  # a second signal: stop at once, uploads not yet started are dropped
        if pusher:
            pusher.close()
        raise
    except BaseException:  # stopped by a signal, out of memory, NaN: what is queued gets a short while
        if pusher:
            pusher.finish(timeout=STOP_WAIT_S)
        raise
    if distributed.is_main():  # one writer for the run directory
        with atomic_dir(Run(run_dir).adapter("grpo")) as tmp:
            trainer.model.save_pretrained(tmp)
            trainer.processing_class.save_pretrained(tmp)
    if pusher:  # also when a rerun found the stage trained and only wrote its adapter
        done = resume.checkpoint_step(checkpoint) if checkpoint else 0  # a rerun that only loaded it
        pusher.push_main(Run(run_dir).adapter("grpo"), max(trainer.state.global_step, done))
        pusher.finish()
    distributed.wait_for_everyone()
    return Run(run_dir).adapter("grpo")
