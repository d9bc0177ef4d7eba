"""Counting host-device syncs: the reads of a tensor's data by Python, which make a GPU wait.

``with HostSyncCounter() as c: model(images)`` counts them by kind on any device (on a CPU nothing
waits, but the calls are the same). Notebook 13 and tests/test_speed.py use it to show and bound the
syncs of a training step and of an inference.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Optional

import torch
from torch.overrides import TorchFunctionMode


class HostSyncCounter(TorchFunctionMode):
    """Counts the calls that make Python read a tensor's *data*, by kind: ``with HostSyncCounter() as c: ...``.

    On a GPU each such read waits until every queued kernel has finished (a *host-device sync*), which
    leaves the GPU idle while Python catches up. The reads are

    * values: ``.item()``, ``.tolist()``, ``bool(t)`` (``if t.any():``), ``int(t)``, ``float(t)``, ``.cpu()``,
      ``.numpy()``, ``torch.equal``;
    * data-dependent sizes: ``torch.where(mask)``, ``nonzero``, ``unique``, ``masked_select``, ``x[bool_mask]``
      and ``x[bool_mask] = tensor`` (``x[bool_mask] = 0`` is a ``masked_fill``: no read);
    * NMS (torchvision's CUDA kernel copies its suppression mask to the host);
    * ``torch.tensor(..., device=...)`` / ``torch.as_tensor(..., device=...)``: a host-to-device copy, which
      also waits for the GPU unless the source is pinned memory.

    The calls are the same on a CPU, where nothing waits, so counting them on a CPU predicts the syncs of a
    GPU run -- a lower bound: reads inside C++ code are not seen, and neither are ``.to(device)`` copies;
    and code that picks its path by device (mask pasting loops on a CPU) differs.
    ``torch.nonzero_static(mask, size=n)`` (the size is given) is not a read. ``counts`` maps kind -> count.
    """

    VALUE_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "equal",
                   "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select"}

    def __init__(self):
        super().__init__()
        self.counts: "collections.Counter[str]" = collections.Counter()
        self._paused = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @contextlib.contextmanager
    def paused(self):
        """Reads inside this block are not counted (e.g. to leave out a known NMS)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._paused:
            kind = self._kind(func, args, kwargs)
            if kind is not None:
                self.counts[kind] += 1
        return func(*args, **kwargs)

    def _kind(self, func, args, kwargs) -> Optional[str]:
        name = getattr(func, "__name__", "") or ""
        if name in self.VALUE_READS:
            return name
        if name == "where" and len(args) + len(kwargs) == 1:
            return "where(mask)"
        if name == "__getitem__" and _has_bool_index(args[1]):
            return "x[bool_mask]"
        if name == "__setitem__" and _has_bool_index(args[1]) and isinstance(args[2], torch.Tensor) \
                and args[2].numel() > 1:
            return "x[bool_mask] = tensor"
        if "nms" in (getattr(func, "_qualified_op_name", "") or ""):
            return "nms"
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            return f"torch.{name}(..., device=)"
        return None


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)
