"""The rollout engine against transformers' own generate and a fresh forward pass (CPU, tiny models)."""

from __future__ import annotations

import math

import pytest
import torch

from r1lite.train.rollout.engine import RolloutEngine, RolloutSettings
from r1lite.train.rollout.sampling import Sampling, sample

PROMPTS = [
    "Using the numbers [3, 5, 2], create",
    "A conversation between User and Assistant. The user asks",
    "Try 4 * 5 = 20",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", hidden=64, layers=2))


def load(path: str, lora: bool = False, nf4: bool = False, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": torch.float32}
    if nf4:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not nf4:
        model.to(device)
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
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=torch.tensor([prompt_ids], device=device),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[0, len(prompt_ids) :].tolist()
    return out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out


def grouped(tok, g: int) -> list[list[int]]:
    ids = tok(text=PROMPTS)["input_ids"]
    return [p for p in ids for _ in range(g)]


PATHS = [
    (False, False, "unmerged"),
    (True, False, "unmerged"),
    (True, False, "merged"),
    (False, True, "unmerged"),
    (True, True, "unmerged"),
    (True, True, "merged"),
]
# the same checks on CUDA (`pytest -m cuda`, run by bench/gpu_check.py): eager and captured decode steps
ON_CUDA = [
    pytest.param("cuda", compile, marks=pytest.mark.cuda, id=f"cuda-{c}")
    for c, compile in (("eager", False), ("captured", True))
]


@pytest.mark.parametrize(("device", "compile"), [("cpu", False), *ON_CUDA])
@pytest.mark.parametrize(("lora", "nf4", "merge"), PATHS)
def test_greedy_matches_generate(tiny, lora, nf4, merge, device, compile):
    model, tok = load(tiny, lora=lora, nf4=nf4, device=device)
    settings = RolloutSettings(max_new_tokens=24, greedy=True, merge=merge, compile=compile)
    engine = RolloutEngine(model, tok, settings)
    out = engine.generate(grouped(tok, 2), num_generations=2)
    assert out.stats["merged"] == (merge == "merged") and out.stats["compiled"] == compile
    for i, prompt in enumerate(out.prompt_ids):
        assert out.completion_ids[i] == reference(model, tok, prompt, 24), f"row {i}"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_logprobs_match_fresh_forward(tiny, device):
    model, tok = load(tiny, lora=True, device=device)
    settings = RolloutSettings(max_new_tokens=16, temperature=0.7)
    generator = torch.Generator(device).manual_seed(0)
    out = RolloutEngine(model, tok, settings).generate(grouped(tok, 3), 3, generator)
    for prompt, completion, lps in zip(out.prompt_ids, out.completion_ids, out.logprobs, strict=True):
        ids = torch.tensor([prompt + completion], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / settings.temperature
        chosen = torch.tensor(completion, device=device)[:, None]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, chosen).squeeze(-1).cpu()
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


def one_grpo_batch(tiny, tmp_path, engine: bool, shift: float = 0.0, is_cap: float = 2.0):
    """Completions, advantages, loss and logged metrics of one seeded GRPO batch (TRL generation or our engine).

    `shift` is added to every log-prob the engine reports, to model a sampler that disagrees with the trainer.
    """
    from grpo_setup import grpo_trainer

    from r1lite.recipe.load import load_recipe
    from r1lite.stages.grpo_rollout import make_rollout_func, settings_from_recipe

    def length_reward(completions, **_):
        return [float(len(c)) for c in completions]

    rollout = None
    if engine:
        recipe = load_recipe(
            "countdown", "cpu", [f"model.name={tiny}", "grpo.max_completion_length=12", "grpo.temperature=1.0"]
        )
        settings = settings_from_recipe(recipe)
        settings.sampler = "multinomial"  # transformers' draws under the same seed, so the completions match
        ours = make_rollout_func(settings)

        def rollout(prompts, trainer):
            out = ours(prompts, trainer)
            return {**out, "logprobs": [[lp + shift for lp in row] for row in out["logprobs"]]}

    model, tok = load(tiny, lora=True)
    rows = [{"prompt": p} for p in PROMPTS[:2]]
    config = dict(per_device_train_batch_size=4, max_completion_length=12, seed=42, scale_rewards="group")
    t = grpo_trainer(model, tok, tmp_path, length_reward, rows, 4, 2, config, rollout_func=rollout, is_cap=is_cap)
    data = t.train_dataset
    torch.manual_seed(1234)
    inputs = t._generate_and_score_completions([data[0], data[0], data[1], data[1]])
    t.current_gradient_accumulation_steps = 1  # set by the training loop, which we bypass here
    loss = t.compute_loss(t.model, inputs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in t.model.parameters() if p.requires_grad])
    return inputs["completion_ids"].tolist(), inputs["advantages"].tolist(), loss.item(), grads, t._metrics["train"]


def assert_scaled(grads: torch.Tensor, reference: torch.Tensor, factor: float) -> None:
    """`grads` points where `reference` does and is `factor` times as long (to TRL's scoring noise)."""
    cosine = torch.nn.functional.cosine_similarity(grads, reference, dim=0).item()
    assert cosine > 0.999, cosine
    assert grads.norm().item() == pytest.approx(factor * reference.norm().item(), rel=0.02)


@pytest.mark.slow
def test_grpo_loss_matches_stock_trl_on_a_fixed_batch(tiny, tmp_path):
    """Same seed, same batch: TRL's own generation and our engine give the same completions and loss."""
    stock_ids, stock_adv, stock_loss, stock_grads, _ = one_grpo_batch(tiny, tmp_path, engine=False)
    ours_ids, ours_adv, ours_loss, ours_grads, metrics = one_grpo_batch(tiny, tmp_path, engine=True)
    assert stock_ids == ours_ids
    assert stock_adv == pytest.approx(ours_adv, abs=1e-6)
    assert any(abs(a) > 0 for a in stock_adv)
    # identical weights: the engine's log-probs equal a plain forward pass to 1e-6; TRL 1.16 scores with its
    # tiled LM-head kernel, which differs from a plain fp32 forward by up to ~5e-3 per token on CPU
    # (measured). So the truncated-IS weights are 1 to within that, and loss and gradient are TRL's.
    assert metrics["rollout/logprob_gap"][0] < 5e-3
    assert metrics["rollout/is_clipped"] == [0.0]
    assert ours_loss == pytest.approx(stock_loss, abs=1e-3)
    assert_scaled(ours_grads, stock_grads, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize(("shift", "factor"), [(0.5, math.exp(-0.5)), (-1.0, 2.0), (-1.0, None)])
def test_engine_trainer_mismatch_is_logged_and_corrected(tiny, tmp_path, shift, factor):
    """A sampler whose log-probs are off by `shift`: the gap is logged, and each token's loss is weighted by
    min(pi_train / pi_engine, cap) (truncated importance sampling); cap 0 turns the weighting off."""
    *_, stock_grads, _ = one_grpo_batch(tiny, tmp_path, engine=False)
    *_, grads, metrics = one_grpo_batch(tiny, tmp_path, engine=True, shift=shift, is_cap=2.0 if factor else 0.0)
    assert metrics["rollout/logprob_gap"] == [pytest.approx(abs(shift), abs=1e-3)]
    assert stock_grads.abs().sum() > 0
    # every token is off by the same amount, so the whole policy gradient scales by the truncated ratio
    assert_scaled(grads, stock_grads, factor or 1.0)
    if factor == 2.0:
        assert metrics["rollout/is_clipped"] == [1.0]


@pytest.mark.parametrize("nf4", [False, True])
def test_released_buffers_are_rebuilt_and_the_merged_weights_equal_a_fresh_merge(tiny, nf4):
    """Between rollouts the engine gives its cache and merged copy back (storage size 0); the next rollout, after an
    optimizer step on the adapter, rebuilds them from the base and the adapter as it now is: the same weights a
    fresh merge gives, the same tokens as transformers' generate, the same objects (a captured step stays valid)."""
    from r1lite.train.rollout.buffers import held_bytes
    from r1lite.train.rollout.merged import merged_copy

    model, tok = load(tiny, lora=True, nf4=nf4)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=12, greedy=True, merge="merged"))
    first = engine.generate(grouped(tok, 2), 2)
    state, copy = engine._states[6], engine._merged
    assert held_bytes(engine.held()) > 0
    assert engine.release() > 0 and held_bytes(engine.held()) == 0
    with torch.no_grad():  # an optimizer step on the adapter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-3.0)
    prompts = [tok("Try 9 - 3 = 6").input_ids] * 2 + [tok("We need 24").input_ids] * 2 + [tok("x").input_ids] * 2
    second = engine.generate(prompts, 2)
    assert engine._states[6] is state and engine._merged is copy
    fresh = merged_copy(model, torch.float32).state_dict()
    for name, tensor in copy.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
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
    second = engine.generate([tok("We need 24 from").input_ids] * 6, 2)  # other prompts, other prompt length
    assert first.stats["compiled"] and second.stats["compiled"], "the compiled step fell back to eager"
    assert dict(dynamo.utils.counters["graph_break"]) == {}
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    eager = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=10, greedy=True, merge=merge))
    assert first.completion_ids == eager.generate(grouped(tok, 2), 2).completion_ids


