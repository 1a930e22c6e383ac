"""The rollout's device buffers: a static KV cache read only as far as it is written, rows that ended dropped from it,
and every buffer released between rollouts so training never holds them.

    >>> cache = DecodeCache(config, max_cache_len=384)     # a StaticCache whose layers read `cache.window`
    >>> cache.window.rows, cache.window.length = 48, 130  # this step: 48 rows, 130 written slots
    >>> cache.compact(alive)                               # the rows in `alive` move to the front
    >>> release(tensors); restore(tensors)                 # storage back to the allocator, then reallocated

A static cache is as long as the longest completion, and a batch decodes until its longest row ends; reading the
whole cache every step, and computing rows that already produced EOS, made a step's cost that of the worst case.
Here a decode step attends over `window.length` slots (the prompt and the tokens written so far, or a bucket of
them when the step is captured) and runs `window.rows` rows. The engine moves live rows to the front when enough
have ended, so the cost follows the real lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer


@dataclass
class Window:
    """The part of the cache a decode step reads: the first `rows` rows, the first `length` slots."""

    rows: int
    length: int


class WindowLayer(StaticLayer):
    """A static layer whose update writes the window's rows and returns K/V cut to its length."""

    def __init__(self, max_cache_len: int, window: Window, **kwargs: Any) -> None:
        super().__init__(max_cache_len=max_cache_len, **kwargs)
        self.window = window

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows, length = self.window.rows, self.window.length
        written = key_states.shape[-2]
        slots = torch.arange(written, device=self.device) + self.cumulative_length
        self.cumulative_length.add_(written)
        keys, values = self.keys[:rows], self.values[:rows]
        keys.index_copy_(2, slots, key_states)
        values.index_copy_(2, slots, value_states)
        return keys[:, :, :length], values[:, :, :length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.window.length, 0


class DecodeCache(StaticCache):
    """transformers' StaticCache with `WindowLayer`s: every layer reads the same `window`, set per decode step."""

    def __init__(self, config: Any, max_cache_len: int) -> None:
        super().__init__(config=config, max_cache_len=max_cache_len)
        self.window = Window(0, max_cache_len)
        if not all(type(layer) is StaticLayer for layer in self.layers):  # sliding or hybrid attention: not cut
            raise TypeError("the rollout engine's cache supports full-attention layers only")
        self.layers = [WindowLayer(max_cache_len, self.window) for _ in self.layers]

    def compact(self, keep: torch.Tensor, length: int) -> None:
        """Rows `keep` (ascending) move to the front of every layer, their first `length` slots copied."""
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                buffer[: len(keep), :, :length] = buffer[keep, :, :length]
        self.window.rows = len(keep)

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values)]


def release(tensors: list[torch.Tensor]) -> int:
    """Give the storage of `tensors` back to the allocator (the tensor objects stay, so modules, caches and captured
    steps that refer to them stay valid until `restore`); returns the bytes freed."""
    freed, seen = 0, set()
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            freed += storage.nbytes()
            storage.resize_(0)
    return freed


def restore(tensors: list[torch.Tensor]) -> None:
    """Allocate released storage again, at the size each tensor needs (its contents are undefined until written)."""
    for t in tensors:
        storage = t.untyped_storage()
        need = (t.storage_offset() + _extent(t)) * t.element_size()
        if storage.nbytes() < need:
            storage.resize_(need)


def _extent(t: torch.Tensor) -> int:
    """Elements of storage a tensor spans from its offset."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0


def held_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of storage `tensors` hold now (each storage once)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


# ----------------------------------------------------------------------------------------------
# Device memory, as the engine's merge decision reads it
# ----------------------------------------------------------------------------------------------


def _capped_total(device: torch.device) -> int:
    """The device's memory, or the share `torch.cuda.set_per_process_memory_fraction` allows this process."""
    total = torch.cuda.mem_get_info(device)[1]
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.9
    return int(total * getter(device)) if getter is not None else total


def free_bytes(device: torch.device) -> int | None:
    """Memory the next allocation can use on CUDA (device free + allocator cache, within any per-process cap),
    None on CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return min(available, _capped_total(device) - torch.cuda.memory_allocated(device))


def total_bytes(device: torch.device) -> int | None:
    return _capped_total(device) if device.type == "cuda" else None
