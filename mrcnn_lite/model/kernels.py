"""Which kernels the model calls: the from-scratch ``mrcnn_lite.ops`` or torchvision's compiled ones.

``mrcnn_lite.ops`` is the reference the course builds (pure PyTorch, readable). torchvision's C++/CUDA
kernels give the same numbers faster; the model uses them when ``cfg.use_torchvision_ops`` is True
and torchvision is importable. Tests prove both paths agree.
"""
from __future__ import annotations

from types import SimpleNamespace

from .. import ops

try:  # torchvision is optional at run time: the course works without it.
    import torchvision.ops as _tv_ops

    TORCHVISION_KERNELS_AVAILABLE = True
except Exception:  # pragma: no cover - depends on the install
    _tv_ops = None
    TORCHVISION_KERNELS_AVAILABLE = False


def kernels(use_torchvision: bool) -> SimpleNamespace:
    """The ``roi_align``, ``roi_pool``, ``nms`` and ``batched_nms`` functions to use (same signatures)."""
    src = _tv_ops if (use_torchvision and TORCHVISION_KERNELS_AVAILABLE) else ops
    return SimpleNamespace(
        roi_align=src.roi_align,
        roi_pool=src.roi_pool,
        nms=src.nms,
        batched_nms=src.batched_nms,
        name="torchvision" if src is _tv_ops else "mrcnn_lite",
    )
