"""RoIAlign as one weighted row-sum: the fast floor's version of ``mrcnn_lite.ops.roi_align``.

The reference op gathers the four neighbours of every sample as a ``(K, samples, C)`` tensor, then
multiplies and sums. Here the whole of RoIAlign is written as one linear map, ``out = S @ features``,
with ``S`` a sparse matrix of bilinear weights, and computed by ``torch.nn.functional.embedding_bag``
without materialising the gathered samples; its backward is the ``S^T`` scatter. On a CPU, with a
fixed sampling ratio, this is faster than torchvision's compiled kernel (single-threaded there).
tests/test_fast.py proves it equal to the reference, forward and backward.
"""
from __future__ import annotations

import contextlib
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.boxes import box_dtype
from ..ops.roi_ops import (_pair, bilinear_axis, boxes_to_rois, roi_align_geometry,
                           roi_align_sample_positions)

BoxesArg = Union[Tensor, Sequence[Tensor]]


def _bilinear_axis_weights(pos: Tensor, used: Tensor, grid: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """:func:`~mrcnn_lite.ops.roi_ops.bilinear_axis` (the reference's rules) for a grid of samples, with
    each weight divided by ``grid`` so that the sum over a bin's samples is their average.

    ``pos (K, B, G)``, ``used (K, B, G)`` (False for the padding samples of a smaller adaptive grid),
    ``grid (K,)`` -> ``idx (K, B, G, 2)`` (low, high cell) and ``weight (K, B, G, 2)``. Because validity and
    weights factor per axis, the 2-D weight of corner (y_a, x_b) is just ``wy[a] * wx[b]``.
    """
    low, high, w_low, w_high = bilinear_axis(pos, size)
    scale = used.to(pos.dtype) / grid.clamp(min=1)[:, None, None]
    return torch.stack([low, high], dim=-1), torch.stack([w_low * scale, w_high * scale], dim=-1)


def roi_align(input: Tensor, boxes: BoxesArg, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``mrcnn_lite.ops.roi_align``, same arguments and numbers, as one weighted row-sum for all RoIs.

    How: the grid of sample points is the product of a set of y's and a set of x's, and bilinear
    weights factor into a y-weight times an x-weight. So every output bin is a weighted sum of the
    2 x 2 neighbours of all its samples, read from a channels-last ``(N*H*W, C)`` view of the map:
    one ``embedding_bag`` for all bins at once (:func:`_weighted_rows`). Adaptive grids, which differ
    per RoI, are laid out at the largest count and the extra samples get weight 0 (memory grows with
    that count: the model's fast floor sends adaptive sampling to torchvision's kernel when it can).

    No input checks: the model calls it with RoIs it built itself; call ``mrcnn_lite.ops.roi_align``
    for checked arguments. Mixed precision: float16/bfloat16 input is sampled in float32 and the result
    cast back, with autocast switched off inside (the weighted sum is a matrix product, which autocast
    would otherwise run in low precision), as torchvision's kernel does.
    """
    ph_n, pw_n = _pair(output_size, "roi_align")
    out_dtype = input.dtype
    input = input.to(box_dtype(input.dtype))  # a no-op for float32 and float64
    if isinstance(boxes, (list, tuple)):
        boxes = boxes_to_rois([b.to(input.dtype) for b in boxes]) if boxes else input.new_zeros((0, 5))
    rois = boxes.detach().to(input.dtype)
    with _autocast_off(input.device):
        out = _roi_align_full_precision(input, rois, (ph_n, pw_n), spatial_scale, sampling_ratio, aligned)
    return out.to(out_dtype)


def _autocast_off(device: torch.device):
    """A context in which autocast is off on ``device`` (``nullcontext`` when it is not on anyway)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _roi_align_full_precision(input: Tensor, rois: Tensor, output_size: Tuple[int, int],
                              spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """:func:`roi_align` for float32/float64 ``input`` and ``rois (K, 5)`` with autocast off."""
    ph_n, pw_n = output_size
    n, c, h, w = input.shape
    k = rois.shape[0]

    geo = roi_align_geometry(rois, (ph_n, pw_n), spatial_scale, sampling_ratio, aligned)
    if sampling_ratio > 0:
        gh = gw = sampling_ratio
    else:
        gh = int(geo["grid_h"].max().clamp(min=1)) if k else 1
        gw = int(geo["grid_w"].max().clamp(min=1)) if k else 1
    ys, used_y = roi_align_sample_positions(geo["y_start"], geo["bin_h"], geo["grid_h"], ph_n, gh)
    xs, used_x = roi_align_sample_positions(geo["x_start"], geo["bin_w"], geo["grid_w"], pw_n, gw)
    iy, wy = _bilinear_axis_weights(ys, used_y, geo["grid_h"], h)  # (K, PH, gh, 2)
    ix, wx = _bilinear_axis_weights(xs, used_x, geo["grid_w"], w)  # (K, PW, gw, 2)

    # Every output bin is a weighted sum of feature cells: for each bin, all pairs
    # (y-neighbour, x-neighbour) of its samples, E = (2 gh) * (2 gw) cells per bin.
    batch = rois[:, 0].long()
    row = (batch[:, None, None, None, None] * h + iy.reshape(k, ph_n, 1, 2 * gh, 1)) * w
    pix = row + ix.reshape(k, 1, pw_n, 1, 2 * gw)                              # (K, PH, PW, 2gh, 2gw)
    wgt = wy.reshape(k, ph_n, 1, 2 * gh, 1) * wx.reshape(k, 1, pw_n, 1, 2 * gw)
    feat = input.permute(0, 2, 3, 1).reshape(n * h * w, c)                     # channels-last cells
    e = 4 * gh * gw
    out = _weighted_rows(feat, pix.reshape(k * ph_n * pw_n, e), wgt.reshape(k * ph_n * pw_n, e))
    return out.view(k, ph_n, pw_n, c).permute(0, 3, 1, 2).contiguous()


def _weighted_rows(feat: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """``out[r] = sum_e weight[r, e] * feat[index[r, e]]``.

    ``feat (M, C)``, ``index (R, E)`` int64 rows of ``feat``, ``weight (R, E)`` -> ``(R, C)``.

    This is RoIAlign's only contact with the features, and it is *linear*: ``out = S @ feat``
    with ``S`` an ``(R, M)`` matrix holding the bilinear weights (E non-zeros per row). Its
    gradient is ``S^T @ grad_out``: each cell receives the weights of the samples that read it.

    Written out, it is ``(feat[index] * weight[..., None]).sum(1)``, but that gathers an ``(R, E, C)``
    buffer first (about 100 million numbers for Mask R-CNN's 512 RoIs x 7 x 7 bins x 16 cells x 256
    channels). ``embedding_bag`` in ``"sum"`` mode with per-sample weights computes exactly this sum
    ("bags" of E rows, weighted) without the buffer, in parallel; its backward is the ``S^T`` scatter.
    tests/test_fast.py checks it against the written-out sum.
    """
    return F.embedding_bag(index, feat, per_sample_weights=weight.to(feat.dtype), mode="sum")

