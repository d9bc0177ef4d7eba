"""ShapesDataset: synthetic images of circles, squares and triangles, with exact instance masks.

Every image is drawn from scratch with numpy from a random generator seeded by ``(seed, index)``,
so ``ds[i]`` is the same image whatever order (or process) it is read in, and two datasets with
the same arguments are identical.

How one image is made:

1. a coloured background (a random colour with a gentle linear gradient);
2. ``k`` shapes painted one after another; each is a circle (label 1), a square (2) or a
   triangle (3) with a random colour, size ("radius" 6-24 px), position (it may stick out of the
   frame) and rotation (squares and triangles). A later shape hides the earlier ones below it;
3. the *visible* part of each shape becomes its instance mask; shapes with fewer than
   ``min_visible`` visible pixels (hidden or out of frame) are dropped;
4. a little Gaussian pixel noise, then the image is rounded to 8 bits like a real photo
   (so saving it as PNG loses nothing).

    >>> ds = ShapesDataset(100, image_size=128, seed=0)
    >>> image, target = ds[0]
    >>> image.shape, target["boxes"].shape, target["masks"].shape   # (3,128,128), (n,4), (n,128,128)
"""
from __future__ import annotations

import numpy as np
import torch

from .item import detection_item, image_to_tensor, masks_to_boxes  # noqa: F401 (penn_fudan.py imports the two)

CLASSES = ("__background__", "circle", "square", "triangle")
"""Class names indexed by label: 0 is background, then circle = 1, square = 2, triangle = 3."""


def _circle(xx, yy, cx, cy, r, angle):
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _square(xx, yy, cx, cy, r, angle):
    # rotate the grid into the square's own frame, then it is an axis-aligned box test
    c, s = np.cos(angle), np.sin(angle)
    u = c * (xx - cx) + s * (yy - cy)
    v = -s * (xx - cx) + c * (yy - cy)
    half = 0.8 * r  # half side: a bit smaller than r so squares and circles look of a similar size
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(xx, yy, cx, cy, r, angle):
    # equilateral triangle with circumradius r; a point is inside when it is on the inner side
    # of all three edges (same sign of the 2-D cross product for every edge)
    a = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    vx, vy = cx + r * np.cos(a), cy + r * np.sin(a)
    inside = np.ones(xx.shape, dtype=bool)
    for k in range(3):
        x0, y0, x1, y1 = vx[k], vy[k], vx[(k + 1) % 3], vy[(k + 1) % 3]
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


_DRAW = {1: _circle, 2: _square, 3: _triangle}


class ShapesDataset(torch.utils.data.Dataset):
    """Synthetic instance-segmentation dataset (torchvision detection contract).

    Args:
        num_images: length of the dataset.
        image_size: images are square, ``image_size x image_size`` pixels.
        seed: item ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
        min_shapes, max_shapes: how many shapes are painted (before dropping hidden ones).
        min_radius, max_radius: shape "radius" in pixels (circle radius, square half-side / 0.8,
            triangle circumradius).
        empty_prob: probability that an image has no shapes at all (valid background-only samples).
        noise_std: standard deviation of the Gaussian pixel noise (image values in [0, 1]).
        min_visible: instances with fewer visible pixels than this are dropped.
        transforms: optional callable ``(image, target) -> (image, target)``, e.g. RandomHorizontalFlip.

    ``ds[i]`` returns ``(image, target)``:
        image: (3, H, W) float32 in [0, 1] (multiples of 1/255).
        target["boxes"]: (n, 4) float32 x1y1x2y2 in pixels, tight box of the visible mask,
            x2/y2 exclusive (max + 1).
        target["labels"]: (n,) int64 in {1, 2, 3} (see CLASSES).
        target["masks"]: (n, H, W) uint8 in {0, 1}, visible part of each shape; masks never overlap.
        target["image_id"]: int, equal to ``i``.
        target["area"]: (n,) float32 visible pixel count (= masks.sum((1, 2))).
        target["iscrowd"]: (n,) int64 zeros.
    Instances are listed bottom to top (the last one is painted last, on top of the others).
    """

    class_names = CLASSES

    def __init__(self, num_images: int, image_size: int = 128, seed: int = 0, *,
                 min_shapes: int = 1, max_shapes: int = 6, min_radius: float = 6.0,
                 max_radius: float = 24.0, empty_prob: float = 0.03, noise_std: float = 0.02,
                 min_visible: int = 12, transforms=None):
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not 0 <= min_shapes <= max_shapes:
            raise ValueError(f"need 0 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.min_radius, self.max_radius = float(min_radius), float(max_radius)
        self.empty_prob = float(empty_prob)
        self.noise_std = float(noise_std)
        self.min_visible = int(min_visible)
        self.transforms = transforms
        # pixel-centre coordinates, shared by every image (x grows right, y grows down)
        c = np.arange(self.image_size, dtype=np.float32) + 0.5
        self._xx, self._yy = np.meshgrid(c, c)

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int):
        """Draw image ``index`` as numpy arrays (no transforms).

        Returns:
            image: (H, W, 3) uint8 RGB.
            labels: (n,) int64.
            masks: (n, H, W) bool, visible parts, bottom to top.
        """
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_images} images")
        rng = np.random.default_rng([self.seed, int(index)])
        S = self.image_size

        # 1. background: random colour plus a linear ramp in a random direction
        base = rng.uniform(0.1, 0.9, size=3)
        ramp_dir = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(ramp_dir) * self._xx + np.sin(ramp_dir) * self._yy) / S  # about -1..1
        image = base[None, None, :] + 0.12 * ramp[..., None] * rng.uniform(-1, 1, size=3)

        # 2. paint shapes in order; later ones cover earlier ones
        if rng.random() < self.empty_prob:
            k = 0
        else:
            k = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        labels, full_masks = [], []
        for _ in range(k):
            label = int(rng.integers(1, 4))
            r = rng.uniform(self.min_radius, self.max_radius)
            # centres may lie up to half a radius outside the frame: shapes get cut by the border
            cx, cy = rng.uniform(-0.5 * r, S + 0.5 * r, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            colour = rng.uniform(0, 1, size=3)
            # keep the shape visibly different from the background
            while np.abs(colour - base).sum() < 0.6:
                colour = rng.uniform(0, 1, size=3)
            m = _DRAW[label](self._xx, self._yy, cx, cy, r, angle)
            image[m] = colour
            labels.append(label)
            full_masks.append(m)

        # 3. visible part = own pixels minus everything painted later (walk top to bottom)
        covered = np.zeros((S, S), dtype=bool)
        visible = [None] * k
        for j in range(k - 1, -1, -1):
            visible[j] = full_masks[j] & ~covered
            covered |= full_masks[j]
        keep = [j for j in range(k) if visible[j].sum() >= self.min_visible]

        # 4. noise, then 8-bit rounding
        if self.noise_std > 0:
            image = image + rng.normal(0.0, self.noise_std, size=image.shape)
        image_u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)

        labels = np.array([labels[j] for j in keep], dtype=np.int64)
        masks = (np.stack([visible[j] for j in keep]) if keep
                 else np.zeros((0, S, S), dtype=bool))
        return image_u8, labels, masks

    def __getitem__(self, index: int):
        image_u8, labels, masks = self.render(index)
        masks_u8 = masks.astype(np.uint8)
        return detection_item(image_u8, masks_to_boxes(masks_u8), labels, masks_u8, index,
                              transforms=self.transforms)

    def __repr__(self) -> str:
        return (f"ShapesDataset(num_images={self.num_images}, image_size={self.image_size}, "
                f"seed={self.seed})")
