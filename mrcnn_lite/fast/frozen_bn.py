"""Frozen batch norm, fast: cached scale and shift, and folding into the convolutions.

``mrcnn_lite.model.frozen_bn.FrozenBatchNorm2d`` computes ``scale = weight / sqrt(running_var + eps)`` and
``shift = bias - running_mean * scale`` on every call, then ``x * scale + shift``: two passes over the
activations and five small per-channel ops. ``CachedFrozenBatchNorm2d`` (the model's fast floor builds
it) keeps scale and shift until a buffer changes and applies them with one ``torch.addcmul``.
``fold_frozen_bn`` goes further for inference: it folds the multiply-add into the preceding conv.
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from ..model.backbone import BasicBlock, Bottleneck, ResNet
from ..model.frozen_bn import FrozenBatchNorm2d


class CachedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """``FrozenBatchNorm2d`` (same buffers, state-dict keys and numbers up to float rounding) whose
    ``scale`` and ``shift`` are worked out on first use and reused until one of the four buffers changes:
    it is replaced (``.to()``, ``load_state_dict``) or written in place, which PyTorch counts in
    ``tensor._version``. Writes through ``.data`` bypass that counter; use ``copy_`` under ``torch.no_grad()``.

    Mixed precision: where the reference computes in float32 and rounds the result, this layer casts scale
    and shift to the activations' dtype once and stays in it (half the memory traffic), unless that
    overflows float16 (largest number 65504): then it warns and computes in float32.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps)
        # The precomputed (scale, shift) per activation dtype, and which buffers (and versions) they came from.
        self._cache: Dict[tuple, Tuple[Tensor, Tensor]] = {}
        self._cache_source: tuple = ()

    def scale_and_shift_for(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """``compute_scale_and_shift()`` cast to ``dtype`` if that is a lower precision, unless the cast overflows."""
        scale, shift = self.compute_scale_and_shift()
        if dtype == scale.dtype or torch.promote_types(dtype, scale.dtype) != scale.dtype:
            return scale, shift
        if torch.compiler.is_compiling():  # no data-dependent check inside a compiled graph
            return scale.to(dtype), shift.to(dtype)
        low_scale, low_shift = scale.to(dtype), shift.to(dtype)
        if bool(torch.isfinite(low_scale).all() & torch.isfinite(low_shift).all()):
            return low_scale, low_shift
        warnings.warn(f"FrozenBatchNorm2d({self.num_features}, eps={self.eps}): scale or shift overflows {dtype} "
                      f"(a running_var near 0 with a small eps); this layer computes in {scale.dtype}.")
        return scale, shift

    def scale_and_shift(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """The precomputed ``scale_and_shift_for(dtype)``, recomputed only when a buffer has changed."""
        buffers = (self.weight, self.bias, self.running_mean, self.running_var)
        if torch.compiler.is_compiling() or any(b.is_inference() for b in buffers):
            return self.scale_and_shift_for(dtype)  # a compiler folds it into its graph anyway
        source = tuple((b, b._version) for b in buffers)
        if len(source) != len(self._cache_source) or any(
            b is not old_b or v != old_v for (b, v), (old_b, old_v) in zip(source, self._cache_source)
        ):
            self._cache, self._cache_source = {}, source
        # Tensors made in inference mode cannot be used in a later autograd step: cache them apart.
        key = (dtype, torch.is_inference_mode_enabled())
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = self.scale_and_shift_for(dtype)
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C, H, W) (float32 only when float16 would overflow; see the class)."""
        scale, shift = self.scale_and_shift(x.dtype)
        # (C,) -> (1, C, 1, 1); addcmul = shift + x * scale in one pass over x.
        return torch.addcmul(shift.reshape(1, -1, 1, 1), x, scale.reshape(1, -1, 1, 1))


def fold_frozen_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every ``FrozenBatchNorm2d`` that follows a conv into that conv, for inference.

    A convolution followed by a per-channel multiply-add is one convolution with scaled weights and a
    bias, since the conv is linear in its weights::

        bn(conv(x)) = conv(x; W) * scale + shift = conv(x; W * scale[:, None, None, None]) + shift

    so the folded model skips one pass over every activation map of the ResNet (53 of them in ResNet-50).
    Folds the pairs of the ResNet stem (``conv1``/``bn1``), of every block (``conv{i}``/``bn{i}``) and of
    the shortcuts (``downsample.0``/``downsample.1``); each folded norm layer becomes ``nn.Identity``.
    Other norm layers (``BatchNorm2d``, ``GroupNorm``) are left alone.

    Args:
        model: a ``MaskRCNN``, ``BackboneWithFPN``, ``ResNet``, or any module containing them.
        inplace: fold ``model`` itself; by default a deep copy is folded and returned.

    Returns the folded model: same outputs up to float rounding (the products are computed in float64
    and rounded once, but the conv then sums differently rounded terms; tests/test_speed.py bounds the
    difference). Meant for inference: its state dict has conv biases and no norm buffers, so it no
    longer loads torchvision's checkpoints; fold after loading. Training it would not be the same as
    training the unfolded model (the gradient w.r.t. ``W * scale`` differs from that w.r.t. ``W``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    for module in list(model.modules()):
        if isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            for i in (1, 2, 3):
                _fold_conv_and_bn(module, f"conv{i}", f"bn{i}")
        if isinstance(module, (BasicBlock, Bottleneck)) and module.downsample is not None:
            _fold_conv_and_bn(module.downsample, "0", "1")
    return model


@torch.no_grad()
def _fold_conv_and_bn(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    """If ``parent.<bn_name>`` is a FrozenBatchNorm2d after the conv ``parent.<conv_name>``, fold it in."""
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, FrozenBatchNorm2d):
        return
    scale, shift = bn.compute_scale_and_shift()                          # (C_out,), (C_out,)
    weight = conv.weight.double() * scale.double().reshape(-1, 1, 1, 1)  # round once, at the end
    bias = shift.double() if conv.bias is None else conv.bias.double() * scale.double() + shift.double()
    conv.weight.copy_(weight)                                            # keeps dtype and memory format
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    setattr(parent, bn_name, nn.Identity())


