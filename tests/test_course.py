"""The course tools: exercise checkers, student versions and the autograder.

The checker tests are fast: each checker must pass the notebook's own solution (executed from the
exercise cell) and the package reference, fail a plausible wrong implementation with a message that
shows input, expected and got, and report NotImplementedError as "not implemented yet".

The notebook tests grade notebooks through the CLI (two at a time, longest first) in a module-scoped
fixture: every student notebook of 01-12 (also executed as written, to show it runs to its end), and two
nbgrader submissions (one solved, one with a lab half fixed). The cheats and crashes are tested on small
synthetic notebooks in test_grading.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import nbgrader_course_dir
from torch import nn

import mrcnn_lite as ml
from mrcnn_lite.course import checks
from mrcnn_lite.course.checks import nb11_evaluation
from mrcnn_lite.course.assignments import (BEGIN, END, SolutionMarkerError, make_student_notebook,
                                           solution_lines, strip_solutions)
from mrcnn_lite.model import backbone as B

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [ROOT / "notebooks" / n for n in (
    "01_boxes_iou_nms.ipynb", "02_resnet_backbone.ipynb", "03_feature_pyramid.ipynb",
    "04_anchors.ipynb", "05_rpn.ipynb", "06_roi_pooling.ipynb",
    "07_box_head.ipynb", "08_mask_head.ipynb", "09_mask_rcnn.ipynb",
    "10_training.ipynb", "11_evaluation.ipynb", "12_your_own_data.ipynb")]
PY = sys.executable


# ------------------------------------------------------------------------------------------------
# The solutions, taken from the notebooks' exercise cells
# ------------------------------------------------------------------------------------------------
def exercise_cells(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and BEGIN in c.source]


def lab_cells(path: Path):
    """The cells that hand out a component with a planted bug (``def lab_...``)."""
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith("def lab_")]


@pytest.fixture(scope="module")
def solutions():
    """name -> the notebook's solution function/class (every exercise cell executed) and the labs'
    handed-out buggy components (``lab_...``)."""
    from mrcnn_lite.model import mask_head

    ns = {"torch": torch, "math": math, "nn": nn, "F": F, "ml": ml, "np": np, "box_iou": ml.ops.box_iou,
          "mask_head": mask_head}
    for path in NOTEBOOKS:
        for source in exercise_cells(path) + lab_cells(path):
            exec(compile(source, str(path), "exec"), ns)
    _SOLUTIONS.update(ns)
    return ns


# The notebooks' solutions, for the wrong implementations below that change one detail of a right one (the
# package's own functions are off limits to a checked function: see course/checks/off_limits.py).
_SOLUTIONS = {}


def test_there_are_eight_labs_two_across_stages_and_three_predictions():
    labs = [s for p in NOTEBOOKS for s in lab_cells(p)]
    assert len(labs) >= 6
    sources = "\n".join(c.source for p in NOTEBOOKS for c in nbformat.read(str(p), as_version=4).cells)
    assert sources.count("checks.check_prediction(") >= 3
    labs = ("decode", "frozen_bn", "flatten_head", "level", "training_proposals", "mask_loss")
    assert sum(sources.count(f"checks.check_{n}_lab(") for n in labs) == 6
    # Each lab asks where its bug is (1 point) before it is fixed: the locate check comes first.
    assert sum(sources.count(f"checks.check_{n}_locate_lab(") for n in labs) == 6
    for n in labs:
        assert sources.index(f"checks.check_{n}_locate_lab(") < sources.index(f"checks.check_{n}_lab("), n
    # the cross-stage labs (tests/test_cross_stage_labs.py): locating and fixing are checked separately
    for n in ("model_nine", "model_eleven"):
        assert sources.count(f"checks.check_{n}_locate_lab(") == 1 and sources.count(f"checks.check_{n}_lab(") == 1
        assert sources.index(f"checks.check_{n}_locate_lab(") < sources.index(f"checks.check_{n}_lab("), n
        assert sources.count(f"<!-- answer: {n}_why, 2 points, lab -->") == 1


def test_every_notebook_has_an_exercise_and_a_check():
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        sources = [c.source for c in nb.cells if c.cell_type == "code"]
        n_ex = sum(s.count(BEGIN) for s in sources)
        n_checks = sum(s.count("checks.check_") for s in sources)
        assert n_ex >= 1, f"{path.name} has no exercise"
        assert n_checks == n_ex, f"{path.name}: {n_ex} exercises but {n_checks} check calls"


# ------------------------------------------------------------------------------------------------
# Plausible wrong implementations, one per checker
# ------------------------------------------------------------------------------------------------
def iou_no_clamp(b1, b2):
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    wh = torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])  # forgot clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def encode_no_weights(targets, refs, weights=(1.0, 1.0, 1.0, 1.0)):
    return _SOLUTIONS["my_encode"](targets, refs, (1.0, 1.0, 1.0, 1.0))


def nms_not_greedy(boxes, scores, iou_threshold):
    """Drops a box when *any* higher-scored box overlaps it, even one that was itself dropped."""
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = ml.ops.box_iou(boxes[order], boxes[order]).triu(1)
    keep = ~(iou > iou_threshold).any(dim=0)
    return order[keep]


class BottleneckNoFinalRelu(nn.Module):
    def __init__(self, cin, planes, stride=1):
        super().__init__()
        cout = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + identity


def top_down_from_laterals(L):
    """Adds the upsampled *lateral* of the level above instead of the merged map."""
    return [L[i] + F.interpolate(L[i + 1], size=L[i].shape[-2:], mode="nearest") for i in range(len(L) - 1)] + [L[-1]]


def base_anchors_round_half_up(sizes, ratios):
    rows = []
    for r in ratios:
        for s in sizes:
            h, w = s * math.sqrt(r), s / math.sqrt(r)
            rows.append([math.floor(v + 0.5) for v in (-w / 2, -h / 2, w / 2, h / 2)])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors_x_slow(base, grid_size, image_size):
    (gh, gw), (H, W) = grid_size, image_size
    xs, ys = torch.meshgrid(torch.arange(gw) * (W // gw), torch.arange(gh) * (H // gh), indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def top_n_without_offset(objectness, num_anchors_per_level, pre_nms_top_n):
    """Returns each level's indices into that level, not into the concatenated anchors."""
    return torch.cat([lvl.topk(min(pre_nms_top_n, lvl.shape[1]), dim=1).indices
                      for lvl in objectness.split(list(num_anchors_per_level), dim=1)], dim=1)


