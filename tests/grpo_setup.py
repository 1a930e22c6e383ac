"""One GRPO trainer set-up for the tests that drive r1lite's GRPOTrainer directly (rollout, dynamic sampling, the
control arm): TRL's config with CPU settings, a dataset of rows, r1lite's trainer with the given extras."""

from __future__ import annotations

from typing import Any


def grpo_trainer(
    model: Any,
    tok: Any,
    tmp_path: Any,
    reward_funcs: Any,
    rows: list[dict[str, Any]],
    batch: int,
    generations: int,
    config: dict[str, Any] | None = None,
    **extras: Any,
) -> Any:
    """A ready GRPOTrainer in training mode; `config` overrides GRPOConfig fields, `extras` go to the trainer
    (peft_config, rollout_func, is_cap, dynamic_sampling_rounds, reward_control)."""
    from datasets import Dataset
    from trl import GRPOConfig

    from r1lite.train.grpo_trainer import GRPOTrainer

    settings = dict(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=batch,
        num_generations=generations,
        max_completion_length=8,
        temperature=1.0,
        report_to=[],
        use_cpu=True,
        beta=0.0,
        loss_type="dr_grpo",
        logging_steps=1,
        seed=3,
    )
    args = GRPOConfig(**{**settings, **(config or {})})
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        **extras,
    )
    trainer.model.train()
    return trainer


def tiny_policy(path: str) -> tuple[Any, Any]:
    """A tiny model (fp32) and its tokenizer, for a trainer that adds its own LoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
