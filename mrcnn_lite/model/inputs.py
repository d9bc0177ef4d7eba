"""What the model accepts, checked once at its entrance (``MaskRCNN.forward``) before any work is done.

The stages behind it (transform, backbone, RPN, RoI heads) trust their inputs; a broken contract is
reported here, naming the image or target and the field, instead of as an error deep inside a kernel.

    images:  a list of B tensors ``(3, H, W)``, floating point of the model's dtype, on its device,
             values in [0, 1] (so no NaN or infinity), big enough to keep a pixel per side after resizing
    targets: (training) a list of B dicts: ``boxes (n, 4)`` float x1y1x2y2, finite, x1 < x2 and y1 < y2,
             overlapping the image and within one image size of it (see below);
             ``labels (n,)`` int64 in [1, num_classes); ``masks (n, H, W)`` of the image's size holding only
             0 and 1 (uint8, bool or float); ``n = 0`` is allowed (an image without objects)

Boxes and the image: a target box must overlap its image (x1 < W, y1 < H, x2 > 0, y2 > 0) and lie
within one image size of it (-W <= x1, -H <= y1, x2 <= 2W, y2 <= 2H, in the image's own pixels, before
resizing). torchvision does not check this; we do because such a box trains silently wrong: a box
outside the image matches no anchor and crops an all-zero mask target, and one that reaches far out
gives regression targets (log of the size ratio) and losses far from anything the model can output.
Boxes that stick out a little (rounding, augmentation) are fine; loaders clip them.

Which error: a wrong Python type or tensor dtype is a ``TypeError``; a wrong shape, size, device or
value a ``ValueError``. Masks of 0/255 or images of 0-255 are refused (not rescaled): the message says how
to convert them, so that a model never trains on data it silently reinterpreted.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor


def check_inputs(images: Any, targets: Any, num_classes: int, training: bool, min_size: Sequence[int],
                 max_size: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise a TypeError/ValueError naming the image and the field if the inputs break the contract above.

    ``min_size``, ``max_size``: the transform's resize settings; ``dtype``, ``device``: the model's.
    Masks are checked only in training (``training=True``), where they are used. Values (pixels, boxes,
    labels, mask values) are checked with one read of the data for the whole batch.
    """
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise TypeError(
            f"images must be a list of (3, H, W) tensors, got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if isinstance(images, Tensor) else "")
        )
    if len(images) == 0:
        raise ValueError("images is empty: give at least one (3, H, W) tensor")
    short_side = min(min_size) if training else min_size[-1]
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise TypeError(f"image {i}: expected a torch.Tensor, got {type(img).__name__}")
        if not img.is_floating_point():
            raise TypeError(f"image {i}: expected a floating-point tensor with values in [0, 1], got {img.dtype}")
        if img.dtype != dtype:
            raise TypeError(f"image {i}: dtype {img.dtype} differs from the model's {dtype}; convert the image "
                            f"(image.to({dtype})) or the model (model.to({img.dtype}))")
        if img.device != device:
            raise ValueError(f"image {i} is on {img.device} but the model is on {device}")
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i}: expected shape (3, H, W), got {tuple(img.shape)}")
        h, w = img.shape[1:]
        if h == 0 or w == 0:
            raise ValueError(f"image {i}: empty image of shape {tuple(img.shape)}")
        scale = min(short_side / min(h, w), max_size / max(h, w))
        if math.floor(h * scale) < 1 or math.floor(w * scale) < 1:
            raise ValueError(f"image {i}: a {h}x{w} image would be resized to "
                             f"{math.floor(h * scale)}x{math.floor(w * scale)} pixels (min_size {short_side}, "
                             f"max_size {max_size}); crop or pad it to a less extreme aspect ratio")

    need_masks = training
    if targets is None:
        if training:
            raise ValueError("targets must be given in training mode (a list with one dict per image)")
    else:
        _check_target_structure(images, targets, num_classes, need_masks)

    # One read of the data for the whole batch (a host-device sync on a GPU); the search for the
    # culprit, for a precise message, only when something is wrong.
    problems = [~((img >= 0) & (img <= 1)).all() for img in images]
    for img, t in zip(images, targets or []):
        problems.append(_bad_values(t, num_classes, need_masks, img.shape[-2:]).to(device))
    if bool(torch.stack(problems).any()):
        _raise_first_problem(images, targets, num_classes, need_masks)