def rpn_loss_per_positive(objectness, deltas, labels, targets, pos_mask, neg_mask):
    obj, box = _SOLUTIONS["rpn_loss"](objectness, deltas, labels, targets, pos_mask, neg_mask)
    n_sampled, n_pos = int(pos_mask.sum() + neg_mask.sum()), int(pos_mask.sum())
    return obj, box * n_sampled / max(n_pos, 1)  # divides by the positives instead of all sampled


def bilinear_no_edge_clamp(f, y, x):
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x0 + 1]
            + ly * (1 - lx) * f[y0 + 1, x0] + ly * lx * f[y0 + 1, x0 + 1])


def roi_align_not_aligned(f, box, output_size, spatial_scale, sampling_ratio):
    shifted = [v + 0.5 / spatial_scale for v in box]  # undoes the -0.5 shift: the legacy grid
    return _SOLUTIONS["roi_align_one_box"](f, shifted, output_size, spatial_scale, sampling_ratio)


def fastrcnn_loss_per_positive(class_logits, box_regression, labels, regression_targets):
    cls, box = _SOLUTIONS["fastrcnn_loss_by_hand"](class_logits, box_regression, labels, regression_targets)
    return cls, box * labels.numel() / max(int((labels > 0).sum()), 1)  # divides by the positives


def decode_class_boxes_unit_weights(box_regression, proposals, classes):
    P = proposals.shape[0]
    deltas = box_regression.reshape(P, box_regression.shape[1] // 4, 4)[torch.arange(P), classes]
    return ml.ops.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, proposals)  # forgot (10, 10, 5, 5)


def mask_targets_aligned(gt_masks, proposals, matched_idxs, M):
    rois = torch.cat([matched_idxs[:, None].to(proposals), proposals], dim=1)
    return ml.ops.roi_align(gt_masks[:, None].to(proposals), rois, (M, M), 1.0, -1, aligned=True)[:, 0]


def paste_mask_without_border(mask, box, image_size):
    """Stretches the mask over the box as it is: no 1-pixel zero border, no grown box."""
    H, W = image_size
    x0, y0, x1, y1 = (int(float(v)) for v in box)
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    out = mask.new_zeros(H, W)
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1 + 1, W), max(y0, 0), min(y1 + 1, H)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0:cy1, cx0:cx1] = resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out


def accumulate_without_scaling(model, optimizer, images, targets, micro_batch, clip_grad_norm=None):
    """Adds up the micro-batch gradients without dividing by their number: a k-times too large step."""
    optimizer.zero_grad()
    totals, chunks = {}, len(images) // micro_batch
    for start in range(0, len(images), micro_batch):
        losses = model(images[start:start + micro_batch], targets[start:start + micro_batch])
        sum(losses.values()).backward()
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.item() / chunks
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    return {**totals, "loss": sum(totals.values())}


def sample_leaves_positive_slots_empty(labels, batch_size_per_image, positive_fraction, generator):
    """Always draws batch * (1 - fraction) negatives, even when there are too few positives."""
    positive, negative = torch.where(labels >= 1)[0], torch.where(labels == 0)[0]
    n_pos = int(batch_size_per_image * positive_fraction)
    pos = positive[torch.randperm(len(positive), generator=generator)[:n_pos]]
    neg = negative[torch.randperm(len(negative), generator=generator)[:batch_size_per_image - n_pos]]
    return pos, neg


def lr_at_cosine_after_warmup(it, total, base_lr, warmup_iters, warmup_factor):
    """Decays over the iterations after the warmup instead of multiplying the warmup into one cosine."""
    if it < warmup_iters:
        return base_lr * (warmup_factor + (1 - warmup_factor) * it / warmup_iters)
    t = min(it, total) - warmup_iters
    return base_lr * 0.5 * (1 + math.cos(math.pi * t / max(total - warmup_iters, 1)))


