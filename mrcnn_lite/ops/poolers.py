"""Multi-scale RoIAlign for an FPN: each box is pooled from the pyramid level that suits its size.

The FPN paper's eq. 1 maps a box of size ``sqrt(w * h)`` to level ``k = floor(4 + log2(sqrt(w h) / 224))``:
a 224 x 224 box to P4 (stride 16), every halving of the size one level finer. ``MultiScaleRoIAlign``
groups the boxes by level, runs RoIAlign on each group at its level's scale, and puts the rows back in
the boxes' order. Same numbers and argument names as ``torchvision.ops.MultiScaleRoIAlign``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .boxes import box_area, box_dtype
from . import roi_ops
from .roi_ops import _pair, boxes_to_rois

__all__ = ["MultiScaleRoIAlign", "map_levels", "infer_scale", "setup_scales"]


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
        sampling_ratio: as in ``roi_ops.roi_align``.
        canonical_scale, canonical_level: the ``224`` and ``k0 = 4`` of FPN eq. 1.
        roi_align: the kernel to call, with ``roi_ops.roi_align``'s signature (default: the from-scratch
            ``mrcnn_lite.ops.roi_align``; the model's fast floor passes its own).

    The level scales are recomputed on every call from the current feature and image sizes
    (torchvision caches them from the first batch, which is wrong when that batch had a different
    shape: torchvision issue 3747). For same-size batches the numbers are identical.

    Mixed precision: when autocast made the features float16/bfloat16, the RoIs stay float32 and the
    features are cast up to float32 for the sampling (torchvision's kernel does the same cast inside);
    the pooled result is cast back to the features' dtype, the dtype the heads compute in. Casting the
    *boxes* down instead would move them: a 1333-px coordinate in float16 has a step of 1 px.
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
        self.roi_align = roi_align if roi_align is not None else roi_ops.roi_align

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
        # Group the RoIs by level (a stable sort keeps their order within a level), pool each group from
        # its level, then put the rows back in the boxes' order.
        order = torch.sort(levels, stable=True).indices
        counts = torch.bincount(levels, minlength=len(feats)).tolist()
        groups = order.split(counts)
        pooled = [self.roi_align(feat, rois[idx], spatial_scale=scale, **kwargs).to(dtype)
                  for feat, scale, idx in zip(feats, scales, groups)]
        unpooled = sum(counts[len(feats):])  # levels without a map (a subset of names): zeros, like torchvision
        if unpooled:
            pooled.append(feats[0].new_zeros((unpooled, feats[0].shape[1]) + self.output_size))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(pooled).index_select(0, inverse).to(out_dtype)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")
