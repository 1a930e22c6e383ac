"""`r1lite try` and `r1lite export` through the CLI, on a tiny fp32 model and a run directory built here.

The run is written the way the pipeline writes one (config.yaml, hardware.json, a PEFT adapter, real base and
final evals, summary.json) without training: the adapter's B matrices are random, so it changes what the model
says and a merge that dropped it would show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.fileio import read_json, write_json, write_text
from r1lite.runs import hub as hub_module
from r1lite.share import export as ex
from r1lite.share import playground
from r1lite.share.trained import open_run

runner = CliRunner()
MAX_NEW = 12  # tokens per answer in `try` tests
UMASK = os.umask(0o022)
os.umask(UMASK)


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def cli(*args: str, input: str | None = None):
    return runner.invoke(app, ["--quiet", *args], input=input, catch_exceptions=False)


def _recipe(model: Path, root: Path, *extra: str):
    from r1lite.recipe.load import load_recipe

    return load_recipe(
        "countdown",
        "cpu",
        [
            f"model.name={model}",
            "model.cpu_bf16=false",  # fp32 decoding everywhere, so equal weights give equal tokens
            f"data.dir={root / 'data'}",
            "data.train_size=8",
            "data.test_size=4",
            "eval.examples=4",
            "eval.batch_size=4",
            "eval.max_new_tokens=16",
            f"output_dir={root / 'runs'}",
            "tracking.wandb=disabled",
            *extra,
        ],
    )


def _random_adapter(model: Path, recipe, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter whose update is large enough to change greedy tokens (a fresh one is all zeros)."""
    import torch
    from peft import get_peft_model

    from r1lite.train.models import load_model, lora_config

    base = load_model(str(model), recipe.model, recipe.quantization, for_training=False)
    peft = get_peft_model(base, lora_config(recipe.lora))
    gen = torch.Generator().manual_seed(seed)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    peft.save_pretrained(out)
    return out


def _write_run(model: Path, recipe, evaluate: bool = True) -> Path:
    from r1lite.analyze.environment import describe
    from r1lite.orchestrate.pipeline import write_summary
    from r1lite.runs.rundir import STAGES, Run
    from r1lite.stages import data, evaluate

    run = Run.of(recipe)
    root = run.root
    run.write_config(recipe)
    write_json(run.hardware_file, describe())
    warmup = _random_adapter(model, recipe, root / "sft" / "adapter", seed=2)
    adapter = _random_adapter(model, recipe, root / "grpo" / "adapter")
    if evaluate:
        data.run(recipe.data)
        evaluate.run(recipe, root, label="base")
        evaluate.run(recipe, root, adapter=str(warmup), label="warmup")
        evaluate.run(recipe, root, adapter=str(adapter), label="final")
        run.record({s: {"fingerprint": "x", "seconds": 60.0} for s in STAGES})
        write_summary(recipe, run)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny model folder, a finished run of it)."""
    from r1lite.train.tiny import build_tiny_model

    where = tmp_path_factory.mktemp("export")
    model = build_tiny_model(where / "model")
    return model, _write_run(model, _recipe(model, where))


def _peft(model: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(adapter)).eval()


def _greedy(model, tokenizer, prompt: str, max_new: int) -> str:
    """Greedy text straight from transformers, independent of r1lite's own generation code."""
    import torch

    from r1lite.stages.evaluate import decode_completion

    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return decode_completion(tokenizer, out[0, enc["input_ids"].shape[1] :].tolist())[0]


def _prompt(tokenizer, nums: list[int], target: int) -> str:
    from r1lite.tasks.countdown import Countdown

    return Countdown().render_prompt({"nums": nums, "target": target}, "compact", tokenizer)


# ----------------------------------------------------------------------------------------------
# r1lite try
# ----------------------------------------------------------------------------------------------


