"""An eval of r1lite's Countdown adapters that shares no code with r1lite.

Why it exists: a claim that GRPO helped rests on r1lite's own eval (r1lite/stages/evaluate.py), which scores
r1lite's own held-out split with r1lite's own reward. A bug in the generator, the split, the parser or the
reward would then flatter the trained model and the evidence for it alike. This script checks the claim
from outside: it imports nothing from r1lite (only torch, transformers, peft, numpy and the standard
library) and deliberately does not share

  * the problems: its own generator (3 numbers drawn without replacement from 1..99, an integer target
    in 1..100 drawn among those the three numbers reach) with its own seed, minus every problem of the
    run's train and test split (same sorted numbers and target);
  * the solver: its own brute-force search over all expressions with exact Fractions;
  * the scorer: the last <answer>...</answer>, only digits, + - * / ( ) and spaces, parsed with `ast`,
    each given number used at most once and no other number, evaluated exactly with Fractions;
  * the sampling loop: plain `model.generate` (fp32, CPU, left padding), torch seeded per batch so every
    adapter sees the same random numbers, and its own bootstrap intervals.

What it does copy, on purpose, is the prompt the model was trained on: the template text below is r1lite's
(r1lite/tasks/countdown.py and r1lite/tasks/__init__.py), wrapped by the model's own chat template the
way r1lite wraps it. `--check-prompt RUN` compares the two renderings once (that check alone runs r1lite,
in a subprocess).

    python bench/independent_eval.py --run-dir runs/countdown-cpu \\
        --adapter warmup=runs/countdown-cpu/sft/adapter --adapter real=runs/countdown-cpu/grpo/adapter \\
        --pair real-warmup --n 256 --k 4 --out bench/independent_eval.json
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import random
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from fractions import Fraction
from itertools import permutations
from pathlib import Path

import numpy as np

# -- prompts: copied from r1lite (tasks/countdown.py _COMPACT/_INSTRUCTION, tasks/__init__.py the rest) -----------
COMPACT = "Make {target} from {nums} with + - * /, each number once. Answer in <answer></answer>."
INSTRUCTION = (
    "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
ASSISTANT_PREFIX = "Let me solve this step by step.\n<think>"
SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind and then "
    "provides the user with the answer."
)
BASE_PREAMBLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer.\nUser: "
)


def render(nums: list[int], target: int, fmt: str, tokenizer=None) -> str:
    """The prompt as the trained model saw it, for r1lite's `data.prompt_format` `fmt`."""
    chat = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    wrap = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
    if fmt == "compact":
        question = COMPACT.format(nums=list(nums), target=target)
        return wrap([{"role": "user", "content": question}]) + "<think>" if chat else f"{question}\n<think>"
    instruction = INSTRUCTION.format(nums=list(nums), target=target)
    if fmt == "base":
        return BASE_PREAMBLE + instruction + "\nAssistant: " + ASSISTANT_PREFIX
    if fmt == "qwen-instruct":
        return (
            f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n {instruction}"
            "<|im_end|>\n<|im_start|>assistant\n" + ASSISTANT_PREFIX
        )
    if fmt == "chat" and chat:
        return (
            wrap([{"role": "system", "content": SYSTEM}, {"role": "user", "content": instruction}]) + ASSISTANT_PREFIX
        )
    raise ValueError(f"prompt format {fmt!r} is not supported here (or needs a chat template)")


# -- problems ---------------------------------------------------------------------------------------------------
def reachable(nums: list[int]) -> dict[Fraction, str]:
    """Every value of an expression that uses each number exactly once, with one such expression."""
    items = [(Fraction(n), str(n)) for n in nums]
    found = _search(items)
    if len(nums) > 1:  # each compound was wrapped in parentheses; drop the outermost pair
        found = {v: e[1:-1] for v, e in found.items()}
    return found


def _search(items: list[tuple[Fraction, str]]) -> dict[Fraction, str]:
    if len(items) == 1:
        return {items[0][0]: items[0][1]}
    out: dict[Fraction, str] = {}
    for i, j in permutations(range(len(items)), 2):  # ordered pairs: a - b and b - a, a / b and b / a
        (a, ea), (b, eb) = items[i], items[j]
        rest = [x for m, x in enumerate(items) if m not in (i, j)]
        moves = [(a + b, "+"), (a - b, "-"), (a * b, "*")] + ([(a / b, "/")] if b else [])
        for value, op in moves:
            for v, e in _search([*rest, (value, f"({ea} {op} {eb})")]).items():
                out.setdefault(v, e)
    return out


