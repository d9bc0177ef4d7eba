"""Checkers of notebook 11: COCO's AP of one precision-recall curve; the cross-stage lab "eleven" (where the
handed-out model is broken, and the broken part written correctly)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .runner import SEEDS, CheckResult, gen, random_boxes, run_check, check_choice


COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
"""The 101 recall points ``0, 0.01, ..., 1`` exactly as pycocotools' ``Params.recThrs`` makes them."""


def reference_coco_ap(recall, precision) -> float:
    """COCO's AP of one precision-recall curve, the way ``COCOeval.accumulate`` computes it.

    ``recall (D,)``, ``precision (D,)``: after each of the ``D`` detections, ranked by score (recall
    non-decreasing). The precision is made monotone (at each rank, the best precision at this rank
    or any later one), read at the 101 recall points (the first rank whose recall reaches the point;
    0 where the recall never does) and averaged.
    """
    rc = np.asarray(recall, dtype=np.float64)
    pr = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    idx = np.searchsorted(rc, COCO_RECALL_POINTS, side="left")
    q = np.zeros(len(COCO_RECALL_POINTS))
    found = idx < len(pr)
    q[found] = pr[idx[found]]
    return float(q.mean())


def _pr_curve(tps: Sequence[bool], n_gt: int) -> Tuple[Tensor, Tensor]:
    """Recall and precision after each detection of a ranked TP/FP list, with pycocotools' formulas."""
    tp = np.cumsum(np.asarray(tps, dtype=bool)).astype(float)
    fp = np.cumsum(~np.asarray(tps, dtype=bool)).astype(float)
    return torch.from_numpy(tp / n_gt), torch.from_numpy(tp / (fp + tp + np.spacing(1)))