def test_try_streams_the_trained_answer_in_the_runs_prompt_format(tiny, monkeypatch):
    from transformers import AutoTokenizer

    model, run = tiny
    pieces: list[str] = []
    real = playground.write_stdout
    monkeypatch.setattr(playground, "write_stdout", lambda text: (pieces.append(text), real(text)))
    r = cli("try", str(run), "--nums", "3,5,7", "--target", "22", "--max-new-tokens", str(MAX_NEW))
    assert r.exit_code == 0, r.output
    tokenizer = AutoTokenizer.from_pretrained(model)
    want = _greedy(_peft(model, run / "grpo/adapter"), tokenizer, _prompt(tokenizer, [3, 5, 7], 22), MAX_NEW)
    streamed = "".join(pieces[:-1])  # the last piece is the newline after the answer
    assert len(pieces) > 2, pieces  # the answer arrived in pieces, while it was generated
    assert streamed == want and want in r.output
    assert "problem: [3, 5, 7] → 22" in r.output
    assert "countdown_equation (accuracy)" in r.output and "no <answer>...</answer>" in r.output
    assert "a right answer: " in r.output


def test_a_run_trained_on_a_gpu_is_tried_on_a_machine_without_one(tiny, tmp_path):
    """A run directory copied from a GPU machine (model.device: cuda, its attention kernel): `r1lite try` says it
    runs on the CPU and answers as the same run trained here does."""
    import yaml

    from r1lite.recipe.load import read_yaml

    _, run = tiny
    gpu_run = tmp_path / "from-a-gpu"
    shutil.copytree(run, gpu_run)
    config = read_yaml(gpu_run / "config.yaml")
    config["model"].update(device="cuda", attn_implementation="sdpa")
    (gpu_run / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["--nums", "3,5,7", "--target", "22", "--max-new-tokens", str(MAX_NEW)]
    here, there = cli("try", str(run), *args), runner.invoke(app, ["try", str(gpu_run), *args])  # not quiet
    assert there.exit_code == 0, there.output
    assert "no CUDA GPU here: the model runs on the CPU" in there.output
    answer = here.output[here.output.index("problem:") :]  # the problem, the answer, its scores
    assert "a right answer" in answer and answer in there.output


def _scripted(monkeypatch, completion: str) -> None:
    """Generation replaced by a fixed completion (streamed in two pieces): what is scored is then known."""

    def complete(model, tokenizer, prompt, max_new_tokens, temperature=0.0, echo=None):
        if echo:
            half = len(completion) // 2
            echo(completion[:half])
            echo(completion[half:])
        return completion, 9

    monkeypatch.setattr(playground, "complete", complete)


@pytest.mark.parametrize(
    ("answer", "verdict", "accuracy", "tinyzero"),
    [
        ("3 * 5 + 7", "✓ correct", "1  correct", "1  correct"),
        ("3 + 5 + 7", "✗ wrong: evaluates to 15, not 22", "0  evaluates to 15", "0.1  evaluates to 15"),
    ],
)
def test_try_scores_with_every_reward_and_its_reason(tiny, monkeypatch, answer, verdict, accuracy, tinyzero):
    _scripted(monkeypatch, f"\nTry 3 * 5 = 15.\n</think>\n<answer>{answer}</answer>")
    r = cli("try", str(tiny[1]), "3 5 7 -> 22")
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): line for line in r.output.splitlines() if line.count("│") >= 4}
    assert accuracy in rows["countdown_equation (accuracy)"]  # the eval's reward first, then GRPO's
    assert "weight 1" in rows["countdown_tinyzero"] and tinyzero in rows["countdown_tinyzero"]
    assert "weight 0.5" in rows["think_format"] and "1  " in rows["think_format"]
    assert {"search_behaviour", "self_check"} <= set(rows)
    assert f"{verdict} (9 tokens)" in r.output


def test_try_free_text_is_answered_unscored_with_the_reason(tiny, monkeypatch):
    _scripted(monkeypatch, "\n</think>\n<answer>42</answer>")
    r = cli("try", str(tiny[1]), "what is the meaning of life?", "--show-prompt")
    assert r.exit_code == 0, r.output
    assert "unscored: not a Countdown problem" in r.output and "countdown_equation" not in r.output
    assert "what is the meaning of life? Answer in <answer></answer>." in r.output  # the compact format around it


