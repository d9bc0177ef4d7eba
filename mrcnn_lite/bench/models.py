"""The two models the bench times (torchvision's and ours, same weights), their inputs, and the check
that they compute the same thing: speed must never buy a different answer."""
from __future__ import annotations

from typing import Tuple

import torch


@torch.no_grad()
def calibrate_frozen_bn(backbone: torch.nn.Module, image: torch.Tensor) -> None:
    """Give every FrozenBatchNorm2d the mean and variance of its input on ``image`` ``(B, 3, H, W)``.

    Randomly initialised frozen BN layers are identities, and 50 layers of un-normalised random convs
    make activations explode. Setting the statistics from one batch (layer by layer, in forward order)
    keeps the random network in a realistic numeric range, so the losses stay finite while we time it.
    """
    from torchvision.ops import FrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        backbone(image)
    finally:
        for h in hooks:
            h.remove()


def build_models(
    device: torch.device, min_size: int, max_size: int, cls_scale: float = 0.335, seed: int = 0,
    kernels: Tuple[str, ...] = ("fast",), **kwargs
):
    """torchvision's Mask R-CNN R50-FPN (COCO layout, random weights) and ``ml.from_torchvision`` of it,
    one per floor in ``kernels`` (a dict ``{"fast": model, ...}``).

    ``cls_scale`` multiplies the class-score weights, to set how many detections pass the 0.05 score
    threshold (0.335 gives ~50 of at most 100 on the CPU inference image; the count is reported).
    Both models get the same change because ours copies torchvision's weights afterwards.
    """
    from torchvision.models.detection import MaskRCNN as TVMaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    import mrcnn_lite as ml

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    tv = TVMaskRCNN(backbone, num_classes=91, min_size=min_size, max_size=max_size, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    calibrate_frozen_bn(tv.backbone.body, torch.randn(2, 3, min_size, max_size, generator=g))
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.weight.mul_(cls_scale)
    tv.to(device)
    ours = {name: ml.from_torchvision(tv, kernels=name) for name in kernels}
    return tv, ours


def make_batch(n: int, h: int, w: int, device: torch.device, seed: int = 0, objects: int = 4):
    """``n`` random images ``(3, h, w)`` in [0, 1] and targets with ``objects`` boxes each (ellipse masks)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        wh = torch.rand(objects, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
        x0 = torch.rand(objects, generator=g) * (w - wh[:, 0])
        y0 = torch.rand(objects, generator=g) * (h - wh[:, 1])
        boxes = torch.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], dim=1)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx, ry = wh[:, 0] / 2, wh[:, 1] / 2
        masks = (((xs - cx[:, None, None]) / rx[:, None, None]) ** 2
                 + ((ys - cy[:, None, None]) / ry[:, None, None]) ** 2 <= 1).to(torch.uint8)
        labels = torch.randint(1, 91, (objects,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return [im.to(device) for im in images], targets


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check_agreement(tv, ours, train_images, train_targets, eval_images, ours_eval=None) -> dict:
    """Losses (same seed for the samplers) and detections of both models; max |difference| of each.

    ``ours_eval``: the model whose detections are compared (default ``ours``; e.g. its BN-folded copy).

    Float32 on a CPU or GPU: differences of ~1e-4 come from a different order of floating-point
    sums (the float64 equality tests in ``tests/`` are exact to 1e-6).
    """
    tv.train(), ours.train()
    torch.manual_seed(0)
    tv_losses = tv(train_images, train_targets)
    torch.manual_seed(0)
    our_losses = ours(train_images, train_targets)
    loss_diff = max(abs(float(tv_losses[k].detach()) - float(our_losses[k].detach())) for k in tv_losses)

    ours_eval = ours if ours_eval is None else ours_eval
    tv.eval(), ours.eval(), ours_eval.eval()
    with torch.no_grad():
        tv_out = tv(eval_images)
        our_out = ours_eval(eval_images)
    same_count = all(len(a["boxes"]) == len(b["boxes"]) for a, b in zip(tv_out, our_out))
    det_diff = {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    labels_equal = True
    if same_count:
        for a, b in zip(our_out, tv_out):
            labels_equal &= bool(torch.equal(a["labels"], b["labels"]))
            for k in det_diff:
                det_diff[k] = max(det_diff[k], max_abs_diff(a[k], b[k]))
    detections = [len(o["boxes"]) for o in tv_out]
    ok = (same_count and labels_equal and loss_diff < 1e-2 and det_diff["scores"] < 1e-3
          and det_diff["boxes"] < 1e-1 and det_diff["masks"] < 1e-2)
    return {
        "ok": bool(ok),
        "losses_max_abs_diff": loss_diff,
        "same_number_of_detections": bool(same_count),
        "labels_equal": bool(labels_equal),
        "detections_max_abs_diff": det_diff,
        "detections": detections,
        "losses": {k: float(v.detach()) for k, v in tv_losses.items()},
    }
