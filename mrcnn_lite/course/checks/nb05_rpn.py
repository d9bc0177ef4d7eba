"""Checkers of notebook 05: the RPN loss, the per-level top-n of proposal filtering, the head-flattening lab."""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import Tensor

from ...config import tiny
from ...model.rpn import RegionProposalNetwork, build_rpn, rpn_loss
from ...model.rpn_head import concat_box_prediction_layers
from .runner import SEEDS, CheckResult, check_choice, gen, run_check, run_parts


def reference_rpn_loss(objectness: Tensor, pred_bbox_deltas: Tensor, labels: Tensor, regression_targets: Tensor,
                       pos_mask: Tensor, neg_mask: Tensor) -> Tuple[Tensor, Tensor]:
    """``rpn.rpn_loss`` for one image, with the sampled anchors given as masks (instead of a random draw).
    Returns ``(objectness_loss, box_loss)``."""
    return rpn_loss(objectness, pred_bbox_deltas, labels, regression_targets,
                    torch.where(pos_mask)[0], torch.where(neg_mask)[0])


def _rpn_loss_inputs(n: int, n_pos: int, n_neg: int, g: torch.Generator) -> Dict[str, Tensor]:
    f64 = dict(dtype=torch.float64)
    labels = torch.zeros(n, **f64)
    perm = torch.randperm(n, generator=g)
    pos, neg, ignore = perm[:n_pos], perm[n_pos:n_pos + n_neg], perm[n_pos + n_neg:]
    labels[pos] = 1.0
    labels[ignore[: len(ignore) // 2]] = -1.0                      # some ignored anchors
    pos_mask = torch.zeros(n, dtype=torch.bool)
    neg_mask = torch.zeros(n, dtype=torch.bool)
    pos_mask[pos] = True
    neg_mask[neg] = True
    return dict(objectness=torch.randn(n, generator=g, **f64) * 3,
                pred_bbox_deltas=torch.randn(n, 4, generator=g, **f64) * 0.3,
                labels=labels,
                regression_targets=torch.randn(n, 4, generator=g, **f64) * 0.3,
                pos_mask=pos_mask, neg_mask=neg_mask)


def _rpn_loss_cases():
    yield "one positive anchor (N=1)", _rpn_loss_inputs(1, 1, 0, gen(50))
    yield "no positives: the box loss is 0", _rpn_loss_inputs(12, 0, 6, gen(51))
    for seed in SEEDS:
        g = gen(seed)
        n = int(torch.randint(10, 200, (1,), generator=g))
        n_pos = int(torch.randint(1, n // 4 + 2, (1,), generator=g))
        n_neg = int(torch.randint(1, n // 2, (1,), generator=g))
        yield f"random, seed {seed}: {n} anchors, {n_pos} sampled positives, {n_neg} negatives", \
            _rpn_loss_inputs(n, n_pos, n_neg, g)


def check_rpn_loss(fn: Callable, points: float = 3, name: str = "rpn_loss") -> CheckResult:
    """``fn(objectness (N,), pred_bbox_deltas (N, 4), labels (N,), regression_targets (N, 4),
    pos_mask (N,) bool, neg_mask (N,) bool) -> (objectness_loss, box_loss)``."""
    return run_check(name, fn, reference_rpn_loss, _rpn_loss_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.model.rpn.rpn_loss",
                     off_limits=(rpn_loss, "torchvision.models.detection.rpn:RegionProposalNetwork"))


# ----------------------------------------------------------------------------------------------
# Proposal filtering, step 1: the best pre_nms_top_n anchors of each FPN level
# ----------------------------------------------------------------------------------------------
def reference_top_n_per_level(objectness: Tensor, num_anchors_per_level: Sequence[int], pre_nms_top_n: int) -> Tensor:
    """``objectness (B, N)`` logits, levels concatenated -> ``(B, K)`` int64 indices into N of each level's
    ``min(pre_nms_top_n, n_level)`` highest logits, best first within a level, levels in order: what the
    package's ``RegionProposalNetwork._get_top_n_idx`` (torchvision's name) selects in eval mode."""
    rpn = build_rpn(tiny().replace(rpn_pre_nms_top_n_test=int(pre_nms_top_n)), in_channels=1).eval()
    return rpn._get_top_n_idx(objectness, list(num_anchors_per_level))


def _top_n_inputs(batch: int, levels: Sequence[int], top_n: int, g: torch.Generator) -> Dict[str, object]:
    # Continuous random logits: ties have probability zero, so "the k highest" has one answer.
    return dict(objectness=torch.randn(batch, sum(levels), generator=g, dtype=torch.float64) * 3,
                num_anchors_per_level=list(levels), pre_nms_top_n=top_n)


def _top_n_cases():
    yield "one image, one level of 6 anchors, keep 3", _top_n_inputs(1, [6], 3, gen(60))
    yield ("three levels of 10, 3 and 1 anchors, keep 4: the last two levels keep all their anchors, "
           "and the second level's indices start at 10"), _top_n_inputs(1, [10, 3, 1], 4, gen(61))
    yield ("the course model's five levels at 192 px (6912, 1728, 432, 108, 27 anchors), 2 images, keep 300: "
           "P5 and P6 keep everything"), _top_n_inputs(2, [6912, 1728, 432, 108, 27], 300, gen(62))
    for seed in SEEDS:
        g = gen(seed)
        batch = int(torch.randint(1, 4, (1,), generator=g))
        levels = torch.randint(1, 120, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        top_n = int(torch.randint(1, 60, (1,), generator=g))
        yield (f"random, seed {seed}: {batch} image(s), levels of {levels} anchors, keep {top_n} per level",
               _top_n_inputs(batch, levels, top_n, g))


def check_top_n_per_level(fn: Callable, points: float = 2, name: str = "top_n_per_level") -> CheckResult:
    """``fn(objectness (B, N), num_anchors_per_level [n_1, ...], pre_nms_top_n) -> (B, K)`` int64 indices into
    the concatenated anchors, level by level, best first; compared exactly."""
    return run_check(name, fn, reference_top_n_per_level, _top_n_cases(), points, exact=True,
                     what="the package's RegionProposalNetwork._get_top_n_idx",
                     off_limits=(RegionProposalNetwork._get_top_n_idx,
                                 "torchvision.models.detection.rpn:RegionProposalNetwork"))


# ----------------------------------------------------------------------------------------------
# Lab: flattening the head's outputs into the anchors' order (planted bugs in both outputs)
# ----------------------------------------------------------------------------------------------
def reference_flatten_head(objectness: Tensor, pred_bbox_deltas: Tensor) -> Tuple[Tensor, Tensor]:
    """One level's ``objectness (B, A, H, W)`` and ``pred_bbox_deltas (B, 4 A, H, W)`` -> ``(B, H W A)`` and
    ``(B, H W A, 4)`` in the anchors' order (y -> x -> anchor): ``rpn_head.concat_box_prediction_layers``."""
    return concat_box_prediction_layers([objectness], [pred_bbox_deltas])


def _flatten_cases():
    from ..lab_case import load_lab_case

    yield "one anchor per cell, a 2x3 map", dict(objectness=torch.arange(6.0).reshape(1, 1, 2, 3),
                                                 pred_bbox_deltas=torch.arange(24.0).reshape(1, 4, 2, 3))
    for seed in SEEDS:
        g = gen(seed)
        b, a = int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        h, w = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        yield f"random, seed {seed}: {b} images, {a} anchors per cell, {h}x{w}", dict(
            objectness=torch.randn(b, a, h, w, generator=g), pred_bbox_deltas=torch.randn(b, 4 * a, h, w, generator=g))
    case = load_lab_case()
    for level, (obj, deltas) in enumerate(zip(case["head_objectness"], case["head_deltas"])):
        yield (f"the trained model's RPN head, level {len(case['head_objectness']) - level} from the top "
               f"({tuple(obj.shape)})"), dict(objectness=obj, pred_bbox_deltas=deltas)


def check_flatten_head_lab(fn: Callable, points: float = 3, name: str = "flatten_head_lab") -> CheckResult:
    """Lab: ``fn(objectness (B, A, H, W), pred_bbox_deltas (B, 4A, H, W)) -> ((B, HWA), (B, HWA, 4))``; 1/3 of
    the points for the objectness, 2/3 for the deltas."""
    return run_parts(name, fn, reference_flatten_head, _flatten_cases(),
                     [("objectness", points / 3, lambda out: out[0]), ("deltas", 2 * points / 3, lambda out: out[1])],
                     exact=True, what="mrcnn_lite.model.rpn_head.concat_box_prediction_layers",
                     off_limits=(concat_box_prediction_layers, "torchvision.models.detection.rpn:concat_box_prediction_layers"))


# The candidates the lab's text names, in its order; where the bug is (Lab 3, two bugs).
FLATTEN_HEAD_PARTS = ("anchors", "objectness", "deltas", "decoding")


def check_flatten_head_locate_lab(fn: Callable, points: float = 1,
                                  name: str = "flatten_head_locate_lab") -> CheckResult:
    """Lab, step 1 (before the fix): ``fn()`` names where the bug is: one of ``FLATTEN_HEAD_PARTS``, or a list of them
    for a lab with two bugs. Only the right part(s) earn the point."""
    return check_choice(fn, ("objectness", "deltas"), FLATTEN_HEAD_PARTS, points=points, name=name,
                        what="both outputs are flattened in the head's channel-first order, "
                             "not the anchors' (y, x, anchor) order")
