"""Checkers of notebook 07: the box head (Fast R-CNN loss, class-specific decoding)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor

from ... import ops
from ...model.box_head import add_gt_proposals, assign_targets_to_proposals, fastrcnn_loss
from ...model.matching import BalancedPositiveNegativeSampler, Matcher
from .runner import SEEDS, CheckResult, check_choice, gen, random_boxes, run_check


def reference_fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor,
                            regression_targets: Tensor) -> Tuple[Tensor, Tensor]:
    """``box_head.fastrcnn_loss`` for one batch of sampled RoIs given as single tensors:
    ``class_logits (S, C)``, ``box_regression (S, C * 4)``, ``labels (S,)``, ``regression_targets (S, 4)``."""
    return fastrcnn_loss(class_logits, box_regression, [labels], [regression_targets])


def _fastrcnn_loss_inputs(s: int, c: int, n_pos: int, g: torch.Generator) -> Dict[str, Tensor]:
    f64 = dict(dtype=torch.float64)
    labels = torch.zeros(s, dtype=torch.int64)
    pos = torch.randperm(s, generator=g)[:n_pos]
    labels[pos] = torch.randint(1, c, (n_pos,), generator=g) if c > 1 else 0
    return dict(class_logits=torch.randn(s, c, generator=g, **f64) * 2,
                box_regression=torch.randn(s, c * 4, generator=g, **f64) * 0.3,
                labels=labels,
                regression_targets=torch.randn(s, 4, generator=g, **f64) * 0.3)


def _fastrcnn_loss_cases():
    yield "one positive RoI (S=1)", _fastrcnn_loss_inputs(1, 4, 1, gen(80))
    yield "no positives: the box loss is 0", _fastrcnn_loss_inputs(8, 4, 0, gen(81))
    yield "all RoIs positive, two classes", _fastrcnn_loss_inputs(6, 2, 6, gen(82))
    for seed in SEEDS:
        g = gen(seed)
        s = int(torch.randint(4, 120, (1,), generator=g))
        c = int(torch.randint(2, 12, (1,), generator=g))
        n_pos = int(torch.randint(1, s // 4 + 2, (1,), generator=g))
        yield f"random, seed {seed}: {s} RoIs, {c} classes, {n_pos} positives", _fastrcnn_loss_inputs(s, c, n_pos, g)


def check_fastrcnn_loss(fn: Callable, points: float = 3, name: str = "fastrcnn_loss") -> CheckResult:
    """``fn(class_logits (S, C), box_regression (S, C*4), labels (S,), regression_targets (S, 4))
    -> (loss_classifier, loss_box_reg)``, against ``mrcnn_lite.model.box_head.fastrcnn_loss``."""
    return run_check(name, fn, reference_fastrcnn_loss, _fastrcnn_loss_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.model.box_head.fastrcnn_loss",
                     off_limits=(fastrcnn_loss, "torchvision.models.detection.roi_heads:fastrcnn_loss"))


def reference_decode_class_boxes(box_regression: Tensor, proposals: Tensor, classes: Tensor) -> Tensor:
    """Each proposal decoded with the deltas of *its* class: ``box_regression (P, C * 4)``,
    ``proposals (P, 4)``, ``classes (P,)`` -> ``(P, 4)``, with ``BoxCoder((10, 10, 5, 5))`` as the box head."""
    P, C = box_regression.shape[0], box_regression.shape[1] // 4
    boxes = ops.BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(box_regression, proposals)
    return boxes.reshape(P, C, 4)[torch.arange(P), classes]


def _decode_class_cases():
    f64 = dict(dtype=torch.float64)
    yield "empty (P=0)", dict(box_regression=torch.zeros(0, 16, **f64), proposals=torch.zeros(0, 4, **f64),
                              classes=torch.zeros(0, dtype=torch.int64))
    prop = torch.tensor([[10.0, 20.0, 50.0, 40.0]], **f64)
    deltas = torch.zeros(1, 12, **f64)
    deltas[0, 8:] = torch.tensor([10.0, -5.0, 0.5, 0.0], **f64)  # class 2 moves the box, the others do not
    yield "one proposal, only class 2's deltas non-zero", dict(box_regression=deltas, proposals=prop,
                                                               classes=torch.tensor([2]))
    yield "the same proposal, class 1 (zero deltas: the box stays)", dict(
        box_regression=deltas, proposals=prop, classes=torch.tensor([1]))
    for seed in SEEDS:
        g = gen(seed)
        p = int(torch.randint(1, 40, (1,), generator=g))
        c = int(torch.randint(2, 10, (1,), generator=g))
        yield f"random, seed {seed}: {p} proposals, {c} classes", dict(
            box_regression=torch.randn(p, c * 4, generator=g, **f64),
            proposals=random_boxes(p, g), classes=torch.randint(0, c, (p,), generator=g))


def check_decode_class_boxes(fn: Callable, points: float = 2, name: str = "decode_class_boxes") -> CheckResult:
    """``fn(box_regression (P, C*4), proposals (P, 4), classes (P,)) -> boxes (P, 4)``: the class's deltas
    decoded with the weights (10, 10, 5, 5)."""
    return run_check(name, fn, reference_decode_class_boxes, _decode_class_cases(), points, atol=1e-8, rtol=1e-7,
                     what="BoxCoder((10, 10, 5, 5)).decode_single, the class's slot")


# ----------------------------------------------------------------------------------------------
# Lab: the proposals the box head trains on (a planted bug: the GT boxes are not added)
# ----------------------------------------------------------------------------------------------
def reference_training_proposals(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tuple[Tensor, Tensor]:
    """``proposals (P, 4)``, ``gt_boxes (n, 4)``, ``gt_labels (n,)`` -> the proposals the box head trains on and
    their class labels: ``box_head.add_gt_proposals`` then ``box_head.assign_targets_to_proposals`` with the
    box head's matcher (IoU >= 0.5: the GT's class, below: background 0)."""
    proposals = add_gt_proposals([proposals], [gt_boxes])[0]
    _, labels = assign_targets_to_proposals([proposals], [gt_boxes], [gt_labels], Matcher(0.5, 0.5, False))
    return proposals, labels[0]


def _training_proposal_cases():
    from ..lab_case import load_lab_case

    f64 = dict(dtype=torch.float64)
    yield "no proposal overlaps the object", dict(proposals=torch.tensor([[50.0, 50.0, 60.0, 60.0]], **f64),
                                                  gt_boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]], **f64),
                                                  gt_labels=torch.tensor([2]))
    for seed in SEEDS:
        g = gen(seed)
        p, n = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        gt = random_boxes(n, g, scale=60.0, min_size=8.0, max_size=30.0)
        near = gt[torch.randint(0, n, (p,), generator=g)] + torch.randn(p, 4, generator=g, **f64) * 4
        near[:, 2:] = torch.maximum(near[:, 2:], near[:, :2] + 1)
        yield f"random, seed {seed}: {p} proposals, {n} objects", dict(
            proposals=near, gt_boxes=gt, gt_labels=torch.randint(1, 4, (n,), generator=g))
    case = load_lab_case()
    yield (f"the trained model's {len(case['proposals'])} proposals and the image's {len(case['gt_boxes'])} objects "
           f"({case['steps']} training steps)"), dict(proposals=case["proposals"], gt_boxes=case["gt_boxes"],
                                                      gt_labels=case["gt_labels"])


def check_training_proposals_lab(fn: Callable, points: float = 2, name: str = "training_proposals_lab") -> CheckResult:
    """Lab: ``fn(proposals (P, 4), gt_boxes (n, 4), gt_labels (n,)) -> (proposals (P + n, 4), labels (P + n,))``."""
    return run_check(name, fn, reference_training_proposals, _training_proposal_cases(), points, atol=1e-6,
                     rtol=1e-6, what="box_head.add_gt_proposals + assign_targets_to_proposals",
                     off_limits=(add_gt_proposals, assign_targets_to_proposals, "torchvision.models.detection.roi_heads:RoIHeads"))


# ----------------------------------------------------------------------------------------------
# Build: balanced sampling, also when there are too few positives
# ----------------------------------------------------------------------------------------------
def reference_sample_counts(labels: Tensor, batch_size_per_image: int, positive_fraction: float) -> Tensor:
    """How many positives and negatives the package's ``BalancedPositiveNegativeSampler`` draws from
    ``labels (N,)`` (>= 1 positive, 0 negative, -1 ignored): ``[num_pos, num_neg]``."""
    pos, neg = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)([labels])
    return torch.tensor([int(pos[0].sum()), int(neg[0].sum())])


def _call_sample(fn: Callable, inputs: Dict[str, Any]) -> Tensor:
    """``[num_pos, num_neg]`` of the draw; a clear error when it picks the wrong kind of element."""
    if fn is reference_sample_counts:
        return fn(inputs["labels"], inputs["batch_size_per_image"], inputs["positive_fraction"])
    labels = inputs["labels"]
    pos, neg = fn(labels, inputs["batch_size_per_image"], inputs["positive_fraction"], torch.Generator().manual_seed(0))
    pos, neg = torch.as_tensor(pos).reshape(-1).long(), torch.as_tensor(neg).reshape(-1).long()
    if len(pos.unique()) != len(pos) or len(neg.unique()) != len(neg):
        raise ValueError("an index was drawn twice")
    if (labels[pos] < 1).any():
        raise ValueError(f"a 'positive' index points to a label {int(labels[pos][labels[pos] < 1][0])}")
    if (labels[neg] != 0).any():
        raise ValueError(f"a 'negative' index points to a label {int(labels[neg][labels[neg] != 0][0])}")
    return torch.tensor([len(pos), len(neg)])


def _sample_cases():
    def labels_of(n_pos, n_neg, n_ignore, g):
        lab = torch.cat([torch.randint(1, 4, (n_pos,), generator=g), torch.zeros(n_neg, dtype=torch.int64),
                         -torch.ones(n_ignore, dtype=torch.int64)])
        return lab[torch.randperm(len(lab), generator=g)]

    g = gen(30)
    yield "plenty of both: 25% positives", dict(labels=labels_of(100, 400, 10, g), batch_size_per_image=64,
                                                positive_fraction=0.25)
    yield "too few positives: negatives fill the batch", dict(labels=labels_of(3, 400, 10, g), batch_size_per_image=64,
                                                              positive_fraction=0.25)
    yield "no positives at all", dict(labels=labels_of(0, 50, 0, g), batch_size_per_image=16, positive_fraction=0.5)
    yield "too few of both: everything is taken", dict(labels=labels_of(2, 5, 3, g), batch_size_per_image=64,
                                                       positive_fraction=0.25)
    for seed in SEEDS:
        g = gen(seed)
        n_pos, n_neg = int(torch.randint(0, 80, (1,), generator=g)), int(torch.randint(0, 300, (1,), generator=g))
        batch, frac = (32, 64, 128, 256, 16)[seed], (0.25, 0.5, 0.25, 0.5, 0.75)[seed]
        yield f"random, seed {seed}: {n_pos} positives, {n_neg} negatives", dict(
            labels=labels_of(n_pos, n_neg, int(torch.randint(0, 20, (1,), generator=g)), g),
            batch_size_per_image=batch, positive_fraction=frac)


def check_sample_balanced(fn: Callable, points: float = 3, name: str = "sample_balanced") -> CheckResult:
    """``fn(labels (N,), batch_size_per_image, positive_fraction, generator) -> (pos_idx, neg_idx)``: as many
    positives and negatives as the package's ``BalancedPositiveNegativeSampler`` draws, each index of the right kind."""
    return run_check(name, fn, reference_sample_counts, _sample_cases(), points, exact=True, call=_call_sample,
                     what="the counts of mrcnn_lite's BalancedPositiveNegativeSampler",
                     off_limits=(BalancedPositiveNegativeSampler,
                                 "torchvision.models.detection._utils:BalancedPositiveNegativeSampler"))


# The candidates the lab's text names, in its order; where the bug is (Lab 5).
TRAINING_PROPOSALS_PARTS = ("iou", "best_match", "threshold", "rois")


def check_training_proposals_locate_lab(fn: Callable, points: float = 1,
                                        name: str = "training_proposals_locate_lab") -> CheckResult:
    """Lab, step 1 (before the fix): ``fn()`` names where the bug is: one of ``TRAINING_PROPOSALS_PARTS``,
    or a list of them for a lab with two bugs. Only the right part(s) earn the point."""
    return check_choice(fn, "rois", TRAINING_PROPOSALS_PARTS, points=points, name=name,
                        what="the RoIs are the proposals alone: the ground-truth boxes are missing "
                             "from them")