def test_try_compare_base_answers_the_same_problem_without_the_adapter(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, run = tiny
    r = cli("try", str(run), "--nums", "3,5,7", "--target", "22", "--compare", "base", "--max-new-tokens", "8")
    assert r.exit_code == 0, r.output
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = _prompt(tokenizer, [3, 5, 7], 22)
    base = _greedy(AutoModelForCausalLM.from_pretrained(model), tokenizer, prompt, 8)
    trained = _greedy(_peft(model, run / "grpo/adapter"), tokenizer, prompt, 8)
    assert base != trained
    assert r.output.index(base) < r.output.index(trained)  # base first, then the trained model
    assert "base: ✗ wrong" in r.output and "trained: ✗ wrong" in r.output
    assert re.search(r"┃ reward +┃ in training ┃ base +┃ trained +┃", r.output)  # one table, a column each


def test_try_without_text_is_an_interactive_loop(tiny, monkeypatch):
    _scripted(monkeypatch, "\n</think>\n<answer>3 * 5 + 7</answer>")
    script = "3 5 7 -> 22\nhello there\n3 x -> 4\n\nnever read\n"
    r = cli("try", str(tiny[1]), input=script)
    assert r.exit_code == 0, r.output
    assert "a blank line or Ctrl-D leaves" in r.output
    assert len(re.findall(r"^> ", r.output, re.M)) == 4  # three problems, then the blank line that leaves
    assert "problem: [3, 5, 7] → 22" in r.output and "✓ correct" in r.output
    assert "unscored: not a Countdown problem" in r.output
    assert "error: '3 x -> 4' is not a Countdown problem" in r.output  # reported, and the loop goes on
    assert "never read" not in r.output

    eof = cli("try", str(tiny[1]), input="3 5 7 -> 22\n")  # Ctrl-D (end of input) leaves too
    assert eof.exit_code == 0 and eof.output.count("✓ correct") == 1


def test_bad_input_is_one_line_and_exit_code_2(tiny, tmp_path):
    run = str(tiny[1])
    bare = tmp_path / "bare"
    shutil.copytree(tiny[1], bare, ignore=shutil.ignore_patterns("grpo", "sft"))
    cases = [
        (["try", str(tmp_path / "nowhere"), "3 5 7 -> 22"], "does not exist"),
        (["try", str(tmp_path), "3 5 7 -> 22"], "is not an r1lite run directory"),
        (["try", str(bare), "3 5 7 -> 22"], "has no trained adapter yet"),
        (["export", str(bare), "--out", str(tmp_path / "x")], "has no trained adapter yet"),
        (["try", run, "3 x 7 -> 22"], "is not a Countdown problem; write one as numbers"),
        (["try", run, "3 -> 22"], "Countdown takes 2 to 6 numbers"),
        (["try", run, "--nums", "3,x", "--target", "22"], "--nums: '3,x' is not a list of whole numbers"),
        (["try", run, "--nums", "3,5,7"], "--nums and --target go together"),
        (["try", run, "3 5 -> 8", "--nums", "3,5"], "not both"),
        (["try", run, "3 5 -> 8", "--adapter", str(tmp_path)], "is not a LoRA adapter folder"),
        (["try", run, "3 5 -> 8", "--compare", "sft"], "--compare takes 'base'"),
        (["export", run, "--out", str(tmp_path / "x"), "--dtype", "float16"], "go with --merged"),
        (["export", run, "--out", str(tmp_path / "x"), "--merged", "--dtype", "fp8"], "--dtype fp8: choose one of"),
        (["export", run, "--out", str(tmp_path / "x"), "--public"], "--public goes with --push-to-hub"),
    ]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)


# ----------------------------------------------------------------------------------------------
# r1lite export
# ----------------------------------------------------------------------------------------------