def test_eval_generation_is_the_same_with_the_engine(tiny):
    """Eval uses the engine on CUDA; greedy completions (text and length) must not change with it."""
    from r1lite.stages.evaluate import generate

    model, tok = load(tiny, lora=True)
    stock = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=2)
    ours = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, engine=True)
    assert ours == stock
    sampled = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=2, sample=True, n=3, engine=True)
    assert [len(g) for g in sampled] == [3, 3, 3]


# ----------------------------------------------------------------------------------------------
# Memory: what the engine allocates, and what it leaves behind
# ----------------------------------------------------------------------------------------------


def load_qlora(path: str, compute_dtype: str = "bfloat16"):
    """The policy as GRPO trains it on CPU: NF4 linear layers computing in bf16, fp32 embeddings and norms, LoRA."""
    from peft import get_peft_model

    from r1lite.recipe.config import LoraConfig, ModelConfig, QuantizationConfig
    from r1lite.train.models import load_model, load_tokenizer, lora_config

    model = load_model(
        path,
        ModelConfig(name=path, device="cpu", gradient_checkpointing=False),
        QuantizationConfig(mode="nf4", compute_dtype=compute_dtype),
    )
    return get_peft_model(model, lora_config(LoraConfig(r=4, alpha=8))), load_tokenizer(path)


