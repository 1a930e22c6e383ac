"""The rollout engine against transformers' own generate and a fresh forward pass (CPU, tiny models)."""

from __future__ import annotations

import pytest
import torch

from r1lite.rollout import RolloutEngine, RolloutSettings, sample

PROMPTS = [
    "Using the numbers [3, 5, 2], create",
    "A conversation between User and Assistant. The user asks",
    "Try 4 * 5 = 20",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", hidden=64, layers=2))


def load(path: str, lora: bool = False, nf4: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": torch.float32}
    if nf4:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)
        # random A and B (not the zero init) so the adapter really changes the outputs
        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        )
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def reference(model, tok, prompt_ids: list[int], n: int) -> list[int]:
    """transformers' greedy generate on one unpadded prompt, cut after EOS."""
    out = model.generate(
        input_ids=torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[0, len(prompt_ids) :].tolist()
    return out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out


def grouped(tok, g: int) -> list[list[int]]:
    ids = tok(text=PROMPTS)["input_ids"]
    return [p for p in ids for _ in range(g)]


@pytest.mark.parametrize(
    ("lora", "nf4", "merge"),
    [
        (False, False, "unmerged"),
        (True, False, "unmerged"),
        (True, False, "merged"),
        (False, True, "unmerged"),
        (True, True, "unmerged"),
        (True, True, "merged"),
    ],
)
def test_greedy_matches_generate(tiny, lora, nf4, merge):
    model, tok = load(tiny, lora=lora, nf4=nf4)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=24, greedy=True, merge=merge))
    out = engine.generate(grouped(tok, 2), num_generations=2)
    assert out.stats["merged"] == (merge == "merged")
    for i, prompt in enumerate(out.prompt_ids):
        assert out.completion_ids[i] == reference(model, tok, prompt, 24), f"row {i}"


def test_logprobs_match_fresh_forward(tiny):
    model, tok = load(tiny, lora=True)
    settings = RolloutSettings(max_new_tokens=16, temperature=0.7)
    out = RolloutEngine(model, tok, settings).generate(grouped(tok, 3), 3, torch.Generator().manual_seed(0))
    for prompt, completion, lps in zip(out.prompt_ids, out.completion_ids, out.logprobs, strict=True):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / settings.temperature
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(lps), expected, atol=1e-4, rtol=1e-4)


def test_sampling_is_reproducible_under_a_seed(tiny):
    model, tok = load(tiny)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=16, temperature=1.0))
    runs = [engine.generate(grouped(tok, 4), 4, torch.Generator().manual_seed(s)).completion_ids for s in (5, 5, 6)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert len({tuple(c) for c in runs[0][:4]}) > 1  # the G rows of one prompt differ


def test_rows_stop_at_eos_and_pad_nothing(tiny):
    model, tok = load(tiny)
    # make EOS the most likely token after every input: every completion is exactly [EOS]
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight.abs().max() * 50
        model.model.embed_tokens.weight.copy_(model.lm_head.weight)
    out = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=8, greedy=True)).generate(grouped(tok, 2), 2)
    assert all(c == [tok.eos_token_id] for c in out.completion_ids)


def test_top_k_and_top_p_restrict_samples():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]] * 500)
    top1 = sample(logits, RolloutSettings(top_k=1), torch.Generator().manual_seed(0))[0]
    assert set(top1.tolist()) == {0}
    # probabilities ~ [0.705, 0.259, 0.013, 0.005]: top_p 0.7 keeps one token, 0.9 keeps two
    assert set(sample(logits, RolloutSettings(top_p=0.7), torch.Generator().manual_seed(0))[0].tolist()) == {0}
    nucleus = sample(logits, RolloutSettings(top_p=0.9), torch.Generator().manual_seed(0))[0]
    assert set(nucleus.tolist()) <= {0, 1} and 1 in nucleus.tolist()


