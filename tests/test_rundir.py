"""The run directory (r1lite.runs.rundir.Run): which adapter is the run's, when a stage counts as done, how two
evals are paired. Plain files, no model."""

from __future__ import annotations

import json

import pytest

from r1lite.errors import R1liteError
from r1lite.recipe.load import load_recipe
from r1lite.runs.rundir import Run, fingerprints


def _run(tmp_path, *sets: str) -> tuple[Run, object]:
    recipe = load_recipe("countdown", "cpu", [f"output_dir={tmp_path}", *sets])
    run = Run.of(recipe)
    run.root.mkdir(parents=True)
    run.write_config(recipe)
    return run, recipe


def _adapter(run: Run, stage: str) -> None:
    run.adapter(stage).mkdir(parents=True)
    (run.adapter(stage) / "adapter_config.json").write_text("{}")


def test_the_runs_adapter_is_its_last_trained_stages_preferring_those_its_recipe_runs(tmp_path):
    run, recipe = _run(tmp_path)
    assert run.trained_adapter(recipe) is None
    _adapter(run, "sft")
    assert run.trained_adapter(recipe) == run.adapter("sft")
    _adapter(run, "grpo")
    assert run.trained_adapter(recipe) == run.adapter("grpo")
    sft_only = recipe.model_copy(update={"grpo": recipe.grpo.model_copy(update={"enabled": False})})
    assert run.trained_adapter(sft_only) == run.adapter("sft")  # a stale GRPO adapter is not an SFT run's model
    rl_only = recipe.model_copy(update={"sft": recipe.sft.model_copy(update={"enabled": False})})
    (run.adapter("grpo") / "adapter_config.json").unlink()
    assert run.trained_adapter(rl_only) == run.adapter("sft")  # `r1lite sft` run on its own under such a profile


def test_a_stage_is_done_with_its_fingerprint_and_its_output(tmp_path):
    run, recipe = _run(tmp_path)
    fp = fingerprints(recipe)["eval_base"]
    run.record({"eval_base": {"fingerprint": fp, "seconds": 1.0}})
    assert not run.done("eval_base", fp)  # recorded, but its output is gone
    run.eval_file("base").parent.mkdir()
    run.eval_file("base").write_text("{}")
    assert run.done("eval_base", fp) and not run.done("eval_base", "other")


def _evals(run: Run, base: list[dict], final: list[dict]) -> None:
    run.eval_file("base").parent.mkdir(exist_ok=True)
    for label, rows in (("base", base), ("final", final)):
        run.eval_file(label, rows=True).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_evals_pair_only_on_the_same_problems_in_the_same_order(tmp_path):
    run, _ = _run(tmp_path)
    row = {"nums": [3, 5, 7], "target": 22, "correct": False}
    _evals(run, [row, {**row, "target": 23}], [{**row, "correct": True}, {**row, "target": 23}])
    assert [(b["correct"], a["correct"]) for b, a in run.paired_rows()] == [(False, True), (False, False)]
    assert run.changes([("final", "base")])["final_vs_base"]["estimate"] == 0.5
    _evals(run, [row], [{**row, "nums": [7, 5, 3]}])  # the same numbers in another order: another prompt
    with pytest.raises(R1liteError, match="name different problems at row 1"):
        run.paired_rows()
