"""The merged working copy: a plain dense model equal to the (dequantized 4-bit) base plus the LoRA deltas.

    >>> copy = merged_copy(peft_model, torch.bfloat16)     # decodes with plain matmuls, no per-step dequantization
    >>> release(weights(copy)); fill(copy, peft_model, torch.bfloat16)   # freed for training, rebuilt for a rollout

Built on the meta device and filled tensor by tensor (no random init, one tensor per tied parameter), so it costs
exactly `param_bytes` and consumes no random numbers that seeded sampling relies on. Between rollouts the GRPO
stage gives its storage back (r1lite.train.rollout.buffers.release) and `fill` rebuilds it from the 4-bit base and
the current adapter: a merged 16-bit copy never sits beside the training step's activations.
"""

from __future__ import annotations

from typing import Any

import torch

from r1lite.train.models import contiguous_head
from r1lite.train.rollout.buffers import restore


def _is_lora(module: Any) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer)


def _dense(module: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A parameter of `module` as a dense tensor: dequantized if bitsandbytes, LoRA delta added if adapted."""
    if _is_lora(module):
        w = _dense(module.base_layer, name, torch.float32)
        if name == "weight" and not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    w = w + module.get_delta_weight(adapter).float()
        return w.to(dtype)
    p = getattr(module, name)
    if type(p).__name__ in ("Params4bit", "Int8Params"):
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(p, state=getattr(module, "state", None)).to(dtype)
    return p.detach().to(dtype)


def base_model_of(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (with LoRA layers injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged_copy(model: Any, dtype: torch.dtype) -> Any:
    """A plain transformers model whose weights equal the (dequantized) base plus the LoRA deltas."""
    from transformers import AutoModelForCausalLM

    source = base_model_of(model)
    device = next(source.parameters()).device
    # built on the meta device and then filled: no random init (slow, and it would consume the RNG
    # stream that seeded sampling relies on)
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(source.config, dtype=dtype)
    copy.tie_weights()  # a no-op for untied models
    _materialize(copy, device)
    copy.eval().requires_grad_(False)
    fill(copy, model, dtype)
    copy.generation_config = source.generation_config
    contiguous_head(copy)  # frozen: a sliced prefill would copy the whole head per prompt
    return copy


def fill(copy: Any, model: Any, dtype: torch.dtype) -> None:
    """Write every weight and buffer of the merged copy from `model` (restoring released storage first)."""
    source = base_model_of(model)
    restore(weights(copy))
    filled: set[int] = set()
    with torch.no_grad():
        for name, module in copy.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in filled]
            src = source.get_submodule(name) if own or list(module.named_buffers(recurse=False)) else None
            for pname, param in own:  # a tied head is the embeddings' tensor, filled once
                param.copy_(_dense(src, pname, dtype))
                filled.add(id(param))
            for bname, buf in module.named_buffers(recurse=False):
                buf.copy_(getattr(src, bname))


def weights(copy: Any) -> list[torch.Tensor]:
    """The merged copy's parameters and buffers: what `buffers.release` frees between rollouts."""
    return [*copy.parameters(), *copy.buffers()]


def _materialize(model: Any, device: torch.device) -> None:
    """Allocate the parameters and buffers of a model built on the meta device, one tensor per distinct parameter.

    Not `Module.to_empty`: it gives every module a tensor of its own, so a tied LM head becomes a second head
    (0.58 GiB on Qwen2.5-3B) until `tie_weights()`, memory neither the engine's estimate nor the plan counts.
    """
    made: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                if id(param) not in made:
                    made[id(param)] = torch.nn.Parameter(torch.empty_like(param, device=device), requires_grad=False)
                module._parameters[name] = made[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = torch.empty_like(buf, device=device)


def param_bytes(model: Any, dtype: torch.dtype) -> int:
    """Bytes a dense copy of `model` takes in `dtype` (LoRA parameters excluded)."""
    n = sum(
        p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        for name, p in base_model_of(model).named_parameters()
        if "lora_" not in name
    )
    return n * itemsize(dtype)


def itemsize(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def compute_dtype(model: Any) -> torch.dtype:
    """The dtype activations run in: bnb's compute dtype for 4-bit layers, else the embedding dtype."""
    for module in model.modules():
        if hasattr(module, "compute_dtype") and module.compute_dtype is not None:
            return module.compute_dtype
    return model.get_input_embeddings().weight.dtype
