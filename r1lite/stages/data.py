"""Data prep: write `train.jsonl`, `test.jsonl` and `manifest.json` for a task, or reuse them.

    >>> run(DataConfig(train_size=100, test_size=20))   # -> Path('data/countdown')

Generated problems come from the seeded generator; imported ones (local parquet/JSONL/CSV with
`nums`/`target` columns, or `hf:DATASET`) are checked with the solver, de-duplicated, shuffled
with the seed and split. Train and test never share a (sorted numbers, target) pair. Rerunning
with the same parameters and intact files is a no-op; all files are written atomically.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.config import DataConfig
from r1lite.errors import DataError
from r1lite.fileio import read_json, read_jsonl, sha256_file, write_json, write_jsonl
from r1lite.tasks import countdown

SPLITS = ("train", "test")


def params(cfg: DataConfig) -> dict[str, Any]:
    """What determines the data; the output folder and prompt format do not."""
    return cfg.model_dump(exclude={"dir", "prompt_format"})


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
        raise DataError(f"{path} is missing; run `r1lite data countdown` first")
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
    """Load a hub dataset's train split (needs network, or a warm HF cache)."""
    try:
        import datasets

        return list(datasets.load_dataset(name, split="train"))
    except Exception as e:  # network, auth, missing dataset: all one message to the user
        raise DataError(
            f"could not load hf:{name} from the Hugging Face hub ({type(e).__name__}); "
            "download it and pass the local file to --from instead"
        ) from None


def _normalise(row: dict[str, Any], index: int) -> tuple[list[int], int]:
    try:
        nums = row["nums"]
        if isinstance(nums, str):
            nums = json.loads(nums)
        return [int(n) for n in nums], int(row["target"])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"row {index}: needs 'nums' (a list of integers) and 'target' (an integer); got columns {sorted(row)}"
        ) from None


def _import(cfg: DataConfig) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    rows = _read_rows(cfg.source)
    random.Random(cfg.seed).shuffle(rows)
    seen, kept, stats = set(), [], {"read": len(rows), "duplicates": 0, "unsolvable": 0}
    for i, row in enumerate(ui.track(rows, len(rows), "checking problems")):
        nums, target = _normalise(row, i)
        key = countdown.example_key(nums, target)
        if key in seen:
            stats["duplicates"] += 1
            continue
        seen.add(key)
        solution = countdown.solve(nums, target)
        if solution is None:
            stats["unsolvable"] += 1
            continue
        kept.append({"nums": nums, "target": target, "solution": solution})
    if len(kept) <= cfg.test_size:
        raise DataError(
            f"{cfg.source}: only {len(kept)} distinct solvable problems, not enough for a "
            f"test split of {cfg.test_size}; lower data.test_size"
        )
    test = kept[: cfg.test_size]
    return {"test": test, "train": kept[cfg.test_size : cfg.test_size + cfg.train_size]}, stats


def _generate(cfg: DataConfig) -> dict[str, list[dict[str, Any]]]:
    kw = dict(
        num_counts=cfg.num_counts, num_range=(cfg.num_min, cfg.num_max), target_range=(cfg.target_min, cfg.target_max)
    )
    total, chunk = cfg.test_size + cfg.train_size, 256
    rows: list[dict[str, Any]] = []
    seen: set = set()
    # chunks keep the progress bar moving; each chunk has its own seed, so output is deterministic
    for i in ui.track(range(0, total, chunk), -(-total // chunk), "generating problems"):
        part = countdown.generate(min(chunk, total - i), seed=cfg.seed * 1_000_003 + i, exclude=seen, **kw)
        seen.update(countdown.example_key(r["nums"], r["target"]) for r in part)
        rows.extend(part)
    return {"test": rows[: cfg.test_size], "train": rows[cfg.test_size :]}


def run(cfg: DataConfig, force: bool = False) -> Path:
    """Write (or reuse) the dataset described by `cfg`; returns its folder."""
    root = Path(cfg.dir)
    if not force and is_current(cfg):
        ui.log(f"data: {root} is up to date (same parameters, hashes match); reusing it")
        return root
    if cfg.source == "generate":
        splits, stats = _generate(cfg), {}
    else:
        splits, stats = _import(cfg)
    files = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        write_jsonl(path, splits[split])
        files[path.name] = {"rows": len(splits[split]), "sha256": sha256_file(path)}
    write_json(root / "manifest.json", {"task": cfg.task, "params": params(cfg), "files": files, "import": stats})
    ui.log(
        f"data: wrote {files['train.jsonl']['rows']} train and {files['test.jsonl']['rows']} test problems to {root}"
    )
    return root
