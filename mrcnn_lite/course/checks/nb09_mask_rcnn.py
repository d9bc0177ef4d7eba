"""Checkers of notebook 09: pasting a predicted mask into the image (with the 1-pixel border)."""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from ...model.transform import paste_masks_in_image
from .runner import SEEDS, CheckResult, gen, run_check


def reference_paste_mask(mask: Tensor, box: Sequence[float], image_size: Tuple[int, int]) -> Tensor:
    """``mask (M, M)`` probabilities pasted into ``box (x1, y1, x2, y2)`` on an ``image_size (H, W)`` canvas
    -> ``(H, W)``, zero outside the box: ``transform.paste_masks_in_image`` for one mask."""
    boxes = torch.as_tensor([[float(v) for v in box]], dtype=mask.dtype)
    return paste_masks_in_image(mask[None, None], boxes, tuple(image_size))[0, 0]


def _paste_cases():
    g = gen(95)
    yield "a 2x2 mask of ones in an 8-px box", dict(mask=torch.ones(2, 2, dtype=torch.float64),
                                                    box=[4.0, 4.0, 12.0, 12.0], image_size=(20, 20))
    yield "a box with fractional corners", dict(mask=torch.rand(4, 4, generator=g, dtype=torch.float64),
                                                box=[3.3, 2.7, 17.9, 11.2], image_size=(16, 24))
    yield "a box sticking out of the image (top-left and bottom-right)", dict(
        mask=torch.rand(7, 7, generator=g, dtype=torch.float64), box=[-6.5, -3.0, 9.0, 30.0], image_size=(20, 12))
    yield "a box thinner than a pixel", dict(mask=torch.rand(5, 5, generator=g, dtype=torch.float64),
                                             box=[10.2, 3.0, 10.6, 9.0], image_size=(12, 16))
    for seed in SEEDS:
        g = gen(seed)
        H, W = int(torch.randint(10, 60, (1,), generator=g)), int(torch.randint(10, 60, (1,), generator=g))
        M = (28, 14, 7, 28, 5)[seed]
        xy = torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([W, H]) - 5
        wh = torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([W, H]) * 0.7 + 1
        box = [float(xy[0]), float(xy[1]), float(xy[0] + wh[0]), float(xy[1] + wh[1])]
        yield f"random, seed {seed}: {M}x{M} mask, image {H}x{W}", dict(
            mask=torch.rand(M, M, generator=g, dtype=torch.float64), box=box, image_size=(H, W))


def check_paste_mask(fn: Callable, points: float = 3, name: str = "paste_mask") -> CheckResult:
    """``fn(mask (M, M), box (x1, y1, x2, y2), image_size (H, W)) -> (H, W)``, against
    ``mrcnn_lite.model.transform.paste_masks_in_image``."""
    return run_check(name, fn, reference_paste_mask, _paste_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.model.transform.paste_masks_in_image",
                     off_limits=(paste_masks_in_image, "torchvision.models.detection.roi_heads:paste_masks_in_image",
                                 "torchvision.models.detection.roi_heads:paste_mask_in_image"))
