"""Device memory in bytes, part by part: weights, adapters, KV cache, activations, and the engine's decisions.

    >>> kv_bytes(SHAPES["qwen/qwen2.5-3b"], rows=64, length=1280, act_bytes=2) / GIB    # 2.8
    >>> rollout_fits(need, reserve, free, total)           # the merge rule the planner and the engine share

Counts what r1lite's stages allocate, the way transformers 5.25 / TRL 1.16 / PEFT 0.21 / bitsandbytes 0.50
allocate it (see each function). Torch-free and without r1lite imports beyond the shapes, so the rollout engine
and the planner call the same functions with the same bytes (tests/test_plan.py asserts they agree).
"""

from __future__ import annotations

from r1lite.plan.shapes import Shape

GIB = 2**30  # the one definition r1lite's planner, cost, rollout and benchmarks use

# Device memory a process holds outside PyTorch's allocator (so outside max_memory_allocated): the CUDA context
# and the kernel modules it loads. A bare context takes 0.27 GiB with CUDA's lazy module loading and 0.62 GiB
# without (pytorch/pytorch#86509); with every torch kernel loaded transformers' "Model training anatomy" measured
# 1,343 MB and quotes 1-2 GB. A training process adds cuBLAS/cuBLASLt, Triton (TRL's fused LM head) and
# bitsandbytes modules, and NCCL's buffers under several processes. 1.0 GiB until `make gpu-check` measures it
# (each profile's `cuda_context_gib`: device memory in use minus what the allocator reserved).
CUDA_CONTEXT_GIB = 1.0
ALLOCATOR_SLACK = 0.05  # fragmentation of PyTorch's caching allocator, share of tensor bytes
HEADROOM = 0.10  # a plan "fits comfortably" with this share of the card left over


def weight_bytes(shape: Shape, mode: str, double_quant: bool, dtype_bytes: int) -> int:
    """The frozen base: bitsandbytes quantizes the decoder linears; embeddings, norms, biases stay in dtype.

    NF4/FP4: 4 bits per weight, one absmax per 64 weights (fp32, or 8-bit with one fp32 per 256 blocks
    under double quantization); int8: one byte per weight plus one fp32 scale per output row.
    """
    linear = shape.linear_params
    if mode in ("nf4", "fp4"):
        absmax = linear / 64 * (1 + 4 / 256) if double_quant else linear / 64 * 4
        quantized = linear / 2 + absmax
    elif mode == "int8":
        quantized = linear + shape.layers * sum(out for _, out in shape.linear_shapes().values()) * 4
    else:
        quantized = linear * dtype_bytes
    return int(quantized + shape.other_params * dtype_bytes)


def lora_bytes(trainable: int, adapter_bytes: int = 4, training: bool = True) -> int:
    """Adapters: weights, and when training their gradients and AdamW's two moments, all in the adapter dtype."""
    return trainable * adapter_bytes * (4 if training else 1)


def kv_bytes(shape: Shape, rows: int, length: int, act_bytes: int) -> int:
    """K and V of every layer for `rows` sequences of `length` tokens, in the activations' dtype."""
    return 2 * shape.layers * rows * shape.kv_heads * shape.d * length * act_bytes


