"""Box arithmetic, from scratch: formats, area, IoU, clipping, and the box coder.

Every function mirrors ``torchvision.ops`` / ``torchvision.models.detection._utils`` (same names,
same arguments, same numbers) so a learner can read both side by side. Boxes are ``(N, 4)`` tensors;
``xyxy`` means ``(x1, y1, x2, y2)`` in pixels with ``x1 <= x2`` and ``y1 <= y2``.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() < 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (or (..., N, 4) for batches), got {tuple(boxes.shape)}")


def _check_fmt(fmt: str, fn: str) -> None:
    if fmt not in _FORMATS:
        # torchvision also accepts rotated formats ('xywhr', 'cxcywhr', 'xyxyxyxy') through its compiled
        # kernel; the from-scratch ops handle axis-aligned boxes only.
        raise ValueError(f"{fn}: fmt must be one of {_FORMATS} (axis-aligned boxes), got {fmt!r}")


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``boxes (N, 4)`` between ``'xyxy'``, ``'xywh'`` (top-left + size) and ``'cxcywh'`` (centre + size)."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in _FORMATS:
            raise ValueError(f"box format must be one of {_FORMATS}, got {fmt!r}")
    if in_fmt == out_fmt:
        return boxes.clone()
    # Go through xyxy: two small conversions instead of six.
    if in_fmt == "xywh":
        x, y, w, h = boxes.unbind(-1)
        boxes = torch.stack([x, y, x + w, y + h], dim=-1)
    elif in_fmt == "cxcywh":
        cx, cy, w, h = boxes.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    if out_fmt == "xywh":
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)
    elif out_fmt == "cxcywh":
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return boxes


def box_dtype(dtype: torch.dtype) -> torch.dtype:
    """The floating-point type that box arithmetic runs in: float64 stays float64, all else becomes float32.

    Under mixed precision (``torch.autocast``) the convs and linear layers return float16 or bfloat16.
    Those are fine for activations but not for coordinates: float16 has 11 significant bits, so between
    1024 and 2048 its numbers are 1 apart and a box corner at x = 1300.3 is stored as 1300; bfloat16 (8
    bits) is 8 times coarser (1304). Anchors, box deltas, decoded boxes, IoUs, NMS and RoIAlign's sampling
    points therefore stay in float32 (float64 in a float64 model, for the equality tests).
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(t: Tensor) -> Tensor:
    # Integer boxes would overflow when multiplied; float16 loses precision. Work in float32+.
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of ``boxes (..., 4)`` -> ``(...)``; ``fmt`` is ``'xyxy'`` (default), ``'xywh'`` or ``'cxcywh'``."""
    _check_fmt(fmt, "box_area")
    boxes = _upcast(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]  # the other two formats carry width and height


def _corners(boxes: Tensor, fmt: str) -> Tuple[Tensor, Tensor]:
    """Top-left and bottom-right corners ``(..., 2)`` of ``boxes (..., 4)`` in format ``fmt``."""
    if fmt == "xyxy":
        return boxes[..., :2], boxes[..., 2:]
    if fmt == "xywh":
        return boxes[..., :2], boxes[..., :2] + boxes[..., 2:]
    return boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2  # cxcywh


def _box_inter_union(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tuple[Tensor, Tensor]:
    """Intersection and union areas of every pair: ``(..., N, 4)`` and ``(..., M, 4)`` -> two ``(..., N, M)``."""
    area1 = box_area(boxes1, fmt)
    area2 = box_area(boxes2, fmt)
    tl1, br1 = _corners(boxes1, fmt)
    tl2, br2 = _corners(boxes2, fmt)
    # Broadcast (..., N, 1, 2) against (..., 1, M, 2): the overlap rectangle of every pair.
    lt = torch.max(tl1[..., :, None, :], tl2[..., None, :, :])  # (..., N, M, 2) top-left corners
    rb = torch.min(br1[..., :, None, :], br2[..., None, :, :])  # (..., N, M, 2) bottom-right corners
    wh = _upcast(rb - lt).clamp(min=0)                            # no overlap -> zero width or height
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Intersection over union of every pair: ``boxes1 (..., N, 4)``, ``boxes2 (..., M, 4)`` -> ``(..., N, M)``.

    ``fmt``: ``'xyxy'`` (default), ``'xywh'`` or ``'cxcywh'``, as in torchvision 0.29.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    _check_fmt(fmt, "box_iou")
    inter, union = _box_inter_union(boxes1, boxes2, fmt)
    return inter / union


def clip_boxes_to_image(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Clamp ``boxes (..., 4) xyxy`` inside an image of ``size = (height, width)``."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def large_box_mask(boxes: Tensor, min_size: float) -> Tensor:
    """``(N,)`` bool: which of ``boxes (N, 4) xyxy`` have width and height both ``>= min_size``.

    The mask form of ``remove_small_boxes``, for callers that combine it with another condition (a score
    threshold) and then list the survivors once.
    """
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return (ws >= min_size) & (hs >= min_size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices ``(K,)`` of the boxes whose width and height are both ``>= min_size``."""
    return torch.where(large_box_mask(boxes, min_size))[0]


