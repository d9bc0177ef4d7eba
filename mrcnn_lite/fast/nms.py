"""NMS with a few large tensor operations: the fast floor's version of ``mrcnn_lite.ops.nms``.

The reference runs the greedy loop once per kept box. Here the whole "who suppresses whom" matrix is
computed at once, and the greedy rule -- box j is kept iff no *kept* box before it suppresses it -- is
solved as a fixed point over that matrix: ``keep <- not any(keep[i] and suppresses[i, j])``. After
step k the first k entries are final, and chains of suppression are short in practice, so a handful
of steps reach the answer. A long chain (each box suppressing only the next) would need one step per
box, each over the whole matrix; after ``max_steps`` the remaining rows are settled one by one on the
host instead, which costs one pass over the matrix in all. Same results as the reference, ties included
(tests/test_fast.py). No input checks: the model calls it with its own boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops.boxes import _box_inter_union
from ..ops.nms import iou_above


def greedy_keep(suppresses: Tensor, max_steps: int = 16) -> Tensor:
    """Greedy NMS on ``suppresses (N, N)`` bool (``[i, j]``, i < j: box i would suppress box j), in score
    order. Returns ``keep (N,)`` bool."""
    n = suppresses.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=suppresses.device)
    for _ in range(min(n, max_steps)):
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep
    # Not settled yet: walk the rows in order on the host (each kept row removes what it suppresses).
    rows = suppresses.cpu()
    keep = torch.ones(n, dtype=torch.bool)
    for i in range(n):
        if keep[i]:
            keep &= ~rows[i]
    return keep.to(suppresses.device)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Same as ``mrcnn_lite.ops.batched_nms``: indices ``(K,)`` of the kept boxes, by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes, sorted_idxs = boxes[order], idxs[order]
    inter, union = _box_inter_union(sorted_boxes, sorted_boxes)
    same_class = sorted_idxs[:, None] == sorted_idxs[None, :]
    # Only an earlier (higher-scored) box can suppress a later one: keep the strict upper triangle.
    suppresses = (iou_above(inter / union, iou_threshold) & same_class).triu_(diagonal=1)
    return order[greedy_keep(suppresses)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Same as ``mrcnn_lite.ops.nms``: indices ``(K,)`` of the kept boxes, by decreasing score."""
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)
