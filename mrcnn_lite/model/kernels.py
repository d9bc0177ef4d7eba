"""Which kernels the model calls: the from-scratch ``mrcnn_lite.ops`` or torchvision's compiled ones.

``mrcnn_lite.ops`` is the reference the course builds (pure PyTorch, readable). torchvision's C++/CUDA
kernels give the same numbers faster; the model uses them when ``cfg.use_torchvision_ops`` is True
and torchvision is importable. Tests prove both paths agree.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from .. import ops

try:  # torchvision is optional at run time: the course works without it.
    import torchvision.ops as _tv_ops

    TORCHVISION_KERNELS_AVAILABLE = True
except Exception:  # pragma: no cover - depends on the install
    _tv_ops = None
    TORCHVISION_KERNELS_AVAILABLE = False


def roi_align_fastest(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision's ``roi_align``, except when it must be differentiated on a CPU.

    torchvision's CPU backward runs on one thread and scatters every sample's gradient in turn; the
    from-scratch op's backward is a parallel ``index_add`` of the same numbers. Measured on 2 CPU cores
    (forward + backward, sampling_ratio 2): 3x faster for the tiny model's maps (64 x 32 x 32, 512 RoIs),
    as fast or faster at ResNet-50 sizes (256 x 200 x 200). On CUDA, and for inference, torchvision's
    kernel is the faster one. Both give the same numbers (tests/test_ops_roi.py).
    """
    if input.device.type == "cpu" and input.requires_grad and torch.is_grad_enabled():
        return ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return _tv_ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def kernels(use_torchvision: bool) -> SimpleNamespace:
    """The ``roi_align``, ``roi_pool``, ``nms`` and ``batched_nms`` functions to use (same signatures)."""
    src = _tv_ops if (use_torchvision and TORCHVISION_KERNELS_AVAILABLE) else ops
    return SimpleNamespace(
        roi_align=roi_align_fastest if src is _tv_ops else ops.roi_align,
        roi_pool=src.roi_pool,
        nms=src.nms,
        batched_nms=src.batched_nms,
        name="torchvision" if src is _tv_ops else "mrcnn_lite",
    )
