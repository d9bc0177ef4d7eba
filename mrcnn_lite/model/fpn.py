"""Feature Pyramid Network (Lin et al., 2017): one feature map per scale, all with the same channels.

A ResNet gives feature maps C2..C5 at strides 4, 8, 16, 32. The deep ones (C5) know *what* is in the
image but are coarse; the shallow ones (C2) are sharp but semantically weak. The FPN mixes them:

    lateral:   L_i = 1x1 conv(C_i)                 every level to ``out_channels``
    top-down:  M_5 = L_5;  M_i = L_i + upsample(M_{i+1})   nearest-neighbour, to L_i's exact size
    output:    P_i = 3x3 conv(M_i)                 smooths the aliasing of the upsampling
    extra:     P_6 = max_pool(P_5, kernel 1, stride 2)     ("pool": one more level for large objects)

Module and parameter names follow ``torchvision.ops.FeaturePyramidNetwork`` (``inner_blocks.{i}.0``,
``layer_blocks.{i}.0``: torchvision wraps each conv in a one-element ``Sequential``), so a torchvision
state dict loads into it unchanged. ``BackboneWithFPN`` puts a ResNet body (``backbone.py``) and the FPN
together; ``backbone.resnet_fpn_backbone`` builds it from a config.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn


class LastLevelMaxPool(nn.Module):
    """The extra "pool" level: P6 = max_pool2d(P5, kernel_size=1, stride=2).

    A 1x1 max-pool with stride 2 simply keeps every second pixel of P5: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)).
    """

    name = "pool"

    def forward(self, results: List[Tensor], x: List[Tensor], names: List[str]) -> Tuple[List[Tensor], List[str]]:
        """results: the FPN outputs P_i, finest first; x: the FPN inputs C_i (unused here, but other
        extra blocks such as RetinaNet's P6/P7 need them); names: the keys. Returns both with "pool" appended."""
        return results + [F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)], names + [self.name]


class FeaturePyramidNetwork(nn.Module):
    """Lateral 1x1 convs + top-down pathway + 3x3 output convs (+ an optional extra level).

    Args:
        in_channels_list: channels of each input feature map, finest (highest resolution) first,
            e.g. ``[256, 512, 1024, 2048]`` for ResNet-50's C2..C5.
        out_channels: channels of every output level (256 in the paper).
        extra_blocks: a module ``(results, inputs, names) -> (results, names)`` that appends extra levels
            after the top-down pass; default ``LastLevelMaxPool()`` (the "pool" level); ``None``: no extra level.

    Input:  OrderedDict name -> (N, C_i, H_i, W_i), finest first (the ResNet body's output).
    Output: OrderedDict with the same names plus "pool", each (N, out_channels, H_i, W_i).
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: Optional[nn.Module] = LastLevelMaxPool(),  # stateless, so one shared default is fine
    ):
        super().__init__()
        if len(in_channels_list) == 0 or any(c <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be non-empty positive channel counts, got {list(in_channels_list)}")
        self.inner_blocks = nn.ModuleList()  # lateral 1x1 convs
        self.layer_blocks = nn.ModuleList()  # 3x3 output convs
        for in_channels in in_channels_list:
            # The one-element Sequential only exists so that the names match torchvision's ("inner_blocks.0.0").
            self.inner_blocks.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1)))
            self.layer_blocks.append(nn.Sequential(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)))

        # The FPN paper's init as torchvision does it: kaiming-uniform with a=1 (i.e. gain 1), zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

        self.extra_blocks = extra_blocks
        self.out_channels = out_channels

    def forward(self, x: "OrderedDict[str, Tensor]") -> "OrderedDict[str, Tensor]":
        names = list(x.keys())
        feats = list(x.values())
        if len(feats) != len(self.inner_blocks):
            raise ValueError(f"FPN was built for {len(self.inner_blocks)} levels but got {len(feats)}: {names}")

        # Start at the coarsest level: its lateral is the top of the top-down pathway.
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        # Walk down to finer levels: upsample what we have and add the lateral of this level.
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            # size=..., not scale_factor=2: an odd-sized map (e.g. 25 -> 13 after a stride-2 conv)
            # must come back to exactly the lateral's size, 13 -> 25 would be impossible with x2.
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[i](last_inner))

        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """``body`` (a feature-extractor ResNet) followed by ``fpn``.

    x: (N, 3, H, W) -> OrderedDict '0','1','2','3','pool' of (N, out_channels, H/s, W/s), s = 4, 8, 16, 32, 64
    (rounded up at each stride-2 step for sizes that are not multiples of 32).
    """

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))
