"""The task interface: Countdown unchanged on it, reasoning-gym tasks, your own task in one file, the CLI."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.errors import R1liteError
from r1lite.fileio import read_json, read_jsonl
from r1lite.recipe.load import load_recipe, resolve
from r1lite.tasks import Task, TaskError
from r1lite.tasks.registry import load_task, task_class
from r1lite.tasks.rg import VERIFIED

runner = CliRunner()
TASKS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "tasks.md"  # the page that documents tasks


def invoke(*args: str, **kw):
    return runner.invoke(app, ["--quiet", *args], **kw)


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _fh(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Countdown on the interface: byte-for-byte what it wrote before the interface existed
# ----------------------------------------------------------------------------------------------

# Computed with the code before the task interface (commit 3a95ce9); any change in data files,
# manifests, prompts, SFT traces, GRPO prompts or eval rows for the same recipe shows up here.
# Changed on purpose since (2026-12-07): the manifests (they record the validation split) and the compact
# prompt (an empty system turn, which keeps a template's default system prompt out); data files unchanged
# with no validation split.
PINNED = {
    "data-base": ["11a2cddf93bdaa51", "e296c54798483fdf", "f3db6386ea8cf7ed"],
    "data-cpu": ["7fdbfa0e35a5aed5", "d517d0f4eb14028a", "37690f6a87e37556"],
    "import": ["500c114d333668e7", "e53803de18e1016e", "8435f068baa826e2"],
    "sft-base": "1c01159fbc29998f",
    "grpo-base": "2428b18445736bc0",
    "sft-qwen-instruct": "2b38aecf3e4aa016",
    "grpo-qwen-instruct": "5ff8a3db3403707f",
    "sft-chat": "53bcf4ab7e9020e2",
    "grpo-chat": "576aabf1a7f83374",
    "sft-compact": "c853a79d334156de",
    "grpo-compact": "172bc674d0e72b5b",
    "eval-rows": "73b388aaf67c5f8f",
}


def test_countdown_outputs_are_unchanged(tmp_path):
    from r1lite.stages import data, grpo, sft
    from r1lite.stages.evaluate import score
    from r1lite.train.tiny import build_tokenizer

    base_sets = ["data.train_size=300", "data.test_size=50", "data.validation_size=0", "data.dir=d1"]
    cpu_sets = ["data.train_size=200", "data.test_size=40", "data.validation_size=0", "data.dir=d2"]
    got = {}
    for key, profile, sets in [("data-base", None, base_sets), ("data-cpu", "cpu", cpu_sets)]:
        root = data.run(load_recipe("countdown", profile, sets).data)
        got[key] = [_fh(root / f) for f in ("train.jsonl", "test.jsonl", "manifest.json")]
    rng = random.Random(3)
    rows = [{"nums": [rng.randint(1, 30) for _ in range(3)], "target": rng.randint(1, 60)} for _ in range(400)]
    (tmp_path / "imp.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    imported = [
        "data.source=imp.jsonl",
        "data.test_size=20",
        "data.validation_size=0",
        "data.train_size=30",
        "data.dir=d3",
    ]
    root = data.run(load_recipe("countdown", "cpu", imported).data)
    got["import"] = [_fh(root / f) for f in ("train.jsonl", "test.jsonl", "manifest.json")]
    tok = build_tokenizer()
    for profile, fmt, sets in [
        (None, "base", base_sets),
        (None, "qwen-instruct", base_sets),
        (None, "chat", base_sets),
    ]:
        r = load_recipe("countdown", profile, [*sets, f"data.prompt_format={fmt}", "sft.examples=40"])
        got[f"sft-{fmt}"] = _h(sft.build_dataset(r, tok))
        got[f"grpo-{fmt}"] = _h([x["prompt"] for x in grpo.build_dataset(r, tok)])
    r = load_recipe("countdown", "cpu", [*cpu_sets, "sft.examples=40"])
    got["sft-compact"] = _h(sft.build_dataset(r, tok))
    got["grpo-compact"] = _h([x["prompt"] for x in grpo.build_dataset(r, tok)])
    examples = data.load_split(load_recipe("countdown", None, base_sets).data, "test")[:10]
    completions = [
        (f"x</think>\n<answer>{e['solution']}</answer>" if i % 2 else "<answer>1+2</answer>", 7)
        for i, e in enumerate(examples)
    ]
    got["eval-rows"] = _h(score(examples, completions, "countdown_equation"))
    assert got == PINNED


def test_grpo_rows_carry_the_whole_example_to_the_rewards():
    from r1lite.tasks.rewards import trl_reward_funcs

    a = {"nums": [44, 19, 35], "target": 98, "solution": "44 + 19 + 35"}
    b = {"nums": [2, 3], "target": 6, "solution": "2 * 3"}
    tiny, fmt = trl_reward_funcs(["countdown_tinyzero", "think_format"])
    completions = ["x</think>\n<answer>44 + 19 + 35</answer>", "<answer>2 * 3</answer>"]
    rows = [json.dumps(a), json.dumps(b)]
    assert tiny(completions, example=rows) == [1.0, 1.0]  # each completion scored against its own example
    assert tiny(completions, example=rows[::-1]) == [0.1, 0.1]
    assert tiny.last_sample["problem"] == "[2, 3] → 6"
    assert fmt(completions, example=rows, trainer_state=None) == [1.0, 0.0]
    # any task's rows: a reasoning-gym entry reaches its verifier whole, metadata included
    (answer,) = trl_reward_funcs(["answer"], "rg:knights_knaves")
    entry = next(load_task("rg:knights_knaves").stream(0))
    right = f"</think>\n<answer>{entry['answer']}</answer>"
    assert answer([right, "<answer>nobody</answer>"], example=[json.dumps(entry)] * 2) == [1.0, 0.0]


# ----------------------------------------------------------------------------------------------
# The interface's defaults, on a task written the way a user would
# ----------------------------------------------------------------------------------------------


class Parity(Task):
    """Is a number even? A tiny space (100 problems), to hit the generator's limits."""

    name = "parity"

    def sample(self, rng: random.Random) -> dict:
        n = rng.randint(0, 99)
        return {"n": n, "answer": "even" if n % 2 == 0 else "odd"}

    def question(self, ex: dict) -> str:
        return f"Is {ex['n']} even or odd?"


