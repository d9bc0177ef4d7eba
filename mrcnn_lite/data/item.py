"""The ``(image, target)`` item every dataset here returns, made in one place.

    image: (3, H, W) float32 RGB in [0, 1]
    target: {"boxes": (n, 4) float32 x1y1x2y2, "labels": (n,) int64, "masks": (n, H, W) uint8,
             "image_id": int, "area": (n,) float32, "iscrowd": (n,) int64}
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch


def image_to_tensor(image_u8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> (3, H, W) float32 tensor in [0, 1].

    Every dataset (and the ``predict`` command) uses this one function, so an image saved as PNG and
    read back gives bit-identical tensors.
    """
    # numpy, not torch, for this small elementwise work: it is cheaper per call on a busy CPU
    chw = np.ascontiguousarray(image_u8.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw / np.float32(255.0))


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks.

    masks: (n, H, W) bool or uint8.
    Returns (n, 4) float32 x1y1x2y2 in pixels, with x2/y2 *exclusive* pixel edges (max index + 1),
    so a one-pixel mask at column 5 has x1 = 5, x2 = 6 and box width = pixel count across.
    """
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        rows = np.flatnonzero(masks[i].any(axis=1))
        cols = np.flatnonzero(masks[i].any(axis=0))
        if rows.size:
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def detection_item(image_u8: np.ndarray, boxes: np.ndarray, labels, masks: np.ndarray, image_id: int,
                   area=None, iscrowd=None, transforms: Optional[Callable] = None):
    """One dataset item from numpy arrays: ``(image, target)`` in the contract above.

    image_u8: (H, W, 3) uint8; boxes: (n, 4) x1y1x2y2; labels: (n,); masks: (n, H, W) {0, 1}.
    area: (n,) (default: each mask's pixel count); iscrowd: (n,) (default: zeros).
    transforms: optional ``(image, target) -> (image, target)``, applied last.
    """
    masks = np.asarray(masks, dtype=np.uint8)
    n = len(masks)
    target = {
        "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32)),
        "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(n)),
        "masks": torch.from_numpy(masks),
        "image_id": int(image_id),
        "area": torch.from_numpy(np.asarray(masks.sum(axis=(1, 2)) if area is None else area,
                                            dtype=np.float32).reshape(n)),
        "iscrowd": torch.from_numpy(np.zeros(n, dtype=np.int64) if iscrowd is None
                                    else np.asarray(iscrowd, dtype=np.int64).reshape(n)),
    }
    image = image_to_tensor(image_u8)
    if transforms is not None:
        image, target = transforms(image, target)
    return image, target
