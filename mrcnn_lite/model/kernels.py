"""The swappable pieces of the model, and a log of which implementation of each actually ran.

Two floors compute the same numbers (tests/test_fast.py and the torchvision-equality tests prove it):

* the reference floor, ``reference_kernels()`` below: the plain code of ``mrcnn_lite.ops`` and
  ``mrcnn_lite.model`` -- what the course builds;
* the fast floor, ``mrcnn_lite.fast.fast_kernels()``: torchvision's compiled kernels where available,
  vectorised NMS, channels-last RoIAlign, cached constants, grid-sample mask pasting, a sync-free sampler.

``mrcnn_lite.build.build_model`` picks one set from ``cfg.kernels`` and hands its pieces to the stages
as it constructs them; the stages never ask which floor they are on. The functions record, at each call,
which implementation ran; ``MaskRCNN.kernels_used()`` reports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Set, Type

from torch import nn

from .. import ops
from .anchors import AnchorGenerator
from .frozen_bn import FrozenBatchNorm2d
from .matching import BalancedPositiveNegativeSampler
from .transform import GeneralizedRCNNTransform, paste_masks_in_image


class KernelLog:
    """Which implementations each op called: ``record(op, impl)`` at call time; ``calls`` op -> set of impls.

    A deep copy of a model (e.g. ``fold_frozen_bn``) calls the same kernel functions, so it shares the log.
    """

    def __init__(self) -> None:
        self.calls: Dict[str, Set[str]] = {}

    def record(self, op: str, impl: str) -> None:
        self.calls.setdefault(op, set()).add(impl)

    def __deepcopy__(self, memo) -> "KernelLog":
        return self


def recorded(log: KernelLog, op: str, impl: str, fn: Callable) -> Callable:
    """``fn``, recording ``impl`` under ``op`` in ``log`` each time it is called."""
    def call(*args, **kwargs):
        log.record(op, impl)
        return fn(*args, **kwargs)
    call.__name__ = getattr(fn, "__name__", op)
    return call


@dataclass
class Kernels:
    """One floor's implementations, handed to the stages when the model is built.

    roi_align:            ``ops.roi_align``'s signature (RoI pooling and the mask targets)
    batched_nms:          ``ops.batched_nms``'s signature (RPN proposals and final detections)
    paste_masks_in_image: ``transform.paste_masks_in_image``'s signature
    frozen_bn:            the class built for ``cfg.norm == "frozen_bn"``
    sampler:              the ``BalancedPositiveNegativeSampler`` class of the RPN and the RoI heads
    transform:            the ``GeneralizedRCNNTransform`` class
    anchor_generator:     the ``AnchorGenerator`` class
    """

    name: str
    roi_align: Callable
    batched_nms: Callable
    paste_masks_in_image: Callable
    frozen_bn: Type[nn.Module]
    sampler: Type[BalancedPositiveNegativeSampler]
    transform: Type[GeneralizedRCNNTransform]
    anchor_generator: Type[AnchorGenerator]
    log: KernelLog


def reference_kernels() -> Kernels:
    """The reference floor: the plain code of ``ops`` and ``model``, each function call recorded."""
    log = KernelLog()
    return Kernels(
        name="reference",
        roi_align=recorded(log, "roi_align", "mrcnn_lite.ops.roi_align", ops.roi_align),
        batched_nms=recorded(log, "batched_nms", "mrcnn_lite.ops.batched_nms", ops.batched_nms),
        paste_masks_in_image=recorded(log, "paste_masks_in_image", "mrcnn_lite.model.transform.paste_masks_in_image",
                                      paste_masks_in_image),
        frozen_bn=FrozenBatchNorm2d,
        sampler=BalancedPositiveNegativeSampler,
        transform=GeneralizedRCNNTransform,
        anchor_generator=AnchorGenerator,
        log=log,
    )
