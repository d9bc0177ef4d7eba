"""Checkers of notebook 08: mask targets from the proposals."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ...model.mask_head import maskrcnn_loss, project_masks_on_boxes
from .runner import SEEDS, CheckResult, check_choice, gen, random_boxes, random_masks, run_check


def reference_mask_targets(gt_masks: Tensor, proposals: Tensor, matched_idxs: Tensor, M: int) -> Tensor:
    """``mask_head.project_masks_on_boxes``: each GT mask cropped by its proposal, RoIAlign to ``(M, M)``."""
    return project_masks_on_boxes(gt_masks, proposals, matched_idxs, M)


def _mask_target_cases():
    g = gen(90)
    masks = random_masks(2, 24, 32, g)
    yield "no positive proposals (P=0)", dict(gt_masks=masks, proposals=torch.zeros(0, 4),
                                              matched_idxs=torch.zeros(0, dtype=torch.int64), M=7)
    yield "the whole image as proposal, mask 1", dict(gt_masks=masks, proposals=torch.tensor([[0.0, 0.0, 32.0, 24.0]]),
                                                       matched_idxs=torch.tensor([1]), M=8)
    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(16, 64, (1,), generator=g)), int(torch.randint(16, 64, (1,), generator=g))
        n = int(torch.randint(1, 5, (1,), generator=g))
        p = int(torch.randint(1, 12, (1,), generator=g))
        boxes = random_boxes(p, g, scale=float(min(h, w)) * 0.7, max_size=float(min(h, w)) * 0.5, dtype=torch.float32)
        yield f"random, seed {seed}: {n} masks {h}x{w}, {p} proposals", dict(
            gt_masks=random_masks(n, h, w, g), proposals=boxes,
            matched_idxs=torch.randint(0, n, (p,), generator=g), M=(28, 14, 7, 28, 5)[seed])


def check_mask_targets(fn: Callable, points: float = 3, name: str = "mask_targets") -> CheckResult:
    """``fn(gt_masks (n, H, W), proposals (P, 4), matched_idxs (P,), M) -> (P, M, M)`` float targets,
    against ``mrcnn_lite.model.mask_head.project_masks_on_boxes``."""
    return run_check(name, fn, reference_mask_targets, _mask_target_cases(), points, atol=1e-5, rtol=1e-5,
                     what="mrcnn_lite.model.mask_head.project_masks_on_boxes",
                     off_limits=(project_masks_on_boxes, "torchvision.models.detection.roi_heads:project_masks_on_boxes"))


# ----------------------------------------------------------------------------------------------
# Lab: the mask loss (a planted bug: the targets are cropped with the GT boxes)
# ----------------------------------------------------------------------------------------------
def reference_mask_loss(mask_logits: Tensor, proposals: Tensor, gt_masks: Tensor, gt_boxes: Tensor,
                        gt_labels: Tensor, matched_idxs: Tensor) -> Tensor:
    """The mask loss of one image: ``mask_head.maskrcnn_loss`` (``gt_boxes`` is not needed by it)."""
    return maskrcnn_loss(mask_logits, [proposals], [gt_masks], [gt_labels], [matched_idxs])


def _mask_loss_cases():
    from ..lab_case import load_lab_case

    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(16, 64, (1,), generator=g)), int(torch.randint(16, 64, (1,), generator=g))
        n, p = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
        c, M = int(torch.randint(2, 5, (1,), generator=g)), (28, 14, 7, 28, 5)[seed]
        masks = random_masks(n, h, w, g)
        gt_boxes = random_boxes(n, g, scale=float(min(h, w)) * 0.6, max_size=float(min(h, w)) * 0.4, dtype=torch.float32)
        matched = torch.randint(0, n, (p,), generator=g)
        proposals = gt_boxes[matched] + torch.randn(p, 4, generator=g) * 3
        proposals[:, 2:] = torch.maximum(proposals[:, 2:], proposals[:, :2] + 2)
        yield f"random, seed {seed}: {p} proposals, {n} objects, {c} classes, M={M}", dict(
            mask_logits=torch.randn(p, c, M, M, generator=g) * 2, proposals=proposals, gt_masks=masks,
            gt_boxes=gt_boxes, gt_labels=torch.randint(1, c, (n,), generator=g), matched_idxs=matched)
    case = load_lab_case()
    yield (f"the trained model: {len(case['mask_proposals'])} positive proposals and their mask logits "
           f"({case['steps']} training steps)"), dict(
        mask_logits=case["mask_logits"], proposals=case["mask_proposals"], gt_masks=case["gt_masks"],
        gt_boxes=case["gt_boxes"], gt_labels=case["gt_labels"], matched_idxs=case["mask_matched_idxs"])


def check_mask_loss_lab(fn: Callable, points: float = 2, name: str = "mask_loss_lab") -> CheckResult:
    """Lab: ``fn(mask_logits (P, C, M, M), proposals (P, 4), gt_masks (n, H, W), gt_boxes (n, 4), gt_labels (n,),
    matched_idxs (P,)) -> loss``, against ``mrcnn_lite.model.mask_head.maskrcnn_loss``."""
    return run_check(name, fn, reference_mask_loss, _mask_loss_cases(), points, atol=1e-5, rtol=1e-5,
                     what="mrcnn_lite.model.mask_head.maskrcnn_loss",
                     off_limits=(maskrcnn_loss, "torchvision.models.detection.roi_heads:maskrcnn_loss"))


# The candidates the lab's text names, in its order; where the bug is (Lab 6).
MASK_LOSS_PARTS = ("target_masks", "target_boxes", "class_channel", "loss")


def check_mask_loss_locate_lab(fn: Callable, points: float = 1, name: str = "mask_loss_locate_lab") -> CheckResult:
    """Lab, step 1 (before the fix): ``fn()`` names where the bug is: one of ``MASK_LOSS_PARTS``, or a list of them
    for a lab with two bugs. Only the right part(s) earn the point."""
    return check_choice(fn, "target_boxes", MASK_LOSS_PARTS, points=points, name=name,
                        what="the targets are cropped with the GT boxes, not with the proposals the head sees")
