"""Paired transforms: change the image and its target together, and a collate function.

A detection transform takes and returns ``(image, target)``: flipping the image without flipping
the boxes and masks would teach the model nonsense. Transforms never modify the target they are
given; they return a new dict (the dataset may hand the same tensors out again).
"""
from __future__ import annotations

import torch


def collate_fn(batch):
    """DataLoader collate for detection: images differ in size and targets in length, so no stacking.

    batch: list of ``(image, target)``. Returns ``(images, targets)``, two tuples of the same length.
    """
    return tuple(zip(*batch))


class Compose:
    """Apply transforms in order: ``Compose([RandomHorizontalFlip(0.5), ...])(image, target)``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def hflip(image: torch.Tensor, target: dict):
    """Mirror left-right.

    image: (C, H, W). target["boxes"]: (n, 4) x1y1x2y2 in pixels with exclusive x2, so a box
    [x1, x2) maps to [W - x2, W - x1) exactly. target["masks"]: (n, H, W). Other keys are copied.
    """
    W = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)  # a new dict: the caller's target stays as it was
    if "boxes" in target:
        b = target["boxes"]
        target["boxes"] = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


class RandomHorizontalFlip:
    """Flip image, boxes and masks left-right with probability ``p`` (uses torch's global RNG,
    so ``torch.manual_seed`` makes it repeatable)."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image, target):
        if torch.rand(()) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