def coco_ap_no_envelope(recall, precision):
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")  # the raw zig-zag precision
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def rle_decode_row_major(counts, height, width):
    return np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8).reshape(height, width)


# checker, solution name in the notebooks, package reference, a wrong implementation
CASES = {
    "box_iou": (checks.check_box_iou, "my_box_iou", ml.ops.box_iou, iou_no_clamp),
    "encode": (checks.check_encode, "my_encode", checks.reference_encode, encode_no_weights),
    "nms": (checks.check_nms, "my_nms", ml.ops.nms, nms_not_greedy),
    "bottleneck": (checks.check_bottleneck, "MyBottleneck", B.Bottleneck, BottleneckNoFinalRelu),
    "fpn_top_down": (checks.check_fpn_top_down, "top_down", checks.reference_fpn_top_down, top_down_from_laterals),
    "base_anchors": (checks.check_base_anchors, "base_anchors", ml.model.anchors.generate_base_anchors,
                     base_anchors_round_half_up),
    "grid_anchors": (checks.check_grid_anchors, "grid_anchors", checks.reference_grid_anchors, grid_anchors_x_slow),
    "rpn_loss": (checks.check_rpn_loss, "rpn_loss", checks.reference_rpn_loss, rpn_loss_per_positive),
    "top_n_per_level": (checks.check_top_n_per_level, "top_n_per_level", checks.reference_top_n_per_level,
                        top_n_without_offset),
    "bilinear": (checks.check_bilinear, "bilinear", checks.reference_bilinear, bilinear_no_edge_clamp),
    "roi_align_one_box": (checks.check_roi_align_one_box, "roi_align_one_box", checks.reference_roi_align_one_box,
                          roi_align_not_aligned),
    "fastrcnn_loss": (checks.check_fastrcnn_loss, "fastrcnn_loss_by_hand", checks.reference_fastrcnn_loss,
                      fastrcnn_loss_per_positive),
    "decode_class_boxes": (checks.check_decode_class_boxes, "decode_class_boxes",
                           checks.reference_decode_class_boxes, decode_class_boxes_unit_weights),
    "mask_targets": (checks.check_mask_targets, "mask_targets", ml.model.mask_head.project_masks_on_boxes,
                     mask_targets_aligned),
    "paste_mask": (checks.check_paste_mask, "paste_mask", checks.reference_paste_mask, paste_mask_without_border),
    "train_step_accumulate": (checks.check_train_step_accumulate, "train_step_accumulate",
                              checks.reference_train_step_accumulate, accumulate_without_scaling),
    "sample_balanced": (checks.check_sample_balanced, "sample_balanced", None, sample_leaves_positive_slots_empty),
    "lr_at": (checks.check_lr_at, "lr_at", checks.reference_lr_at, lr_at_cosine_after_warmup),
    "coco_ap": (checks.check_coco_ap, "average_precision", checks.reference_coco_ap, coco_ap_no_envelope),
    "rle_decode": (checks.check_rle_decode, "rle_decode", checks.reference_rle_decode, rle_decode_row_major),
}


@pytest.mark.parametrize("name", list(CASES))
def test_checker_passes_solution_and_refuses_the_reference(name, solutions, capsys):
    """The notebook's solution passes; the package's own implementation, handed in as the answer, earns 0
    with a message naming what was called (see course/checks/off_limits.py)."""
    check, solution_name, reference, _ = CASES[name]
    result = check(solutions[solution_name], points=2)
    assert result.passed, result.message
    assert (result.points, result.max_points, result.name) == (2, 2, name)
    assert capsys.readouterr().out.count(f"PASS  {name} (2/2 points)") == 1
    if reference is not None:
        result = check(reference, points=2)
        assert not result.passed and result.points == 0, result.message
        assert "your code called" in result.message and "write yourself" in result.message, result.message


@pytest.mark.parametrize("name", list(CASES))
def test_checker_fails_wrong_implementation_with_details(name, solutions, capsys):
    check, _, _, wrong = CASES[name]
    result = check(wrong, points=3)
    assert not result.passed and result.implemented
    assert result.points == 0 and result.max_points == 3
    msg = result.message
    assert msg.startswith(f"FAIL  {name} (0/3 points)")
    assert "input:" in msg and "expected:" in msg, msg
    assert "got:" in msg or "raised" in msg, msg
    assert msg in capsys.readouterr().out
    assert checks.RESULTS[-1] is result


def test_failure_message_shows_first_difference(capsys):
    result = checks.check_box_iou(iou_no_clamp)
    assert "first difference at [" in result.message
    assert "boxes1 = [[" in result.message  # small inputs are printed in full


def test_exception_in_learner_code_is_reported_not_raised(capsys):
    def broken(boxes1, boxes2):
        return boxes1 @ boxes2  # shapes (N, 4) @ (M, 4): a RuntimeError
    result = checks.check_box_iou(broken)
    assert not result.passed
    assert "raised RuntimeError" in result.message and "boxes1 @ boxes2" in result.message


