"""`r1lite export`: a trained run as a PEFT adapter or a merged model with its model card, and checked.

    >>> run = open_run(Path("runs/countdown-cpu"))                 # its resolved recipe and final adapter
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

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1lite import __version__
from r1lite.errors import R1liteError
from r1lite.fileio import atomic_dir, ordinary_permissions, read_json, read_json_or_empty, write_json, write_text
from r1lite.recipe.config import Recipe
from r1lite.runs.rundir import Run
from r1lite.runs.summary import change_lines
from r1lite.share.card import model_card
from r1lite.share.trained import TrainedRun
from r1lite.stages import data, evaluate
from r1lite.train import models
from r1lite.train.models import load_tokenizer, resolve_model

EXPORT_INFO = "r1lite_export.json"  # what an export holds and where it came from; marks a folder export may replace
DTYPES = ("bfloat16", "float16", "float32")
MERGE_INTO = ("trained", "original")


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
