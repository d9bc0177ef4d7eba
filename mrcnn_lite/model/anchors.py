"""Anchors: the fixed reference boxes the RPN scores and refines.

At every position of every FPN feature map we place a few boxes ("anchors") of given sizes and
aspect ratios, centred on that position mapped back to image pixels. The RPN then predicts, for each
anchor, an objectness logit and 4 deltas that move it onto an object. Three steps:

1. *Base (cell) anchors*: for each size ``s`` and ratio ``r = h / w`` a box centred on 0 with
   ``h = s * sqrt(r)``, ``w = s / sqrt(r)`` (so its area stays ``s**2``), rounded to whole pixels:
   ``round([-w, -h, w, h] / 2)``.
2. *Shifts*: the feature map of size ``(H_f, W_f)`` covers the (padded) image of size ``(H, W)`` with
   a stride of ``(H // H_f, W // W_f)`` pixels; location ``(y, x)`` is shifted by
   ``(x * stride_w, y * stride_h)``.
3. *Grid*: every base anchor at every shift: ``shifts (H_f*W_f, 1, 4) + base (1, A, 4)``.

Order of the output (the RPN head's outputs are flattened in the same order):
level -> y -> x -> anchor. Same numbers as ``torchvision.models.detection.anchor_utils.AnchorGenerator``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.boxes import box_dtype

__all__ = ["AnchorGenerator", "generate_base_anchors", "grid_anchors"]


def generate_base_anchors(
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """Zero-centred anchors ``(len(aspect_ratios) * len(sizes), 4)`` xyxy, ratio-major order.

    ``sizes``: side of a square anchor of the same area (pixels); ``aspect_ratios``: ``h / w``.
    Row ``i * len(sizes) + j`` is ratio ``i`` at size ``j``.
    """
    # Computed in float32 like torchvision, then cast: the rounded values are whole numbers anyway.
    scales = torch.as_tensor(sizes, dtype=torch.float32, device=device)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios                       # h_ratio * w_ratio = 1 keeps the area s**2
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base_anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return base_anchors.round().to(dtype)


def grid_anchors(base_anchors: Tensor, grid_size: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
    """Every base anchor at every feature-map location: ``(H_f * W_f * A, 4)``, order y -> x -> anchor.

    ``base_anchors (A, 4)`` zero-centred; ``grid_size = (H_f, W_f)``; ``stride = (stride_h, stride_w)`` pixels.
    """
    grid_height, grid_width = grid_size
    stride_height, stride_width = stride
    device = base_anchors.device
    shifts_x = torch.arange(grid_width, dtype=torch.int32, device=device) * stride_width
    shifts_y = torch.arange(grid_height, dtype=torch.int32, device=device) * stride_height
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H_f, W_f): y slow, x fast
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)       # (H_f*W_f, 4)
    return (shifts[:, None, :] + base_anchors[None, :, :]).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for a batch of images and their FPN feature maps.

    Args:
        sizes: per feature level, a tuple of anchor sizes in pixels, e.g. ``((32,), (64,), (128,))``.
            A flat tuple ``(32, 64, 128)`` means one size per level.
        aspect_ratios: per level, a tuple of ratios ``h / w``, e.g. ``((0.5, 1.0, 2.0),) * 3``. A flat
            tuple ``(0.5, 1.0, 2.0)`` is used at every level.

    ``forward(images, feature_maps)``:
        images: an ``ImageList`` (ours or torchvision's): one set of anchors per entry of its
            ``image_sizes``, placed on its padded size ``tensors.shape[-2:]`` (so ``tensors`` may also be
            one ``(C, H, W)`` image, as torchvision accepts); or the padded batch ``(B, C, H, W)`` itself.
        feature_maps: list of ``(B, C_l, H_l, W_l)``, one per level (same number as ``sizes``).
        Returns a list of B tensors ``(sum_l H_l * W_l * A_l, 4)`` xyxy in padded-image pixels, on the
        device of the feature maps, in their dtype -- but float32 when autocast made the features
        float16/bfloat16 (``ops.box_dtype``: above 1024 px, float16 has a step of 1 px);
        all images of a batch share the same anchors.
    """

    def __init__(
        self,
        sizes: Sequence = ((128, 256, 512),),
        aspect_ratios: Sequence = ((0.5, 1.0, 2.0),),
    ):
        super().__init__()
        if len(sizes) == 0:
            raise ValueError("AnchorGenerator: sizes must not be empty")
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if len(aspect_ratios) == 0:
            raise ValueError("AnchorGenerator: aspect_ratios must not be empty")
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"AnchorGenerator: sizes has {len(sizes)} levels but aspect_ratios has {len(aspect_ratios)}"
            )
        for level, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            if len(s) == 0 or any(v <= 0 for v in s):
                raise ValueError(f"AnchorGenerator: sizes of level {level} must be positive, got {tuple(s)}")
            if len(r) == 0 or any(v <= 0 for v in r):
                raise ValueError(f"AnchorGenerator: aspect_ratios of level {level} must be positive, got {tuple(r)}")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        # One (A_l, 4) tensor of zero-centred anchors per level.
        self.cell_anchors = [generate_base_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self) -> List[int]:
        """``A_l`` for each level: len(sizes[l]) * len(aspect_ratios[l])."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def anchors_for(
        self,
        image_size: Tuple[int, int],
        grid_sizes: Sequence[Tuple[int, int]],
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
    ) -> Tensor:
        """All anchors ``(sum_l H_l * W_l * A_l, 4)`` for a padded image size and per-level grid sizes."""
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(
                f"AnchorGenerator: got {len(grid_sizes)} feature maps but {len(self.cell_anchors)} levels of "
                f"sizes/aspect_ratios; they must match"
            )
        height, width = int(image_size[0]), int(image_size[1])
        grid_sizes = [(int(g[0]), int(g[1])) for g in grid_sizes]
        # Stride = how many image pixels one feature-map cell covers (integer division, like torchvision).
        strides = [(height // gh, width // gw) for gh, gw in grid_sizes]
        per_level = [
            grid_anchors(base.to(dtype=dtype, device=device), g, s)
            for base, g, s in zip(self.cell_anchors, grid_sizes, strides)
        ]
        return torch.cat(per_level, dim=0)

    def forward(self, images, feature_maps: Sequence[Tensor]) -> List[Tensor]:
        if hasattr(images, "tensors") and hasattr(images, "image_sizes"):  # an ImageList
            tensors, batch_size = images.tensors, len(images.image_sizes)
            if not isinstance(tensors, Tensor) or tensors.dim() < 2:
                raise TypeError(f"AnchorGenerator: images.tensors must be a tensor (..., H, W), got "
                                f"{getattr(tensors, 'shape', type(tensors).__name__)}")
        elif isinstance(images, Tensor) and images.dim() == 4:
            tensors, batch_size = images, images.shape[0]
        else:
            raise TypeError(
                "AnchorGenerator: images must be an ImageList or the padded batch tensor (B, C, H, W); got "
                f"{getattr(images, 'shape', type(images).__name__)}"
            )
        for level, fm in enumerate(feature_maps):
            if not isinstance(fm, Tensor) or fm.dim() != 4:
                raise ValueError(f"AnchorGenerator: feature_maps[{level}] must be a (B, C, H, W) tensor, got "
                                 f"{getattr(fm, 'shape', type(fm).__name__)}")
        grid_sizes = [tuple(fm.shape[-2:]) for fm in feature_maps]
        dtype, device = box_dtype(feature_maps[0].dtype), feature_maps[0].device
        anchors = self.anchors_for(tuple(tensors.shape[-2:]), grid_sizes, dtype, device)
        # A tensor per image, as torchvision returns: a caller may modify one without touching the others.
        return [anchors.clone() for _ in range(batch_size)]

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"
