"""The 4-bit (NF4 + LoRA) training path on CPU: adapters that move, gradients that survive an eval pass.

Two library behaviours are modelled here because they decide whether QLoRA learns at all:
TRL 1.16 stores adapters in bf16 on a quantized base, and bitsandbytes 0.50 repacks 4-bit weights into
a non-differentiable CPU inference layout after an eval-mode forward on CPUs with AVX512-BF16.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.recipe.config import ModelConfig, QuantizationConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return {
        arch: str(build_tiny_model(tmp_path_factory.mktemp(arch) / "m", arch=arch, hidden=64))
        for arch in ("qwen2", "llama")
    }


@pytest.fixture
def avx512_bf16(monkeypatch):
    """Make bitsandbytes build layers as it does on CPUs with AVX512-BF16 (Sapphire Rapids, Zen 4), on any CPU."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def load_nf4(path: str, for_training: bool = True):
    from r1lite.train.models import load_model

    return load_model(
        path,
        ModelConfig(name=path, device="cpu", gradient_checkpointing=False),
        QuantizationConfig(mode="nf4", compute_dtype="float32"),
        for_training=for_training,
    )


def lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # with a bias (Qwen2) it crashed; without (Llama) silently wrong
def test_gradients_through_nf4_layers_survive_an_eval_pass(tiny, arch, avx512_bf16):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        load_nf4(tiny[arch]), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    ids = torch.randint(3, 300, (2, 12))
    before = lora_grads(model, ids)
    model.eval()
    with torch.no_grad():  # a held-out eval or a rollout between two training steps
        model(input_ids=ids)
    after = lora_grads(model, ids)
    assert before.keys() == after.keys() and before
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, msg=name)
    # every adapted layer, the lowest included, gets a gradient
    assert all(g.abs().sum() > 0 for n, g in after.items() if "lora_A" in n)


def test_bitsandbytes_still_repacks_after_an_eval_pass(tiny, avx512_bf16, monkeypatch):
    """Pins the library behaviour `keep_trainable_layout` exists for; if this fails, revisit that function."""
    import bitsandbytes
    from bitsandbytes.functional import has_avx512bf16
    from bitsandbytes.nn import Linear4bit

    from r1lite.train.models import keep_trainable_layout

    model = load_nf4(tiny["qwen2"], for_training=False)  # inference load: repacking allowed
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    ids = torch.randint(3, 300, (1, 8))
    model.train()  # no repacking in training mode: the reference uses the trainable layout
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    model.eval()
    with monkeypatch.context() as patch:
        if not has_avx512bf16():
            # bitsandbytes registers the packed layout's matmul only on CPUs with AVX512-BF16: elsewhere a stand-in
            # takes its place (zeros of the right shape), so the repacking before it runs and any other failure raises
            patch.setattr(bitsandbytes, "matmul_4bit", lambda x, w, bias=None, quant_state=None: zeros(x, quant_state))
        for layer in layers:  # an eval-mode forward without grad repacks each layer first
            with torch.no_grad():
                assert layer(torch.zeros(1, layer.in_features)).shape == (1, layer.out_features)
    assert all(m.weight.quant_state.packing_format_for_cpu for m in layers)
    # a packed model can be restored to the trainable layout, with the same weights
    assert keep_trainable_layout(model) == len(layers)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference, atol=2e-3, rtol=2e-3)


def zeros(x: torch.Tensor, quant_state) -> torch.Tensor:
    """What a 4-bit layer's matmul returns in shape: [..., out_features] (its quant state keeps the unpacked shape)."""
    return x.new_zeros(*x.shape[:-1], quant_state.shape[0])


def varied_reward(completion: str, nums=None, target=None) -> tuple[float, str]:
    """Different for (almost) every completion, so every group has advantages of both signs."""
    return (zlib.crc32(completion.encode()) % 1000) / 1000, "hash"