def problem_key(nums, target) -> tuple[tuple[int, ...], int]:
    return tuple(sorted(int(n) for n in nums)), int(target)


def generate(n: int, seed: int, exclude: set = frozenset()) -> list[dict]:
    """`n` distinct problems: 3 distinct numbers from 1..99, a target in 1..100 they reach (all three used)."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        nums = rng.sample(range(1, 100), 3)
        reach = reachable(nums)
        targets = sorted(int(v) for v in reach if v.denominator == 1 and 1 <= v <= 100)
        if not targets:
            continue
        target = rng.choice(targets)
        key = problem_key(nums, target)
        if key in seen:
            continue
        seen.add(key)
        out.append({"nums": nums, "target": target, "witness": reach[Fraction(target)]})
    return out


# -- scorer -----------------------------------------------------------------------------------------------------
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
ALLOWED = re.compile(r"[0-9+\-*/() ]+")
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _value(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, used)
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_value(node.left, used), _value(node.right, used))
    raise ValueError(f"{type(node).__name__} is not allowed")


def score(completion: str, nums: list[int], target: int) -> tuple[bool, str]:
    """(correct, reason) for the last <answer>...</answer> of a completion."""
    found = ANSWER.findall(completion)
    if not found:
        return False, "no <answer>...</answer>"
    text = found[-1].strip()
    if not text or len(text) > 200 or not ALLOWED.fullmatch(text):
        return False, "empty, too long, or characters other than digits, + - * / ( ) and spaces"
    used: list[int] = []
    try:
        with warnings.catch_warnings():  # "5 (3)" parses as a call, with a SyntaxWarning; _value refuses it
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
        value = _value(tree.body, used)
    except SyntaxError:
        return False, "not an expression"
    except ZeroDivisionError:
        return False, "division by zero"
    except ValueError as e:
        return False, str(e)
    left = Counter(int(n) for n in nums)
    left.subtract(used)
    if any(c < 0 for c in left.values()):
        return False, f"uses {sorted(used)}; given {sorted(nums)}, each at most once"
    if value != target:
        return False, f"equals {value}, not {target}"
    return True, "correct" if not +left else "correct (not every number used)"


# -- run files --------------------------------------------------------------------------------------------------
def read_config(path: Path) -> dict[str, str]:
    """`section.key: value` of a two-level YAML file (all this script needs from config.yaml; no yaml import)."""
    out, section = {}, ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent, (key, _, value) = len(line) - len(line.lstrip()), line.strip().partition(":")
        if indent == 0:
            section = key
        elif indent == 2:
            out[f"{section}.{key}"] = value.strip().strip("'\"")
    return out


def model_folder(name: str) -> str:
    """r1lite's converted copy of its offline default lives in ~/.cache/r1lite/models/<Name>.<quant>-<hash>/."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    cache = Path(os.environ.get("R1LITE_CACHE") or Path.home() / ".cache" / "r1lite") / "models"
    hits = sorted(
        p for p in cache.glob("*") if p.name.lower().startswith(name.lower()) and (p / "config.json").is_file()
    )
    return str(hits[-1]) if hits else name  # else a hub id, from the local HF cache


def split_keys(data_dir: Path) -> set:
    keys = set()
    for split in ("test", "train"):
        path = data_dir / f"{split}.jsonl"
        if path.is_file():
            keys |= {problem_key(r["nums"], r["target"]) for r in map(json.loads, path.read_text().splitlines())}
        else:
            print(f"warning: {path} not found; its problems are not excluded", file=sys.stderr)
    return keys


# -- generation -------------------------------------------------------------------------------------------------
def completions(model, tok, prompts, k, args) -> tuple[list[str], list[list[str]]]:
    """Greedy completion and k samples per prompt, batched with left padding, torch seeded per batch."""
    import torch

    stops = {tok.eos_token_id, tok.pad_token_id}

    def decode(row: list[int]) -> str:
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        return tok.decode(row[:end], skip_special_tokens=True)

    greedy, samples = [], []
    for start in range(0, len(prompts), args.batch_size):
        enc = tok(prompts[start : start + args.batch_size], return_tensors="pt", padding=True)
        common = dict(max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, **common)
            greedy += [decode(r) for r in out[:, enc["input_ids"].shape[1] :].tolist()]
            torch.manual_seed(args.seed * 1_000_003 + start)  # same per batch for every adapter: paired samples
            sampling = dict(do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0, num_return_sequences=k)
            out = model.generate(**enc, **sampling, **common)
        rows = [decode(r) for r in out[:, enc["input_ids"].shape[1] :].tolist()]
        samples += [rows[i : i + k] for i in range(0, len(rows), k)]
        print(f"  {min(start + args.batch_size, len(prompts))}/{len(prompts)} problems", file=sys.stderr)
    return greedy, samples


