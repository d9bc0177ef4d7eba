"""Frozen batch norm: BatchNorm2d with fixed statistics, as detection backbones use it (``backbone.py``)."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters: one per-channel multiply-add.

        y = x * scale + shift,    scale = weight / sqrt(running_var + eps),    shift = bias - running_mean * scale

    The four tensors are *buffers*, not parameters: they are saved and loaded with the state dict (keys
    ``weight``, ``bias``, ``running_mean``, ``running_var``, as torchvision's) but never trained. Equal to
    ``nn.BatchNorm2d(...).eval()`` with the same statistics.

    Mixed precision: ``scale`` and ``shift`` are computed in float32 (float64 in a float64 model), never
    in float16: with ``eps = 0``, as in torchvision's COCO weights, a tiny ``running_var`` would round to 0
    there and ``rsqrt(0) = inf``. They are then cast to the activations' dtype, unless that overflows
    float16 (largest number 65504): then this layer warns and computes in float32.

    Args:
        num_features: channels C of the input (N, C, H, W).
        eps: added to the variance; torchvision's COCO v1 Mask R-CNN checkpoint was trained with eps = 0.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A BatchNorm2d state dict also has a step counter; a frozen layer has no use for it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def compute_scale_and_shift(self, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
        """``scale, shift`` of shape (C,): in the buffers' dtype (at least float32), then cast to ``dtype``
        if that is a lower precision, unless the cast would overflow."""
        buffer_dtype = torch.promote_types(self.running_var.dtype, torch.float32)
        scale = self.weight.to(buffer_dtype) * torch.rsqrt(self.running_var.to(buffer_dtype) + self.eps)
        shift = self.bias.to(buffer_dtype) - self.running_mean.to(buffer_dtype) * scale
        if dtype is None or dtype == buffer_dtype or torch.promote_types(dtype, buffer_dtype) != buffer_dtype:
            return scale, shift
        if torch.compiler.is_compiling():  # no data-dependent check inside a compiled graph
            return scale.to(dtype), shift.to(dtype)
        low_scale, low_shift = scale.to(dtype), shift.to(dtype)
        if bool(torch.isfinite(low_scale).all() & torch.isfinite(low_shift).all()):
            return low_scale, low_shift
        warnings.warn(f"FrozenBatchNorm2d({self.num_features}, eps={self.eps}): scale or shift overflows {dtype} "
                      f"(a running_var near 0 with a small eps); this layer computes in {buffer_dtype}.")
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        scale, shift = self.compute_scale_and_shift(x.dtype)
        # (C,) -> (1, C, 1, 1) so that they broadcast over batch and space.
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
