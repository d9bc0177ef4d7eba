"""RoIPool, RoIAlign and MultiScaleRoIAlign in pure PyTorch.

A detector proposes boxes ("regions of interest", RoIs) of every size, but the box head needs a
fixed-size feature per RoI (e.g. 256 x 7 x 7). These ops cut each RoI out of a feature map and pool
it onto a fixed ``output_size`` grid of "bins":

* :func:`roi_pool` (Fast R-CNN) rounds the box to whole feature cells, splits it into bins whose
  edges are rounded again (floor/ceil), and takes the max of each bin: two quantizations.
* :func:`roi_align` (Mask R-CNN) keeps the box in real coordinates, places a regular grid of
  sample points inside every bin, reads the map at each point by bilinear interpolation, and
  averages: no quantization, so a sub-pixel shift of the box moves the output smoothly.
* :class:`MultiScaleRoIAlign` picks, for every box, the FPN level whose stride suits the box size
  (:func:`map_levels`, eq. 1 of the FPN paper) and runs :func:`roi_align` there.

Semantics, argument names and numbers follow ``torchvision.ops`` (the tests check forward values
and input gradients against it). Everything is built from differentiable tensor ops (index_select,
gather, embedding_bag), so autograd gives the backward pass; nothing loops over RoIs or bins in Python.
Boxes are treated as constants (no gradient flows into box coordinates), as in torchvision.

Shapes used below: ``input (N, C, H, W)``, ``K`` RoIs, output ``(K, C, PH, PW)`` with
``(PH, PW) = output_size``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import box_area, box_dtype

BoxesArg = Union[Tensor, Sequence[Tensor]]

__all__ = [
    "roi_pool", "roi_align", "MultiScaleRoIAlign", "map_levels", "infer_scale", "setup_scales",
    "boxes_to_rois", "roi_align_geometry", "roi_align_sample_positions",
]


# --------------------------------------------------------------------------------------------
# Input checking: clear errors here instead of an index error deep inside a gather.
# --------------------------------------------------------------------------------------------
def _check_input(input: Tensor, op: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor (N, C, H, W), got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be a floating-point tensor (float32 or float64), got {input.dtype}")
    if input.dim() != 4:
        raise ValueError(f"{op}: input must be a 4-D tensor (N, C, H, W), got shape {tuple(input.shape)}")


def _pair(output_size, op: str) -> Tuple[int, int]:
    """``7 -> (7, 7)``; ``(7, 5) -> (7, 5)`` as (height, width)."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"{op}: output_size must be a positive int or a pair (height, width) of them, "
                         f"got {output_size!r}")
    return size


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """List of per-image boxes ``[(L_i, 4) x1y1x2y2]`` -> ``(sum L_i, 5)`` rows ``(batch_index, x1, y1, x2, y2)``."""
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    rows = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows, dim=0)