@given(st.integers(0, 10**6), st.integers(1, 40), st.integers(1, 40))
@settings(max_examples=40, deadline=None)
def test_splits_are_seeded_disjoint_and_the_test_split_ignores_train_size(seed, train, test):
    task = Parity()
    a, b = task.splits(train, test, seed), task.splits(train, test, seed)
    assert a == b
    keys = [task.key(e) for e in a["train"] + a["test"]]
    assert len(keys) == len(set(keys)) == train + test
    assert task.splits(train + 7, test, seed)["test"] == a["test"]


def test_a_space_too_small_for_the_sizes_is_named():
    with pytest.raises(R1liteError, match="found only 100 distinct problems"):
        Parity().splits(200, 10, 0)


def test_default_prompts_follow_the_protocol_in_every_format():
    from r1lite.train.tiny import build_tokenizer

    task, ex = Parity(), {"n": 7, "answer": "odd"}
    tok = build_tokenizer()
    for fmt in ("base", "qwen-instruct", "chat", "compact"):
        text = task.render_prompt(ex, fmt, tok)
        assert "Is 7 even or odd?" in text and text.endswith("<think>") and "<answer>" in text, fmt
    with pytest.raises(TaskError, match="needs a tokenizer with a chat template"):
        task.render_prompt(ex, "chat")
    reward = task.rewards()["answer"]
    assert reward("...</think>\n<answer> odd </answer>", ex) == (1.0, "correct")
    assert reward("<answer>even</answer>", ex) == (0.0, "'even' is not 'odd'")
    assert reward("odd", ex) == (0.0, "no <answer>...</answer>")
    assert task.answer_only(ex) == "\n</think>\n<answer>odd</answer>"


