"""Checkers of notebook 16: the graded experiments (predict, run, explain).

Each experiment has two automatic checks, both of kind "experiment":

* ``check_experiment_<x>_prediction(predict_<x>)``: the learner committed to a prediction in the form asked
  for (one of the offered choices). The point is for making it, never for being right: the answer is not
  compared with the run;
* ``check_experiment_<x>(change)``: the learner's change makes the run measure what was asked (every RoI pooled
  from P4; the anchor sizes per octave; the M x M mask round trip; the quantised RoIs), against the reference
  change of ``mrcnn_lite.course.experiments``.

The explanation of each run is graded by hand (the rubric is in docs/teachers.md).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import Tensor

from ...build import build_model
from ...data import ShapesDataset
from ...experiments import variants as V
from ...ops import roi_ops
from .. import experiments as E
from .runner import SEEDS, CheckResult, Fresh, gen, random_masks, run_check, run_parts


# ------------------------------------------------------------------------------------- the predictions
def _valid(choices: Sequence[str]) -> Callable:
    lowered = [c.lower() for c in choices]
    return lambda answer: isinstance(answer, str) and answer.strip().lower() in lowered


def _prediction(name: str, fn: Callable, experiment: str, points: float) -> CheckResult:
    choices = E.EXPERIMENTS[experiment].choices

    def cases():
        yield ("your prediction must be one of " + " | ".join(repr(c) for c in choices)
               + " (any of them earns the points: it is not compared with the run)"), {}

    def reference():
        return choices[0]

    return run_parts(name, fn, reference, cases(), [("prediction", points, _valid(choices))], exact=True,
                     call=lambda f, inputs: f(), what="one of the offered choices (your commitment, made before the run)")


def check_experiment_levels_prediction(fn: Callable, points: float = 1, name: str = "levels_prediction") -> CheckResult:
    """``fn() -> str``, one of ``EXPERIMENTS["levels"].choices``."""
    return _prediction(name, fn, "levels", points)


def check_experiment_anchors_prediction(fn: Callable, points: float = 1, name: str = "anchors_prediction") -> CheckResult:
    """``fn() -> str``, one of ``EXPERIMENTS["anchors"].choices``."""
    return _prediction(name, fn, "anchors", points)


def check_experiment_mask_res_prediction(fn: Callable, points: float = 1,
                                         name: str = "mask_res_prediction") -> CheckResult:
    """``fn() -> str``, one of ``EXPERIMENTS["mask_res"].choices``."""
    return _prediction(name, fn, "mask_res", points)


def check_experiment_misalign_prediction(fn: Callable, points: float = 1,
                                         name: str = "misalign_prediction") -> CheckResult:
    """``fn() -> str``, one of ``EXPERIMENTS["misalign"].choices``."""
    return _prediction(name, fn, "misalign", points)


# ------------------------------------------------------------------------------------- levels: one level
def _level_cases():
    sides = torch.tensor([6.0, 10.0, 16.0, 24.0, 40.0, 64.0, 100.0, 150.0, 190.0])
    for seed in SEEDS[:2]:
        g = gen(seed)
        side = sides[torch.randperm(len(sides), generator=g)]
        xy = torch.rand(len(side), 2, generator=g) * (192 - side[:, None])
        boxes = torch.cat([xy, xy + side[:, None]], dim=1)
        feats = Fresh(f"random feature maps P2-P6 (8 channels, seed {seed})", lambda seed=seed: _features(seed))
        yield (f"a fresh course model; {len(boxes)} boxes of sides {[int(v) for v in side.tolist()]} px in its "
               f"192-px input"), dict(model=Fresh("build_model(the course model's config)",
                                                  lambda: build_model(E._course_config())),
                                      boxes=boxes, features=feats)


def _features(seed: int) -> Dict[str, Tensor]:
    g = gen(100 + seed)
    return {n: torch.randn(1, 8, s, s, generator=g) for n, s in zip(["0", "1", "2", "3", "pool"], [48, 24, 12, 6, 3])}


def _call_levels(f: Callable, inputs: Dict) -> Dict[str, Tensor]:
    model = inputs["model"].build()
    changed = f(model)
    model = changed if changed is not None else model
    levels = E.pooled_levels(model, inputs["boxes"])
    heads, feats = model.roi_heads, inputs["features"].build()
    return {"box_level": levels["box"], "mask_level": levels["mask"],
            "box_features": heads.box_roi_pool(feats, [inputs["boxes"]], [(192, 192)]),
            "mask_features": heads.mask_roi_pool(feats, [inputs["boxes"]], [(192, 192)])}


def _pick(*keys):
    return lambda out: [out[k] for k in keys]


def check_experiment_levels(fn: Callable, points: float = 2, name: str = "levels_change") -> CheckResult:
    """``fn(model) -> model``: both RoI poolers pool every RoI from P4 (FPN map ``"2"``, stride 16), with the
    model's RoIAlign and the poolers' output sizes unchanged. Two parts: which level every RoI is pooled
    from (the index into P2..P6), and the pooled features of random feature maps."""
    return run_parts(name, fn, E.reference_one_level, _level_cases(),
                     [("pooled-from level (0 = P2, 1 = P3, 2 = P4, 3 = P5) of the box and the mask pooler", points / 2,
                       _pick("box_level", "mask_level")),
                      ("pooled features (RoIAlign, 7x7 boxes and 14x14 masks)", points / 2,
                       _pick("box_features", "mask_features"))],
                     atol=1e-5, rtol=1e-5, call=_call_levels, what="every RoI pooled from P4 with RoIAlign")


# ------------------------------------------------------------------------------------- anchors: sizes per octave
def _octave_cases():
    yield "the course model's 5 levels, 3 sizes per octave", dict(base_sizes=(8, 16, 32, 64, 128), per_octave=3)
    yield "one size per octave: the sizes themselves", dict(base_sizes=(8, 16, 32, 64, 128), per_octave=1)
    yield "torchvision's RetinaNet sizes, 3 per octave", dict(base_sizes=(32, 64, 128, 256, 512), per_octave=3)
    yield "two levels, 2 per octave", dict(base_sizes=(10, 20), per_octave=2)
    yield "one level, 4 per octave", dict(base_sizes=(24,), per_octave=4)


def _call_octave(f: Callable, inputs: Dict):
    out = f(inputs["base_sizes"], inputs["per_octave"])
    return [[float(v) for v in level] for level in out] if isinstance(out, (list, tuple)) else out


def check_experiment_anchors(fn: Callable, points: float = 2, name: str = "anchors_change") -> CheckResult:
    """``fn(base_sizes, per_octave) -> sizes``: one tuple per level, ``per_octave`` sizes growing from the level's
    base size by equal factors up to (not including) twice it."""
    return run_check(name, fn, E.reference_octave_sizes, _octave_cases(), points, atol=1e-6, rtol=1e-6,
                     call=_call_octave, what="s * 2 ** (k / per_octave), k = 0 .. per_octave - 1, per level")


# ------------------------------------------------------------------------------------- mask_res: round trip
def _round_trip_cases():
    for seed in SEEDS[:3]:
        _, t = ShapesDataset(1, seed=500 + seed, min_shapes=3, max_shapes=6)[0]
        M = (14, 28, 56)[seed]
        yield f"a shapes image (seed {500 + seed}): {len(t['labels'])} objects, M={M}", dict(
            gt_masks=t["masks"], boxes=t["boxes"], M=M)
    g = gen(16)
    masks = random_masks(4, 40, 52, g)
    keep = masks.flatten(1).sum(1) > 0
    masks = masks[keep]
    ys, xs = [m.nonzero()[:, 0] for m in masks], [m.nonzero()[:, 1] for m in masks]
    boxes = torch.tensor([[x.min(), y.min(), x.max() + 1, y.max() + 1] for x, y in zip(xs, ys)], dtype=torch.float32)
    yield f"{len(masks)} random ellipses in a 40x52 image, their tight boxes, M=7", dict(gt_masks=masks, boxes=boxes, M=7)


def _call_round_trip(f: Callable, inputs: Dict):
    out = f(inputs["gt_masks"], inputs["boxes"], inputs["M"])
    return out.to(torch.bool) if isinstance(out, Tensor) else out


def check_experiment_mask_res(fn: Callable, points: float = 2, name: str = "mask_res_change") -> CheckResult:
    """``fn(gt_masks (n, H, W) uint8, boxes (n, 4), M) -> (n, H, W)`` bool: each mask's ``M x M`` mask target in
    its own box, pasted back into the image and kept where the pasted value is >= 0.5."""
    return run_check(name, fn, E.reference_round_trip, _round_trip_cases(), points, exact=True,
                     call=_call_round_trip, what="the M x M target pasted back (project_masks_on_boxes, "
                                                 "paste_masks_in_image, >= 0.5)")


# ------------------------------------------------------------------------------------- misalign: quantise
def _quantise_cases():
    yield "corners exactly half a cell: rounded away from zero", dict(
        rois=torch.tensor([[0.0, 10.0, 6.0, 26.0, 30.0], [1.0, 2.0, 2.0, 14.0, 18.0]]), spatial_scale=0.25)
    yield "already on cell boundaries: unchanged", dict(
        rois=torch.tensor([[0.0, 16.0, 32.0, 64.0, 48.0]]), spatial_scale=0.0625)
    for seed in SEEDS:
        g = gen(seed)
        k = int(torch.randint(1, 20, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 150
        wh = torch.rand(k, 2, generator=g) * 60 + 2
        rois = torch.cat([torch.randint(0, 3, (k, 1), generator=g).float(), xy, xy + wh], dim=1)
        scale = (0.25, 0.125, 0.0625, 0.03125, 0.25)[seed]
        yield f"random, seed {seed}: {k} RoIs, spatial_scale {scale}", dict(rois=rois, spatial_scale=scale)


def check_experiment_misalign(fn: Callable, points: float = 2, name: str = "misalign_change") -> CheckResult:
    """``fn(rois (K, 5), spatial_scale) -> (K, 5)``: the batch index kept, each corner moved to the nearest
    boundary of the feature map's cells (``spatial_scale``: cells per pixel), halves away from zero."""
    return run_check(name, fn, E.reference_quantise, _quantise_cases(), points, atol=1e-4, rtol=1e-6,
                     what="RoIPool's quantisation of the box (RoIWarp's first step)",
                     off_limits=(V._quantised, roi_ops._round_half_away))