def _as_rois(input: Tensor, boxes: BoxesArg, op: str) -> Tensor:
    """Validate ``boxes`` against ``input`` and return ``(K, 5)`` RoIs, detached, in ``box_dtype(input.dtype)``
    (the input's dtype for float32/float64; float32 for float16/bfloat16 features, whose precision is
    too coarse for coordinates)."""
    n = input.shape[0]
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise TypeError(f"{op}: boxes[{i}] must be a Tensor[L, 4], got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"{op}: boxes[{i}] must be a Tensor[L, 4] of (x1, y1, x2, y2), "
                                 f"got shape {tuple(b.shape)}")
        if len(boxes) > n:
            raise ValueError(f"{op}: boxes is a list for {len(boxes)} images but input holds only {n}")
        dtypes = {b.dtype for b in boxes}
        boxes = [b.to(box_dtype(input.dtype)) for b in boxes] if len(dtypes) > 1 else list(boxes)
        rois = boxes_to_rois(boxes) if boxes else input.new_zeros((0, 5))
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"{op}: boxes must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2) or a list "
                             f"of Tensor[L, 4]; got a tensor of shape {tuple(boxes.shape)}")
        rois = boxes
    else:
        raise TypeError(f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")

    if rois.device != input.device:
        raise ValueError(f"{op}: boxes are on {rois.device} but input is on {input.device}; move them with .to()")
    # Boxes are constants for the op (no gradient, like torchvision); float32 or float64 (see box_dtype).
    rois = rois.detach().to(box_dtype(input.dtype))
    if rois.shape[0] == 0:
        return rois
    bad = ~torch.isfinite(rois).all(dim=1)
    if bad.any():
        r = int(bad.nonzero()[0])
        raise ValueError(f"{op}: boxes row {r} is not finite: {rois[r].tolist()}")
    idx = rois[:, 0]
    not_int = idx != torch.round(idx)
    if not_int.any():
        r = int(not_int.nonzero()[0])
        raise ValueError(f"{op}: boxes row {r} has batch index {idx[r].item()}, which is not an integer")
    outside = (idx < 0) | (idx >= n)
    if outside.any():
        r = int(outside.nonzero()[0])
        raise ValueError(f"{op}: boxes row {r} has batch index {int(idx[r].item())}, "
                         f"but input has batch size {n} (valid: 0..{n - 1})")
    return rois


# --------------------------------------------------------------------------------------------
# RoIPool
# --------------------------------------------------------------------------------------------
def _round_half_away(t: Tensor) -> Tensor:
    """C's ``round()``: halves go away from zero (torch.round sends them to the even neighbour)."""
    trunc = torch.trunc(t)
    is_half = (t - trunc).abs() == 0.5
    return torch.where(is_half, trunc + torch.sign(t), torch.round(t))


def roi_pool(input: Tensor, boxes: BoxesArg, output_size, spatial_scale: float = 1.0) -> Tensor:
    """Max-pool each RoI onto an ``output_size`` grid, with Fast R-CNN's two quantizations.

    Args:
        input: ``(N, C, H, W)`` float feature maps.
        boxes: ``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)``, or a list of ``(L_i, 4)`` x1y1x2y2
            tensors, one per image, in image coordinates.
        output_size: ``int`` or ``(PH, PW)``.
        spatial_scale: feature size / image size (e.g. 1/16 for a stride-16 map).

    Returns:
        ``(K, C, PH, PW)``.

    Quantization 1: the scaled box corners are rounded to whole cells, and the box covers cells
    ``x1..x2`` inclusive (width at least 1). Quantization 2: bin ``p`` covers cells
    ``floor(p * bin) .. ceil((p + 1) * bin) - 1`` of the box, clipped to the map; an empty bin gives 0.
    Backward sends each output's gradient to the cell that won the max (its "argmax"). When several
    cells tie for the max, the first in row-major order wins -- the same rule as torchvision's
    kernel (it keeps the first strictly greater value). NaNs differ: torch.argmax picks a NaN,
    torchvision skips it.

    Memory grows as ``K * C * PH * PW * (largest bin area)``: fine for teaching sizes.
    """
    _check_input(input, "roi_pool")
    ph_n, pw_n = _pair(output_size, "roi_pool")
    rois = _as_rois(input, boxes, "roi_pool")
    n, c, h, w = input.shape
    k = rois.shape[0]
    dev = input.device

    batch = rois[:, 0].long()
    # Quantization 1: box corners to whole cells (in the input's dtype, like the C++ kernel; float32 for
    # float16/bfloat16 input, see box_dtype).
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * spatial_scale).long() for i in range(1, 5))
    roi_w = (x2 - x1 + 1).clamp(min=1)  # malformed boxes become 1 x 1
    roi_h = (y2 - y1 + 1).clamp(min=1)

    def bin_edges(start: Tensor, length: Tensor, n_bins: int, size: int) -> Tuple[Tensor, Tensor]:
        # Quantization 2: bin p spans [floor(p * bin), ceil((p+1) * bin)) cells from the box start.
        bin_size = length.to(rois.dtype) / n_bins                                # (K,)
        p = torch.arange(n_bins, device=dev, dtype=rois.dtype)
        lo = torch.floor(p * bin_size[:, None]).long() + start[:, None]          # (K, n_bins)
        hi = torch.ceil((p + 1) * bin_size[:, None]).long() + start[:, None]
        return lo.clamp(0, size), hi.clamp(0, size)                              # clip to the map

    hstart, hend = bin_edges(y1, roi_h, ph_n, h)  # (K, PH)
    wstart, wend = bin_edges(x1, roi_w, pw_n, w)  # (K, PW)
    # Every bin is read through one window as large as the largest bin; extra cells are masked out.
    mh = int((hend - hstart).max().clamp(min=1)) if k else 1
    mw = int((wend - wstart).max().clamp(min=1)) if k else 1
    rows = hstart[:, :, None] + torch.arange(mh, device=dev)                    # (K, PH, mh)
    cols = wstart[:, :, None] + torch.arange(mw, device=dev)                    # (K, PW, mw)
    inside = (rows < hend[:, :, None])[:, :, None, :, None] & (cols < wend[:, :, None])[:, None, :, None, :]
    rows = rows.clamp(max=h - 1)  # masked cells still need a valid address
    cols = cols.clamp(max=w - 1)
    # Flat address of every window cell in the (N*H*W, C) channels-last map.
    pix = ((batch[:, None, None] * h + rows)[:, :, None, :, None] * w
           + cols[:, None, :, None, :])                                           # (K, PH, PW, mh, mw)
    pix = pix.reshape(k, ph_n, pw_n, mh * mw)
    inside = inside.reshape(k, ph_n, pw_n, mh * mw)

    feat = input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # one row per cell, all channels
    with torch.no_grad():  # find the winner of each bin; the value itself is read with autograd below
        window = feat.index_select(0, pix.reshape(-1)).view(k, ph_n, pw_n, mh * mw, c)
        window = window.masked_fill(~inside[..., None], float("-inf"))
        arg = window.argmax(dim=3)                                                  # (K, PH, PW, C), first max
        winner = pix[..., None].expand(k, ph_n, pw_n, mh * mw, c).gather(3, arg[:, :, :, None, :])
    out = feat.gather(0, winner.reshape(-1, c)).view(k, ph_n, pw_n, c)  # gradient flows to the winner
    empty = ~inside.any(dim=3)                                                       # (K, PH, PW)
    out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=dev), out)
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------------------------
def roi_align_geometry(rois: Tensor, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                       aligned: bool = False) -> Dict[str, Tensor]:
    """Where RoIAlign looks, per RoI: box start, bin size and samples per bin along each axis.

    Args:
        rois: ``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` (or ``(K, 4)`` boxes) in image coordinates.

    Returns a dict of ``(K,)`` tensors: ``y_start``, ``x_start`` (feature coordinates), ``bin_h``,
    ``bin_w``, and ``grid_h``, ``grid_w`` (sample points per bin, as float; may be <= 0 for a box
    of zero or negative size when ``aligned``, which then has no samples).
    """
    ph_n, pw_n = _pair(output_size, "roi_align")
    if rois.shape[-1] == 4:
        rois = torch.cat([rois.new_zeros(rois.shape[0], 1), rois], dim=1)
    # aligned=True shifts by half a cell: pixel i's centre sits at i + 0.5 in box coordinates.
    offset = 0.5 if aligned else 0.0
    x_start = rois[:, 1] * spatial_scale - offset
    y_start = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x_start
    roi_h = rois[:, 4] * spatial_scale - offset - y_start
    if not aligned:  # legacy behaviour: force malformed boxes to be at least 1 x 1
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph_n, roi_w / pw_n
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, float(sampling_ratio))
        grid_w = torch.full_like(roi_w, float(sampling_ratio))
    else:  # adaptive: about one sample per feature cell, so it differs from RoI to RoI
        grid_h = torch.ceil(roi_h / ph_n)
        grid_w = torch.ceil(roi_w / pw_n)
    return dict(y_start=y_start, x_start=x_start, bin_h=bin_h, bin_w=bin_w, grid_h=grid_h, grid_w=grid_w)