def _task_file(tmp_path: Path, body: str, name: str = "t.py") -> str:
    (tmp_path / name).write_text("from r1lite.tasks import Task\n" + body)
    return name


def test_task_files_and_modules_resolve_with_clear_errors(tmp_path):
    assert task_class("r1lite.tasks.countdown").name == "countdown"  # a module path
    with pytest.raises(TaskError, match="does not exist"):
        task_class("nope.py")
    with pytest.raises(TaskError, match="no Task subclass"):
        task_class(_task_file(tmp_path, "X = 1\n", "a.py"))
    two = "class A(Task):\n    name = 'a'\nclass B(Task):\n    name = 'b'\n"
    with pytest.raises(TaskError, match=r"2 Task subclasses \(A, B\)"):
        task_class(_task_file(tmp_path, two, "b.py"))
    with pytest.raises(TaskError, match="needs a `name`"):
        task_class(_task_file(tmp_path, "class A(Task):\n    pass\n", "c.py"))
    with pytest.raises(TaskError, match="failed to import: ZeroDivisionError"):
        task_class(_task_file(tmp_path, "1 / 0\n", "d.py"))
    with pytest.raises(TaskError, match="did you mean 'countdown'"):
        task_class("countdwn")


def test_recipe_errors_name_the_task_and_the_fix(tmp_path):
    def err(raw: dict, *sets: str) -> str:
        with pytest.raises(R1liteError) as e:
            resolve({"name": "x", **raw}, None, list(sets), "recipe x.yaml")
        return str(e.value)

    kk = {"data": {"task": "rg:knights_knaves"}}
    assert "did you mean 'data.knights_knaves.n_people'" in err(kk, "data.knights_knaves.n_peple=3")
    assert "reasoning-gym rejects these knights_knaves settings" in err(kk, "data.knights_knaves.n_people=0")
    assert "did you mean 'rg:knights_knaves'" in err({"data": {"task": "rg:knights_knave"}})
    assert "'countdown_tinyzero' is not a reward of task rg:knights_knaves" in err(
        kk, "grpo.rewards=[{name: countdown_tinyzero}]"
    )
    assert "has no solver traces; set sft.completions=answers" in err(kk, "sft.completions=traces")
    # defaults follow the task: rewards, accuracy reward, data folder, warm-up completions
    r = resolve({"name": "x", **kk}, None, [], "x")
    assert [(w.name, w.weight) for w in r.grpo.rewards] == [("answer", 1.0), ("think_format", 0.1)]
    assert (r.eval.reward, r.data.dir, r.sft_completions()) == ("answer", "data/rg-knights_knaves", "answers")
    r = load_recipe("countdown")
    assert (r.eval.reward, r.data.dir, r.sft_completions()) == ("countdown_equation", "data/countdown", "traces")


# ----------------------------------------------------------------------------------------------
# reasoning-gym
# ----------------------------------------------------------------------------------------------


def test_the_tasks_page_lists_exactly_the_verified_reasoning_gym_tasks():
    text = TASKS_PAGE.read_text(encoding="utf-8")
    block = text.split("<!-- verified reasoning-gym tasks -->", 1)[1].split("\n\n", 1)[0]
    assert sorted(re.findall(r"`([a-z0-9_]+)`", block)) == sorted(VERIFIED)


def test_entries_generated_outside_r1lite_score_through_the_cli(tmp_path):
    """For every task docs/tasks.md lists: the entry's own answer scores 1.0, another answer less."""
    import reasoning_gym

    failures = []
    for name in VERIFIED:
        made = reasoning_gym.create_dataset(name, size=3, seed=11)  # numpy scalars in metadata become numbers
        entries = [
            json.loads(json.dumps(e, default=lambda o: o.item() if hasattr(o, "item") else str(o))) for e in made
        ]
        rows, expected = [], []
        for e in entries:
            other = next((x["answer"] for x in entries if x["answer"] != e["answer"]), "")
            for answer, right in ((e["answer"], True), (other, False)):
                completion = f"Let me think.\n</think>\n<answer>{answer}</answer>"
                rows.append({"completion": completion, **e})
                expected.append(right)
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = invoke("score", f"rg:{name}", str(path))
        if result.exit_code != 0:
            failures.append(f"{name}: {result.output.strip()}")
            continue
        for line, right in zip(result.output.splitlines(), expected, strict=True):
            reward = json.loads(line)["scores"]["answer"]["reward"]
            if (reward == 1.0) != right:
                failures.append(f"{name}: {'right' if right else 'wrong'} answer scored {reward}")
    assert not failures, failures