@pytest.mark.parametrize("name", list(CASES))
def test_checker_reports_not_implemented(name, capsys):
    check = CASES[name][0]

    def todo(*args, **kwargs):
        raise NotImplementedError

    class TodoBlock(BottleneckNoFinalRelu):
        def forward(self, x):
            raise NotImplementedError

    result = check(TodoBlock if name == "bottleneck" else todo)
    assert not result.passed and not result.implemented and result.points == 0
    assert result.message.startswith(f"TODO  {name}") and "not implemented yet" in result.message


def test_train_step_check_wants_float_losses(solutions, capsys):
    def returns_tensors(model, optimizer, images, targets, micro_batch, clip_grad_norm=None):
        out = solutions["train_step_accumulate"](model, optimizer, images, targets, micro_batch, clip_grad_norm)
        return {k: torch.tensor(v) for k, v in out.items()}
    result = checks.check_train_step_accumulate(returns_tensors)
    assert not result.passed and "plain floats" in result.message


# ------------------------------------------------------------------------------------------------
# Debugging labs: the handed-out component fails, the fix passes, a half fix earns part of the points
# ------------------------------------------------------------------------------------------------
LABS = {  # checker, the notebook's buggy component, the notebook's fix
    "decode_lab": (checks.check_decode_lab, "lab_decode", "fixed_decode"),
    "frozen_bn_lab": (checks.check_frozen_bn_lab, "lab_frozen_bn", "fixed_frozen_bn"),
    "flatten_head_lab": (checks.check_flatten_head_lab, "lab_flatten_head", "fixed_flatten_head"),
    "level_lab": (checks.check_level_lab, "lab_level_for_boxes", "fixed_level_for_boxes"),
    "training_proposals_lab": (checks.check_training_proposals_lab, "lab_training_proposals",
                               "fixed_training_proposals"),
    "mask_loss_lab": (checks.check_mask_loss_lab, "lab_mask_loss", "fixed_mask_loss"),
}


@pytest.mark.parametrize("name", list(LABS))
def test_lab_fails_the_handed_out_component_and_passes_the_fix(name, solutions, capsys):
    check, buggy, fixed = LABS[name]
    result = check(solutions[buggy], points=2)
    assert not result.passed and result.implemented and result.points == 0, result.message
    assert "expected:" in result.message and "got:" in result.message
    result = check(solutions[fixed], points=2)
    assert result.passed and result.points == 2, result.message
    assert "cases" in result.message


def test_labs_run_on_the_trained_models_tensors(capsys):
    from mrcnn_lite.course.checks import nb01_boxes, nb05_rpn
    from mrcnn_lite.course.lab_case import load_lab_case

    case = load_lab_case()
    assert case["steps"] >= 2 and len(case["proposals"]) > 0 and len(case["gt_boxes"]) >= 1
    labels = [label for label, _ in nb01_boxes._decode_lab_cases()]
    assert labels[-1].startswith("the trained model")
    assert sum(label.startswith("the trained model") for label, _ in nb05_rpn._flatten_cases()) == 3


def test_half_fixed_decode_lab_earns_half_the_points(solutions, capsys):
    def centres_fixed(deltas, anchors):           # dx/dy fixed, dw/dh still swapped
        swapped = deltas[:, [0, 1, 3, 2]]
        return solutions["fixed_decode"](swapped, anchors)
    result = checks.check_decode_lab(centres_fixed, points=3)
    assert not result.passed and result.points == 1.5 and result.max_points == 3
    assert result.message.startswith("FAIL  decode_lab (1.5/3 points)")
    assert "part 'box centres' (1.5 points): PASS" in result.message
    assert "part 'box sizes' (1.5 points): FAIL" in result.message
    assert repr(result) == "1.5"            # the check cell's value: nbgrader's partial credit


# ------------------------------------------------------------------------------------------------
# The labs' "where is the bug?" questions: only the right named part(s) earn the point
# ------------------------------------------------------------------------------------------------
from mrcnn_lite.course.checks import nb01_boxes, nb02_backbone, nb05_rpn, nb06_roi, nb07_box_head, nb08_mask_head  # noqa: E402

LOCATES = {  # checker, the lab's candidates, the right answer
    "decode_locate_lab": (checks.check_decode_locate_lab, nb01_boxes.DECODE_PARTS, {"centre_shift", "new_size"}),
    "frozen_bn_locate_lab": (checks.check_frozen_bn_locate_lab, nb02_backbone.FROZEN_BN_PARTS, {"mean"}),
    "flatten_head_locate_lab": (checks.check_flatten_head_locate_lab, nb05_rpn.FLATTEN_HEAD_PARTS,
                                {"objectness", "deltas"}),
    "level_locate_lab": (checks.check_level_locate_lab, nb06_roi.LEVEL_PARTS, {"canonical_size"}),
    "training_proposals_locate_lab": (checks.check_training_proposals_locate_lab,
                                      nb07_box_head.TRAINING_PROPOSALS_PARTS, {"rois"}),
    "mask_loss_locate_lab": (checks.check_mask_loss_locate_lab, nb08_mask_head.MASK_LOSS_PARTS, {"target_boxes"}),
}