def roi_align_sample_positions(start: Tensor, bin_size: Tensor, grid: Tensor, n_bins: int,
                               max_grid: int) -> Tuple[Tensor, Tensor]:
    """Sample coordinates along one axis: sample ``i`` of bin ``p`` is at
    ``start + p * bin + (i + 0.5) * bin / grid`` (evenly spaced, centred in the sub-cells).

    Args: ``start, bin_size, grid``: ``(K,)``; ``max_grid``: samples to lay out per bin.
    Returns: ``pos (K, n_bins, max_grid)`` and ``used (K, 1, max_grid)`` (False for padding samples
    beyond a RoI's own ``grid``).
    """
    p = torch.arange(n_bins, device=start.device, dtype=start.dtype)
    i = torch.arange(max_grid, device=start.device, dtype=start.dtype)
    g = grid.clamp(min=1)[:, None, None]  # padding samples are masked; avoid dividing by 0
    b = bin_size[:, None, None]
    # Same evaluation order as torchvision's kernel, so rounding matches.
    pos = (start[:, None, None] + p[None, :, None] * b) + ((i + 0.5)[None, None, :] * b) / g
    used = i[None, None, :] < grid[:, None, None]
    return pos, used


def _bilinear_axis(pos: Tensor, used: Tensor, grid: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """The 1-D half of bilinear interpolation: neighbour indices and weights of each sample.

    ``pos (K, B, G)`` -> ``idx (K, B, G, 2)`` (low, high cell) and ``weight (K, B, G, 2)``. Samples
    outside ``[-1, size]`` or unused get weight 0, and each weight carries ``1 / grid`` so that the
    sum over samples is the average. Because validity and weights factor per axis, the 2-D weight
    of corner (y_a, x_b) is just ``wy[a] * wx[b]``.
    """
    valid = (pos >= -1.0) & (pos <= size) & used
    pos = pos.clamp(min=0)                     # samples in [-1, 0) read the border cell
    low = pos.floor().long()
    at_edge = low >= size - 1                  # at the far border both neighbours are the last cell
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    scale = valid.to(pos.dtype) / grid.clamp(min=1)[:, None, None]
    weight = torch.stack([(1.0 - frac) * scale, frac * scale], dim=-1)
    return torch.stack([low, high], dim=-1), weight


def roi_align(input: Tensor, boxes: BoxesArg, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Average of bilinearly interpolated samples in each bin of each RoI (Mask R-CNN's RoIAlign).

    Args:
        input: ``(N, C, H, W)`` float feature maps.
        boxes: ``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)``, or a list of ``(L_i, 4)`` x1y1x2y2
            tensors, one per image, in image coordinates.
        output_size: ``int`` or ``(PH, PW)``.
        spatial_scale: feature size / image size (e.g. 1/16 for a stride-16 map).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(roi_height / PH)`` by ``ceil(roi_width / PW)`` for each RoI.
        aligned: shift the box by -0.5 cell so that pixel centres line up (Detectron2); when False
            (legacy), boxes are also stretched to at least 1 x 1 cell.

    Returns:
        ``(K, C, PH, PW)``.

    Samples with y outside ``[-1, H]`` or x outside ``[-1, W]`` contribute 0 (but still count in
    the average). How it is vectorised: the grid of sample points is the product of a set of y's
    and a set of x's, and bilinear weights factor into a y-weight times an x-weight. So every output
    bin is a weighted sum of the 2 x 2 neighbours of all its samples, read from a channels-last view of
    the map: one weighted row-sum for all bins at once (:func:`_weighted_rows`). Adaptive grids,
    which differ per RoI, are laid out at the largest count and the extra samples get weight 0.

    Mixed precision: float16/bfloat16 input is sampled in float32 and the result cast back to the input's
    dtype, with autocast switched off inside (the weighted sum is a matrix product, which autocast would
    otherwise run in low precision). That is what torchvision's kernel does under autocast.
    """
    _check_input(input, "roi_align")
    ph_n, pw_n = _pair(output_size, "roi_align")
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise TypeError(f"roi_align: sampling_ratio must be an int, got {sampling_ratio!r}")
    out_dtype = input.dtype
    input = input.to(box_dtype(input.dtype))  # a no-op for float32 and float64
    with _autocast_off(input.device):
        out = _roi_align_full_precision(input, boxes, (ph_n, pw_n), spatial_scale, sampling_ratio, aligned)
    return out.to(out_dtype)


def _autocast_off(device: torch.device):
    """A context in which autocast is off on ``device`` (``nullcontext`` when it is not on anyway)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _roi_align_full_precision(input: Tensor, boxes: BoxesArg, output_size: Tuple[int, int],
                              spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """:func:`roi_align` for float32/float64 ``input`` with autocast off: the arithmetic itself."""
    ph_n, pw_n = output_size
    rois = _as_rois(input, boxes, "roi_align")
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
    iy, wy = _bilinear_axis(ys, used_y, geo["grid_h"], h)  # (K, PH, gh, 2)
    ix, wx = _bilinear_axis(xs, used_x, geo["grid_w"], w)  # (K, PW, gw, 2)

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
    tests/test_ops_roi.py checks it against the written-out sum.
    """
    return F.embedding_bag(index, feat, per_sample_weights=weight.to(feat.dtype), mode="sum")


_default_roi_align = roi_align  # MultiScaleRoIAlign's argument named roi_align shadows the function


# --------------------------------------------------------------------------------------------
# Multi-scale RoIAlign for FPN
# --------------------------------------------------------------------------------------------
def infer_scale(feature_size: int, image_size: int) -> float:
    """Stride of a feature map as a power of two: ``2 ** round(log2(feature_size / image_size))``.

    A 200-row map of an 800-row image gives 0.25. Rounding absorbs the padding/ceil of strided convs.
    """
    return 2.0 ** round(math.log2(float(feature_size) / float(image_size)))


def setup_scales(feature_shapes: Sequence[Sequence[int]],
                 image_shapes: Sequence[Tuple[int, int]]) -> Tuple[List[float], int, int]:
    """Scales of the pyramid levels and the FPN level range, as torchvision infers them.

    Args:
        feature_shapes: shapes of the level maps, e.g. ``[(2, 256, 200, 272), ...]`` (last two: H, W).
        image_shapes: ``[(height, width), ...]`` of the (resized, unpadded) images in the batch.

    Returns ``(scales, k_min, k_max)``: one scale per level, inferred from the feature height over
    the largest image height (as torchvision does), and the levels ``k = -log2(scale)`` of the
    first and last map (e.g. 2 and 5 for strides 4..32).
    """
    if len(image_shapes) == 0:
        raise ValueError("image_shapes must not be empty")
    max_h = max(int(s[0]) for s in image_shapes)
    scales = [infer_scale(shape[-2], max_h) for shape in feature_shapes]
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    return scales, k_min, k_max


def map_levels(boxes_list: Sequence[Tensor], k_min: int, k_max: int, canonical_scale: int = 224,
               canonical_level: int = 4, eps: float = 1e-6) -> Tensor:
    """FPN eq. 1: ``k = floor(k0 + log2(sqrt(w * h) / 224))``, clamped to ``[k_min, k_max]``.

    A 224 x 224 box goes to level ``k0 = 4`` (stride 16); each halving of the box size goes one
    level finer. Args: ``boxes_list``: list of ``(L_i, 4)`` x1y1x2y2 boxes in image coordinates.
    Returns ``(sum L_i,)`` int64 indices ``k - k_min`` into the list of level maps.
    """
    s = torch.sqrt(torch.cat([box_area(b) for b in boxes_list]))
    # eps nudges boxes whose size is exactly a power-of-two multiple of 224 to the upper level.
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    k = torch.clamp(k, min=k_min, max=k_max)
    return k.to(torch.int64) - k_min


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over a feature pyramid: each box is pooled from the level that suits its size.

    Args:
        featmap_names: which entries of the feature dict to pool from, e.g. ``["0", "1", "2", "3"]``.
        output_size: ``int`` or ``(PH, PW)``.
        sampling_ratio: as in :func:`roi_align`.
        canonical_scale, canonical_level: the ``224`` and ``k0 = 4`` of FPN eq. 1.
        roi_align: the kernel to call, with :func:`roi_align`'s signature; the model may pass
            ``torchvision.ops.roi_align`` for speed (see ``mrcnn_lite.model.kernels``).

    Unlike torchvision, the level scales are recomputed on every call from the current feature and
    image sizes (torchvision caches them from the first batch, which is wrong when that batch had a
    different shape: torchvision issue 3747). For same-size batches the numbers are identical.

    Mixed precision: when autocast made the features float16/bfloat16, the RoIs stay float32 and the
    features are cast up to float32 for the sampling (torchvision's kernel does the same cast inside);
    the pooled result is cast back to the features' dtype, the dtype the heads compute in (and the only
    one a ``.half()`` head without autocast accepts). Casting the *boxes* down instead would move them:
    a 1333-px coordinate in float16 has a step of 1 px, in bfloat16 8 px. In float32/float64 every
    cast here is a no-op.
    """

    def __init__(self, featmap_names: List[str], output_size, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4,
                 roi_align: Optional[Callable[..., Tensor]] = None):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size, "MultiScaleRoIAlign")
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.roi_align = roi_align if roi_align is not None else _default_roi_align

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        """Args:
            x: feature maps by name, each ``(N, C, H_l, W_l)`` (same C for all levels).
            boxes: list of ``(L_i, 4)`` x1y1x2y2 boxes per image, in image coordinates.
            image_shapes: ``[(height, width), ...]`` of the images before the backbone.
        Returns: ``(sum L_i, C, PH, PW)``, rows in the order of the concatenated boxes.
        """
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise KeyError(f"MultiScaleRoIAlign: feature maps {missing} not in the input (have {list(x)})")
        # Same order as torchvision: the dict's order, keeping the requested names.
        feats = [v for name, v in x.items() if name in self.featmap_names]
        scales, k_min, k_max = setup_scales([f.shape for f in feats], image_shapes)
        out_dtype = feats[0].dtype                  # the heads' compute dtype (float16/bfloat16 under autocast)
        dtype = box_dtype(out_dtype)                # RoIAlign samples in float32 (float64 stays float64)
        feats = [f.to(dtype) for f in feats]
        rois = boxes_to_rois([b.to(dtype) for b in boxes]) if len(boxes) else feats[0].new_zeros((0, 5))
        rois = rois.to(feats[0].device)
        kwargs = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio)
        if len(feats) == 1:
            return self.roi_align(feats[0], rois, spatial_scale=scales[0], **kwargs).to(out_dtype)

        levels = map_levels(boxes, k_min, k_max, self.canonical_scale, self.canonical_level).to(rois.device)
        # Group the RoIs by level (a stable sort keeps their order within a level) and pool each group
        # from its level. ``order.split(counts)`` gives each group's rows in the boxes' order.
        order = torch.sort(levels, stable=True).indices
        counts = torch.bincount(levels, minlength=len(feats)).tolist()  # one host sync for all levels
        groups = order.split(counts)
        pooled = [self.roi_align(feat, rois[idx], spatial_scale=scale, **kwargs).to(dtype)
                  for feat, scale, idx in zip(feats, scales, groups)]
        unpooled = sum(counts[len(feats):])  # levels without a map (a subset of names): zeros, like torchvision
        if unpooled:
            groups = (*groups[:len(feats)], torch.cat(groups[len(feats):]))
            pooled.append(feats[0].new_zeros((unpooled, feats[0].shape[1]) + self.output_size))
        if torch.is_grad_enabled() and any(p.requires_grad for p in pooled):
            # Training: concatenate and gather the rows back into the boxes' order. Its backward is
            # cheap: one scatter of the gradient, then views of it per level.
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            return torch.cat(pooled).index_select(0, inverse).to(out_dtype)
        # Inference: copy each group's rows straight to their places in one uninitialised tensor: one
        # pass over the result (torchvision fills a zero tensor first; cat + gather would be two passes).
        out = pooled[0].new_empty((rois.shape[0],) + pooled[0].shape[1:])
        for idx, rows in zip(groups, pooled):
            out.index_copy_(0, idx, rows)
        return out.to(out_dtype)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")
