"""Data prep: write `train.jsonl`, `validation.jsonl`, `test.jsonl` and `manifest.json` for a task, or reuse them.

    >>> run(DataConfig(train_size=100, test_size=20))                       # -> Path('data/countdown')
    >>> run(DataConfig(task="rg:knights_knaves", train_size=100, test_size=20))

Generated problems come from the task's seeded generator; imported ones (local parquet/JSONL/CSV
with the task's columns, or `hf:DATASET`) go through the task's `from_row` (Countdown checks each
with its solver), are de-duplicated, shuffled with the seed and split. No two splits share a problem (the
task's `key`). Choices (periodic evals, sweeps that pick a setting) look at `validation`; claims (a run's
before/after) at `test`, which nothing is tuned on. Rerunning with the same parameters and intact files is a no-op; all
files are written atomically.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.errors import DataError
from r1lite.fileio import read_json, read_jsonl, sha256_file, write_json, write_jsonl
from r1lite.recipe.config import DataConfig
from r1lite.tasks import split_rows

SPLITS = ("train", "validation", "test")


def params(cfg: DataConfig) -> dict[str, Any]:
    """What determines the data; the output folder and prompt format do not.

    The task's settings sit beside the general fields, as Countdown's always have (same manifests).
    """
    general = {k: v for k, v in cfg.model_dump(exclude={"dir", "prompt_format"}).items() if k in type(cfg).model_fields}
    return {**general, **cfg.settings}


def is_current(cfg: DataConfig) -> bool:
    """True when the manifest matches these parameters and every file still has its recorded hash."""
    root = Path(cfg.dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        m = read_json(manifest)
        return m.get("params") == params(cfg) and all(
            (root / f"{s}.jsonl").is_file() and sha256_file(root / f"{s}.jsonl") == m["files"][f"{s}.jsonl"]["sha256"]
            for s in SPLITS
        )
    except (ValueError, KeyError, OSError):
        return False


def load_split(cfg: DataConfig, split: str) -> list[dict[str, Any]]:
    path = Path(cfg.dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} is missing; run `r1lite data {cfg.task}` first")
    return read_jsonl(path)


def _read_rows(source: str) -> list[dict[str, Any]]:
    if source.startswith("hf:"):
        return _read_hub(source[3:])
    path = Path(source)
    if not path.is_file():
        raise DataError(f"--from {source}: no such file; give a .parquet, .jsonl or .csv, or hf:DATASET")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".json"):
        try:
            return read_jsonl(path)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno} is not JSON") from None
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise DataError(f"--from {source}: unsupported file type '{suffix}'; use .parquet, .jsonl or .csv")


def _read_hub(name: str) -> list[dict[str, Any]]:
    """Load a hub dataset's train split (needs network, or a warm HF cache), or a local folder written by
    `datasets`' save_to_disk."""
    try:
        import datasets

        saved = Path(name)
        if (saved / "dataset_dict.json").is_file() or (saved / "state.json").is_file():  # datasets' save_to_disk
            loaded = datasets.load_from_disk(str(saved))
            return list(loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded)
        return list(datasets.load_dataset(name, split="train"))
    except Exception as e:  # network, auth, missing dataset: all one message to the user
        raise DataError(
            f"could not load hf:{name} from the Hugging Face hub ({type(e).__name__}); "
            "download it and pass the local file to --from instead"
        ) from None


def _import(cfg: DataConfig, task: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    rows = _read_rows(cfg.source)
    random.Random(cfg.seed).shuffle(rows)
    seen, kept, stats = set(), [], {"read": len(rows), "duplicates": 0, task.rejected_as: 0}
    for i, row in enumerate(ui.track(rows, len(rows), "checking problems")):
        try:
            example = task.from_row(row)
        except ValueError as e:
            raise DataError(f"row {i}: {e}") from None
        if example is None:
            stats[task.rejected_as] += 1
            continue
        key = task.key(example)
        if key in seen:
            stats["duplicates"] += 1
            continue
        seen.add(key)
        kept.append(example)
    if len(kept) <= cfg.test_size + cfg.validation_size:
        raise DataError(
            f"{cfg.source}: only {len(kept)} distinct usable problems, not enough for a test split of "
            f"{cfg.test_size} and a validation split of {cfg.validation_size}; lower data.test_size or "
            "data.validation_size (r1lite data: --test-size, --validation-size 0)"
        )
    splits = split_rows(kept, cfg.test_size, cfg.validation_size)
    splits["train"] = splits["train"][: cfg.train_size]
    return splits, stats


def _generate(cfg: DataConfig, task: Any) -> dict[str, list[dict[str, Any]]]:
    return task.splits(
        cfg.train_size,
        cfg.test_size,
        cfg.seed,
        progress=lambda items, n: ui.track(items, n, "generating problems"),
        validation_size=cfg.validation_size,
    )


def run(cfg: DataConfig, force: bool = False) -> Path:
    """Write (or reuse) the dataset described by `cfg`; returns its folder."""
    root = Path(cfg.dir)
    if not force and is_current(cfg):
        ui.log(f"data: {root} is up to date (same parameters, hashes match); reusing it")
        return root
    task = cfg.make_task()
    if cfg.source == "generate":
        splits, stats = _generate(cfg, task), {}
    else:
        splits, stats = _import(cfg, task)
    files = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        write_jsonl(path, splits[split])
        files[path.name] = {"rows": len(splits[split]), "sha256": sha256_file(path)}
    write_json(root / "manifest.json", {"task": cfg.task, "params": params(cfg), "files": files, "import": stats})
    rows = {split: files[f"{split}.jsonl"]["rows"] for split in SPLITS}
    ui.log(
        f"data: wrote {rows['train']} train, {rows['validation']} validation and {rows['test']} test problems to {root}"
    )
    return root