@pytest.mark.parametrize("merge", ["unmerged", "merged"])
def test_cache_costs_what_the_engine_plans_for(tiny, merge):
    """K/V take the embeddings' dtype (fp32 here), not the 4-bit compute dtype; bf16 in the merged copy."""
    model, tok = load_qlora(tiny)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=8, merge=merge, stop_at_eos=False))
    engine.generate(grouped(tok, 2), 2, torch.Generator().manual_seed(0))
    [(batch, state)] = engine._states.items()
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in state.cache.layers)
    planned = engine.cache_bytes(batch, state.length, torch.bfloat16, state.merged)
    assert real == pytest.approx(planned, rel=0.05)
    assert state.cache.layers[0].keys.dtype == (torch.bfloat16 if merge == "merged" else torch.float32)


@pytest.mark.parametrize("merge", ["unmerged", "merged"])
def test_every_path_is_checked_against_free_memory_before_allocating(tiny, merge):
    from r1lite.train.rollout.engine import RolloutMemoryError

    model, tok = load_qlora(tiny)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=8, merge=merge))
    from r1lite.plan.memory import ALLOCATOR_SLACK

    tensors = engine.rollout_bytes(6, 256, torch.bfloat16, merge == "merged") + engine.reserve()
    need = math.ceil(tensors * (1 + ALLOCATOR_SLACK))  # what `plan.rollout_fits` asks for, without headroom
    assert engine.choose_merge(6, 256, torch.bfloat16, torch.device("cpu"), free=need) == (merge == "merged")
    with pytest.raises(RolloutMemoryError, match=r"lower grpo\.prompts_per_step"):
        engine.choose_merge(6, 256, torch.bfloat16, torch.device("cpu"), free=need - 1)


def qwen3b_on_meta(lora_r: int = 32):
    """Qwen2.5-3B's shape with LoRA, on the meta device: its sizes, none of its memory."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16)
    config = Qwen2Config(**shape, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))


def test_merge_decision_reserves_the_optimizer_state_not_the_activations(tiny):
    """Rollout and training time-share the card: a merged copy needs room beside the optimizer state that lives
    through the step (gradients and Adam moments of the adapter), not beside a micro-batch's activations."""
    from r1lite.plan.memory import ALLOCATOR_SLACK, optimizer_state_bytes

    model = qwen3b_on_meta()
    _, tok = load(tiny)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=1024)).rollout_bytes(64, 1280, torch.bfloat16, True)

    def decide(train: bool, free: int) -> bool:
        engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=1024, train=train))
        return engine.choose_merge(64, 1280, torch.bfloat16, torch.device("meta"), free=free, total=8 * 2**30)

    with_optimizer = math.ceil((need + optimizer_state_bytes(trainable)) * (1 + ALLOCATOR_SLACK)) + 2**30
    assert decide(train=True, free=with_optimizer) is True  # 1 GiB: the headroom a card keeps (10 %, at least 1)
    assert decide(train=True, free=with_optimizer - 2**27) is False
    assert decide(train=False, free=with_optimizer - 2**27) is True  # an eval has no optimizer state


