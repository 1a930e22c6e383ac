"""Peak tensor memory of a block of code on any device (CPU included), for checking the planner.

    >>> with PeakTensorBytes(model, optimizer) as tracker:
    ...     loss = model(**batch).loss; loss.backward(); optimizer.step()
    >>> tracker.peak                 # bytes: what existed before (model, optimizer) + the most live at once

CUDA has `torch.cuda.max_memory_allocated`; CPU has no allocator statistics, so this counts the
storages every operator returns while they are alive (a dispatch mode and a weak reference per
storage). Views share their base's storage and are counted once. Memory a library allocates outside
PyTorch's operators (bitsandbytes' C kernels' scratch buffers) is not seen.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storages(objects: Any) -> dict[int, int]:
    """data_ptr -> bytes of every storage held by the given modules, optimizers and tensors."""
    out: dict[int, int] = {}
    for obj in objects:
        tensors: list[torch.Tensor] = []
        if isinstance(obj, torch.nn.Module):
            tensors += list(obj.parameters()) + list(obj.buffers())
            tensors += [p.grad for p in obj.parameters() if p.grad is not None]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors += [v for state in obj.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        elif isinstance(obj, torch.Tensor):
            tensors.append(obj)
        for t in tensors:
            st = t.untyped_storage()
            out[st.data_ptr()] = st.nbytes()
    return out


class PeakTensorBytes(TorchDispatchMode):
    def __init__(self, *existing: Any) -> None:
        super().__init__()
        self._baseline = _storages(existing)
        self._live: dict[int, tuple[Any, int]] = {}
        self.current = sum(self._baseline.values())
        self.peak = self.current

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: Any) -> None:
        key = storage.data_ptr()
        if key == 0 or key in self._live or key in self._baseline:
            return
        size = storage.nbytes()
        self._live[key] = (weakref.ref(storage, lambda _ref, k=key: self._free(k)), size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        _, size = self._live.pop(key, (None, 0))
        self.current -= size
