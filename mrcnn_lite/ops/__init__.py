"""From-scratch tensor ops in pure PyTorch (no torchvision import): the course's reference.

Signatures and results mirror ``torchvision.ops``; the tests prove equality. Modules: ``boxes`` (formats,
IoU, the box coder), ``nms`` (the greedy loop), ``roi_ops`` (RoIPool, RoIAlign), ``poolers`` (RoIAlign
over an FPN). The package imports nothing else of mrcnn_lite; ``mrcnn_lite.fast`` holds the faster
versions of the same ops.
"""
from .boxes import (
    BoxCoder,
    box_area,
    box_dtype,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from .nms import batched_nms, nms
from .poolers import MultiScaleRoIAlign
from .roi_ops import roi_align, roi_pool

__all__ = [
    "BoxCoder", "box_area", "box_dtype", "box_convert", "box_iou", "clip_boxes_to_image", "remove_small_boxes",
    "nms", "batched_nms", "roi_align", "roi_pool", "MultiScaleRoIAlign",
]