def test_merged_export_is_a_plain_model_with_the_adapters_greedy_tokens(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lite.fileio import read_jsonl

    model, run = tiny
    out = tmp_path / "merged"
    r = cli("export", str(run), "--out", str(out), "--merged")
    assert r.exit_code == 0, r.output
    assert "merged float32 model (LoRA added into the full-precision base)" in r.output
    assert not (out / "adapter_config.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    merged, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    adapted, base = _peft(model, run / "grpo/adapter"), AutoModelForCausalLM.from_pretrained(model)
    differs = 0
    for row in read_jsonl(run / "eval/final.jsonl"):
        prompt = _prompt(tokenizer, row["nums"], row["target"])
        assert _greedy(merged, tokenizer, prompt, 16) == _greedy(adapted, tokenizer, prompt, 16), row
        differs += _greedy(base, tokenizer, prompt, 16) != _greedy(adapted, tokenizer, prompt, 16)
    assert differs  # the adapter matters, so equal tokens mean it was merged
    # readable by a server in a container or another user: the permissions the umask gives an ordinary file (0644
    # under the usual 022), not the 0600 of a temporary file, and the folder's likewise (0755)
    assert _mode(out / "model.safetensors") == _mode(out / "config.json") == oct(0o666 & ~UMASK)
    assert _mode(out) == oct(0o777 & ~UMASK)


def test_adapter_export_is_a_peft_folder_with_tokenizer_and_card(tiny, tmp_path):
    from peft import PeftConfig

    _, run = tiny
    out = tmp_path / "adapter"
    r = cli("export", str(run), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "LoRA adapter (PEFT), tokenizer, README.md" in r.output
    assert PeftConfig.from_pretrained(out).r == 16
    weights = "adapter_model.safetensors"
    assert (run / "grpo/adapter" / weights).read_bytes() == (out / weights).read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    assert read_json(out / ex.EXPORT_INFO)["kind"] == "adapter"


def test_model_card_says_what_how_well_how_to_use_and_what_it_cost(tiny, tmp_path):
    from r1lite.analyze.report import format_metric

    model, run = tiny
    out = tmp_path / "card"
    assert cli("export", str(run), "--out", str(out), "--merged").exit_code == 0
    card = (out / "README.md").read_text()
    summary = read_json(run / "summary.json")
    head, body = card.split("---\n", 2)[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in head and "- countdown" in head
    assert "| task | countdown |" in body and "| recipe | `countdown`, profile `cpu` |" in body
    # the run's problems (the cpu profile's 3 numbers), not the task's full range of 3-6
    assert "**countdown**: reach a target from 1 to 100 with 3 numbers from 1 to 99, each used once" in body
    assert "3-6" not in body
    assert f"| base model | {model} |" in body
    table = next(line for line in body.splitlines() if line.startswith("| accuracy |"))
    cells = [format_metric("accuracy", summary[k]["accuracy"]) for k in ("base", "warmup", "final")]
    assert table == f"| accuracy | {' | '.join(cells)} |"
    assert "| metric | base | warm-up (SFT) | trained |" in body
    assert "accuracy, trained vs base:" in body and "paired bootstrap over 4 problems" in body
    assert "accuracy, GRPO's own effect (final vs warm-up):" in body
    assert "cost: 6.0 min wall" in body and "Wall time by stage: data 1.0 min" in body
    versions = read_json(run / "hardware.json")["versions"]
    assert f"transformers {versions['transformers']}" in body and f"torch {versions['torch']}" in body
    first = read_json(run / "eval/final.json")
    assert first["examples"] == 4
    assert "Answer in <answer></answer>." in body  # a held-out prompt in the run's compact format
    assert "merged in fp32 and cast to float32" in body and "Not measured for this folder" in body
    assert "```yaml\nname: countdown" in body


def test_model_card_of_a_run_from_before_paired_intervals_computes_them(tiny, tmp_path):
    old = tmp_path / "runs" / "old"
    shutil.copytree(tiny[1], old)
    summary = read_json(old / "summary.json")
    del summary["changes"]  # summaries written before the paired intervals existed
    write_json(old / "summary.json", summary)
    assert cli("export", str(old), "--out", str(tmp_path / "card")).exit_code == 0
    card = (tmp_path / "card" / "README.md").read_text()
    assert "- accuracy, trained vs base: " in card and "- accuracy, GRPO's own effect (final vs warm-up): " in card


def test_check_prints_the_exports_accuracy_beside_the_runs(tiny, tmp_path):
    _, run = tiny
    out = tmp_path / "checked"
    r = cli("export", str(run), "--out", str(out), "--merged", "--check")
    assert r.exit_code == 0, r.output
    final, checked = read_json(run / "eval/final.json"), read_json(run / "eval/export-merged.json")
    assert checked["examples"] == 4 and checked["model"] == str(out)
    assert (
        f"export check: accuracy {checked['accuracy']:.1%} on 4 held-out problems (greedy); "
        f"the run's final eval: {final['accuracy']:.1%} (gap +0.0 pt)"
    ) in r.output
    assert "4 of 4 completions identical to the run's, token for token" in r.output  # fp32: the same function
    assert "accuracy, merged export vs the run's final eval: " in r.output
    card = (out / "README.md").read_text()
    assert "| metric | base | warm-up (SFT) | trained | this export |" in card
    assert "Measured on the run's 4 held-out problems, greedy" in card and "4 of 4 completions identical" in card


def test_export_replaces_an_earlier_export_but_no_other_folder(tiny, tmp_path):
    run = str(tiny[1])
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = runner.invoke(app, ["export", run, "--out", str(mine)])
    assert r.exit_code == 2 and "holds files that are not an r1lite export" in r.output
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "again"
    assert cli("export", run, "--out", str(out), "--merged").exit_code == 0
    assert cli("export", run, "--out", str(out)).exit_code == 0  # an earlier export is replaced
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()


def test_a_4bit_run_merges_into_the_dequantized_weights_it_trained_against(tmp_path):
    """The adapter learned on NF4 weights: merged into them (dequantized) it computes what the 4-bit model
    did; merged into the original weights it carries the quantization error too."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1lite.train.models import load_for_inference
    from r1lite.train.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    recipe = _recipe(model, tmp_path, "quantization.mode=nf4", "quantization.compute_dtype=float32")
    run = open_run(_write_run(model, recipe, evaluate=False))
    assert ex.default_dtype(run) == "float32"
    trained = load_for_inference(str(model), recipe.model, recipe.quantization, str(run.adapter))
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        want = trained(ids).logits
        gap = {
            into: (ex.merged_model(run, "float32", into)(ids).logits - want).abs().max().item()
            for into in ex.MERGE_INTO
        }
    assert gap["trained"] < gap["original"] / 5, gap
    info = ex.export(run, tmp_path / "out", merged=True)
    assert info["merged_into"] == "dequantized nf4" and info["dtype"] == "float32"
    assert "quantization_config" not in json.loads((tmp_path / "out/config.json").read_text())
    # `--merge-into original` from the command line: the base's own weights, which the export records
    args = ["export", str(run.root), "--out", str(tmp_path / "orig"), "--merged", "--merge-into", "original"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "orig" / ex.EXPORT_INFO).read_text())["merged_into"] == "original"
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tmp_path / "orig")(ids).logits
    assert abs((logits - want).abs().max().item() - gap["original"]) < 0.1 * gap["original"]  # the original weights
    r = runner.invoke(app, ["export", str(run.root), "--out", str(tmp_path / "x"), "--merge-into", "original"])
    assert r.exit_code == 2 and "--merge-into go with --merged" in r.output


# ----------------------------------------------------------------------------------------------
# --push-to-hub, against a stand-in for the Hub
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """HfApi's login, create and upload, answered locally: uploads land in tmp_path/hub/<repo>."""
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_module, "_READY", {})  # no login remembered from another test
    calls: dict = {"real_whoami": HfApi.whoami}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = {"repo_id": repo_id, **kwargs}
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"tester/{repo_id}")

    def create_branch(self, repo_id, *, branch, **kwargs):
        calls.setdefault("branches", []).append(branch)

    def upload_folder(self, *, repo_id, folder_path, revision=None, **kwargs):
        """Into hub/<repo> for main, hub/<repo>@<branch> for a branch (which must have been created)."""
        calls["upload"] = {"repo_id": repo_id, "revision": revision, **kwargs}
        assert revision in (None, "main") or revision in calls.get("branches", [])
        where = repo_id if revision in (None, "main") else f"{repo_id}@{revision}"
        shutil.copytree(folder_path, tmp_path / "hub" / where, dirs_exist_ok=True)
        calls.setdefault("uploads", []).append(where)

    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "tester"})
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_export_to_a_private_repo(tiny, tmp_path, hub):
    out = tmp_path / "pushed"
    r = cli("export", str(tiny[1]), "--out", str(out), "--push-to-hub", "countdown-r1")
    assert r.exit_code == 0, r.output
    assert "logged in as tester" in r.output
    assert "pushed to https://huggingface.co/tester/countdown-r1 (private)" in r.output
    assert hub["create"]["private"] is True and hub["upload"]["repo_id"] == "tester/countdown-r1"
    uploaded = tmp_path / "hub/tester/countdown-r1"
    assert {"README.md", "adapter_config.json", ex.EXPORT_INFO} <= {p.name for p in uploaded.iterdir()}
    assert 'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("' in (uploaded / "README.md").read_text()
    assert '"countdown-r1")' in (uploaded / "README.md").read_text()  # the card loads it by its repo id

    public = cli("export", str(tiny[1]), "--out", str(tmp_path / "p2"), "--push-to-hub", "me/x", "--public")
    assert public.exit_code == 0 and hub["create"]["private"] is False and "(public)" in public.output


