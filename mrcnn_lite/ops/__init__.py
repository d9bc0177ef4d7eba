"""From-scratch tensor ops in pure PyTorch, without torchvision: the reference the lessons build.

Signatures and results mirror ``torchvision.ops``; the tests prove equality. Modules: ``boxes`` (formats,
IoU, the box coder), ``nms`` (the greedy loop), ``roi_ops`` (RoIPool, RoIAlign), ``poolers`` (RoIAlign
over an FPN). Nothing else of mrcnn_lite is imported here;
``mrcnn_lite.fast`` holds the faster versions of the same ops.
"""
from .boxes import (
    BoxCoder,
    box_area,
    box_dtype,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    large_box_mask,
    remove_small_boxes,
)
from .nms import batched_nms, nms
from .poolers import MultiScaleRoIAlign
from .roi_ops import roi_align, roi_pool

__all__ = [
    "BoxCoder", "box_area", "box_dtype", "box_convert", "box_iou", "clip_boxes_to_image", "large_box_mask",
    "remove_small_boxes",
    "nms", "batched_nms", "roi_align", "roi_pool", "MultiScaleRoIAlign",
]
