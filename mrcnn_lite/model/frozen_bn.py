"""Frozen batch norm: BatchNorm2d with fixed statistics, as detection backbones use it (``backbone.py``)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters: one per-channel multiply-add.

        y = x * scale + shift,    scale = weight / sqrt(running_var + eps),    shift = bias - running_mean * scale

    The four tensors are *buffers*, not parameters: they are saved and loaded with the state dict (keys
    ``weight``, ``bias``, ``running_mean``, ``running_var``, as torchvision's) but never trained. Equal to
    ``nn.BatchNorm2d(...).eval()`` with the same statistics.

    Mixed precision: ``scale``, ``shift`` and the multiply-add are computed in float32 (float64 in a float64
    model), never in float16: with ``eps = 0``, as in torchvision's COCO weights, a tiny ``running_var``
    would round to 0 there and ``rsqrt(0) = inf``. The result is returned in the activations' dtype.

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

    def compute_scale_and_shift(self) -> Tuple[Tensor, Tensor]:
        """``scale, shift`` of shape (C,), in the buffers' dtype (at least float32)."""
        dtype = torch.promote_types(self.running_var.dtype, torch.float32)
        scale = self.weight.to(dtype) * torch.rsqrt(self.running_var.to(dtype) + self.eps)
        shift = self.bias.to(dtype) - self.running_mean.to(dtype) * scale
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        scale, shift = self.compute_scale_and_shift()
        # (C,) -> (1, C, 1, 1) so that they broadcast over batch and space.
        return (x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
