"""The fast floor's kernel set: which implementation each swappable piece uses, per call.

* ``roi_align``: on a CPU with a fixed sampling ratio (the box and mask branches), ``fast.roi_align``:
  it uses every core, where torchvision's CPU kernel runs on one thread. Otherwise (CUDA, and the
  adaptive sampling of the mask targets, whose full-resolution grids would make ``fast.roi_align``
  hold an index per sample) torchvision's compiled kernel; ``fast.roi_align`` when torchvision is missing.
* ``batched_nms``: torchvision's compiled kernel; ``fast.batched_nms`` when torchvision is missing.
* ``paste_masks_in_image``: on a CPU the reference loop (each mask touches only its own box); on a GPU
  ``fast.paste_masks_grid`` (a few large kernels instead of one small one per mask).
* frozen batch norm: ``CachedFrozenBatchNorm2d``; sampler: ``SyncFreeBalancedPositiveNegativeSampler``;
  transform and anchors: ``CachedNormalizeTransform``, ``CachedAnchorGenerator`` (``caches.py``).

Each call records the implementation it ran in the set's ``KernelLog``.
"""
from __future__ import annotations

from ..model.kernels import Kernels, KernelLog, recorded
from ..model.transform import paste_masks_in_image
from . import nms as fast_nms
from .caches import CachedAnchorGenerator, CachedNormalizeTransform
from .frozen_bn import CachedFrozenBatchNorm2d
from .paste import paste_masks_grid
from .roi_align import roi_align as fast_roi_align
from .sampler import SyncFreeBalancedPositiveNegativeSampler

try:  # torchvision is optional at run time: the course works without it.
    import torchvision.ops as tv_ops
except Exception:  # pragma: no cover - depends on the install
    tv_ops = None

TORCHVISION_KERNELS_AVAILABLE = tv_ops is not None


def fast_kernels() -> Kernels:
    log = KernelLog()

    def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
        if tv_ops is None or (input.device.type == "cpu" and sampling_ratio > 0):
            log.record("roi_align", "mrcnn_lite.fast.roi_align")
            return fast_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
        log.record("roi_align", "torchvision.ops.roi_align")
        return tv_ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)

    def paste(masks, boxes, img_shape):
        if masks.device.type == "cpu":
            log.record("paste_masks_in_image", "mrcnn_lite.model.transform.paste_masks_in_image")
            return paste_masks_in_image(masks, boxes, img_shape)
        log.record("paste_masks_in_image", "mrcnn_lite.fast.paste_masks_grid")
        return paste_masks_grid(masks, boxes, img_shape)

    if tv_ops is not None:
        batched_nms = recorded(log, "batched_nms", "torchvision.ops.batched_nms", tv_ops.batched_nms)
    else:
        batched_nms = recorded(log, "batched_nms", "mrcnn_lite.fast.batched_nms", fast_nms.batched_nms)
    return Kernels(name="fast", roi_align=roi_align, batched_nms=batched_nms, paste_masks_in_image=paste,
                   frozen_bn=CachedFrozenBatchNorm2d, sampler=SyncFreeBalancedPositiveNegativeSampler,
                   transform=CachedNormalizeTransform, anchor_generator=CachedAnchorGenerator, log=log)
