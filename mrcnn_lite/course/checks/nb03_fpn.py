"""Checkers of notebook 03: the FPN top-down pass."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Sequence

import torch
from torch import Tensor

from ...model.fpn import FeaturePyramidNetwork
from .runner import SEEDS, CheckResult, gen, run_check


def reference_fpn_top_down(laterals: Sequence[Tensor]) -> List[Tensor]:
    """The top-down pathway of the package's ``FeaturePyramidNetwork``, with its 1x1 lateral and
    3x3 output convs set to the identity: ``M_last = L_last``, ``M_i = L_i + nearest_upsample(M_{i+1})``."""
    laterals = list(laterals)
    c = laterals[0].shape[1]
    fpn = FeaturePyramidNetwork([c] * len(laterals), c, extra_blocks=None).to(laterals[0].dtype)
    eye = torch.eye(c, dtype=laterals[0].dtype)
    with torch.no_grad():
        for block in fpn.inner_blocks:
            block[0].weight.zero_()
            block[0].weight[:, :, 0, 0] = eye
            block[0].bias.zero_()
        for block in fpn.layer_blocks:
            block[0].weight.zero_()
            block[0].weight[:, :, 1, 1] = eye
            block[0].bias.zero_()
        out = fpn(OrderedDict((str(i), l) for i, l in enumerate(laterals)))
    return list(out.values())


def _top_down_cases():
    g = gen(0)
    yield "one level (nothing to add)", dict(laterals=[torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)])
    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(5, 40, (1,), generator=g)), int(torch.randint(5, 40, (1,), generator=g))
        sizes = [(h, w)]
        for _ in range(3):  # each level: ceil(size / 2), like a stride-2 conv (odd sizes included)
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        c = 3
        yield f"random, seed {seed}, sizes {sizes}", dict(
            laterals=[torch.randn(2, c, hh, ww, generator=g, dtype=torch.float64) for hh, ww in sizes])


def check_fpn_top_down(fn: Callable, points: float = 2, name: str = "fpn_top_down") -> CheckResult:
    """``fn(laterals: list of (N, C, H_i, W_i), finest first) -> list M of the same shapes``."""
    return run_check(name, fn, reference_fpn_top_down, _top_down_cases(), points, atol=1e-10, rtol=1e-8,
                     what="the top-down pass of mrcnn_lite.model.fpn.FeaturePyramidNetwork",
                     off_limits=(FeaturePyramidNetwork, "torchvision.ops.feature_pyramid_network:FeaturePyramidNetwork"))