def load(model_path: str, adapter: str | None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to("cpu")
    if adapter:
        from peft import PeftModel

        trained_on = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if trained_on and Path(trained_on).resolve() != Path(model_path).resolve():
            print(f"warning: {adapter} was trained on {trained_on}, applied to {model_path}", file=sys.stderr)

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    return tok


# -- statistics -------------------------------------------------------------------------------------------------
def bootstrap(x: np.ndarray, resamples: int = 10_000) -> list[float]:
    """95 % percentile interval of the mean over problems (a paired one when x holds per-problem differences)."""
    idx = np.random.default_rng(0).integers(0, len(x), size=(resamples, len(x)))
    return [float(v) for v in np.percentile(x[idx].mean(axis=1), [2.5, 97.5])]


# -- modes ------------------------------------------------------------------------------------------------------
R1LITE_RENDER = (  # run only by --check-prompt, in a subprocess: r1lite's own rendering of the same example
    "import json, sys; from r1lite.tasks.registry import load_task; from r1lite.train.models import load_tokenizer; "
    "print(load_task('countdown').render_prompt(json.loads(sys.argv[1]), sys.argv[3], load_tokenizer(sys.argv[2])),"
    " end='')"
)


def check_prompt(run_dir: Path, data_dir: Path | None) -> int:
    cfg = read_config(run_dir / "config.yaml")
    fmt, path = cfg.get("data.prompt_format", "base"), model_folder(cfg["model.name"])
    first = json.loads((data_dir or Path(cfg["data.dir"])).joinpath("test.jsonl").read_text().splitlines()[0])
    tok = load_tokenizer(path)
    mine = render(first["nums"], first["target"], fmt, tok)
    print(f"first test problem {first['nums']} -> {first['target']}, format {fmt}, model {path}\n")
    print(f"--- this script ---\n{mine}\n")
    stored = run_dir / "eval" / "base.jsonl"
    row = json.loads(stored.read_text().splitlines()[0]) if stored.is_file() else {}
    if "prompt" in row:
        print(f"--- {stored} ---\n{row['prompt']}\nidentical: {row['prompt'] == mine}\n")
    else:
        print(f"{stored} does not store prompts (keys: {sorted(row)}); asking r1lite itself instead\n")
    example = json.dumps({"nums": first["nums"], "target": first["target"]})
    theirs = subprocess.run(
        [sys.executable, "-c", R1LITE_RENDER, example, path, fmt], capture_output=True, text=True, check=True
    ).stdout
    same = theirs == mine and tok(theirs)["input_ids"] == tok(mine)["input_ids"]
    print(f"--- r1lite render_prompt (subprocess) ---\n{theirs}\n\nidentical text and token ids: {same}")
    return 0 if same else 1


def evaluate(args) -> dict:
    run_dir = Path(args.run_dir)
    cfg = read_config(run_dir / "config.yaml")
    fmt, model_path = cfg.get("data.prompt_format", "base"), args.model or model_folder(cfg["model.name"])
    data_dir = Path(args.data_dir or cfg.get("data.dir") or "data/countdown")
    excluded = split_keys(data_dir)
    problems = generate(args.n, args.seed, excluded)
    tok = load_tokenizer(model_path)
    prompts = [render(p["nums"], p["target"], fmt, tok) for p in problems]
    print(f"{len(problems)} problems (seed {args.seed}, {len(excluded)} r1lite problems excluded), format {fmt}")
    print(f"first prompt: {prompts[0]!r}")
    adapters = dict(a.split("=", 1) for a in args.adapter)
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    report = {"args": vars(args), "versions": versions, "model": model_path, "prompt_format": fmt}
    report["excluded_r1lite_problems"] = len(excluded)
    report |= {"problems": problems, "adapters": {}, "pairs": {}}
    per: dict[str, dict[str, np.ndarray]] = {}
    for name, path in adapters.items():
        start = time.monotonic()
        print(f"{name}: {path}", file=sys.stderr)
        model = load(model_path, None if path == "none" else path)
        greedy, samples = completions(model, tok, prompts, args.k, args)
        g = [score(c, p["nums"], p["target"]) for c, p in zip(greedy, problems, strict=True)]
        s = [[score(c, p["nums"], p["target"])[0] for c in group] for group, p in zip(samples, problems, strict=True)]
        both = zip(greedy, g, samples, s, strict=True)
        per[name] = {"greedy": np.array([ok for ok, _ in g], float), "avg": np.array([np.mean(x) for x in s])}
        report["adapters"][name] = {
            "path": path,
            "greedy_accuracy": float(per[name]["greedy"].mean()),
            "greedy_ci95": bootstrap(per[name]["greedy"]),
            f"avg@{args.k}": float(per[name]["avg"].mean()),
            f"avg@{args.k}_ci95": bootstrap(per[name]["avg"]),
            "greedy_correct_not_all_numbers": sum(why == "correct (not every number used)" for _, why in g),
            "per_problem": [  # in the order of "problems"
                {"greedy": c, "correct": ok, "reason": why, "samples": group, "samples_correct": oks}
                for c, (ok, why), group, oks in both
            ],
            "seconds": round(time.monotonic() - start, 1),
        }
    for pair in args.pair:
        a, b = split_pair(pair, list(per))
        d_g, d_s = per[a]["greedy"] - per[b]["greedy"], per[a]["avg"] - per[b]["avg"]
        report["pairs"][pair] = {
            "greedy_diff": float(d_g.mean()),
            "greedy_diff_ci95": bootstrap(d_g),
            f"avg@{args.k}_diff": float(d_s.mean()),
            f"avg@{args.k}_diff_ci95": bootstrap(d_s),
        }
    return report


def split_pair(pair: str, names: list[str]) -> tuple[str, str] | None:
    """'real-control' as ('real', 'control'); names may contain '-' themselves."""
    cuts = [(pair[:i], pair[i + 1 :]) for i, c in enumerate(pair) if c == "-"]
    return next(((a, b) for a, b in cuts if a in names and b in names), None)


def table(report: dict, k: int) -> str:
    def ci(v: float, lo_hi: list[float], sign: str = "") -> str:
        return f"{v:{sign}.3f} [{lo_hi[0]:{sign}.3f}, {lo_hi[1]:{sign}.3f}]"

    lines = [f"{'adapter':<12} {'greedy accuracy [95% CI]':<28} avg@{k} [95% CI]"]
    for name, r in report["adapters"].items():
        g, s = ci(r["greedy_accuracy"], r["greedy_ci95"]), ci(r[f"avg@{k}"], r[f"avg@{k}_ci95"])
        lines.append(f"{name:<12} {g:<28} {s}")
    if report["pairs"]:
        lines.append(f"\n{'paired diff':<20} {'greedy [95% CI]':<28} avg@{k} [95% CI]")
        for pair, r in report["pairs"].items():
            g, s = (
                ci(r["greedy_diff"], r["greedy_diff_ci95"], "+"),
                ci(r[f"avg@{k}_diff"], r[f"avg@{k}_diff_ci95"], "+"),
            )
            lines.append(f"{pair:<20} {g:<28} {s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", help="runs/<run>: its config.yaml gives the model, prompt format and data dir")
    p.add_argument("--adapter", action="append", default=[], help="NAME=PATH to a PEFT folder (PATH 'none': base)")
    p.add_argument("--pair", action="append", default=[], help="A-B: paired difference of adapters A and B")
    p.add_argument("--n", type=int, default=256, help="problems")
    p.add_argument("--k", type=int, default=4, help="samples per problem at --temperature")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16, help="problems per generate call")
    p.add_argument("--model", help="base model folder (default: found from config.yaml model.name)")
    p.add_argument("--data-dir", help="r1lite data dir to exclude (default: config.yaml data.dir)")
    p.add_argument("--out", default="bench/independent_eval.json")
    p.add_argument("--check-prompt", metavar="RUN", help="compare this script's prompt with r1lite's, then exit")
    args = p.parse_args(argv)
    if args.check_prompt:
        return check_prompt(Path(args.check_prompt), Path(args.data_dir) if args.data_dir else None)
    if not args.run_dir or not args.adapter:
        p.error("--run-dir and at least one --adapter are needed")
    names = [a.split("=", 1)[0] for a in args.adapter]
    for pair in args.pair:
        if split_pair(pair, names) is None:
            p.error(f"--pair {pair}: not two adapter names ({', '.join(names)}) joined by '-'")
    report = evaluate(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\n{table(report, args.k)}\n\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
