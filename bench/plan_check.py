"""The planner against a measured CPU run: one GRPO training step of a recipe's policy, peak tensor bytes.

    python bench/plan_check.py                                  # the demo profile: SmolLM2-135M, countdown -p cpu
    python bench/plan_check.py --set grpo.micro_batch_size=4    # any override of the recipe

Builds r1lite's own GRPO trainer for the recipe (TRL generation, EOS disabled so completions have
full length), runs one step so the optimizer state exists, then measures the next step with
`r1lite.train.memtrack.PeakTensorBytes` and prints the plan's prediction beside it as one JSON object.
On a GPU, use `torch.cuda.max_memory_allocated` instead (bench/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="countdown")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args(argv)

    from r1lite.plan.memory import GIB
    from r1lite.plan.planner import make_plan
    from r1lite.recipe.load import load_recipe
    from r1lite.stages import data
    from r1lite.stages.grpo import build_trainer
    from r1lite.train.memtrack import PeakTensorBytes
    from r1lite.train.rollout.registry import engine_tensors

    no_eos = 'grpo.trl={"generation_kwargs": {"eos_token_id": null, "suppress_tokens": null}}'
    recipe = load_recipe(args.recipe, args.profile, [*args.sets, no_eos, "tracking.wandb=disabled"])
    data.run(recipe.data)
    start = time.monotonic()
    trainer = build_trainer(recipe, Path(tempfile.mkdtemp()))
    trainer.create_optimizer()
    g = recipe.grpo
    batch = [trainer.train_dataset[i] for i in range(g.prompts_per_step) for _ in range(g.num_generations)]
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(batch)
    trainer.current_gradient_accumulation_steps = 1
    micro = {k: v[: g.micro_batch_size] if hasattr(v, "shape") and v.dim() else v for k, v in inputs.items()}

    def step() -> None:
        trainer.compute_loss(trainer.model, micro).backward()
        trainer.optimizer.step()

    step()
    held = engine_tensors(trainer.accelerator.unwrap_model(trainer.model))  # the engine's merged copy and cache
    with PeakTensorBytes(trainer.model, trainer.optimizer, *held) as measured:
        step()
    plan = make_plan(recipe, prompt_tokens=inputs["prompt_ids"].shape[1])
    predicted = plan.stages["grpo_train"]
    result = {
        "recipe": f"{args.recipe} -p {args.profile} {' '.join(args.sets)}".strip(),
        "model": recipe.model.name,
        "micro_batch": g.micro_batch_size,
        "sequence": inputs["prompt_ids"].shape[1] + inputs["completion_ids"].shape[1],
        "measured_gib": round(measured.peak / GIB, 3),
        "planned_gib": round(predicted.tensor_bytes / GIB, 3),
        "ratio": round(predicted.tensor_bytes / measured.peak, 3),
        "planned_parts_gib": {k: round(v / GIB, 3) for k, v in predicted.parts.items() if v},
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
