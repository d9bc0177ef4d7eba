"""The backbone: a ResNet (He et al., 2016) that turns an image into feature maps, plus an FPN on top.

    image (N, 3, H, W)
      stem:   conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2          (N,  w,   H/4,  W/4)
      layer1: blocks at stride 4                                    (N,  w*e, H/4,  W/4)   C2
      layer2: first block has stride 2                              (N, 2w*e, H/8,  W/8)   C3
      layer3: first block has stride 2                              (N, 4w*e, H/16, W/16)  C4
      layer4: first block has stride 2                              (N, 8w*e, H/32, W/32)  C5
    w = base_width (64 for the standard ResNets), e = block expansion (1 BasicBlock, 4 Bottleneck)

One definition gives ResNet-18/34/50/101/152: a small table of *stage specs* (how many blocks in each
stage, which stages return features) as in maskrcnn-benchmark, and a block type. Module and parameter
names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``), so
torchvision's ResNet and Mask R-CNN state dicts load into these modules unchanged.

Detection backbones use ``FrozenBatchNorm2d`` (``frozen_bn.py``): detection trains with 1-2 large images per
GPU, and the statistics of such a tiny batch are noise, so the ImageNet statistics are kept fixed instead.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..config import MaskRCNNConfig
from .fpn import BackboneWithFPN, FeaturePyramidNetwork, LastLevelMaxPool
from .frozen_bn import FrozenBatchNorm2d

NormLayer = Callable[[int], nn.Module]


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (the norm layer after it has one): H_out = floor((H - 1) / stride) + 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias: mixes channels at each pixel (with stride: keeps every stride-th pixel)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def projection_shortcut(
    in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
) -> Optional[nn.Sequential]:
    """A block's projection shortcut: ``None`` (identity) when the block keeps the shape, else
    1x1 conv (stride) + norm, ``(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)``."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), norm_layer(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (ResNet-18/34).

        out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))

    x: (N, in_channels, H, W) -> (N, planes, H/stride, W/stride). ``expansion`` = 1: output channels = planes.
    The shortcut is the identity unless the shape changes; then ``downsample`` = 1x1 conv (stride) + norm.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, out_channels)
        self.bn2 = norm_layer(out_channels)
        self.downsample = projection_shortcut(in_channels, out_channels, stride, norm_layer)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand x4) and a shortcut (ResNet-50/101/152).

        out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))

    x: (N, in_channels, H, W) -> (N, 4 * planes, H/stride, W/stride).
    The stride sits on the 3x3 conv (ResNet "v1.5", torchvision's choice), not on the first 1x1 conv as in
    the original paper and in maskrcnn-benchmark's ``stride_in_1x1=True``: a 1x1 conv with stride 2 throws
    away three quarters of its input pixels, a 3x3 conv with stride 2 still looks at all of them.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_channels, out_channels, stride, norm_layer)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


# ----------------------------------------------------------------------------------------------------------
# Stage specs: the whole difference between ResNet-18, -34, -50, -101 and -152
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """One ResNet stage: ``layer{index}``, made of ``block_count`` blocks; ``return_features`` says
    whether its output is handed on (to the FPN). Stage 1 keeps the stem's stride 4, stages 2-4 halve it."""

    index: int
    block_count: int
    return_features: bool


