"""From-scratch tensor ops in pure PyTorch (no torchvision import): the course's reference.

Signatures and results mirror ``torchvision.ops``; the tests prove equality.
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
from .roi_ops import MultiScaleRoIAlign, roi_align, roi_pool

__all__ = [
    "BoxCoder", "box_area", "box_dtype", "box_convert", "box_iou", "clip_boxes_to_image", "remove_small_boxes",
    "nms", "batched_nms", "roi_align", "roi_pool", "MultiScaleRoIAlign",
]
