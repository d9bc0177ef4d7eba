"""RoIAlign timed three ways: the reference ``ops.roi_align``, ``fast.roi_align`` and torchvision's kernel."""
from __future__ import annotations

from typing import Dict

import torch

from .models import max_abs_diff
from .timing import interleaved_medians


def roi_align_inputs(device, dtype=torch.float32, num_rois=512, channels=256, image_hw=(800, 1088), seed=0):
    """FPN features at strides 4..32 (keys '0'..'3'), ``num_rois`` proposal-like boxes, the image size.

    Boxes have log-uniform sizes 16..640 px and centres anywhere, clipped to the image.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    feats = {}
    for i, stride in enumerate((4, 8, 16, 32)):
        shape = (1, channels, -(-h // stride), -(-w // stride))
        feats[str(i)] = torch.randn(shape, generator=g, dtype=dtype).to(device)
    size = torch.exp(torch.empty(num_rois, 2, dtype=dtype).uniform_(0, 1, generator=g) * (6.4 - 2.77) + 2.77)
    ctr = torch.rand(num_rois, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    boxes = torch.cat([ctr - size / 2, ctr + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return feats, [boxes.to(device)], [image_hw]


def roi_align_benchmark(device, reps=10, warmup=2, num_rois=512, channels=256, image_hw=(800, 1088)) -> dict:
    """Time MultiScaleRoIAlign (7x7, sampling_ratio 2) with three kernels; forward and forward+backward.

    Variants: ``reference`` (``mrcnn_lite.ops.roi_align``), ``fast`` (``mrcnn_lite.fast.roi_align``),
    ``torchvision`` (torchvision's module and kernel).
    Returns ``{"median_s": {variant: {mode: s}}, "max_abs_diff_vs_tv": {variant: x}, ...}``.
    """
    import torchvision

    from mrcnn_lite import fast, ops

    device = torch.device(device)
    feats, boxes, shapes = roi_align_inputs(device, num_rois=num_rois, channels=channels, image_hw=image_hw)
    names = list(feats)
    variants = {
        "reference": ops.MultiScaleRoIAlign(names, 7, 2, roi_align=ops.roi_align),
        "fast": ops.MultiScaleRoIAlign(names, 7, 2, roi_align=fast.roi_align),
        "torchvision": torchvision.ops.MultiScaleRoIAlign(names, 7, 2),
    }
    leaves = {k: v.detach().requires_grad_(True) for k, v in feats.items()}

    def run(pool, backward):
        if backward:
            for t in leaves.values():
                t.grad = None
            out = pool(leaves, boxes, shapes)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                pool(feats, boxes, shapes)

    with torch.no_grad():
        outs = {k: p(feats, boxes, shapes) for k, p in variants.items()}
    max_diff = {k: max_abs_diff(o, outs["torchvision"]) for k, o in outs.items()}

    median: Dict[str, Dict[str, float]] = {k: {} for k in variants}
    for mode in ("forward", "forward+backward"):
        fns = {k: (lambda p=p, b=(mode != "forward"): run(p, b)) for k, p in variants.items()}
        med, _ = interleaved_medians(fns, device, reps, warmup)
        for k, v in med.items():
            median[k][mode] = v
    return {"median_s": median, "max_abs_diff_vs_tv": max_diff, "rois": num_rois, "channels": channels,
            "image": list(image_hw), "output_size": 7, "sampling_ratio": 2}