def _check_target_structure(images, targets, num_classes: int, need_masks: bool) -> None:
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    required = ("boxes", "labels", "masks") if need_masks else ("boxes", "labels")
    for i, (img, t) in enumerate(zip(images, targets)):
        if not isinstance(t, dict):
            raise TypeError(f"target {i}: expected a dict, got {type(t).__name__}")
        for key in required:
            if key not in t:
                raise ValueError(f"target {i}: missing {key!r} (has {sorted(t)})")
            if not isinstance(t[key], Tensor):
                raise TypeError(f"target {i}: {key!r} must be a torch.Tensor, got {type(t[key]).__name__}")
            if t[key].device != img.device:
                raise ValueError(f"target {i}: {key!r} is on {t[key].device} but image {i} is on {img.device}")
        boxes, labels = t["boxes"], t["labels"]
        if not boxes.is_floating_point():
            raise TypeError(f"target {i}: 'boxes' must be floating point, got {boxes.dtype}")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"target {i}: 'boxes' must have shape (n, 4), got {tuple(boxes.shape)}")
        n = boxes.shape[0]
        if labels.dtype != torch.int64:
            raise TypeError(f"target {i}: 'labels' must be int64, got {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"target {i}: 'labels' must have shape ({n},) to match boxes, got {tuple(labels.shape)}")
        if need_masks:
            masks = t["masks"]
            if masks.is_complex():
                raise TypeError(f"target {i}: 'masks' must be uint8, bool or float, got {masks.dtype}")
            H, W = img.shape[-2:]
            if masks.shape != (n, H, W):
                raise ValueError(
                    f"target {i}: 'masks' must have shape (n, H, W) = ({n}, {H}, {W}) to match the boxes and "
                    f"the image, got {tuple(masks.shape)}"
                )


def _outside(boxes: Tensor, size) -> Tensor:
    """(n,) bool: which ``boxes (n, 4)`` x1y1x2y2 miss an image of ``size (H, W)`` or reach more than one
    image size beyond it."""
    H, W = float(size[0]), float(size[1])
    x1, y1, x2, y2 = boxes.unbind(1)
    misses = (x1 >= W) | (y1 >= H) | (x2 <= 0) | (y2 <= 0)
    too_far = (x1 < -W) | (y1 < -H) | (x2 > 2 * W) | (y2 > 2 * H)
    return misses | too_far


def _bad_values(t: dict, num_classes: int, need_masks: bool, size) -> Tensor:
    """A 0-dim bool: does some box, label or mask value of target ``t`` (image of ``size (H, W)``)
    break the contract?"""
    boxes, labels = t["boxes"], t["labels"]
    bad = (~torch.isfinite(boxes).all() | (boxes[:, 2:] <= boxes[:, :2]).any() | _outside(boxes, size).any()
           | ((labels < 1) | (labels >= num_classes)).any())
    if need_masks:
        masks = t["masks"]
        bad = bad | ((masks != 0) & (masks != 1)).any()
    return bad


def _raise_first_problem(images, targets, num_classes: int, need_masks: bool) -> None:
    """Raise a ValueError for the first bad pixel, box, label or mask value."""
    for i, img in enumerate(images):
        if not bool(torch.isfinite(img).all()):
            raise ValueError(f"image {i} has NaN or infinite pixel values")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 1:
            hint = ": divide 8-bit images by 255" if hi > 1 else ""
            raise ValueError(f"image {i}: pixel values must lie in [0, 1], got [{lo:g}, {hi:g}]{hint}")
    for i, (img, t) in enumerate(zip(images, targets or [])):
        boxes, labels = t["boxes"], t["labels"]
        if not bool(torch.isfinite(boxes).all()):
            j = int(torch.where(~torch.isfinite(boxes).all(dim=1))[0][0])
            raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} is not finite")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bool(degenerate.any()):
            j = int(torch.where(degenerate)[0][0])
            raise ValueError(
                f"target {i}: box {j} {boxes[j].tolist()} must have positive width and height (x1 < x2, y1 < y2)"
            )
        outside = _outside(boxes, img.shape[-2:])
        if bool(outside.any()):
            j = int(torch.where(outside)[0][0])
            H, W = img.shape[-2:]
            raise ValueError(
                f"target {i}: box {j} {boxes[j].tolist()} (x1y1x2y2) does not fit image {i} of {W}x{H} (WxH): "
                f"a box must overlap its image and lie within one image size of it; are the boxes in "
                f"another image's pixels, normalised, or [x, y, w, h]?"
            )
        bad = (labels < 1) | (labels >= num_classes)
        if bool(bad.any()):
            j = int(torch.where(bad)[0][0])
            raise ValueError(
                f"target {i}: label {int(labels[j])} of box {j} is out of range [1, {num_classes}) "
                f"(0 is background, num_classes={num_classes})"
            )
        if need_masks:
            masks = t["masks"]
            bad = (masks != 0) & (masks != 1)
            if bool(bad.any()):
                j = int(torch.where(bad.flatten(1).any(dim=1))[0][0])
                value = masks[j][bad[j]][0].item()
                hint = " (a 0/255 mask: use mask > 0)" if value == 255 else ""
                raise ValueError(f"target {i}: mask {j} holds the value {value}; masks must hold only 0 and 1{hint}")
