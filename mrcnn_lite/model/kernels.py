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
    """The from-scratch ``ops.roi_align`` on a CPU with a fixed sampling ratio, else torchvision's kernel.

    torchvision's CPU kernel runs on one thread and loops over every sample of every bin; the
    from-scratch op is one weighted row-sum (``embedding_bag``) over a channels-last view of the map,
    which uses all cores and reads each cell's channels as one contiguous row. Measured on 2 CPU cores,
    sampling_ratio 2 (the box and mask branches): forward 3-5x faster at Mask R-CNN's sizes (856 RoIs
    on a 256 x 80 x 120 map from the channels-last backbone: 29 ms vs 148 ms), forward + backward 3x
    faster for the tiny model's maps.

    Kept on torchvision's kernel: CUDA (it is the faster one there), and adaptive sampling
    (``sampling_ratio <= 0``), which the mask targets use on full-resolution masks: a 500-px box gets
    18 x 18 samples per bin, and the from-scratch op would hold an index per sample (gigabytes),
    where torchvision's loop over one channel is cheap. Both give the same numbers (tests/test_ops_roi.py).
    """
    if input.device.type == "cpu" and sampling_ratio > 0:
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
