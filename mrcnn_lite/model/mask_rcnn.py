"""Mask R-CNN assembled from its stages. (Backbone only for now; the heads arrive with issue 6.)"""
from __future__ import annotations

from torch import nn

from .. import config as _config
from .backbone import resnet_fpn_backbone


class MaskRCNN(nn.Module):
    def __init__(self, cfg: _config.MaskRCNNConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = resnet_fpn_backbone(cfg)


def build_model(cfg: _config.MaskRCNNConfig) -> MaskRCNN:
    return MaskRCNN(cfg)


def maskrcnn_resnet50_fpn(num_classes: int = 91, **kwargs) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1) architecture; ``kwargs`` are its MaskRCNN hyperparameters."""
    return build_model(_config.r50_fpn(num_classes, **kwargs))