# depth -> (block type, blocks in layer1..layer4)
RESNET_LAYOUTS: Dict[int, Tuple[Block, Tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def stage_specs(depth: int, returned_layers: Sequence[int] = (1, 2, 3, 4)) -> Tuple[StageSpec, ...]:
    """The stages of a ResNet-``depth``, up to the last returned one (later stages would be dead weight).

    ``stage_specs(50)`` is maskrcnn-benchmark's ``ResNet50FPNStagesTo5``: stages 1-4 with 3, 4, 6, 3 blocks,
    all returned. ``stage_specs(50, (3,))`` is its ``ResNet50StagesTo4`` ("C4"): stages 1-3, only stage 3 returned.
    """
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
    returned = sorted(set(returned_layers))
    if not returned or returned[0] < 1 or returned[-1] > 4:
        raise ValueError(f"returned_layers must be a non-empty subset of (1, 2, 3, 4), got {tuple(returned_layers)}")
    counts = RESNET_LAYOUTS[depth][1]
    return tuple(StageSpec(i, counts[i - 1], i in returned) for i in range(1, returned[-1] + 1))


class ResNet(nn.Module):
    """A ResNet from a block type and stage specs.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        specs: one ``StageSpec`` per stage, stage 1 first (see ``stage_specs``).
        base_width: channels of the stem; stage i has ``base_width * 2**(i-1)`` planes (64 standard).
        num_classes: ``None`` -> a feature extractor: ``forward`` returns an OrderedDict of the stages with
            ``return_features``, keys ``'0','1',...`` (no ``avgpool``/``fc``). An int -> an image classifier
            with global average pooling and ``fc``, returning logits (N, num_classes), like torchvision.
        norm_layer: ``channels -> module``; ``nn.BatchNorm2d`` (torchvision's classifier default) or
            ``FrozenBatchNorm2d`` / ``partial(FrozenBatchNorm2d, eps=0.0)`` for detection.

    Input: (N, 3, H, W). Stage i's output has stride 2**(i+1) (4, 8, 16, 32) and ``stage_channels[i-1]`` channels.
    """

    def __init__(
        self,
        block: Block,
        specs: Sequence[StageSpec],
        base_width: int = 64,
        num_classes: Optional[int] = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        if num_classes is None and not any(s.return_features for s in specs):
            raise ValueError("a feature-extractor ResNet (num_classes=None) needs at least one stage with return_features")
        # The stem: a big 7x7/2 conv sees a 7x7 patch of raw pixels, the 3x3/2 max-pool brings it to stride 4
        # cheaply so that the expensive blocks run on a 4x smaller map.
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = base_width
        self.stage_channels: List[int] = []
        self.return_layers: Dict[str, str] = OrderedDict()  # "layer2" -> "1": module name -> output key
        for spec in specs:
            planes = base_width * 2 ** (spec.index - 1)
            stride = 1 if spec.index == 1 else 2  # the first block of stages 2-4 halves the resolution
            blocks = []
            for b in range(spec.block_count):
                blocks.append(block(in_channels, planes, stride if b == 0 else 1, norm_layer))
                in_channels = planes * block.expansion
            self.add_module(f"layer{spec.index}", nn.Sequential(*blocks))
            self.stage_channels.append(in_channels)
            if spec.return_features:
                self.return_layers[f"layer{spec.index}"] = str(len(self.return_layers))
        self.stage_names = [f"layer{s.index}" for s in specs]

        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(in_channels, num_classes)

        # torchvision's init: He (kaiming) normal for convs, fan_out; norm layers start as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def out_channels_list(self) -> List[int]:
        """Channels of the returned feature maps, in output order (what the FPN's ``in_channels_list`` needs)."""
        return [c for name, c in zip(self.stage_names, self.stage_channels) if name in self.return_layers]

    def forward(self, x: Tensor):
        """x: (N, 3, H, W) -> OrderedDict key -> (N, C_i, H_i, W_i), or logits (N, num_classes) for a classifier."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features: "OrderedDict[str, Tensor]" = OrderedDict()
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.return_layers:
                features[self.return_layers[name]] = x
        if self.num_classes is None:
            return features
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(
    depth: int,
    num_classes: Optional[int] = None,
    base_width: int = 64,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> ResNet:
    """ResNet-``depth`` (18, 34, 50, 101, 152).

    ``resnet(50, num_classes=1000)`` has torchvision's ``resnet50()`` architecture and state-dict keys
    (25,557,032 parameters). ``resnet(50)`` is the detection body: stages only, no avgpool/fc.
    """
    if num_classes is None:
        specs = stage_specs(depth, returned_layers)
    else:  # a classifier runs all four stages and returns only the logits
        specs = tuple(StageSpec(s.index, s.block_count, False) for s in stage_specs(depth))
    block = RESNET_LAYOUTS[depth][0]
    return ResNet(block, specs, base_width=base_width, num_classes=num_classes, norm_layer=norm_layer)


def freeze_layers(model: nn.Module, trainable_layers: int) -> List[str]:
    """Freeze all but the last ``trainable_layers`` of (layer4, layer3, layer2, layer1, conv1), as torchvision.

    0 = the whole ResNet is frozen, 3 = layer2-4 train (torchvision's default with pretrained weights),
    5 = everything trains. The early layers detect edges and colours, which ImageNet already taught them
    well; freezing them saves memory and time and avoids overfitting a small detection dataset.
    Sets ``requires_grad=False`` on the frozen parameters and returns the names of the trainable ones.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")  # only matters with a trainable norm layer: FrozenBatchNorm2d has no parameters
    trainable = []
    for name, p in model.named_parameters():
        train = any(name.startswith(layer) for layer in layers_to_train)
        p.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable


# ----------------------------------------------------------------------------------------------------------
# ResNet + FPN
# ----------------------------------------------------------------------------------------------------------
def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of 4 channels, at most 32 groups (32 is Wu & He's default for wide layers)."""
    return nn.GroupNorm(max(1, min(32, num_channels // 4)), num_channels)


def norm_layer_from_config(cfg: MaskRCNNConfig, frozen_bn: Type[nn.Module] = FrozenBatchNorm2d) -> NormLayer:
    """``cfg.norm`` -> a ``channels -> module`` factory: "frozen_bn", "bn" or "gn".

    Training from scratch needs a norm layer that *learns*: ``FrozenBatchNorm2d`` starts (and stays)
    the identity, so a from-scratch ResNet without it trains slowly. Fine-tuning pretrained weights
    keeps the stored statistics fixed ("frozen_bn").
    """
    if cfg.norm == "frozen_bn":
        return partial(frozen_bn, eps=cfg.frozen_bn_eps)
    if cfg.norm == "bn":
        return nn.BatchNorm2d
    if cfg.norm == "gn":
        return group_norm
    raise ValueError(f"norm must be 'frozen_bn', 'bn' or 'gn', got {cfg.norm!r}")


def resnet_fpn_backbone(cfg: MaskRCNNConfig, frozen_bn: Type[nn.Module] = FrozenBatchNorm2d) -> BackboneWithFPN:
    """The Mask R-CNN backbone from the config: ResNet-``cfg.depth`` at ``cfg.base_width`` with
    the norm layer ``cfg.norm`` (``FrozenBatchNorm2d(eps=cfg.frozen_bn_eps)`` by default), the first ``5 - cfg.trainable_layers`` layers frozen,
    stages ``cfg.returned_layers`` feeding an FPN with ``cfg.fpn_out_channels`` channels and a "pool" level.

    With ``config.r50_fpn()`` its state-dict keys are exactly those of torchvision's
    ``maskrcnn_resnet50_fpn(...).backbone``. ``frozen_bn``: the class built for ``norm="frozen_bn"``
    (the model's fast floor passes ``mrcnn_lite.fast.CachedFrozenBatchNorm2d``).
    """
    norm_layer = norm_layer_from_config(cfg, frozen_bn)
    body = resnet(cfg.depth, None, cfg.base_width, cfg.returned_layers, norm_layer)
    freeze_layers(body, cfg.trainable_layers)
    fpn = FeaturePyramidNetwork(body.out_channels_list, cfg.fpn_out_channels, extra_blocks=LastLevelMaxPool())
    return BackboneWithFPN(body, fpn)
