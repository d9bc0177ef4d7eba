"""Non-maximum suppression, from scratch.

Greedy NMS: visit boxes from the highest score down; keep a box unless an already *kept* box
overlaps it with IoU > ``iou_threshold``. Same results as ``torchvision.ops.nms`` on CPU, ties
included (equal scores keep their input order: a stable sort).

The greedy loop is sequential by nature. Instead of a Python loop over boxes we solve it as a
fixed point over the whole "who suppresses whom" matrix (see ``nms``), which takes a handful of
vectorised steps in practice.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .boxes import _box_inter_union


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"nms: scores must have shape ({boxes.shape[0]},) to match boxes, got {tuple(scores.shape)}")


def _above(iou: Tensor, iou_threshold: float) -> Tensor:
    """``iou > iou_threshold`` decided exactly, as torchvision does (it compares in double precision).

    ``iou > 0.1`` on a float32 tensor would first round 0.1 to float32 (0.100000001...), so an IoU
    that is exactly that float32 number would count as "not above" and the box would survive.
    Compare instead with the largest number of ``iou``'s dtype that is <= the threshold: for every x
    of that dtype, ``x > t_low`` holds exactly when ``x > iou_threshold``.
    """
    t_low = torch.tensor(iou_threshold, dtype=iou.dtype)  # a CPU scalar: no device round trip
    if float(t_low) > iou_threshold:  # rounded up: step down to the next representable number
        t_low = torch.nextafter(t_low, torch.tensor(float("-inf"), dtype=iou.dtype))
    return iou > float(t_low)  # t_low is exact in iou's dtype, so this comparison rounds nothing


def _greedy_keep(suppresses: Tensor) -> Tensor:
    """Greedy NMS on a boolean matrix in score order.

    ``suppresses (N, N)``: entry ``[i, j]`` (only for i < j) says box i would suppress box j.
    Box j is kept iff no *kept* box before it suppresses it. That rule has exactly one solution
    (keep[0] is fixed, keep[1] follows from it, ...), and iterating
    ``keep <- not any(keep[i] and suppresses[i, j])`` reaches it: after step k the first k entries are
    final, and in practice chains of suppression are short, so it converges in a few steps.
    """
    n = suppresses.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=suppresses.device)
    for _ in range(n):
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices ``(K,) int64`` of the kept boxes, sorted by decreasing score.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        iou_threshold: boxes overlapping a kept box with IoU *strictly greater* than this are dropped.
    """
    if boxes.numel() == 0:  # whatever the other arguments, as torchvision
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    _check(boxes, scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    inter, union = _box_inter_union(sorted_boxes, sorted_boxes)
    iou = inter / union
    # Only an earlier (higher-scored) box can suppress a later one: keep the strict upper triangle.
    suppresses = _above(iou, iou_threshold).triu_(diagonal=1)
    return order[_greedy_keep(suppresses)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category: boxes with different ``idxs (N,)`` never suppress each other.

    Returns indices ``(K,) int64`` sorted by decreasing score, like ``torchvision.ops.batched_nms``.
    """
    if boxes.numel() == 0:  # whatever the other arguments: torchvision's batched_nms(empty, None, None, None)
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    _check(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: idxs must have shape {tuple(scores.shape)}, got {tuple(idxs.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes, sorted_idxs = boxes[order], idxs[order]
    inter, union = _box_inter_union(sorted_boxes, sorted_boxes)
    same_class = sorted_idxs[:, None] == sorted_idxs[None, :]
    suppresses = (_above(inter / union, iou_threshold) & same_class).triu_(diagonal=1)
    return order[_greedy_keep(suppresses)]