@pytest.mark.parametrize("merge", ["unmerged", "merged"])
def test_prefill_computes_only_the_last_positions_logits(tiny, merge):
    """[prompts, prompt_len, vocab] logits are several GiB at Qwen's vocabulary; the prefill needs one position."""
    model, tok = load(tiny, lora=True)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=4, greedy=True, merge=merge))
    engine.generate(grouped(tok, 2), 2)  # builds the state (and the merged copy)
    runner = engine._states[6].runner
    shapes = []
    handle = (
        base_model_of_runner(runner)
        .get_output_embeddings()
        .register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    )
    try:
        engine.generate(grouped(tok, 2), 2)
    finally:
        handle.remove()
    assert shapes and all(s[1] == 1 for s in shapes), shapes


def head_copies(model, run) -> list[tuple[int, ...]]:
    """Shapes of the batched products `run()` makes with the LM head's weight expanded to the batch (a
    copy of the head per row: torch.matmul's path for a sliced input and a frozen weight)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab, hidden = base_model_of_runner(model).get_output_embeddings().weight.shape
    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.bmm.default and tuple(args[1].shape[1:]) == (hidden, vocab):
                seen.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    with Watch():
        run()
    return seen


@pytest.mark.parametrize("merge", ["unmerged", "merged"])
def test_prefill_never_copies_the_head_per_prompt(tiny, merge):
    """Measured: a 32-prompt eval prefill of SmolLM2 copied its frozen head 32 times (1.8 GB, 2 s) because
    `logits_to_keep` hands the head a sliced, non-contiguous input; the engine's models get a contiguous one."""
    model, tok = load(tiny, lora=True)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=4, greedy=True, merge=merge))
    engine.generate(grouped(tok, 2), 2)  # builds the state (and the merged copy)
    assert head_copies(engine._states[6].runner, lambda: engine.generate(grouped(tok, 2), 2)) == []


def test_a_loaded_model_trains_its_kept_logits_without_copying_the_head(tiny):
    """The GRPO loss scores the completion through `logits_to_keep` with the base frozen (LoRA, 4-bit)."""
    from peft import LoraConfig, get_peft_model

    from r1lite.recipe.config import ModelConfig, QuantizationConfig
    from r1lite.train.models import load_model

    model = get_peft_model(
        load_model(tiny, ModelConfig(name=tiny, device="cpu"), QuantizationConfig(mode="none")),
        LoraConfig(r=4, target_modules="all-linear"),
    )
    ids = torch.randint(0, 100, (3, 12))

    def step():
        model(input_ids=ids, logits_to_keep=5).logits.float().logsumexp(-1).sum().backward()

    assert head_copies(model, step) == []


def base_model_of_runner(runner):
    from r1lite.train.rollout.merged import base_model_of

    return base_model_of(runner)


@pytest.mark.parametrize(("training_engine", "generations"), [(False, 2), (True, 2), (True, 4)])
def test_periodic_eval_adds_no_second_cache(tiny, tmp_path, training_engine, generations):
    """The held-out eval inside GRPO decodes on the training engine's buffers in the rollout's own batch shape
    (gpu-24gb: 128 rollout rows, eval batch 64), or frees its own engine when done."""
    from types import SimpleNamespace

    from r1lite.recipe.load import load_recipe
    from r1lite.stages import data
    from r1lite.stages.grpo import PeriodicEval
    from r1lite.stages.grpo_rollout import settings_from_recipe
    from r1lite.train.rollout.registry import engine_for, live_engines

    recipe = load_recipe(
        "countdown",
        "cpu",
        [
            f"model.name={tiny}",
            "grpo.rollout=engine",
            "data.dir=data/t",
            "data.train_size=8",
            "data.test_size=4",
            "grpo.max_completion_length=8",
            "grpo.eval_examples=3",
            "eval.batch_size=4",
        ],
    )
    data.run(recipe.data)
    model, tok = load(tiny, lora=True)
    trainer_engine = None
    rows = 2 * generations
    if training_engine:  # what make_rollout_func sets up: a pinned engine that has rolled out 2 x G rows
        trainer_engine = engine_for(model, tok, settings_from_recipe(recipe))
        trainer_engine.pinned = True
        trainer_engine.generate(grouped(tok, generations)[:rows], generations)
        state = trainer_engine._states[rows]
    callback = PeriodicEval(recipe, tok, tmp_path / "m.jsonl", every=1)
    callback.on_step_end(None, SimpleNamespace(global_step=1, is_world_process_zero=True), None, model=model)
    assert (tmp_path / "m.jsonl").is_file()
    if training_engine:  # 3 prompts padded to the rollout's rows (not to eval.batch_size=4): the same buffers
        assert live_engines() == 1 and trainer_engine._states == {rows: state}
    else:
        assert "_r1lite_engines" not in model.__dict__ and live_engines() == 0


