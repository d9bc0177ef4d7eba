"""Checkers of notebook 09: pasting a predicted mask into the image (with the 1-pixel border); the cross-stage
lab "nine" (where the handed-out model is broken, and the broken part written correctly)."""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from ...model.transform import paste_masks_in_image
from ...ops.poolers import MultiScaleRoIAlign, infer_scale, setup_scales
from .runner import SEEDS, CheckResult, gen, random_boxes, run_check, check_choice


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


# ----------------------------------------------------------------------------------------------
# Cross-stage lab "nine" (mrcnn_lite.course.labs): which stage of the handed-out model is broken, and
# the broken part written correctly (the mask branch's multi-scale RoIAlign)
# ----------------------------------------------------------------------------------------------
def check_model_nine_locate_lab(fn: Callable, points: float = 2, name: str = "model_nine_locate_lab") -> CheckResult:
    """Lab: ``fn() -> str``, the stage of ``lab_model("nine")`` that is broken, one of ``labs.SUSPECTS["nine"]``."""
    from ..labs import SUSPECTS

    return check_choice(fn, "mask pooling", SUSPECTS["nine"], points=points, name=name,
                        what="yes, the broken stage is 'mask pooling'")


def reference_mask_roi_pool(features: Sequence[Tensor], boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """The mask branch's pooling of one image: ``features`` the FPN maps P2..P5 ``(1, C, H_l, W_l)``,
    ``boxes (K, 4)`` in the resized image's pixels, ``image_size (h, w)`` -> ``(K, C, 14, 14)``: the package's
    ``MultiScaleRoIAlign`` (FPN eq. 1 picks each box's level; RoIAlign, ``aligned=False``, sampling ratio 2)."""
    pool = MultiScaleRoIAlign([str(i) for i in range(len(features))], 14, 2)
    return pool({str(i): f for i, f in enumerate(features)}, [boxes], [tuple(int(v) for v in image_size)])


def _pyramid(g: torch.Generator, h: int, w: int, channels: int, dtype=torch.float64):
    """Random P2..P5 maps of an ``h x w`` image padded to a multiple of 32, as the model's backbone makes them."""
    H, W = -(-h // 32) * 32, -(-w // 32) * 32
    return [torch.randn(1, channels, H // s, W // s, generator=g, dtype=dtype) for s in (4, 8, 16, 32)]


def _mask_pool_cases():
    from ..lab_case import load_lab_case

    g = gen(90)
    f64 = dict(dtype=torch.float64)
    feats = _pyramid(g, 128, 128, 2)
    yield "one box of 40 px in a 128-px image", dict(features=feats, boxes=torch.tensor([[30.0, 40.0, 70.0, 80.0]], **f64),
                                                     image_size=(128, 128))
    sizes = (6.0, 20.0, 55.9, 56.0, 111.0, 112.5, 200.0)
    yield "boxes of 6 to 200 px: every pyramid level", dict(
        features=_pyramid(g, 224, 224, 3), boxes=torch.tensor([[10.0, 12.0, 10.0 + s, 12.0 + s * 0.9] for s in sizes], **f64),
        image_size=(224, 224))
    yield "a non-square image (85 x 128, padded to 96 x 128)", dict(
        features=_pyramid(g, 85, 128, 2), boxes=random_boxes(12, g, scale=80.0, min_size=3.0, max_size=70.0),
        image_size=(85, 128))
    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(64, 260, (1,), generator=g)), int(torch.randint(64, 260, (1,), generator=g))
        n = int(torch.randint(1, 30, (1,), generator=g))
        yield f"random, seed {seed}: {n} boxes, image {h}x{w}", dict(
            features=_pyramid(g, h, w, 2), boxes=random_boxes(n, g, scale=float(min(h, w)) * 0.8, min_size=2.0,
                                                              max_size=float(min(h, w)) * 0.9),
            image_size=(h, w))
    case = load_lab_case()
    h, w = case["image_size"]
    yield (f"the trained model's {len(case['proposals'])} proposals on a {h}x{w} image"), dict(
        features=_pyramid(gen(91), h, w, 4, dtype=case["proposals"].dtype), boxes=case["proposals"], image_size=(h, w))


def _call_mask_pool(fn: Callable, inputs):
    return fn(list(inputs["features"]), inputs["boxes"], tuple(inputs["image_size"]))


def check_model_nine_lab(fn: Callable, points: float = 3, name: str = "model_nine_lab") -> CheckResult:
    """Lab: ``fn(features [P2..P5 (1, C, H_l, W_l)], boxes (K, 4), image_size (h, w)) -> (K, C, 14, 14)``,
    against the package's ``MultiScaleRoIAlign``."""
    return run_check(name, fn, reference_mask_roi_pool, _mask_pool_cases(), points, atol=1e-9, rtol=1e-7,
                     call=_call_mask_pool, what="mrcnn_lite.ops.MultiScaleRoIAlign (14x14, sampling ratio 2)",
                     off_limits=(MultiScaleRoIAlign, setup_scales, infer_scale,
                                 "torchvision.ops.poolers:MultiScaleRoIAlign"))
