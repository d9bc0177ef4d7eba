"""The fast floor: every speed optimisation of mrcnn_lite, in one place, with the same numbers.

The reference floor (``mrcnn_lite.ops`` and ``mrcnn_lite.model``) is the paper's algorithm in plain
PyTorch. This package holds faster versions of some of its pieces; a model built with
``cfg.kernels = "fast"`` (the default) uses them, ``"reference"`` does not. Each one is proven equal to
its reference, forward and backward (tests/test_fast.py), and notebook 13 explains each.

    roi_align.py   RoIAlign as one weighted row-sum (``embedding_bag``) over a channels-last map
    nms.py         NMS as a fixed point over the whole suppression matrix
    frozen_bn.py   frozen batch norm with cached scale/shift; ``fold_frozen_bn`` for inference
    paste.py       all masks pasted with ``grid_sample`` (for GPUs)
    sampler.py     the balanced sampler with one host read per batch
    caches.py      the normalisation constants and the anchors, made once instead of on every call
    kernels.py     the fast floor's kernel set (and when it calls torchvision's compiled kernels)
    compile.py     ``compile_backbone``: ``torch.compile`` of the fixed-shape backbone and RPN head
    host_syncs.py  ``HostSyncCounter``: count the reads that make a GPU wait

Imports go one way: this package imports ``mrcnn_lite.ops`` and pieces of ``mrcnn_lite.model``; neither
imports it. ``mrcnn_lite.build.build_model`` hands its pieces to the model's parts when ``cfg.kernels`` is
``"fast"``.
"""
from .caches import CachedAnchorGenerator, CachedNormalizeTransform
from .compile import compile_backbone
from .frozen_bn import CachedFrozenBatchNorm2d, fold_frozen_bn
from .host_syncs import HostSyncCounter
from .kernels import TORCHVISION_KERNELS_AVAILABLE, fast_kernels
from .nms import batched_nms, nms
from .paste import paste_masks_grid
from .roi_align import roi_align
from .sampler import SyncFreeBalancedPositiveNegativeSampler

__all__ = [
    "CachedAnchorGenerator", "CachedNormalizeTransform", "compile_backbone", "CachedFrozenBatchNorm2d", "fold_frozen_bn", "HostSyncCounter",
    "TORCHVISION_KERNELS_AVAILABLE", "fast_kernels", "batched_nms", "nms", "paste_masks_grid", "roi_align",
    "SyncFreeBalancedPositiveNegativeSampler",
]