@pytest.mark.parametrize("name", list(LOCATES))
def test_locate_question_wants_exactly_the_right_part(name, capsys):
    check, choices, right = LOCATES[name]
    assert len(choices) >= 4 and right <= set(choices)
    answer = sorted(right)[0] if len(right) == 1 else sorted(right)
    result = check(lambda: answer)
    assert result.passed and result.points == 1 and result.message.startswith(f"PASS  {name} (1/1 points)")
    if len(right) > 1:       # any order, any case, spaces ignored
        assert check(lambda: tuple(f" {c.upper()} " for c in reversed(answer))).passed
    wrong_answers = [c for c in choices if {c} != right]
    wrong_answers.append(sorted(right) + [next(c for c in choices if c not in right)])   # one part too many
    if len(right) > 1:
        wrong_answers.append(sorted(right)[:1])                                            # one bug of two
    for wrong in wrong_answers:
        result = check(lambda: wrong)
        assert not result.passed and result.implemented and result.points == 0, (wrong, result.message)
        assert "is not where the bug is" in result.message
        assert not any(f"'{c}'" in result.message for c in right - set([wrong] if isinstance(wrong, str) else wrong))
    for odd in ("somewhere", 3, ["mean", 4], []):
        result = check(lambda: odd)
        assert not result.passed and "answer with one of" in result.message, (odd, result.message)


@pytest.mark.parametrize("name", list(LOCATES))
def test_locate_question_not_answered_is_todo(name, capsys):
    def todo():
        raise NotImplementedError
    result = LOCATES[name][0](todo)
    assert not result.passed and not result.implemented and result.points == 0
    assert result.message.startswith(f"TODO  {name} (0/1 points)")


def test_locate_question_is_graded_from_its_spec(capsys):
    """The grader judges a locate answer outside the learner's process, from the checker's spec alone."""
    from mrcnn_lite.course.checks import runner

    spec = runner.spec_of(checks.check_level_locate_lab, None, points=1)
    assert spec.kind == "choice" and spec.actual == ("canonical_size",)
    assert runner.judge(spec, runner.produce(spec, lambda: "Canonical_Size")).passed
    assert not runner.judge(spec, runner.produce(spec, lambda: "k0")).passed
    assert runner.judge(spec, []).message.startswith("FAIL  level_locate_lab (0/1 points): no answer")


# ------------------------------------------------------------------------------------------------
# Predict-then-run questions
# ------------------------------------------------------------------------------------------------
def test_prediction_number_and_choice(capsys):
    def todo():
        raise NotImplementedError
    assert checks.check_prediction(lambda: 1728, 1728, points=1, name="q").passed
    assert not checks.check_prediction(lambda: 1727, 1728, points=1, name="q").passed
    assert checks.check_prediction(lambda: 0.49, 0.5, points=1, name="q", tolerance=0.02).passed
    assert checks.check_prediction(lambda: " More ", "more", name="q", choices=("more", "fewer")).passed
    wrong = checks.check_prediction(lambda: "fewer", "more", name="q", choices=("more", "fewer"))
    assert not wrong.passed and "the run gives 'more'" in wrong.message
    odd = checks.check_prediction(lambda: "up", "more", name="q", choices=("more", "fewer"))
    assert not odd.passed and "answer one of" in odd.message
    result = checks.check_prediction(todo, 3, points=2, name="q")
    assert not result.implemented and result.points == 0 and result.message.startswith("TODO  q")