# ----------------------------------------------------------------------------------------------
# Decode speed: grouped-query attention without repeated K/V, few device syncs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True, "tail"])
def test_grouped_decode_attention_matches_transformers_sdpa(masked):
    """Same numbers as transformers' SDPA over repeated K/V; with an unwritten, masked tail (a static cache early
    in a rollout) too, which the CPU step leaves out (rows end at different slots, the last at slot 29)."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import repeat_kv

    from r1lite.train.rollout.attention import grouped_decode_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=4, is_causal=True)
    q, k, v = torch.randn(3, 8, 1, 16), torch.randn(3, 2, 40, 16), torch.randn(3, 2, 40, 16)
    mask = (torch.rand(3, 1, 1, 40) > 0.3) if masked else None
    if masked == "tail":
        mask = torch.arange(40)[None, None, None, :] < torch.tensor([12, 30, 21])[:, None, None, None]
    ours, _ = grouped_decode_attention(module, q, k, v, mask, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, repeat_kv(k, 4), repeat_kv(v, 4), attn_mask=mask, scale=0.25
    ).transpose(1, 2)
    assert ours.shape == (3, 1, 8, 16)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", ["unmerged", "merged"])
def test_compiled_decode_never_materialises_repeated_kv(tiny, merge):
    """Trace the decode step as CUDA-graph capture would: no tensor in it has K/V repeated to every query head."""
    import torch._dynamo as dynamo

    graphs = []

    def record(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    model, tok = load(tiny, lora=True)
    settings = RolloutSettings(max_new_tokens=6, greedy=True, merge=merge, compile_backend=record)
    engine = RolloutEngine(model, tok, settings)
    dynamo.reset()
    out = engine.generate(grouped(tok, 2), 2)
    assert out.stats["compiled"] and len(graphs) == 1
    state = engine._states[6]
    heads = model.config.num_attention_heads
    shapes = [
        tuple(n.meta["example_value"].shape)
        for n in graphs[0].graph.nodes
        if isinstance(n.meta.get("example_value"), torch.Tensor) and n.meta["example_value"].dim() == 4
    ]
    repeated = [s for s in shapes if s[0] == 6 and s[1] == heads and s[2] == state.length]
    assert shapes and not repeated, repeated
    eager = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=6, greedy=True, merge=merge))
    assert out.completion_ids == eager.generate(grouped(tok, 2), 2).completion_ids


def test_batch_stop_is_checked_once_every_sync_every_tokens(tiny, monkeypatch):
    """Checking `done.all()` waits for the device; the engine does it every `sync_every` tokens, not every token."""
    model, tok = load(tiny)
    with torch.no_grad():  # every completion is exactly [EOS]
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight.abs().max() * 50
        model.model.embed_tokens.weight.copy_(model.lm_head.weight)
    calls = []
    build = RolloutEngine._decode_step

    def counting(self, state, device):
        step = build(self, state, device)
        return lambda *args: (calls.append(1), step(*args))[1]

    monkeypatch.setattr(RolloutEngine, "_decode_step", counting)
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=64, greedy=True, sync_every=16))
    out = engine.generate(grouped(tok, 2), 2)
    assert all(c == [tok.eos_token_id] for c in out.completion_ids)
    assert len(calls) == 15  # stopped at the first check, after 16 tokens, not after the first token


# ----------------------------------------------------------------------------------------------
# What a GPU would show, modelled on CPU: overflowed logits, a tied head, the head's precision
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["auto", "multinomial"])
def test_nan_logits_are_sampled_without_an_assert(sampler):
    """On CUDA `torch.multinomial` on a NaN/inf row is a device-side assert that kills the process (on CPU, an
    exception): `sample` never hands it one, and the row's log-prob is not finite, for the engine to report."""
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[nan, 1.0, 0.0], [1.0, 2.0, 0.5], [inf, 1.0, 0.0], [-inf, -inf, -inf]])
    settings = RolloutSettings(top_p=0.9, sampler=sampler)
    tokens, logps = sample(logits, settings, torch.Generator().manual_seed(0))
    assert tokens.shape == (4,) and not logps[[0, 2, 3]].isfinite().any() and logps[1].isfinite()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("greedy", [False, True])
