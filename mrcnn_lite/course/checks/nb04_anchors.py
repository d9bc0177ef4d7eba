"""Checkers of notebook 04: anchors."""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor

from ...model.anchors import generate_base_anchors, grid_anchors
from .runner import SEEDS, CheckResult, gen, run_check


def _base_anchor_cases():
    yield "one size, one ratio", dict(sizes=[32], ratios=[1.0])
    yield "odd size, square (x.5 rounds to even)", dict(sizes=[33], ratios=[1.0])
    yield "the RPN's three ratios", dict(sizes=[32], ratios=[0.5, 1.0, 2.0])
    for seed in SEEDS:
        g = gen(seed)
        sizes = sorted({int(v) for v in torch.randint(4, 300, (3,), generator=g)})
        choice = torch.randperm(6, generator=g)[: 1 + seed % 3].sort().values.tolist()
        ratios = [(0.25, 0.5, 1.0, 2.0, 3.0, 4.0)[i] for i in choice]
        yield f"random, seed {seed}", dict(sizes=sizes, ratios=ratios)


def check_base_anchors(fn: Callable, points: float = 2, name: str = "base_anchors") -> CheckResult:
    """``fn(sizes, ratios) -> (len(ratios) * len(sizes), 4)`` zero-centred anchors, ratio-major,
    against ``mrcnn_lite.model.anchors.generate_base_anchors``."""
    return run_check(name, fn, generate_base_anchors, _base_anchor_cases(), points, exact=True,
                     what="mrcnn_lite.model.anchors.generate_base_anchors",
                     off_limits=("torchvision.models.detection.anchor_utils:AnchorGenerator",))


def reference_grid_anchors(base: Tensor, grid_size: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
    """Every base anchor at every cell of a ``grid_size`` feature map of an ``image_size`` image:
    the package's ``grid_anchors`` with stride ``(H // H_f, W // W_f)``."""
    (gh, gw), (h, w) = grid_size, image_size
    return grid_anchors(base, (gh, gw), (h // gh, w // gw))


def _grid_anchor_cases():
    yield "torchvision's 3x3 example", dict(base=generate_base_anchors([10], [1.0]), grid_size=(3, 3),
                                            image_size=(15, 15))
    yield "a 1x1 grid", dict(base=generate_base_anchors([16], [0.5, 1.0, 2.0]), grid_size=(1, 1),
                             image_size=(32, 32))
    for seed in SEEDS:
        g = gen(seed)
        gh, gw = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        stride = int((4, 8, 16, 32, 64)[seed])
        h, w = gh * stride + int(torch.randint(0, stride, (1,), generator=g)), gw * stride
        base = generate_base_anchors([stride * 2, stride * 4][: 1 + seed % 2], [0.5, 1.0, 2.0])
        yield f"random, seed {seed}: grid {gh}x{gw}, image {h}x{w}", dict(
            base=base, grid_size=(gh, gw), image_size=(h, w))


def check_grid_anchors(fn: Callable, points: float = 2, name: str = "grid_anchors") -> CheckResult:
    """``fn(base (A, 4), grid_size (H_f, W_f), image_size (H, W)) -> (H_f * W_f * A, 4)``, order y -> x -> anchor."""
    return run_check(name, fn, reference_grid_anchors, _grid_anchor_cases(), points, exact=True,
                     what="mrcnn_lite.model.anchors.grid_anchors",
                     off_limits=(grid_anchors, "torchvision.models.detection.anchor_utils:AnchorGenerator"))