@pytest.mark.slow
def test_nf4_adapters_move_at_the_rl_learning_rate_and_save_in_fp32(tiny, tmp_path, avx512_bf16, monkeypatch):
    """SFT, then 3 GRPO steps at lr 2e-5 with a held-out eval after every step: >= 90 % of adapter entries move."""
    from safetensors.torch import load_file

    from r1lite.tasks import rewards

    monkeypatch.setitem(rewards._REGISTRY, "test_varied", varied_reward)  # registered for this test only
    sets = [
        f"model.name={tiny['qwen2']}",
        "quantization.mode=nf4",  # compute in bf16, as the GPU recipes do
        "data.dir=data/tiny",
        "data.train_size=32",
        "data.test_size=4",
        "sft.examples=8",
        "sft.max_steps=2",
        "grpo.max_steps=3",
        "grpo.learning_rate=2e-5",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=4",
        "grpo.micro_batch_size=8",
        "grpo.max_completion_length=12",
        "grpo.temperature=1.0",
        'grpo.rewards=[{"name": "test_varied", "weight": 1.0}]',
        "grpo.eval_every=1",
        "grpo.eval_examples=2",
        "grpo.save_every=10",
        "tracking.wandb=disabled",
    ]
    args = [x for s in sets for x in ("--set", s)]
    for stage in ("sft", "grpo"):
        result = runner.invoke(app, ["--quiet", stage, "countdown", "-p", "cpu", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "countdown-cpu"
    start = load_file(root / "sft/adapter/adapter_model.safetensors")
    end = load_file(root / "grpo/adapter/adapter_model.safetensors")
    assert start.keys() == end.keys()
    for part in ("lora_A", "lora_B"):
        names = [n for n in end if part in n]
        moved = sum(int((end[n].float() != start[n].float()).sum()) for n in names)
        total = sum(end[n].numel() for n in names)
        assert moved / total >= 0.9, f"only {moved / total:.1%} of {part} entries changed"
    assert {t.dtype for t in end.values()} == {torch.float32}


def test_trl_still_casts_adapters_to_bf16_on_a_quantized_base(tiny, tmp_path):
    """Pins why `keep_fp32_adapters` exists, and checks that it undoes the cast before the optimizer is built."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from r1lite.recipe.config import LoraConfig
    from r1lite.train.models import keep_fp32_adapters, load_tokenizer, lora_config

    args = SFTConfig(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[], max_steps=1, save_strategy="no")
    trainer = SFTTrainer(
        model=load_nf4(tiny["qwen2"]),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "Try 4 * 5", "completion": " = 20"}] * 4),
        processing_class=load_tokenizer(tiny["qwen2"]),
        peft_config=lora_config(LoraConfig()),
    )
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.bfloat16}
    assert keep_fp32_adapters(trainer.model) == len(trainable)
    assert {p.dtype for p in trainable} == {torch.float32}


def test_grpo_starts_from_the_saved_adapter_bit_for_bit(tiny, tmp_path):
    """TRL casts a loaded adapter to bf16 on a 4-bit base before r1lite makes it fp32 again, so GRPO started from a
    rounded adapter, not the one saved by SFT and scored by the warm-up eval. It must start from the file's values."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load_file

    from r1lite.recipe.load import load_recipe
    from r1lite.stages import data
    from r1lite.stages.grpo import build_trainer

    torch.manual_seed(0)
    sft = get_peft_model(
        load_nf4(tiny["qwen2"]), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    sft.save_pretrained(tmp_path / "sft")
    saved = load_file(tmp_path / "sft" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert all((t != t.bfloat16().float()).any() for t in saved.values())  # values bf16 cannot hold
    sets = [f"model.name={tiny['qwen2']}", "quantization.mode=nf4", "data.dir=data/t", "data.train_size=8"]
    recipe = load_recipe("countdown", "cpu", [*sets, "data.test_size=4", "grpo.rollout=trl"])
    data.run(recipe.data)
    trainer = build_trainer(recipe, tmp_path / "run", init_adapter=tmp_path / "sft")
    assert getattr(trainer.model, "is_loaded_in_4bit", False)  # the base TRL casts adapters for
    ours = get_peft_model_state_dict(trainer.model)
    assert ours.keys() == saved.keys()
    for name, value in saved.items():
        assert torch.equal(ours[name], value), name
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
