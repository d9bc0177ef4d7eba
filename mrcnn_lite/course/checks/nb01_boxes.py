"""Checkers of notebook 01: boxes, IoU, encoding, NMS."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ... import ops
from .runner import SEEDS, CheckResult, check_choice, gen, random_boxes, run_check, run_parts


def _box_iou_cases():
    yield "one pair", dict(boxes1=torch.tensor([[10.0, 10.0, 60.0, 50.0]], dtype=torch.float64),
                           boxes2=torch.tensor([[35.0, 25.0, 90.0, 70.0]], dtype=torch.float64))
    yield "identical, touching and disjoint boxes", dict(
        boxes1=torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]], dtype=torch.float64),
        boxes2=torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [50.0, 50.0, 60.0, 70.0]],
                            dtype=torch.float64))
    yield "boxes1 empty (N=0)", dict(boxes1=torch.zeros(0, 4, dtype=torch.float64),
                                      boxes2=random_boxes(3, gen(99)))
    yield "boxes2 empty (M=0)", dict(boxes1=random_boxes(2, gen(98)), boxes2=torch.zeros(0, 4, dtype=torch.float64))
    for seed in SEEDS:
        g = gen(seed)
        n, m = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        dtype = torch.float32 if seed % 2 else torch.float64
        yield f"random, seed {seed}", dict(boxes1=random_boxes(n, g, dtype=dtype), boxes2=random_boxes(m, g, dtype=dtype))


def check_box_iou(fn: Callable, points: float = 2, name: str = "box_iou") -> CheckResult:
    """``fn(boxes1 (N, 4), boxes2 (M, 4)) -> IoU (N, M)``, against ``mrcnn_lite.ops.box_iou``."""
    return run_check(name, fn, ops.box_iou, _box_iou_cases(), points, atol=1e-6, rtol=1e-5,
                     what="mrcnn_lite.ops.box_iou",
                     off_limits=("torchvision.ops.boxes:box_iou", "torchvision.ops.boxes:_box_inter_union"))


def reference_encode(targets: Tensor, refs: Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Deltas ``(N, 4)`` that move ``refs (N, 4)`` onto ``targets (N, 4)``: ``BoxCoder(weights).encode_single``."""
    return ops.BoxCoder(weights).encode_single(targets, refs)


def _encode_cases():
    yield "the notebook's anchor and GT", dict(
        targets=torch.tensor([[30.0, 15.0, 110.0, 55.0]], dtype=torch.float64),
        refs=torch.tensor([[20.0, 20.0, 60.0, 60.0]], dtype=torch.float64), weights=(1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[3.0, 4.0, 13.0, 24.0]], dtype=torch.float64)
    yield "target == reference (all deltas 0)", dict(targets=box, refs=box.clone(), weights=(10.0, 10.0, 5.0, 5.0))
    yield "empty (N=0)", dict(targets=torch.zeros(0, 4, dtype=torch.float64),
                              refs=torch.zeros(0, 4, dtype=torch.float64), weights=(1.0, 1.0, 1.0, 1.0))
    for seed in SEEDS:
        g = gen(seed)
        n = int(torch.randint(1, 20, (1,), generator=g))
        weights = (1.0, 1.0, 1.0, 1.0) if seed % 2 == 0 else (10.0, 10.0, 5.0, 5.0)
        yield f"random, seed {seed}, weights {weights}", dict(
            targets=random_boxes(n, g), refs=random_boxes(n, g), weights=weights)


def check_encode(fn: Callable, points: float = 2, name: str = "encode") -> CheckResult:
    """``fn(targets (N, 4), refs (N, 4), weights) -> deltas (N, 4)``, against ``BoxCoder.encode_single``."""
    return run_check(name, fn, reference_encode, _encode_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.ops.BoxCoder(weights).encode_single",
                     off_limits=(ops.BoxCoder.encode, ops.BoxCoder.encode_single,
                                 "torchvision.models.detection._utils:BoxCoder"))