def test_push_to_hub_fails_first_with_one_line(tiny, tmp_path, monkeypatch, hub):
    import huggingface_hub.hf_api
    from huggingface_hub import HfApi

    run, out = str(tiny[1]), tmp_path / "never"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["export", run, "--out", str(out), "--push-to-hub", "me/x"])
    assert r.exit_code == 2 and "HF_HUB_OFFLINE=1 is set" in r.output and len(r.output.strip().splitlines()) == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    r = runner.invoke(app, ["export", run, "--out", str(out), "--push-to-hub", "a/b/c"])
    assert r.exit_code == 2 and "is not a repo id" in r.output
    monkeypatch.setattr(huggingface_hub.hf_api, "get_token", lambda: None)  # nobody logged in: no token anywhere
    monkeypatch.setattr(HfApi, "whoami", hub["real_whoami"])  # which the real whoami finds before any request
    r = runner.invoke(app, ["export", run, "--out", str(out), "--push-to-hub", "me/x"])
    assert r.exit_code == 2 and "not logged in to the Hugging Face Hub; run `hf auth login`" in r.output
    assert not out.exists()  # nothing was exported: the push could not have worked

    def refused(self, *a, **k):
        raise OSError("connection refused\nmore detail")

    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "tester"})
    monkeypatch.setattr(HfApi, "upload_folder", refused)
    r = runner.invoke(app, ["export", run, "--out", str(out), "--push-to-hub", "me/x"])
    assert r.exit_code == 2 and r.output.strip().endswith("failed: OSError: connection refused")