def test_nan_logits_stop_the_rollout_with_the_setting_to_change(tiny, device, greedy):
    """fp16 activations that overflow (Qwen2.5 on a T4/V100) give NaN logits: one line naming model.dtype,
    not a device-side assert (sampled) or a rollout of garbage tokens (greedy)."""
    from r1lite.errors import PrecisionError

    model, tok = load(tiny, device=device)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=4, greedy=greedy))
    with pytest.raises(PrecisionError, match=r"NaN or infinite in float32.*--set model\.dtype=float32"):
        engine.generate(grouped(tok, 2), 2, torch.Generator(device).manual_seed(0))


def test_the_nan_error_names_bf16_or_fp32_for_an_fp16_policy():
    from r1lite.train.rollout.sampling import nonfinite_error

    message = str(nonfinite_error(torch.float16))
    assert "float16" in message and "model.dtype=bfloat16" in message and "model.dtype=float32" in message
    assert "\n" not in message


def storage_bytes(model) -> int:
    """Bytes of the distinct storages a model's parameters and buffers hold (a tied head counted once)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_merged_copy_never_holds_a_second_head(tiny, device):
    """`Module.to_empty` unties tied weights: the merged copy held a second LM head (0.58 GiB on Qwen2.5-3B) until
    `tie_weights()`, which neither the engine's memory estimate nor the plan counts. It must allocate exactly
    what a tied model holds, at every moment."""
    from r1lite.train.memtrack import PeakTensorBytes
    from r1lite.train.rollout.merged import merged_copy, param_bytes

    model, _ = load(tiny, device=device)  # fp32 like the copy: no conversion temporaries, so the peak is exact
    assert model.config.tie_word_embeddings
    head_bytes = model.lm_head.weight.nbytes
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        copy = merged_copy(model, torch.float32)
        added = torch.cuda.max_memory_allocated() - before  # in 512-byte blocks
    else:
        with PeakTensorBytes(model) as tracker:
            copy = merged_copy(model, torch.float32)
        added = tracker.peak - storage_bytes(model)
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    held = storage_bytes(copy)
    assert held - sum(b.nbytes for b in copy.buffers()) == param_bytes(model, torch.float32)  # what the engine plans
    assert held <= added < held + head_bytes // 2, (added, held, head_bytes)


@pytest.fixture(scope="module")
def tiny_large(tmp_path_factory):
    """Logits of several units, so their rounding to bf16 (a step of 2^-7 at 1-2, 2^-5 at 4-8) shows."""
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("large") / "m", hidden=64, layers=2, init_std=0.3))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("merge", ["unmerged", "merged"])
def test_engine_logprobs_come_from_an_fp32_head(tiny_large, device, merge):
    """TRL scores tokens with an fp32 fold of the head's products; log-probs of bf16 logits would add their rounding
    to `rollout/logprob_gap` on a GPU. The engine's equal an fp32 head's on the hidden states it computed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_large, dtype=torch.bfloat16).to(device).eval()
    tok = AutoTokenizer.from_pretrained(tiny_large)
    hidden = []  # the final norm's output at each forward: [rows, positions, H]
    model.model.norm.register_forward_hook(lambda _m, _i, out: hidden.append(out[:, -1, :]))
    settings = RolloutSettings(max_new_tokens=6, merge=merge, dtype="bfloat16", stop_at_eos=False)
    engine = RolloutEngine(model, tok, settings)
    if merge == "merged":
        engine.generate(grouped(tok, 1), 1)  # builds the merged copy; hook its norm instead
        hidden.clear()
        engine._merged.model.norm.register_forward_hook(lambda _m, _i, out: hidden.append(out[:, -1, :]))
    out = engine.generate(grouped(tok, 1), 1, torch.Generator(device).manual_seed(0))
    weight = model.lm_head.weight
    tokens = torch.tensor(out.completion_ids, device=device)  # [rows, steps]
    ours = torch.tensor(out.logprobs)
    fp32, bf16 = [], []
    for t, h in enumerate(hidden):  # the prefill, then one decode step per token
        chosen = tokens[:, t : t + 1]
        fp32.append(torch.log_softmax(h.float() @ weight.float().t(), -1).gather(-1, chosen).squeeze(-1).cpu())
        bf16.append(torch.log_softmax((h @ weight.t()).float(), -1).gather(-1, chosen).squeeze(-1).cpu())
    assert len(hidden) == tokens.shape[1]
    if device == "cpu":  # the CPU trainer's head takes the model's bf16 logits too: the engine matches it
        torch.testing.assert_close(ours, torch.stack(bf16, 1), atol=1e-6, rtol=0)
        return
    torch.testing.assert_close(ours, torch.stack(fp32, 1), atol=1e-4, rtol=0)
    assert (ours - torch.stack(bf16, 1)).abs().max() > 1e-3  # what bf16 logits would have given