def _nms_cases():
    f64 = dict(dtype=torch.float64)
    yield "empty (N=0)", dict(boxes=torch.zeros(0, 4, **f64), scores=torch.zeros(0, **f64), iou_threshold=0.5)
    yield "one box", dict(boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]], **f64), scores=torch.tensor([0.3], **f64),
                          iou_threshold=0.5)
    yield "a chain: A suppresses B, so B cannot suppress C", dict(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0], [8.0, 0.0, 18.0, 10.0]], **f64),
        scores=torch.tensor([0.9, 0.8, 0.7], **f64), iou_threshold=0.3)
    yield "equal scores (ties keep the input order)", dict(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0]], **f64),
        scores=torch.tensor([0.5, 0.5, 0.5], **f64), iou_threshold=0.5)
    for seed in SEEDS:
        g = gen(seed)
        n = int(torch.randint(2, 40, (1,), generator=g))
        boxes = random_boxes(n, g, scale=50.0)
        boxes[: n // 4] = boxes[n // 4: 2 * (n // 4)]                        # exact duplicates
        scores = (torch.rand(n, generator=g, dtype=torch.float64) * 10).round() / 10   # many ties
        thr = (0.0, 0.3, 0.5, 0.7, 1.0)[seed % 5]
        yield f"random, seed {seed}, iou_threshold {thr}", dict(boxes=boxes, scores=scores, iou_threshold=thr)


def check_nms(fn: Callable, points: float = 3, name: str = "nms") -> CheckResult:
    """``fn(boxes (N, 4), scores (N,), iou_threshold) -> kept indices (K,)``, against ``mrcnn_lite.ops.nms``."""
    return run_check(name, fn, ops.nms, _nms_cases(), points, exact=True, what="mrcnn_lite.ops.nms",
                     off_limits=(ops.batched_nms, "torchvision.ops.boxes:nms", "torchvision.ops.boxes:batched_nms"))


# ----------------------------------------------------------------------------------------------
# Lab: decoding RPN deltas (two planted bugs; graded in two parts)
# ----------------------------------------------------------------------------------------------
def reference_decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """``deltas (N, 4)`` applied to ``anchors (N, 4)`` -> boxes ``(N, 4)``: ``BoxCoder((1, 1, 1, 1)).decode_single``."""
    return ops.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)


def _centres(boxes: Tensor) -> Tensor:
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def _sizes(boxes: Tensor) -> Tensor:
    return torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1)


def _decode_lab_cases():
    from ..lab_case import load_lab_case

    yield "zero deltas: the anchors themselves", dict(deltas=torch.zeros(2, 4, dtype=torch.float64),
                                                      anchors=torch.tensor([[0.0, 0.0, 32.0, 16.0],
                                                                            [10.0, 20.0, 14.0, 60.0]], dtype=torch.float64))
    yield "a wide anchor moved right and made taller", dict(
        deltas=torch.tensor([[0.5, 0.0, 0.0, 0.7]], dtype=torch.float64),
        anchors=torch.tensor([[0.0, 0.0, 64.0, 16.0]], dtype=torch.float64))
    for seed in SEEDS:
        g = gen(seed)
        n = int(torch.randint(1, 40, (1,), generator=g))
        yield f"random, seed {seed}", dict(deltas=torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.5,
                                           anchors=random_boxes(n, g))
    case = load_lab_case()
    yield (f"the trained model: its 200 best-scored P3 anchors and their predicted deltas "
           f"({case['steps']} training steps)"), dict(deltas=case["rpn_deltas"], anchors=case["rpn_anchors"])


def check_decode_lab(fn: Callable, points: float = 3, name: str = "decode_lab") -> CheckResult:
    """Lab: ``fn(deltas (N, 4), anchors (N, 4)) -> boxes (N, 4)``. Half the points for the box centres, half
    for the sizes, each against ``BoxCoder((1, 1, 1, 1)).decode_single``."""
    half = points / 2
    return run_parts(name, fn, reference_decode, _decode_lab_cases(),
                     [("box centres", half, _centres), ("box sizes", half, _sizes)], atol=1e-4, rtol=1e-5,
                     what="mrcnn_lite.ops.BoxCoder((1, 1, 1, 1)).decode_single",
                     off_limits=(ops.BoxCoder.decode, ops.BoxCoder.decode_single,
                                 "torchvision.models.detection._utils:BoxCoder"))


# The candidates the lab's text names, in its order; where the bug is (Lab 1, two bugs).
DECODE_PARTS = ("anchor_centre", "clamp", "centre_shift", "new_size", "corners")


def check_decode_locate_lab(fn: Callable, points: float = 1, name: str = "decode_locate_lab") -> CheckResult:
    """Lab, step 1 (before the fix): ``fn()`` names where the bug is: one of ``DECODE_PARTS``, or a list of them
    for a lab with two bugs. Only the right part(s) earn the point."""
    return check_choice(fn, ("centre_shift", "new_size"), DECODE_PARTS, points=points, name=name,
                        what="the new centre (pred_ctr_x, pred_ctr_y) and the new size (pred_w, pred_h) "
                             "each take the other axis's delta")