class BoxCoder:
    """Encodes a box relative to a reference box as deltas ``(dx, dy, dw, dh)``, and decodes back.

    With a reference ("anchor" or "proposal") of centre ``(xa, ya)`` and size ``(wa, ha)``::

        dx = wx * (x - xa) / wa      dw = ww * log(w / wa)
        dy = wy * (y - ya) / ha      dh = wh * log(h / ha)

    Centre offsets are divided by the reference size so the deltas do not depend on scale; sizes are
    regressed in log space so that shrinking and growing are symmetric and a size stays positive.
    The weights scale the targets to a convenient range for the loss (Faster R-CNN uses
    (1, 1, 1, 1) in the RPN and (10, 10, 5, 5) in the box head). When decoding, ``dw`` and ``dh``
    are clamped to ``log(1000 / 16)`` so that ``exp`` cannot blow up early in training.
    """

    def __init__(self, weights: Sequence[float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights = tuple(weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: List[Tensor], proposals: List[Tensor]) -> Tuple[Tensor, ...]:
        """Per image: deltas that turn ``proposals[i] (N_i, 4)`` into ``reference_boxes[i] (N_i, 4)``."""
        boxes_per_image = [len(b) for b in reference_boxes]
        targets = self.encode_single(torch.cat(reference_boxes, dim=0), torch.cat(proposals, dim=0))
        return targets.split(boxes_per_image, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """``reference_boxes (N, 4)`` (targets) relative to ``proposals (N, 4)`` -> deltas ``(N, 4)``."""
        # Python numbers, not a tensor: a Python scalar goes to the kernel as an argument, no copy to the GPU.
        wx, wy, ww, wh = self.weights
        ex_widths = proposals[:, 2:3] - proposals[:, 0:1]
        ex_heights = proposals[:, 3:4] - proposals[:, 1:2]
        ex_ctr_x = proposals[:, 0:1] + 0.5 * ex_widths
        ex_ctr_y = proposals[:, 1:2] + 0.5 * ex_heights

        gt_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        gt_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        gt_ctr_x = reference_boxes[:, 0:1] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[:, 1:2] + 0.5 * gt_heights

        targets_dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        targets_dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        targets_dw = ww * torch.log(gt_widths / ex_widths)
        targets_dh = wh * torch.log(gt_heights / ex_heights)
        return torch.cat((targets_dx, targets_dy, targets_dw, targets_dh), dim=1)

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        """Apply ``rel_codes (sum N_i, 4*C)`` to the concatenated ``boxes[i] (N_i, 4)`` -> ``(sum N_i, C, 4)``."""
        concat_boxes = torch.cat(boxes, dim=0)
        box_sum = concat_boxes.shape[0]
        if box_sum > 0:
            rel_codes = rel_codes.reshape(box_sum, -1)
        pred_boxes = self.decode_single(rel_codes, concat_boxes)
        if box_sum > 0:
            pred_boxes = pred_boxes.reshape(box_sum, -1, 4)
        return pred_boxes

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Deltas ``rel_codes (N, 4*C)`` applied to reference ``boxes (N, 4)`` -> boxes ``(N, 4*C)`` xyxy.

        Computed in ``box_dtype(rel_codes.dtype)``: float16/bfloat16 deltas (from a head under autocast)
        are decoded in float32, never the boxes rounded down to the deltas' precision.
        """
        dtype = box_dtype(rel_codes.dtype)
        rel_codes = rel_codes.to(dtype)
        boxes = boxes.to(dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = rel_codes[:, 2::4] / ww
        dh = rel_codes[:, 3::4] / wh
        # Prevent sending too large values into torch.exp().
        dw = torch.clamp(dw, max=self.bbox_xform_clip)
        dh = torch.clamp(dh, max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        half_w = 0.5 * pred_w
        half_h = 0.5 * pred_h
        pred = torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)
        return pred.flatten(1)
