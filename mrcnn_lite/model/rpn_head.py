"""The RPN's head: one small conv net shared by all FPN levels, and the flattening of its outputs into
the anchors' order. ``rpn.py`` turns its outputs into proposals and losses.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["RPNHead", "concat_box_prediction_layers"]


class _ConvReLU(nn.Sequential):
    """3x3 conv (padding 1, with bias) + ReLU. Its own Sequential so the state-dict keys read
    ``conv.0.0.weight`` like torchvision's (which wraps it in ``Conv2dNormActivation``)."""

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True))


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then two sibling 1x1 convs: objectness logits and box deltas.

    Args:
        in_channels: channels C of every FPN level (they are all the same).
        num_anchors: anchors per location A (the same at every level).
        conv_depth: number of 3x3 conv + ReLU blocks before the two predictors.

    ``forward(features)`` with ``features`` a list of ``(B, C, H_l, W_l)`` returns two lists, one entry
    per level: ``objectness (B, A, H_l, W_l)`` logits and ``bbox_deltas (B, 4 A, H_l, W_l)`` where
    channels ``4a..4a+3`` are ``(dx, dy, dw, dh)`` of anchor a.

    State-dict keys: ``conv.0.0.weight``, ``conv.0.0.bias``, ``cls_logits.weight/bias``,
    ``bbox_pred.weight/bias`` -- torchvision's. All convs start from N(0, 0.01) weights and zero bias.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*[_ConvReLU(in_channels) for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1, stride=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1, stride=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        objectness, bbox_deltas = [], []
        for feature in features:  # the same weights at every level
            t = self.conv(feature)
            objectness.append(self.cls_logits(t))
            bbox_deltas.append(self.bbox_pred(t))
        return objectness, bbox_deltas


def concat_box_prediction_layers(
    objectness: Sequence[Tensor], bbox_deltas: Sequence[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Flatten the per-level head outputs into the anchors' order (level -> y -> x -> anchor).

    ``objectness[l] (B, A, H_l, W_l)``, ``bbox_deltas[l] (B, 4 A, H_l, W_l)`` ->
    ``objectness (B, N)`` and ``bbox_deltas (B, N, 4)`` with ``N = sum_l H_l W_l A``.
    """
    flat_obj, flat_deltas = [], []
    for obj, deltas in zip(objectness, bbox_deltas):
        B, A, H, W = obj.shape
        # (B, A, H, W) -> (B, H, W, A): y, then x, then anchor, as AnchorGenerator orders them.
        flat_obj.append(obj.permute(0, 2, 3, 1).reshape(B, -1))
        # (B, A*4, H, W) -> (B, A, 4, H, W) -> (B, H, W, A, 4)
        flat_deltas.append(deltas.view(B, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, 4))
    return torch.cat(flat_obj, dim=1), torch.cat(flat_deltas, dim=1)
