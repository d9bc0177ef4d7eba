"""Mask pasting with ``grid_sample``: the fast floor's version of ``model.transform.paste_masks_in_image``.

The reference resizes one mask at a time into its box: a Python loop of small kernels, which suits a
CPU (each mask only touches the pixels of its own box) but leaves a GPU waiting on kernel launches.
Here every canvas pixel *samples* its mask, for many masks at once, with one ``grid_sample`` per chunk
of at most ``max_pixels_per_chunk`` output pixels. Same numbers as the reference (tests/test_fast.py).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.transform import expand_boxes


def paste_masks_grid(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1,
                     max_pixels_per_chunk: int = 1 << 22) -> Tensor:
    """Same arguments and result as ``model.transform.paste_masks_in_image``; steps 1 and 2 are the same."""
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    if masks.shape[0] == 0:
        return masks.new_zeros((0, 1, im_h, im_w))
    M = masks.shape[-1]
    padded = F.pad(masks, (padding,) * 4)
    boxes = expand_boxes(boxes, float(M + 2 * padding) / M).to(dtype=torch.int64)
    return _paste_grid(padded, boxes, im_h, im_w, max_pixels_per_chunk)


def _paste_grid(padded: Tensor, boxes: Tensor, im_h: int, im_w: int, max_pixels_per_chunk: int) -> Tensor:
    """Step 3 for all masks at once: ``padded (N, 1, S, S)``, integer ``boxes (N, 4)`` -> ``(N, 1, im_h, im_w)``.

    Pixel x of the canvas is pixel (x - x0) of the resized mask. grid_sample's normalised coordinate
    g in [-1, 1] (align_corners=False) reads source position ((g + 1) * size - 1) / 2, so
    g = (2 * (x - x0) + 1) / w - 1 reads exactly where ``interpolate(size=(h, w))`` reads.
    """
    N = padded.shape[0]
    x0, y0, x1, y1 = boxes.unbind(1)
    w = (x1 - x0 + 1).clamp(min=1)                              # size the mask is resized to
    h = (y1 - y0 + 1).clamp(min=1)
    dtype, device = padded.dtype, padded.device
    xs = torch.arange(im_w, device=device)
    ys = torch.arange(im_h, device=device)
    out = padded.new_zeros((N, 1, im_h, im_w))
    chunk = max(1, max_pixels_per_chunk // max(1, im_h * im_w))
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        gx = (2 * (xs[None, :] - x0[s:e, None]) + 1).to(dtype) / w[s:e, None].to(dtype) - 1  # (n, W)
        gy = (2 * (ys[None, :] - y0[s:e, None]) + 1).to(dtype) / h[s:e, None].to(dtype) - 1  # (n, H)
        n = e - s
        grid = torch.stack((gx[:, None, :].expand(n, im_h, im_w), gy[:, :, None].expand(n, im_h, im_w)), dim=-1)
        pasted = F.grid_sample(padded[s:e], grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Outside its (integer) box torchvision's canvas is 0.
        inside_x = (xs[None, :] >= x0[s:e, None]) & (xs[None, :] < x0[s:e, None] + w[s:e, None])  # (n, W)
        inside_y = (ys[None, :] >= y0[s:e, None]) & (ys[None, :] < y0[s:e, None] + h[s:e, None])  # (n, H)
        inside = inside_y[:, :, None] & inside_x[:, None, :]
        out[s:e, 0] = pasted[:, 0] * inside.to(dtype)
    return out