def test_the_fp32_head_folds_half_precision_products_in_fp32(tiny_large):
    """`last_logits` with a head (what the engine uses on CUDA) gives an fp32 head's logits; on CPU it upcasts."""
    from transformers import AutoModelForCausalLM

    from r1lite.train.rollout.attention import last_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_large, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[:, -1, :]
        ours = last_logits(model, model.lm_head, input_ids=ids)
    torch.testing.assert_close(ours, hidden.float() @ model.lm_head.weight.float().t(), atol=1e-5, rtol=0)
    assert ours.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# The CPU sampler: inverse CDF, one uniform per row
# ----------------------------------------------------------------------------------------------


def test_inverse_cdf_draws_each_token_in_proportion_and_never_a_masked_one():
    """200k draws from one distribution land within 4 standard errors of each probability; tokens the
    filters masked (probability 0, at either end and in the middle) are never drawn."""
    from r1lite.train.rollout.sampling import inverse_cdf

    probs = torch.tensor([0.0, 0.1361, 0.2242, 0.0, 0.6094, 0.0303, 0.0])
    n = 200_000
    drawn = inverse_cdf(probs.repeat(n, 1), torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=len(probs)).double() / n
    assert freq[probs == 0].sum() == 0
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert ((freq - probs.double()).abs() <= 4 * se + 1e-12).all(), (freq, probs)


@pytest.mark.parametrize("drawn", [0.0, 1 - 2**-24])
def test_inverse_cdf_at_the_ends_of_its_uniform_draws_a_token_that_can_be_drawn(monkeypatch, drawn):
    """u = 1 (torch.rand gave 0) picks the last token with probability > 0, u = 2^-24 the first: never a masked
    token before, between or after them."""
    from r1lite.train.rollout.sampling import inverse_cdf

    probs = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.7, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda shape, **_: torch.full(shape, drawn))
    assert inverse_cdf(probs).tolist() == [4 if drawn == 0.0 else 2]


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_samples_and_their_logprobs_follow_the_temperature_scaled_distribution(temperature):
    """What the importance ratio needs: tokens drawn from softmax(logits / T), each reported with its log-prob under
    that distribution (the quantity TRL recomputes); `multinomial` on request draws what torch.multinomial (and so
    transformers' generate) draws under the same seed."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]]).repeat(40_000, 1)
    settings = Sampling(temperature=temperature)
    tokens, logp = sample(logits, settings, torch.Generator().manual_seed(3))
    expected = torch.softmax(logits[0] / temperature, -1)
    seen = torch.bincount(tokens, minlength=5).float() / len(tokens)
    torch.testing.assert_close(seen, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(
        logp, torch.log_softmax(logits / temperature, -1).gather(-1, tokens[:, None]).squeeze(-1)
    )
    multi, _ = sample(
        logits[:64], Sampling(temperature=temperature, sampler="multinomial"), torch.Generator().manual_seed(3)
    )
    probs = torch.softmax(logits[:64] / temperature, -1)
    assert (
        multi.tolist() == torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(-1).tolist()
    )


def ending_early(monkeypatch, tok):
    """Rows end at different steps, decided by each row's own logits (so by its content, wherever it sits in the
    batch): EOS wherever the greedy choice is a multiple of 7."""
    from r1lite.train.rollout import engine as engine_module

    real = engine_module.last_logits

    def logits(*args, **kwargs):
        out = real(*args, **kwargs)
        out[out.argmax(-1) % 7 == 0, tok.eos_token_id] = 1e4
        return out

    monkeypatch.setattr(engine_module, "last_logits", logits)


def record_windows(monkeypatch) -> list[tuple[int, int]]:
    """(rows, slots) of every decode step, as the cache's window hands them to attention."""
    seen, build = [], RolloutEngine._decode_step

    def recording_step(engine, state, device):
        step = build(engine, state, device)

        def recorded(*args):
            seen.append((state.cache.window.rows, state.cache.window.length))
            return step(*args)

        return recorded

    monkeypatch.setattr(RolloutEngine, "_decode_step", recording_step)
    return seen