@pytest.mark.slow
def test_grpo_loss_matches_stock_trl_on_a_fixed_batch(tiny, tmp_path):
    """Same seed, same batch: TRL's own generation and our engine give the same completions and loss."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1lite.recipes import load_recipe
    from r1lite.rollout import make_rollout_func, settings_from_recipe

    def length_reward(completions, **_):
        return [float(len(c)) for c in completions]

    recipe = load_recipe(
        "countdown", "cpu", [f"model.name={tiny}", "grpo.max_completion_length=12", "grpo.temperature=1.0"]
    )
    data = Dataset.from_list([{"prompt": p} for p in PROMPTS[:2]])

    def trainer(rollout):
        model, tok = load(tiny, lora=True)
        args = GRPOConfig(
            output_dir=str(tmp_path / "t"),
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=12,
            temperature=1.0,
            report_to=[],
            use_cpu=True,
            beta=0.0,
            loss_type="dr_grpo",
            logging_steps=1,
        )
        return GRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=data,
            processing_class=tok,
            rollout_func=rollout,
        )

    batch = [data[0], data[0], data[1], data[1]]
    results = []
    for rollout in (None, make_rollout_func(settings_from_recipe(recipe))):
        t = trainer(rollout)
        t.model.train()
        torch.manual_seed(1234)
        inputs = t._generate_and_score_completions(batch)
        t.current_gradient_accumulation_steps = 1  # set by the training loop, which we bypass here
        loss = t.compute_loss(t.model, inputs)
        results.append((inputs["completion_ids"].tolist(), inputs["advantages"].tolist(), loss.item()))
    (stock_ids, stock_adv, stock_loss), (ours_ids, ours_adv, ours_loss) = results
    assert stock_ids == ours_ids
    assert stock_adv == pytest.approx(ours_adv, abs=1e-6)
    assert any(abs(a) > 0 for a in stock_adv)
    assert ours_loss == pytest.approx(stock_loss, abs=1e-5)


def test_buffers_are_reused_and_merged_weights_follow_the_adapter(tiny):
    """Consecutive rollouts (new prompts, new prompt lengths, an updated adapter) reuse one state and stay exact."""
    model, tok = load(tiny, lora=True)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=12, greedy=True, merge="merged"))
    first = engine.generate(grouped(tok, 2), 2)
    state = engine._states[6]
    with torch.no_grad():  # an optimizer step on the adapter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-3.0)
    prompts = [tok("Try 9 - 3 = 6").input_ids] * 2 + [tok("We need 24").input_ids] * 2 + [tok("x").input_ids] * 2
    second = engine.generate(prompts, 2)
    assert engine._states[6] is state  # same cache, mask and merged copy: a captured graph stays valid
    for prompt, completion in zip(second.prompt_ids, second.completion_ids, strict=True):
        assert completion == reference(model, tok, prompt, 12)
    assert first.completion_ids != second.completion_ids


@pytest.mark.parametrize(
    ("lora", "nf4", "merge"), [(False, False, "unmerged"), (True, True, "unmerged"), (True, True, "merged")]
)
def test_decode_step_traces_to_one_graph_reused_across_rollouts(tiny, lora, nf4, merge):
    """What CUDA-graph capture needs, checked on CPU: one graph, no breaks, no recompiles between steps."""
    import torch._dynamo as dynamo

    model, tok = load(tiny, lora=lora, nf4=nf4)
    settings = RolloutSettings(max_new_tokens=10, greedy=True, merge=merge, compile_backend="aot_eager")
    engine = RolloutEngine(model, tok, settings)
    dynamo.reset()
    dynamo.utils.counters.clear()
    first = engine.generate(grouped(tok, 2), 2)
    engine.generate([tok("We need 24 from").input_ids] * 6, 2)  # other prompts, other prompt length
    assert settings.compile, "the compiled step fell back to eager"
    assert dict(dynamo.utils.counters["graph_break"]) == {}
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    eager = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=10, greedy=True, merge=merge))
    assert first.completion_ids == eager.generate(grouped(tok, 2), 2).completion_ids


def test_eval_generation_is_the_same_with_the_engine(tiny):
    """Eval uses the engine on CUDA; greedy completions (text and length) must not change with it."""
    from r1lite.stages.eval import generate

    model, tok = load(tiny, lora=True)
    stock = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=2)
    ours = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, engine=True)
    assert ours == stock
    sampled = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=2, sample=True, n=3, engine=True)
    assert [len(g) for g in sampled] == [3, 3, 3]