def test_score_rg_rows_need_the_entry_fields():
    r = invoke("score", "rg:knights_knaves", input='{"completion": "x", "question": "q", "answer": "a"}\n')
    assert r.exit_code == 2 and "needs 'completion', 'question', 'answer' and 'metadata'" in r.output


def test_reasoning_gym_data_is_seeded_disjoint_and_imports(tmp_path):
    sets = ["--train-size", "60", "--test-size", "20", "--set", "data.knights_knaves.n_people=3"]
    assert invoke("data", "rg:knights_knaves", "--out", "a", *sets).exit_code == 0
    assert invoke("data", "rg:knights_knaves", "--out", "b", *sets).exit_code == 0
    a, b = Path("a"), Path("b")
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    train, test = read_jsonl(a / "train.jsonl"), read_jsonl(a / "test.jsonl")
    assert (len(train), len(test)) == (60, 20)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert set(train[0]) == {"question", "answer", "metadata"} and "You meet 3 inhabitants" in train[0]["question"]
    manifest = read_json(a / "manifest.json")
    assert manifest["task"] == "rg:knights_knaves" and manifest["params"]["n_people"] == 3
    # the files are reasoning-gym entries: they import back as they are
    r = invoke(
        "data",
        "rg:knights_knaves",
        "--from",
        str(a / "train.jsonl"),
        "--test-size",
        "10",
        "--validation-size",
        "0",
        "--out",
        "c",
    )
    assert r.exit_code == 0, r.output
    assert read_jsonl(Path("c/test.jsonl"))[0] in train
    flat = [{**e, "metadata": json.dumps(e["metadata"])} for e in train]  # as a table would store it
    Path("flat.jsonl").write_text("".join(json.dumps(e) + "\n" for e in flat))
    r = invoke(
        "data", "rg:knights_knaves", "--from", "flat.jsonl", "--test-size", "10", "--validation-size", "0", "--out", "d"
    )
    assert r.exit_code == 0, r.output
    assert read_jsonl(Path("d/test.jsonl")) == read_jsonl(Path("c/test.jsonl"))
    Path("bad.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    r = invoke("data", "rg:knights_knaves", "--from", "bad.jsonl", "--out", "e")
    assert r.exit_code == 2 and "row 0: needs 'question', 'answer', 'metadata'" in r.output
    r = invoke("data", "rg:knights_knaves", "--recipe", "countdown")
    assert r.exit_code == 2 and "recipe countdown is for task countdown" in r.output


def test_tasks_list_and_show():
    r = invoke("tasks", "list")
    assert (
        r.exit_code == 0
        and "countdown" in r.output
        and "rg:knights_knaves" in r.output
        and "rg:zebra_puzzles" in r.output
    )
    r = invoke("tasks", "show", "rg:knights_knaves", "--format", "compact")
    assert r.exit_code == 0, r.output
    assert "Answer in <answer></answer>." in r.output and "1  correct" in r.output
    assert "settings (data.knights_knaves): {'n_people': 3" in r.output  # from recipes/knights_knaves.yaml
    r = invoke("tasks", "show", "countdown")
    assert r.exit_code == 0 and "countdown_tinyzero" in r.output and "0.1  " in r.output
    assert invoke("tasks", "show", "rg:nope").exit_code == 2


# ----------------------------------------------------------------------------------------------
# Cross-check: our Countdown reward against reasoning-gym's countdown verifier
# ----------------------------------------------------------------------------------------------

_OPS = st.sampled_from(["+", "-", "*", "/"])


@st.composite
def _expressions(draw):
    """An expression over some numbers (each once), and the numbers a problem gives: the same or not."""
    nums = draw(st.lists(st.integers(1, 30), min_size=2, max_size=4))
    parts = [str(nums[0])]
    for n in nums[1:]:
        op = draw(_OPS)
        parts = [f"({' '.join(parts)})", op, str(n)] if draw(st.booleans()) else [*parts, op, str(n)]
    expr = " ".join(parts)
    given_nums = draw(st.sampled_from([nums, [*nums, 1], nums[:-1] or nums, list(reversed(nums))]))
    return expr, given_nums


@given(_expressions(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_countdown_reward_agrees_with_reasoning_gyms_verifier(case, hit):
    """Same right/wrong on expressions of digits, + - * / and parentheses, each given number once or not.

    Where the rules differ, and why, is in docs/tasks.md: reasoning-gym parses with sympy and so accepts
    `**` and names; we accept only the Countdown operators. Its wrong answers score 0.05 or 0.01, ours 0.1.
    It compares with `np.isclose` (relative tolerance 1e-5), we within 1e-5 absolute, so near misses
    on large targets are left out here and pinned in the next test.
    """
    from fractions import Fraction

    from reasoning_gym.games.countdown import CountdownDataset

    from r1lite.tasks.arith import ExpressionError, evaluate
    from r1lite.tasks.countdown import equation_reward

    expr, given_nums = case
    try:
        value = evaluate(expr)
    except (ExpressionError, ZeroDivisionError):
        return  # both call a division by zero wrong; sympy's `zoo` is not worth pinning
    target = round(value) if hit and Fraction(value).denominator == 1 else int(value) + 1
    if 1e-5 <= abs(value - target) <= 1e-6 + 1e-5 * abs(target):
        return  # numpy's relative tolerance calls this near miss right; see the test below
    entry = {"metadata": {"numbers": given_nums, "target": target}}
    ours = equation_reward(f"<answer>{expr}</answer>", given_nums, target)[0] == 1.0
    theirs = CountdownDataset.score_answer(None, expr, entry) == 1.0
    assert ours == theirs, (expr, given_nums, target)


def test_where_the_countdown_verifiers_differ():
    from reasoning_gym.games.countdown import CountdownDataset

    from r1lite.tasks.countdown import equation_reward

    entry = {"metadata": {"numbers": [2, 3, 4], "target": 4096}}
    assert (
        CountdownDataset.score_answer(
            None, "(2 * 2) ** (3 + 4) / 4", {"metadata": {"numbers": [2, 2, 3, 4, 4], "target": 4096}}
        )
        == 1.0
    )
    assert equation_reward("<answer>(2 * 2) ** (3 + 4) / 4</answer>", [2, 2, 3, 4, 4], 4096)[0] == 0.0
    assert CountdownDataset.score_answer(None, "2 + 3", entry) == 0.05  # wrong numbers
    assert equation_reward("<answer>2 + 3</answer>", [2, 3, 4], 4096)[1] == "numbers differ from the given ones"
    # np.isclose's relative tolerance: off by one on a six-digit target is right there, wrong here
    big = {"metadata": {"numbers": [13, 17, 19, 24], "target": 100777}}  # the product is 100776
    assert CountdownDataset.score_answer(None, "13 * 17 * 19 * 24", big) == 1.0
    assert equation_reward("<answer>13 * 17 * 19 * 24</answer>", [13, 17, 19, 24], 100777)[0] == 0.0


# ----------------------------------------------------------------------------------------------
# docs/tasks.md's own task, end to end
# ----------------------------------------------------------------------------------------------


def page_block(marker: str) -> str:
    """The fenced block that follows `<!-- marker -->` in docs/tasks.md."""
    text = TASKS_PAGE.read_text(encoding="utf-8")
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_the_tasks_page_example_task_is_about_thirty_lines():
    assert 25 <= len(page_block("add_task.py").splitlines()) <= 40


@pytest.mark.slow
def test_the_tasks_page_example_task_runs_end_to_end(tmp_path):
    from r1lite.train.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "m")
    (tmp_path / "add_task.py").write_text(page_block("add_task.py"))
    (tmp_path / "add.yaml").write_text(page_block("add.yaml"))
    sets = [f"model.name={tiny}", "data.train_size=40", "data.test_size=4", "sft.examples=8", "grpo.max_steps=2"]
    sets += ["eval.examples=4", "eval.max_new_tokens=8", "grpo.max_completion_length=8", "tracking.wandb=disabled"]
    r = invoke("run", "add.yaml", *[x for s in sets for x in ("--set", s)])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs/add"
    train = read_jsonl(tmp_path / "data/add/train.jsonl")
    assert len(train) == 40 and set(train[0]) == {"a", "b"} and all(10 <= e["a"] <= 99 for e in train)
    final = read_json(run / "eval/final.json")
    assert {"accuracy", "format_rate", "shows_sum"} <= set(final)  # the task's own metric, averaged
    rows = read_jsonl(run / "eval/final.jsonl")
    assert set(rows[0]) >= {"question", "answer", "completion", "correct", "reason", "shows_sum"}
    assert (run / "sft/adapter/adapter_config.json").is_file() and (run / "grpo/adapter/adapter_config.json").is_file()
    sample = (run / "sft/sample.txt").read_text()
    assert re.search(
        r"What is \d+ \+ \d+\? Answer in <answer></answer>.*\n</think>\n<answer>\d+</answer>", sample, re.S
    )
    r = invoke("score", "add_task.py", input='{"completion": "</think>\\n<answer>57</answer>", "a": 20, "b": 37}\n')
    assert json.loads(r.output)["scores"]["answer"] == {"reward": 1.0, "reason": "correct"}


@pytest.mark.slow
def test_knights_knaves_recipe_runs_end_to_end_on_a_tiny_model(tmp_path):
    from r1lite.train.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "m")
    sets = [f"model.name={tiny}", "data.train_size=40", "data.test_size=4", "sft.examples=8", "grpo.max_steps=2"]
    sets += ["eval.examples=4", "eval.max_new_tokens=8", "grpo.max_completion_length=8", "tracking.wandb=disabled"]
    sets += ["sft.max_length=1024"]  # the tiny model's tokenizer, trained on Countdown text, spends many tokens here
    r = invoke("run", "knights_knaves", "-p", "cpu", *[x for s in sets for x in ("--set", s)])
    assert r.exit_code == 0, r.output
    final = read_json(tmp_path / "runs/knights_knaves-cpu/eval/final.json")
    assert final["examples"] == 4 and 0 <= final["accuracy"] <= 1
    metrics = read_jsonl(tmp_path / "runs/knights_knaves-cpu/grpo/metrics.jsonl")
    assert any("accuracy" in m for m in metrics)  # rewards/answer/mean, logged as accuracy
    assert invoke("report", "runs/knights_knaves-cpu").exit_code == 0
    report = (tmp_path / "runs/knights_knaves-cpu/report.md").read_text()
    assert "| A very special island" in report and "You meet 2 inhabitants" in report  # the problems, side by side


def test_a_warm_up_that_would_see_no_completion_stops_with_the_setting(capsys):
    from r1lite.stages.sft import check_lengths
    from r1lite.train.tiny import build_tokenizer

    tok = build_tokenizer()
    rows = [{"prompt": "Is 7 even or odd? " * 6, "completion": "\n</think>\n<answer>odd</answer>"}] * 3
    with pytest.raises(R1liteError, match=r"sft.max_length \(8 tokens\) is shorter than every prompt"):
        check_lengths(rows, tok, 8)
    check_lengths([*rows, {"prompt": "7?", "completion": "odd"}], tok, 8)  # one row fits: train on it
    check_lengths(rows, tok, 4096)