def test_coco_ap_reference_is_pycocotools_on_real_boxes():
    """coco_ap_by_pycocotools (the checker's reference) == the full COCOeval on boxes that make the same
    ranked TP/FP list, and == reference_coco_ap (the notebook's fallback)."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from mrcnn_lite.engine import coco_from_targets

    g = torch.Generator().manual_seed(5)
    for trial in range(3):
        n_gt, n_det = 3 + 2 * trial, 8 + 5 * trial
        gt = [[20.0 * i, 0.0, 10.0, 10.0] for i in range(n_gt)]
        tps, found, dets = [], 0, []
        for rank in range(n_det):
            hit = bool(torch.rand(1, generator=g) < 0.5) and found < n_gt
            box = gt[found] if hit else [500.0 + 20 * rank, 500.0, 10.0, 10.0]
            found += hit
            tps.append(hit)
            dets.append({"image_id": 1, "category_id": 1, "bbox": box, "score": 1.0 - rank / 100})
        coco_gt = coco_from_targets(
            [{"image_id": 1, "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in gt]),
              "labels": torch.ones(n_gt, dtype=torch.int64)}], [(600, 1000)], num_classes=2)
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
            ev.evaluate()
            ev.accumulate()
        full = float(ev.eval["precision"][0, :, 0, 0, -1].mean())   # IoU 0.5, class 1, area all, 100 dets
        recall, precision = nb11_evaluation._pr_curve(tps, n_gt)
        assert checks.coco_ap_by_pycocotools(recall, precision) == pytest.approx(full, abs=1e-12)
        assert checks.reference_coco_ap(recall.numpy(), precision.numpy()) == pytest.approx(full, abs=1e-12)


def test_rle_counts_round_trip():
    g = torch.Generator().manual_seed(0)
    for h, w in ((1, 1), (5, 1), (7, 9)):
        mask = (torch.rand(h, w, generator=g) < 0.5).to(torch.uint8)
        for m in (mask, torch.zeros_like(mask), torch.ones_like(mask)):
            counts = checks.rle_counts(m.numpy())
            assert sum(counts) == h * w
            assert torch.equal(checks.reference_rle_decode(counts, h, w), m)


def test_or_reference_falls_back_only_while_not_implemented(capsys):
    def mine(a, b):
        raise NotImplementedError
    fallback = checks.or_reference(mine, ml.ops.box_iou)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert fallback(boxes, boxes).item() == 1.0
    fallback(boxes, boxes)
    assert capsys.readouterr().out.count("not implemented yet") == 1  # the note is printed once
    assert checks.or_reference(lambda a, b: "mine", ml.ops.box_iou)(boxes, boxes) == "mine"

    class Todo(B.Bottleneck):
        def forward(self, x):
            raise NotImplementedError
    Block = checks.or_reference(Todo, B.Bottleneck)
    block = Block(8, 2).eval()
    ref = B.Bottleneck(8, 2).eval()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(1, 8, 5, 5)
    assert Block.__name__ == "Todo" and torch.equal(block(x), ref(x))


# ------------------------------------------------------------------------------------------------
# Student versions
# ------------------------------------------------------------------------------------------------
def test_strip_solutions_keeps_indent_and_rejects_broken_markers():
    src = f"def f(x):\n    {BEGIN}\n    return x + 1\n    {END}\n\nprint(f)"
    assert strip_solutions(src) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError\n\nprint(f)"
    with pytest.raises(SolutionMarkerError):
        strip_solutions(f"{BEGIN}\nx = 1")
    with pytest.raises(SolutionMarkerError):
        strip_solutions(f"x = 1\n{END}")


def test_make_student_notebook_clears_outputs_and_metadata():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"# NBVAL_CHECK_OUTPUT\ndef f():\n    {BEGIN}\n    return 42\n    {END}")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="42\n")]
    nb.cells[0]["id"] = "exercise"   # a fixed id: a random one can contain "42" (1 run in about 200 did)
    nb.cells[0].execution_count = 3
    nb.cells[0].metadata["solution"] = "return 42"
    nb.metadata["grader"] = {"answer": "return 42"}
    student = make_student_notebook(nb)
    text = nbformat.writes(student)
    assert "42" not in text and "NBVAL_CHECK_OUTPUT" not in text
    assert student.cells[0].outputs == [] and student.cells[0].execution_count is None
    assert nb.cells[0].outputs, "the original notebook must not change"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "make-assignments", "--out", str(out),
                           *map(str, NOTEBOOKS)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


def test_make_assignments_leaves_no_solution_text(student_dir):
    for path in NOTEBOOKS:
        student_text = (student_dir / path.name).read_text()
        assert BEGIN not in student_text and END not in student_text
        student = nbformat.read(str(student_dir / path.name), as_version=4)
        for cell in student.cells:
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
        lines = [l.strip() for src in exercise_cells(path) for l in solution_lines(src)]
        # Distinctive: long code lines of the solutions that appear nowhere else in the teacher's
        # notebook (my_decode in 01, for example, legitimately shares a few lines with my_encode).
        teacher = nbformat.read(str(path), as_version=4)
        given = "\n".join(strip_solutions(c.source) for c in teacher.cells if c.cell_type == "code")
        distinctive = [l for l in lines if len(l) >= 20 and not l.startswith("#") and l not in given]
        assert len(distinctive) >= 2, f"{path.name}: too few solution lines to test with"
        code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
        leaked = [l for l in distinctive if l in code or json.dumps(l)[1:-1] in student_text]
        assert not leaked, f"{path.name}: solution lines left in the student version: {leaked}"
        assert code.count("raise NotImplementedError") >= sum(s.count(BEGIN) for s in exercise_cells(path))


def test_cli_help():
    for args in ([], ["make-assignments"], ["grade"], ["list"]):
        proc = subprocess.run([PY, "-m", "mrcnn_lite.course", *args, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------------------
# nbgrader metadata and the solutions' stored check outputs (no execution: nbval runs the solutions)
# ------------------------------------------------------------------------------------------------
def test_committed_notebooks_carry_nbgrader_metadata():
    """Every solution cell is an autograded answer, every check cell an autograder test with the check's points,
    and the check call is the cell's last statement (its value, the points, is what nbgrader reads)."""
    from mrcnn_lite.course.assignments import add_nbgrader_metadata, split_check_cells

    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        marked = add_nbgrader_metadata(split_check_cells(nbformat.from_dict(nb)))
        assert [c.source for c in marked.cells] == [c.source for c in nb.cells], f"{path.name}: run add-nbgrader-metadata"
        assert [c.metadata.get("nbgrader") for c in marked.cells] == [c.metadata.get("nbgrader") for c in nb.cells], \
            f"{path.name}: run `python -m mrcnn_lite.course add-nbgrader-metadata {path.name}`"
        ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
        assert len(ids) == len(set(ids)), f"{path.name}: grade ids repeat: {ids}"


