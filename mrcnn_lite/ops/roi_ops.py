"""RoIPool and RoIAlign in pure PyTorch.

A detector proposes boxes ("regions of interest", RoIs) of every size, but the box head needs a
fixed-size feature per RoI (e.g. 256 x 7 x 7). These ops cut each RoI out of a feature map and pool
it onto a fixed ``output_size`` grid of "bins":

* :func:`roi_pool` (Fast R-CNN) rounds the box to whole feature cells, splits it into bins whose
  edges are rounded again (floor/ceil), and takes the max of each bin: two quantizations.
* :func:`roi_align` (Mask R-CNN) keeps the box in real coordinates, places a regular grid of
  sample points inside every bin, reads the map at each point by bilinear interpolation, and
  averages: no quantization, so a sub-pixel shift of the box moves the output smoothly.

``poolers.py`` picks, for every box, the FPN level to pool from. Semantics, argument names and numbers
follow ``torchvision.ops`` (the tests check forward values and input gradients against it). Everything
is built from differentiable tensor ops, so autograd gives the backward pass. Boxes are treated as
constants (no gradient flows into box coordinates), as in torchvision. ``mrcnn_lite.fast.roi_align``
computes the same RoIAlign without the loop over RoIs.

Errors: a wrong type or dtype is a TypeError; a wrong shape, value or device a ValueError.

Shapes used below: ``input (N, C, H, W)``, ``K`` RoIs, output ``(K, C, PH, PW)`` with
``(PH, PW) = output_size``.
"""
from __future__ import annotations

import itertools
from typing import Dict, Sequence, Tuple, Union

import torch
from torch import Tensor

from .boxes import box_dtype

BoxesArg = Union[Tensor, Sequence[Tensor]]

__all__ = ["roi_pool", "roi_align", "boxes_to_rois", "roi_align_geometry", "roi_align_sample_positions",
           "bilinear_axis"]


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
        rois = boxes_to_rois([b.to(box_dtype(input.dtype)) for b in boxes]) if boxes else input.new_zeros((0, 5))
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"{op}: boxes must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2) or a list "
                             f"of Tensor[L, 4]; got a tensor of shape {tuple(boxes.shape)}")
        rois = boxes
    else:
        raise TypeError(f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")

    if rois.device != input.device:
        raise ValueError(f"{op}: boxes are on {rois.device} but input is on {input.device}; move them with .to()")
    rois = rois.detach().to(box_dtype(input.dtype))
    idx = rois[:, 0]
    bad = ~torch.isfinite(rois).all(dim=1) | (idx != torch.round(idx)) | (idx < 0) | (idx >= n)
    if rois.shape[0] and bool(bad.any()):  # one read of the data; the search for the culprit only on failure
        r = int(bad.nonzero()[0])
        if not bool(torch.isfinite(rois[r]).all()):
            raise ValueError(f"{op}: boxes row {r} is not finite: {rois[r].tolist()}")
        if idx[r] != torch.round(idx[r]):
            raise ValueError(f"{op}: boxes row {r} has batch index {idx[r].item()}, which is not an integer")
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


def bilinear_axis(pos: Tensor, size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 1-D half of bilinear interpolation, torchvision's rules: sample ``pos (S,)`` along an axis of
    ``size`` cells -> ``low, high (S,)`` int64 neighbour cells and their weights ``w_low, w_high (S,)``.

    A sample outside ``[-1, size]`` reads nothing (both weights 0); one in ``[-1, 0)`` reads the first
    cell, one at or beyond the last cell reads the last cell. The 2-D weight of corner ``(y_a, x_b)`` is
    ``wy_a * wx_b``.
    """
    valid = ((pos >= -1.0) & (pos <= size)).to(pos.dtype)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    return low, high, (1.0 - frac) * valid, frac * valid


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

    For each RoI: the sample points are the product of a set of y's (``PH * grid_h``) and a set of x's
    (``PW * grid_w``); every sample is the bilinear blend of its four neighbour cells; each bin averages
    its ``grid_h * grid_w`` samples, added in the kernel's order (float32 results equal those of
    torchvision's CPU kernel bit for bit). Samples outside ``[-1, H] x [-1, W]`` contribute 0 but still count.
    RoIs with the same number of samples per bin (all of them, for a fixed ``sampling_ratio``) are
    computed together. float16/bfloat16 input is sampled in float32 and cast back, as torchvision does.
    """
    _check_input(input, "roi_align")
    ph, pw = _pair(output_size, "roi_align")
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise TypeError(f"roi_align: sampling_ratio must be an int, got {sampling_ratio!r}")
    rois = _as_rois(input, boxes, "roi_align")
    out_dtype = input.dtype
    input = input.to(box_dtype(input.dtype))  # a no-op for float32 and float64
    n, c, h, w = input.shape
    # Zeros for RoIs without samples (an empty box with aligned=True); the sum keeps it in the graph.
    out = input.new_zeros((rois.shape[0], c, ph, pw)) + input[:0].sum()

    cells = input.permute(0, 2, 3, 1)  # (N, H, W, C): one cell's channels are read together
    geo = roi_align_geometry(rois, (ph, pw), spatial_scale, sampling_ratio, aligned)
    grid = torch.stack([geo["grid_h"], geo["grid_w"]], dim=1).long()          # (K, 2) samples per bin
    for gh, gw in sorted(set(map(tuple, grid.tolist()))):
        if gh <= 0 or gw <= 0:
            continue
        idx = torch.where((grid[:, 0] == gh) & (grid[:, 1] == gw))[0]         # the RoIs with this grid
        ys, _ = roi_align_sample_positions(geo["y_start"][idx], geo["bin_h"][idx], geo["grid_h"][idx], ph, gh)
        xs, _ = roi_align_sample_positions(geo["x_start"][idx], geo["bin_w"][idx], geo["grid_w"][idx], pw, gw)
        y0, y1, wy0, wy1 = bilinear_axis(ys.reshape(len(idx), ph * gh, 1), h)   # (k, PH * gh, 1)
        x0, x1, wx0, wx1 = bilinear_axis(xs.reshape(len(idx), 1, pw * gw), w)   # (k, 1, PW * gw)
        b = rois[idx, 0].long()[:, None, None]

        def corner(yi: Tensor, xi: Tensor, weight: Tensor) -> Tensor:
            # the C channels of cell (y, x) of every sample: (k, PH * gh, PW * gw, C), times its weight
            return cells[b, yi, xi] * weight[..., None]

        samples = (corner(y0, x0, wy0 * wx0) + corner(y0, x1, wy0 * wx1)
                   + corner(y1, x0, wy1 * wx0) + corner(y1, x1, wy1 * wx1))
        # Average of each bin's gh x gw samples, added one at a time, row by row, as torchvision's kernel
        # adds them. Float addition is not associative: ``.sum(dim=(2, 4))`` picks its own order and can
        # land one rounding step away, and the heads can carry such a step across an integer threshold
        # further on (a pasted mask's pixel box, a box's FPN level): a visibly different detection.
        samples = samples.reshape(len(idx), ph, gh, pw, gw, c)
        total = samples[:, :, 0, :, 0]
        for iy, ix in itertools.product(range(gh), range(gw)):
            if (iy, ix) != (0, 0):
                total = total + samples[:, :, iy, :, ix]
        bins = total / (gh * gw)                                                    # (k, PH, PW, C)
        out[idx] = bins.permute(0, 3, 1, 2)
    return out.to(out_dtype)
