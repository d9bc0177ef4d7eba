"""Checkers of notebook 06: bilinear sampling and RoIAlign."""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from ... import ops
from ...ops.poolers import map_levels
from .runner import SEEDS, CheckResult, check_choice, gen, random_boxes, run_check


def reference_bilinear(f: Tensor, y: float, x: float) -> Tensor:
    """The value of ``f (H, W)`` at the real point ``(y, x)`` inside the map, read with the package's
    ``roi_align``: a tiny box centred on the point, one bin, one sample (``aligned=True``)."""
    d = 0.25
    box = torch.tensor([[0.0, x + 0.5 - d, y + 0.5 - d, x + 0.5 + d, y + 0.5 + d]], dtype=f.dtype)
    return ops.roi_align(f[None, None], box, 1, spatial_scale=1.0, sampling_ratio=1, aligned=True)[0, 0, 0, 0]


def _bilinear_cases():
    g = gen(60)
    f = torch.randn(5, 7, generator=g, dtype=torch.float64)
    yield "a grid point (no interpolation)", dict(f=f, y=2.0, x=3.0)
    yield "half way between 4 cells", dict(f=f, y=1.5, x=4.5)
    yield "on the last row and column", dict(f=f, y=4.0, x=6.0)
    yield "between the last two columns", dict(f=f, y=4.0, x=5.25)
    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        f = torch.randn(h, w, generator=g, dtype=torch.float64)
        y = float(torch.rand(1, generator=g, dtype=torch.float64)) * (h - 1)
        x = float(torch.rand(1, generator=g, dtype=torch.float64)) * (w - 1)
        yield f"random, seed {seed}", dict(f=f, y=y, x=x)


def check_bilinear(fn: Callable, points: float = 2, name: str = "bilinear") -> CheckResult:
    """``fn(f (H, W), y, x) -> value`` at a point with ``0 <= y <= H-1``, ``0 <= x <= W-1``."""
    return run_check(name, fn, reference_bilinear, _bilinear_cases(), points, atol=1e-10, rtol=1e-8,
                     what="bilinear sampling in mrcnn_lite.ops.roi_align",
                     off_limits=(ops.roi_align, "torchvision.ops.roi_align:roi_align"))


def reference_roi_align_one_box(f: Tensor, box: Sequence[float], output_size: Tuple[int, int],
                                spatial_scale: float, sampling_ratio: int) -> Tensor:
    """``roi_align`` (``aligned=True``) of one box ``(x1, y1, x2, y2)`` on one map ``f (H, W)`` -> ``(PH, PW)``."""
    boxes = torch.tensor([[0.0, *[float(v) for v in box]]], dtype=f.dtype)
    return ops.roi_align(f[None, None], boxes, tuple(output_size), spatial_scale, sampling_ratio, aligned=True)[0, 0]


def _roi_align_cases():
    g = gen(70)
    f = torch.randn(6, 8, generator=g, dtype=torch.float64)
    yield "the whole map, one bin, one sample", dict(f=f, box=[0.5, 0.5, 7.5, 5.5], output_size=(1, 1),
                                                     spatial_scale=1.0, sampling_ratio=1)
    yield "a box inside one cell", dict(f=f, box=[2.6, 1.7, 3.2, 2.4], output_size=(2, 2),
                                        spatial_scale=1.0, sampling_ratio=2)
    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(3, 12, (1,), generator=g)), int(torch.randint(3, 12, (1,), generator=g))
        f = torch.randn(h, w, generator=g, dtype=torch.float64)
        scale = (1.0, 0.5, 0.25, 1 / 16, 0.125)[seed]
        # In feature coordinates (after the -0.5 shift) the box stays inside [0, W-1] x [0, H-1].
        x1, x2 = sorted((torch.rand(2, generator=g, dtype=torch.float64) * (w - 1)).tolist())
        y1, y2 = sorted((torch.rand(2, generator=g, dtype=torch.float64) * (h - 1)).tolist())
        box = [(v + 0.5) / scale for v in (x1, y1, x2, y2)]
        out = (1 + seed % 3, 1 + (seed + 1) % 3)
        yield f"random, seed {seed}", dict(f=f, box=box, output_size=out, spatial_scale=scale,
                                           sampling_ratio=1 + seed % 3)