@pytest.mark.parametrize("path", ["eager", "captured"])
def test_a_step_reads_the_written_slots_of_the_live_rows_and_tokens_equal_full_attention(tiny, monkeypatch, path):
    """Each decode step attends over the slots written so far, and rows that produced EOS leave the batch; the
    tokens are those of attending over the whole cache with every row kept. `captured`: the CUDA code path on CPU,
    a captured step (traced by aot_eager) whose window and rows are rounded up to buckets, synced every 16 tokens."""
    model, tok = load(tiny, lora=True)
    ending_early(monkeypatch, tok)
    prompts = [tok(f"Using the numbers [{i}, {i + 3}, {2 * i}], create").input_ids for i in range(16)]
    full = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=40, greedy=True, window="full", compact=False))
    expected = full.generate(prompts, 1).completion_ids
    assert len({len(c) for c in expected}) > 3  # rows end at several different steps
    forced = dict(compile=True, compile_backend="aot_eager", sync_every=16) if path == "captured" else {}
    engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=40, greedy=True, **forced))
    windows = record_windows(monkeypatch)
    out = engine.generate(prompts, 1)
    assert out.completion_ids == expected
    assert out.stats["compiled"] == (path == "captured")
    prompt, steps = max(len(p) for p in prompts), max(len(c) for c in expected)

    if path == "eager":  # exactly the written slots: the prompt and the tokens so far, one more each step
        assert [length for _, length in windows] == list(range(prompt + 1, prompt + steps))
    else:  # one bucket of 256 slots (the whole cache here) while the rows fall to half and a quarter of the batch
        assert {length for _, length in windows} == {256}
        assert {rows for rows, _ in windows} <= {16, 8, 4}
    live = [sum(len(c) > t for c in expected) for t in range(1, steps)]
    assert [rows for rows, _ in windows][-1] < 16 and all(r >= n for (r, _), n in zip(windows, live, strict=True))


def test_during_a_training_step_the_rollouts_cache_and_merged_copy_are_not_held(tiny, tmp_path, monkeypatch):
    """Rollout and training time-share the device: when the loss of a GRPO step is computed, the engine that
    rolled the batch out holds no storage (its cache and merged copy went back to the allocator), and the next
    step's rollout rebuilds them."""
    from r1lite.recipe.load import load_recipe
    from r1lite.stages import data, grpo
    from r1lite.train.grpo_trainer import GRPOTrainer
    from r1lite.train.rollout.buffers import held_bytes
    from r1lite.train.rollout.registry import engine_tensors

    held, rolled, compute_loss = [], [], GRPOTrainer.compute_loss
    generate = RolloutEngine.generate

    def measuring(trainer, model, inputs, *args, **kwargs):
        held.append(held_bytes(engine_tensors(trainer.accelerator.unwrap_model(trainer.model))))
        return compute_loss(trainer, model, inputs, *args, **kwargs)

    def rolling(engine, *args, **kwargs):
        out = generate(engine, *args, **kwargs)
        rolled.append(held_bytes(engine.held()))
        return out

    monkeypatch.setattr(GRPOTrainer, "compute_loss", measuring)
    monkeypatch.setattr(RolloutEngine, "generate", rolling)
    sets = [f"model.name={tiny}", "data.dir=data/t", "data.train_size=16", "data.test_size=4", "sft.enabled=false"]
    sets += ["grpo.rollout=engine", "grpo.rollout_merge=merged", "grpo.max_steps=2", "grpo.prompts_per_step=2"]
    sets += ["grpo.num_generations=2", "grpo.micro_batch_size=4", "grpo.max_completion_length=8", "grpo.eval_every=0"]
    recipe = load_recipe("countdown", "cpu", [*sets, "tracking.wandb=disabled"])
    data.run(recipe.data)
    grpo.run(recipe, tmp_path / "run")
    assert len(held) == 2 and len(rolled) == 2
    assert all(r > 0 for r in rolled)  # each rollout had its cache and merged copy...
    assert held == [0, 0]  # ...and no training step did
