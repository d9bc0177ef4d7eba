"""Non-maximum suppression, from scratch: the greedy loop.

Greedy NMS, as drawn on paper: sort the boxes by score; take the best box and keep it; throw away
every remaining box that overlaps it with IoU > ``iou_threshold``; repeat with the best of what is
left. Same results as ``torchvision.ops.nms``, ties included (equal scores keep their input order:
a stable sort).

The loop runs once per *kept* box, in Python. ``mrcnn_lite.fast.nms`` gives the same answer with a
few large tensor operations instead (and the model's fast floor calls torchvision's compiled kernel).

Errors: a non-tensor argument is a TypeError, a wrong shape a ValueError.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .boxes import box_iou


def _check(boxes: Tensor, scores: Tensor, op: str) -> None:
    for name, t in (("boxes", boxes), ("scores", scores)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: scores must have shape ({boxes.shape[0]},) to match boxes, got {tuple(scores.shape)}")


def iou_above(iou: Tensor, iou_threshold: float) -> Tensor:
    """``iou > iou_threshold`` decided exactly, as torchvision does (it compares in double precision).

    ``iou > 0.1`` on a float32 tensor would first round 0.1 to float32 (0.100000001...), so an IoU
    that is exactly that float32 number would count as "not above" and the box would survive.
    Compare instead with the largest number of ``iou``'s dtype that is <= the threshold: for every x
    of that dtype, ``x > t_low`` holds exactly when ``x > iou_threshold``.
    """
    t_low = torch.tensor(iou_threshold, dtype=iou.dtype)  # a CPU scalar: no copy to the boxes' device
    if float(t_low) > iou_threshold:  # rounded up: step down to the next representable number
        t_low = torch.nextafter(t_low, torch.tensor(float("-inf"), dtype=iou.dtype))
    return iou > float(t_low)


def _greedy(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """The greedy loop; a box is only suppressed by a kept box with the same ``idxs`` value."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        iou = box_iou(boxes[best][None], boxes[rest])[0]                  # (len(rest),)
        suppressed = iou_above(iou, iou_threshold) & (idxs[rest] == idxs[best])
        order = rest[~suppressed]                                        # still sorted by score
    if not keep:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return torch.stack(keep)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices ``(K,) int64`` of the kept boxes, sorted by decreasing score.

    Args:
        boxes: ``(N, 4)`` x1y1x2y2.
        scores: ``(N,)``.
        iou_threshold: boxes overlapping a kept box with IoU *strictly greater* than this are dropped.
    """
    _check(boxes, scores, "nms")
    return _greedy(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category: boxes with different ``idxs (N,)`` never suppress each other.

    Returns indices ``(K,) int64`` sorted by decreasing score, like ``torchvision.ops.batched_nms``.
    """
    _check(boxes, scores, "batched_nms")
    if not isinstance(idxs, Tensor):
        raise TypeError(f"batched_nms: idxs must be a torch.Tensor, got {type(idxs).__name__}")
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: idxs must have shape {tuple(scores.shape)}, got {tuple(idxs.shape)}")
    return _greedy(boxes, scores, idxs, iou_threshold)