def coco_ap_by_pycocotools(recall, precision) -> float:
    """The AP that pycocotools itself gives for a precision-recall curve of a ranked detection list.

    The curve is turned back into what it came from -- which ranked detections were true positives,
    and the number of ground-truth objects -- and ``COCOeval.accumulate`` runs on that (one class, one
    IoU threshold, one area range; at most 100 detections per image, as COCO counts them).
    """
    import contextlib
    import copy
    import io

    from pycocotools.cocoeval import COCOeval, Params

    rc, pr = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    ranks = np.arange(1, len(pr) + 1)
    tp = np.rint(pr * ranks).astype(np.int64)
    if np.any(np.diff(np.concatenate([[0], tp])) < 0) or np.any(np.diff(np.concatenate([[0], tp])) > 1):
        raise ValueError("not the precision of a ranked list of detections")
    tps = np.diff(np.concatenate([[0], tp])).astype(bool)
    n_gt = int(np.rint(tp[-1] / rc[-1])) if len(tp) and tp[-1] > 0 else 1

    params = Params("bbox")
    params.iouThrs = np.array([0.5])
    params.catIds, params.areaRng, params.areaRngLbl, params.maxDets = [1], [[0, 1e10]], ["all"], [100]
    chunks = [np.arange(i, min(i + 100, len(tps))) for i in range(0, len(tps), 100)] or [np.arange(0)]
    params.imgIds = list(range(len(chunks)))
    scores = 1.0 - np.arange(len(tps)) / (len(tps) + 1.0)            # strictly decreasing: the ranking
    ev = COCOeval(iouType="bbox")
    ev.params, ev._paramsEval = params, copy.deepcopy(params)
    ev.evalImgs = [{"dtScores": scores[c].tolist(),
                    "dtMatches": tps[c][None].astype(np.float64),     # a matched GT id (non-zero) for a TP
                    "dtIgnore": np.zeros((1, len(c)), dtype=bool),
                    "gtIgnore": np.zeros(n_gt if i == 0 else 0)} for i, c in enumerate(chunks)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    return float(ev.eval["precision"][0, :, 0, 0, 0].mean())


def _coco_ap_cases():
    def case(label, tps, n_gt):
        recall, precision = _pr_curve(tps, n_gt)
        return label, dict(recall=recall, precision=precision)

    yield case("no detections (empty curve)", [], 3)
    yield case("only false positives", [0, 0, 0], 2)
    yield case("a perfect ranking: every object found before any mistake", [1, 1, 1, 1, 0, 0], 4)
    yield case("precision rises again after mistakes (the monotone envelope)", [1, 0, 0, 1, 1, 0, 1], 5)
    yield case("recall never reaches 1: those recall points count 0", [1, 0, 1, 1, 0], 10)
    yield case("recall exactly on recall points (0.25, 0.5, ...): the first rank that reaches it",
               [1, 0, 1, 0, 1, 1], 4)
    yield case("150 detections, 60 objects", ([1, 0, 1] * 50), 60)
    for seed in SEEDS:
        g = gen(seed)
        n_gt = int(torch.randint(1, 40, (1,), generator=g))
        n_det = int(torch.randint(1, 120, (1,), generator=g))
        p_tp = float(torch.rand(1, generator=g))
        hits = (torch.rand(n_det, generator=g) < p_tp).tolist()
        tps, found = [], 0
        for hit in hits:                 # a true positive needs an object not found yet
            hit = hit and found < n_gt
            found += hit
            tps.append(hit)
        yield case(f"random, seed {seed}: {n_det} detections, {n_gt} objects, {found} found", tps, n_gt)


def _call_coco_ap(fn: Callable, inputs: Dict[str, Any]):
    return fn(inputs["recall"].numpy(), inputs["precision"].numpy())


def check_coco_ap(fn: Callable, points: float = 3, name: str = "coco_ap") -> CheckResult:
    """``fn(recall (D,), precision (D,)) -> AP`` (NumPy arrays in, a float out): COCO's 101-point
    interpolated AP, against pycocotools' ``COCOeval.accumulate`` on the same ranked detections."""
    return run_check(name, fn, coco_ap_by_pycocotools, _coco_ap_cases(), points, atol=1e-12, rtol=1e-9,
                     call=_call_coco_ap, what="pycocotools' COCOeval.accumulate on the same ranked detections",
                     off_limits=(reference_coco_ap, "pycocotools.cocoeval:COCOeval"))


# ----------------------------------------------------------------------------------------------
# Cross-stage lab "eleven" (mrcnn_lite.course.labs): which stage of the handed-out model is broken, and
# the broken part written correctly (the (RoI, class) candidates of the box head's postprocessing)
# ----------------------------------------------------------------------------------------------
def check_model_eleven_locate_lab(fn: Callable, points: float = 2, name: str = "model_eleven_locate_lab") -> CheckResult:
    """Lab: ``fn() -> str``, the stage of ``lab_model("eleven")`` that is broken, one of ``labs.SUSPECTS["eleven"]``."""
    from ..labs import SUSPECTS

    return check_choice(fn, "detection labels", SUSPECTS["eleven"], points=points, name=name,
                        what="yes, the broken stage is 'detection labels'")


def reference_detection_candidates(boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``boxes (R, K, 4)`` (each RoI decoded with each class's deltas), ``scores (R, K)`` (softmax, column 0
    background) -> every (RoI, class >= 1) pair, RoI-major: ``boxes (R(K-1), 4)``, ``scores (R(K-1),)``,
    ``labels (R(K-1),)`` int64 in ``1..K-1``; as ``box_head.postprocess_detections`` makes its candidates."""
    labels = torch.arange(scores.shape[1], device=scores.device).view(1, -1).expand_as(scores)
    return boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)


def _candidates_cases():
    from ..lab_case import load_lab_case

    def case(g, R, K, boxes=None):
        if boxes is None:
            boxes = random_boxes(R, g, scale=120.0, min_size=2.0, max_size=60.0)
        per_class = boxes[:, None, :] + torch.randn(len(boxes), K, 4, generator=g, dtype=boxes.dtype)
        scores = torch.randn(len(boxes), K, generator=g, dtype=boxes.dtype).mul(3).softmax(-1)
        return dict(boxes=per_class, scores=scores)

    g = gen(110)
    yield "one RoI, 4 classes (background, circle, square, triangle)", case(g, 1, 4)
    yield "two classes only (background + one)", case(g, 5, 2)
    yield "no RoIs", dict(boxes=torch.zeros(0, 4, 4, dtype=torch.float64), scores=torch.zeros(0, 4, dtype=torch.float64))
    yield "COCO's 91 classes, 3 RoIs", case(g, 3, 91)
    for seed in SEEDS:
        g = gen(seed)
        R, K = int(torch.randint(1, 60, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        yield f"random, seed {seed}: {R} RoIs, {K} classes", case(g, R, K)
    lab = load_lab_case()
    yield f"the trained model's {len(lab['proposals'])} proposals, 4 classes", case(gen(111), 0, 4, lab["proposals"])


def check_model_eleven_lab(fn: Callable, points: float = 3, name: str = "model_eleven_lab") -> CheckResult:
    """Lab: ``fn(boxes (R, K, 4), scores (R, K)) -> (boxes (R(K-1), 4), scores (R(K-1),), labels (R(K-1),))``."""
    return run_check(name, fn, reference_detection_candidates, _candidates_cases(), points, exact=True,
                     what="the candidates of mrcnn_lite.model.box_head.postprocess_detections",
                     off_limits=("mrcnn_lite.model.box_head:postprocess_detections",
                                 "torchvision.models.detection.roi_heads:RoIHeads.postprocess_detections"))