def test_solution_check_cells_store_full_marks():
    """nbval compares the stored outputs of the check cells (all marked NBVAL_CHECK_OUTPUT) when it runs the
    solution notebooks; the stored outputs say PASS with full points, so that nbval's run of each solution
    notebook is the proof that the solutions get full marks (no separate graded run of the solutions)."""
    from mrcnn_lite.course.grade import declared_exercises

    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        for cell, ex in zip([c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")], declared_exercises(nb)):
            assert cell.source.startswith("# NBVAL_CHECK_OUTPUT"), f"{path.name}: {ex['name']}'s check is not checked by nbval"
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            value = [o["data"]["text/plain"] for o in cell.outputs if o.output_type == "execute_result"]
            want = f"PASS  {ex['name']} ({ex['max_points']:g}/{ex['max_points']:g} points)"
            assert want in text, f"{path.name}: stored output of {ex['name']}: {text!r}"
            assert value == [f"{ex['max_points']:g}"], f"{path.name}: {ex['name']}'s cell value {value}"


# ------------------------------------------------------------------------------------------------
# The autograder, on real notebooks (slow: each runs a notebook)
# ------------------------------------------------------------------------------------------------
PARTIAL = "01_boxes_iou_nms.ipynb"   # its decode lab, half fixed, in the nbgrader release version
FULL = "04_anchors.ipynb"            # graded as submitted solution, by both graders


def _grade(path: Path, out_json: Path, run_notebook: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")  # two kernels share the 2 cores
    env.pop("MRCNN_LITE_FULL", None)
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "grade", str(path), "--json", str(out_json),
                           "--timeout", "300", *(["--run-notebook"] if run_notebook else [])],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out_json.read_text())
    report["stdout"] = proc.stdout
    return report


def half_fix_decode_lab(nb) -> None:
    """In a student copy: write ``fixed_decode`` as the handed-out ``lab_decode`` with only dx/dy corrected."""
    lab = next(c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith("def lab_decode"))
    half = (lab.replace("def lab_decode", "def fixed_decode")
            .replace("pred_ctr_x = dy * widths", "pred_ctr_x = dx * widths")
            .replace("pred_ctr_y = dx * heights", "pred_ctr_y = dy * heights"))
    assert half.count("dx * widths") == 1
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def fixed_decode"))
    cell.source = half


def nbgrader_available() -> bool:
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def nbgrader_course(tmp_path_factory):
    """A standard nbgrader course folder with 01 and 04 as assignment "mrcnn": ``generate_assignment``, then
    two submissions: 04 with its solutions pasted in, 01 as released with its decode lab half fixed.
    ``None`` when nbgrader is not installed."""
    if not nbgrader_available():
        return None
    root = tmp_path_factory.mktemp("nbgrader_course")
    nbgrader = nbgrader_course_dir(root, "mrcnn_lite", cell_timeout=300, timeout=900, MRCNN_LITE_FULL=None)
    source = root / "source" / "mrcnn"
    source.mkdir(parents=True)
    for name in (PARTIAL, FULL):
        (source / name).write_text((ROOT / "notebooks" / name).read_text())

    nbgrader("generate_assignment", "mrcnn", "--force")
    nbgrader("db", "student", "add", "s1")
    submitted = root / "submitted" / "s1" / "mrcnn"
    submitted.mkdir(parents=True)
    partial = nbformat.read(str(root / "release" / "mrcnn" / PARTIAL), as_version=4)
    half_fix_decode_lab(partial)
    nbformat.write(partial, str(submitted / PARTIAL))
    full = nbformat.read(str(root / "release" / "mrcnn" / FULL), as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in
               nbformat.read(str(source / FULL), as_version=4).cells if c.metadata.get("nbgrader", {}).get("solution")}
    for cell in full.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[cell.metadata["nbgrader"]["grade_id"]]
    nbformat.write(full, str(submitted / FULL))
    nbgrader("autograde", "mrcnn", "--force")

    from nbgrader.api import Gradebook

    scores = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for name in (PARTIAL, FULL):
            nb = gb.find_submission_notebook(name[:-len(".ipynb")], "mrcnn", "s1")
            scores[name] = {"score": nb.score, "max_score": nb.max_score,
                            "grades": {g.name: g.score for g in nb.grades}}
    return {"root": root, "submitted": submitted, "scores": scores}


@pytest.fixture(scope="module")
def graded(student_dir, nbgrader_course, tmp_path_factory):
    """The course grader on: every untouched student notebook, and the two nbgrader submissions."""
    work = tmp_path_factory.mktemp("grades")
    jobs = {("student", p.name): student_dir / p.name for p in NOTEBOOKS}
    if nbgrader_course is not None:
        jobs[("nbgrader", PARTIAL)] = nbgrader_course["submitted"] / PARTIAL
        jobs[("nbgrader", FULL)] = nbgrader_course["submitted"] / FULL
    else:  # the same two submissions, made from the course's own student copy and solution notebook
        partial = nbformat.read(str(student_dir / PARTIAL), as_version=4)
        half_fix_decode_lab(partial)
        (work / "partial").mkdir()
        nbformat.write(partial, str(work / "partial" / PARTIAL))
        jobs[("nbgrader", PARTIAL)] = work / "partial" / PARTIAL
        jobs[("nbgrader", FULL)] = ROOT / "notebooks" / FULL
    # Longest first, two at a time.
    longest = ("10_training.ipynb", "11_evaluation.ipynb", "09_mask_rcnn.ipynb", "08_mask_head.ipynb", "05_rpn.ipynb",
               "02_resnet_backbone.ipynb")
    order = sorted(jobs, key=lambda k: longest.index(k[1]) if k[1] in longest else len(longest))
    with ThreadPoolExecutor(max_workers=2) as pool:
        # The student copies are also executed as written: each must run to its end on the fallbacks.
        futures = {k: pool.submit(_grade, jobs[k], work / f"{k[0]}_{k[1]}.json", k[0] == "student") for k in order}
        return {k: f.result() for k, f in futures.items()}


def _max_points(nb_name: str) -> float:
    from mrcnn_lite.course.grade import declared_exercises

    return sum(e["max_points"] for e in declared_exercises(nbformat.read(str(ROOT / "notebooks" / nb_name), 4)))


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("nb", [p.name for p in NOTEBOOKS])
def test_grade_zero_on_untouched_student_version_which_runs_to_the_end(graded, nb):
    report = graded[("student", nb)]
    assert report["score"] == 0 and report["max_score"] == _max_points(nb) > 0
    # Every check said "not implemented"; executed as written, the student copy runs to its end.
    assert all(e["status"] == "TODO" for e in report["exercises"]), report["stdout"]
    assert report["errors"] == ["as written, the notebook runs to the end without an error"], report["errors"]
    assert all(set(e) >= {"name", "points", "max_points", "message"} for e in report["exercises"])


@pytest.mark.heavy
@pytest.mark.slow
def test_grade_full_marks_on_a_submitted_solution(graded):
    report = graded[("nbgrader", FULL)]
    assert report["errors"] == [], report["errors"]
    assert report["max_score"] > 0 and report["score"] == report["max_score"], report["stdout"]
    assert all(e["status"] == "PASS" for e in report["exercises"])


@pytest.mark.heavy
@pytest.mark.slow
def test_grade_partial_marks_on_a_half_fixed_lab(graded):
    report = graded[("nbgrader", PARTIAL)]
    by_name = {e["name"]: e for e in report["exercises"]}
    assert by_name["decode_lab"]["status"] == "PART" and by_name["decode_lab"]["points"] == 1.5, report["stdout"]
    assert all(e["status"] == "TODO" for n, e in by_name.items() if n != "decode_lab"), report["stdout"]
    assert report["score"] == 1.5 and report["max_score"] == _max_points(PARTIAL)
    line = next(l for l in report["stdout"].splitlines() if l.strip().startswith("decode_lab "))
    assert "1.5/3" in line and "PART" in line, line


@pytest.mark.heavy
@pytest.mark.slow
def test_nbgrader_autograde_gives_the_course_graders_points(graded, nbgrader_course):
    """generate_assignment + autograde in a standard nbgrader course folder: the same points, exercise by
    exercise, as `python -m mrcnn_lite.course grade` on the same submitted notebooks."""
    if nbgrader_course is None:
        pytest.skip("nbgrader is not installed (pip install -e '.[teach]'; `make setup` installs it)")
    for name in (PARTIAL, FULL):
        ours, theirs = graded[("nbgrader", name)], nbgrader_course["scores"][name]
        assert theirs["max_score"] == ours["max_score"] == _max_points(name)
        assert theirs["score"] == ours["score"], (name, theirs, ours["stdout"])
        assert theirs["grades"] == {e["name"]: e["points"] for e in ours["exercises"]}, (name, theirs, ours["stdout"])
    assert nbgrader_course["scores"][PARTIAL]["score"] == 1.5
    assert nbgrader_course["scores"][FULL]["score"] == _max_points(FULL)


def test_teachers_table_is_the_course_list():
    """docs/teachers.md's table of graded items is exactly what `course list --markdown` prints (same reading of
    the notebooks as the grader), so a new or repointed item cannot leave the teachers' page stale."""
    import re

    from mrcnn_lite.course.assignments import default_notebooks
    from mrcnn_lite.course.items import markdown_table, read_items

    items = [i for p in default_notebooks(ROOT / "notebooks") for i in read_items(p)]
    page = (ROOT / "docs" / "teachers.md").read_text()
    block = re.search(r"<!-- BEGIN course list -->\n(.*?)\n<!-- END course list -->", page, re.S)
    assert block, "docs/teachers.md lost its course-list markers"
    assert block.group(1) == markdown_table(items), \
        "docs/teachers.md's table is stale: paste `python -m mrcnn_lite.course list --markdown` between the markers"
    assert {i.kind for i in items} == {"build", "lab", "experiment", "prediction"}