def test_grpo_pushes_each_checkpoint_to_a_branch_and_the_last_to_main(tmp_path, hub, monkeypatch):
    """tracking.push_to_hub: every checkpoint's adapter to its own branch, the finished adapter to main; a refused
    upload is one warning and training goes on; a rerun that finds the stage trained still pushes main; a stage
    stopped early pushes its checkpoints but not main; a push that cannot work stops the run before any stage."""
    import torch
    from huggingface_hub import HfApi
    from safetensors.torch import load_file
    from test_interrupts import signal_at
    from test_pipeline import set_args, tiny_overrides

    from r1lite.train.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m")
    sets = tiny_overrides(str(model), "output_dir=out", "sft.enabled=false", "tracking.push_to_hub=me/ckpt")
    upload = HfApi.upload_folder

    def refuse_the_first(self, **kwargs):
        if not hub.get("refused"):
            hub["refused"] = kwargs["revision"]
            raise OSError("503 Service Unavailable\nretry later")
        return upload(self, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", refuse_the_first)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the copies to upload are made
    r = cli("run", "countdown", "-p", "cpu", *set_args(sets))
    assert r.exit_code == 0, r.output
    assert hub["refused"] == "grpo-step-000001"
    assert "grpo-step-000001 was not pushed to me/ckpt (OSError: 503 Service Unavailable)" in r.output
    assert hub["uploads"] == ["me/ckpt@grpo-step-000002", "me/ckpt"] and hub["create"]["private"] is True
    final = load_file("out/countdown-cpu/grpo/adapter/adapter_model.safetensors")
    for where in ("me/ckpt@grpo-step-000002", "me/ckpt"):
        folder = tmp_path / "hub" / where
        pushed = load_file(str(folder / "adapter_model.safetensors"))
        assert pushed.keys() == final.keys() and all(torch.equal(pushed[k], final[k]) for k in final)
        assert not list(folder.glob("*.pt")) and (folder / "tokenizer_config.json").is_file()  # no optimizer state
    assert (tmp_path / "hub/me/ckpt@grpo-step-000002/trainer_state.json").is_file()
    assert not list((tmp_path / "tmp").glob("r1lite-push-*"))  # the copies uploaded from are gone

    # killed after the last checkpoint, before the adapter was written: the rerun trains nothing, pushes main
    root = Path("out/countdown-cpu")
    write_json(root / "stages.json", {k: v for k, v in read_json(root / "stages.json").items() if k != "grpo"})
    shutil.rmtree(root / "grpo/adapter")
    hub["uploads"] = []
    again = cli("run", "countdown", "-p", "cpu", *set_args(sets))
    assert again.exit_code == 0 and "continuing from checkpoint-2" in again.output, again.output
    assert hub["uploads"] == ["me/ckpt"] and hub["upload"]["commit_message"] == "r1lite grpo: the adapter after 2 steps"

    # stopped by a signal after step 1: that checkpoint is pushed, main is not (the stage did not finish)
    hub["uploads"] = []
    with pytest.MonkeyPatch.context() as patch:
        signal_at(patch, "grpo", 1)
        stopped = cli("run", "countdown", "-p", "cpu", *set_args([*sets, "output_dir=stopped"]))
    assert stopped.exit_code == 143, stopped.output
    assert hub["uploads"] == ["me/ckpt@grpo-step-000001"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = cli("run", "countdown", "-p", "cpu", *set_args([*sets, "output_dir=never"]))
    assert offline.exit_code == 2 and offline.output.strip().splitlines()[1:] == [  # after the run's name: one line
        "error: tracking.push_to_hub needs the network and HF_HUB_OFFLINE=1 is set; unset it to push"
    ]
    assert not Path("never").exists()


def test_checkpoint_pusher_survives_a_failed_copy_and_a_stop_cancels_what_is_queued(tmp_path, hub, monkeypatch, capsys):
    """Unit level: no room for the copy is one warning (training goes on); closing on a stop cancels the uploads not
    started, deletes their copies and names them; only the running one ends on its own."""
    import threading

    from huggingface_hub import HfApi

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    args = SimpleNamespace(output_dir=str(tmp_path / "trainer"))
    for step in (1, 2, 3):
        write_text(tmp_path / f"trainer/checkpoint-{step}/adapter_config.json", "{}")
    state = lambda step: SimpleNamespace(global_step=step, is_world_process_zero=True)  # noqa: E731
    pusher = hub_module.PushCheckpoints("me/x")

    def no_room(src, dst):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "copy2", no_room)
        pusher.on_save(args, state(1), None)  # does not raise
    assert "grpo-step-000001 not pushed (OSError: [Errno 28] No space left on device)" in capsys.readouterr().out
    assert pusher.uploads == [] and not list((tmp_path / "tmp").glob("r1lite-push-*"))

    started, release, upload = threading.Event(), threading.Event(), HfApi.upload_folder

    def held(self, **kwargs):
        started.set()
        release.wait(5)
        return upload(self, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", held)
    pusher.on_save(args, state(2), None)  # starts, and waits for `release`
    assert started.wait(5)
    pusher.on_save(args, state(3), None)  # queued behind it
    pusher.close()
    said = capsys.readouterr().out
    # only the queued upload was dropped; the running one is not called unsent, since it goes on and completes
    assert "not pushed (stopped first): grpo-step-000003\n" in said and "grpo-step-000002," not in said
    assert "grpo: still uploading grpo-step-000002; the process waits for it before it exits" in said
    assert len(list((tmp_path / "tmp").glob("r1lite-push-*"))) == 1  # step 3's copy is gone; step 2's is in use
    release.set()
    pusher.pool.shutdown(wait=True)
    assert hub["uploads"] == ["me/x@grpo-step-000002"]
    assert "grpo: pushed grpo-step-000002 to https://huggingface.co/me/x" in capsys.readouterr().out  # said when up
    assert not list((tmp_path / "tmp").glob("r1lite-push-*"))