def training_activation_parts(
    shape: Shape,
    micro_batch: int,
    seq_len: int,
    grad_ckpt: bool,
    act_bytes: int,
    compute_bytes: int,
    lora_cast_copies: bool,
    on_cpu: bool = False,
    scored: int | None = None,
) -> dict[str, int]:
    """Activations of one micro-batch at the peak of its backward pass, in two parts.

    `activations_kept`: what the forward leaves for the backward. Per token and layer: the layer input
    and the normed input of both blocks, q/k/v, the rotated q/k and the attention output, the MLP's
    gate, up, activation and product (4 x intermediate); bf16 norms also keep an fp32 upcast of their
    input; with fp32 LoRA weights under bf16 autocast, PEFT casts each adapted layer's input and autocast
    keeps a bf16 copy for the adapter's backward. CPU SDPA with a padding mask takes the math path, which
    keeps the [batch, heads, seq, seq] attention weights. With gradient checkpointing only each layer's
    input is kept and a layer's worth is rebuilt during its backward.

    `backward_working_set`: the largest transient of the backward, either TRL 1.16's fused LM head (one
    [4,096 tokens x 32,768] logits tile, allocated at full width whatever the vocabulary, plus the fp32
    gradient of the hidden states) or one layer's gradients (2 hidden + 2 intermediate per token) on top
    of its recomputed activations. On CUDA a Triton kernel folds each tile in place; on CPU TRL's torch
    fallback makes ~7 fp32 temporaries of the tile's used width (measured: bench/plan_check.py). GRPO on
    CPU (`scored`: completion tokens per sequence) scores with r1lite's plain head instead: the logits of
    the completion, their temperature-scaled copy, log-softmax and the entropy's two temporaries, fp32.
    """
    h, i, q, kv = shape.hidden, shape.intermediate, shape.heads * shape.d, shape.kv_heads * shape.d
    tokens = micro_batch * seq_len
    per_token = (4 * h + 3 * q + 3 * kv + 4 * i) * act_bytes
    if act_bytes == 2:
        per_token += 2 * h * 4  # RMSNorm's fp32 upcast of its input, kept for the backward
    if lora_cast_copies:
        per_token += (6 * h + i) * 2
    layer = tokens * per_token
    if on_cpu:
        layer += micro_batch * shape.heads * seq_len * seq_len * 4
    transient = tokens * (2 * h + 2 * i) * act_bytes
    head = min(tokens, 4096) * 32768 * compute_bytes + tokens * h * 4
    if on_cpu and scored is not None:  # r1lite.train.grpo_trainer's plain head
        head = 5 * micro_batch * scored * shape.vocab * 4 + tokens * h * 4
    elif on_cpu:
        head += 7 * min(tokens, 4096) * min(shape.vocab, 32768) * 4
    if grad_ckpt:
        kept = shape.layers * tokens * h * act_bytes
        working = max(head, layer + transient)
    else:
        kept = shape.layers * layer
        working = max(head, transient)
    return {"activations_kept": int(kept), "backward_working_set": int(working)}


def decode_logits_bytes(shape: Shape, rows: int) -> int:
    """One decode step's logits in fp32 and sampling's copies (scaled, softmax, filtered)."""
    return rows * shape.vocab * 4 * 4


def optimizer_state_bytes(trainable: int) -> int:
    """What training adds to a loaded adapter and keeps through a GRPO step: its gradients and AdamW's two moments.
    The rollout's buffers must fit beside it (`rollout_fits`); training's activations need not, as the rollout's
    buffers are released before they exist."""
    return lora_bytes(trainable) - lora_bytes(trainable, training=False)


def graph_pool_bytes(shape: Shape, rows: int) -> int:
    """The private memory pool of a captured decode step: its logits and the layer-sized temporaries it keeps."""
    return rows * (shape.vocab * 4 + (8 * shape.hidden + 4 * shape.intermediate) * 2)


# ----------------------------------------------------------------------------------------------
# Decisions the planner and the rollout engine share (one function each, called by both)
# ----------------------------------------------------------------------------------------------

# Compiled (CUDA-graph) decode per engine path, from GPU measurements: under `grpo.rollout_compile: auto` a
# path is captured only once `bench/gpu_check.py` has shown on a GPU that it works and is faster than
# eager decoding. Neither has been measured yet (bench/NOTES.md), so both decode eagerly by default.
COMPILE_PROVEN: dict[str, bool] = {"merged": False, "unmerged": False}


def compiles(setting: bool | str, merged: bool, on_cuda: bool) -> bool:
    """Whether the engine captures its decode step: never off CUDA; `auto` only on a path proven on a GPU."""
    if not on_cuda or setting is False:
        return False
    return setting is True or COMPILE_PROVEN["merged" if merged else "unmerged"]


def headroom_bytes(total: int) -> int:
    """Memory a stage leaves free on a card of `total` bytes: HEADROOM of it, at least 1 GiB."""
    return int(max(GIB, HEADROOM * total))


def rollout_fits(need: int, reserve: int, free: int, total: int, headroom: bool = True) -> bool:
    """The engine's memory rule: a rollout's buffers (`need`) beside the stage's `reserve` (the training step in
    GRPO, nothing in an eval), with allocator slack, in `free` bytes, keeping the headroom when asked.

    With headroom it decides whether LoRA is merged for decoding; without, whether the rollout can run at all.
    """
    margin = headroom_bytes(total) if headroom else 0
    return (need + reserve) * (1 + ALLOCATOR_SLACK) + margin <= free


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