def check_roi_align_one_box(fn: Callable, points: float = 3, name: str = "roi_align_one_box") -> CheckResult:
    """``fn(f (H, W), box (x1, y1, x2, y2), output_size (PH, PW), spatial_scale, sampling_ratio) -> (PH, PW)``,
    ``aligned=True``, against ``mrcnn_lite.ops.roi_align``."""
    return run_check(name, fn, reference_roi_align_one_box, _roi_align_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.ops.roi_align (aligned=True)",
                     off_limits=(ops.roi_align, "torchvision.ops.roi_align:roi_align"))


# ----------------------------------------------------------------------------------------------
# Lab: the FPN level mapper (a planted bug: the wrong canonical scale)
# ----------------------------------------------------------------------------------------------
def reference_level_for_boxes(boxes: Tensor, k_min: int, k_max: int) -> Tensor:
    """FPN eq. 1 for ``boxes (K, 4)`` -> the pyramid level ``k (K,)`` int64 of each, in ``[k_min, k_max]``:
    ``mrcnn_lite.ops.poolers.map_levels`` (which returns ``k - k_min``) plus ``k_min``."""
    return map_levels([boxes], k_min, k_max) + k_min


def _level_cases():
    from ..lab_case import load_lab_case

    f64 = dict(dtype=torch.float64)
    yield "the canonical box: 224 x 224 goes to level 4", dict(boxes=torch.tensor([[0.0, 0.0, 224.0, 224.0]], **f64),
                                                               k_min=2, k_max=5)
    yield "boxes of 28, 56, 112, 448 and 1000 px", dict(
        boxes=torch.tensor([[0, 0, s, s] for s in (28.0, 56.0, 112.0, 448.0, 1000.0)], **f64), k_min=2, k_max=5)
    for seed in SEEDS:
        g = gen(seed)
        n = int(torch.randint(1, 50, (1,), generator=g))
        yield f"random, seed {seed}: {n} boxes", dict(
            boxes=random_boxes(n, g, scale=300.0, min_size=4.0, max_size=400.0), k_min=2, k_max=5)
    case = load_lab_case()
    yield (f"the trained model's {len(case['proposals'])} proposals on a {case['image_size'][0]}-px image "
           f"({case['steps']} training steps)"), dict(boxes=case["proposals"], k_min=2, k_max=5)


def check_level_lab(fn: Callable, points: float = 2, name: str = "level_lab") -> CheckResult:
    """Lab: ``fn(boxes (K, 4), k_min, k_max) -> levels (K,)`` int64, against ``mrcnn_lite.ops.poolers.map_levels``."""
    return run_check(name, fn, reference_level_for_boxes, _level_cases(), points, exact=True,
                     what="mrcnn_lite.ops.poolers.map_levels (FPN eq. 1, k0 = 4, canonical size 224)",
                     off_limits=(map_levels, "torchvision.ops.poolers:LevelMapper"))


# The candidates the lab's text names, in its order; where the bug is (Lab 4).
LEVEL_PARTS = ("box_scale", "k0", "canonical_size", "epsilon", "clamp")


def check_level_locate_lab(fn: Callable, points: float = 1, name: str = "level_locate_lab") -> CheckResult:
    """Lab, step 1 (before the fix): ``fn()`` names where the bug is: one of ``LEVEL_PARTS``, or a list of them
    for a lab with two bugs. Only the right part(s) earn the point."""
    return check_choice(fn, "canonical_size", LEVEL_PARTS, points=points, name=name,
                        what="the canonical size is 128, not the 224 of FPN eq. 1")
