"""The one place that builds a Mask R-CNN from a config: it picks the kernels and hands every part its pieces.

    model = ml.build_model(ml.config.tiny(num_classes=4))   # the course's CPU model
    model = ml.build_model(ml.config.r50_fpn(91))           # torchvision's COCO-v1 layout

What comes from where:

* ``cfg.kernels`` picks the floor (``kernels_for``): ``"reference"`` (the plain code of ``ops`` and
  ``model``) or ``"fast"`` (``mrcnn_lite.fast``). Each part receives its pieces of that set as it is
  constructed -- the transform and anchor generator classes, the frozen batch norm class, the NMS, the
  RoIAlign, the sampler class, the mask paster -- and the model keeps the set's log for ``kernels_used()``.
* ``cfg.mask_batch_size_per_image``, a training shortcut of the course recipe (not the paper), becomes the
  RoI heads' ``mask_roi_subsample``: ``RandomSubset``.

Imports go one way: this module imports ``model``, ``ops`` and ``fast``; none of them imports it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import config as _config
from .fast.kernels import fast_kernels
from .model.backbone import resnet_fpn_backbone
from .model.box_head import FastRCNNPredictor, TwoMLPHead
from .model.kernels import Kernels, reference_kernels
from .model.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from .model.mask_rcnn import MaskRCNN
from .model.roi_heads import RoIHeads
from .model.rpn import build_rpn
from .ops import MultiScaleRoIAlign

__all__ = ["build_model", "kernels_for", "RandomSubset"]


def kernels_for(name: str) -> Kernels:
    """A fresh set of kernels (with its own log) for ``cfg.kernels``: ``"reference"`` or ``"fast"``."""
    if name == "reference":
        return reference_kernels()
    if name == "fast":
        return fast_kernels()
    raise ValueError(f"kernels must be 'reference' or 'fast', got {name!r}")


class RandomSubset:
    """At most ``max_per_image`` of an image's positive RoIs, drawn at random, for the mask loss.

    An image with few objects has many positive RoIs on the same object, so fewer of them cost less and
    teach the mask head nearly as much. ``subset(pos)``: ``pos (K,)`` indices -> ``(min(K, max), )``.
    """

    def __init__(self, max_per_image: int):
        if isinstance(max_per_image, bool) or not isinstance(max_per_image, int) or max_per_image < 1:
            raise ValueError(f"RandomSubset: max_per_image must be an integer >= 1, got {max_per_image!r}")
        self.max_per_image = max_per_image

    def __call__(self, pos: Tensor) -> Tensor:
        if pos.numel() <= self.max_per_image:
            return pos
        return pos[torch.randperm(pos.numel(), device=pos.device)[: self.max_per_image]]

    def __repr__(self) -> str:
        return f"RandomSubset(max_per_image={self.max_per_image})"


def build_roi_heads(cfg: _config.MaskRCNNConfig, in_channels: int, kernels: Kernels) -> RoIHeads:
    """The box and mask branches of a ``MaskRCNNConfig``; ``in_channels``: the FPN's output channels."""
    levels = ["0", "1", "2", "3"]  # the FPN levels the RoI heads pool from (not 'pool')
    box_roi_pool = MultiScaleRoIAlign(levels, cfg.box_roi_output_size, cfg.box_roi_sampling_ratio,
                                      roi_align=kernels.roi_align)
    resolution = box_roi_pool.output_size[0]
    box_head = TwoMLPHead(in_channels * resolution ** 2, cfg.box_representation_size)
    box_predictor = FastRCNNPredictor(cfg.box_representation_size, cfg.num_classes)

    mask_roi_pool = MultiScaleRoIAlign(levels, cfg.mask_roi_output_size, cfg.mask_roi_sampling_ratio,
                                       roi_align=kernels.roi_align)
    mask_head = MaskRCNNHeads(in_channels, cfg.mask_layers, cfg.mask_dilation)
    dim_reduced = cfg.mask_dim_reduced if cfg.mask_dim_reduced is not None else cfg.mask_layers[-1]
    mask_predictor = MaskRCNNPredictor(cfg.mask_layers[-1], dim_reduced, cfg.num_classes)

    cap = cfg.mask_batch_size_per_image
    return RoIHeads(
        box_roi_pool, box_head, box_predictor,
        cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh,
        cfg.box_batch_size_per_image, cfg.box_positive_fraction, cfg.bbox_reg_weights,
        cfg.box_score_thresh, cfg.box_nms_thresh, cfg.box_detections_per_img,
        mask_roi_pool, mask_head, mask_predictor,
        batched_nms=kernels.batched_nms, roi_align=kernels.roi_align, sampler=kernels.sampler,
        mask_roi_subsample=RandomSubset(cap) if cap is not None else None,
    )


def build_model(cfg: _config.MaskRCNNConfig, kernels: Optional[Kernels] = None) -> MaskRCNN:
    """A Mask R-CNN from a config, on the floor ``cfg.kernels`` picks (or with the given ``kernels`` set).

    ``cfg.channels_last`` stores the backbone's conv weights channels-last (NHWC), which the model then
    feeds NHWC images: the conv kernels (oneDNN on CPU, cuDNN tensor cores on GPU) skip layout conversions.
    """
    k = kernels if kernels is not None else kernels_for(cfg.kernels)
    transform = k.transform(cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std, cfg.size_divisible,
                            paste_masks=k.paste_masks_in_image)
    backbone = resnet_fpn_backbone(cfg, frozen_bn=k.frozen_bn)
    if cfg.channels_last:
        backbone.to(memory_format=torch.channels_last)
    rpn = build_rpn(cfg, backbone.out_channels, nms_fn=k.batched_nms, sampler=k.sampler,
                    anchor_generator=k.anchor_generator)
    roi_heads = build_roi_heads(cfg, backbone.out_channels, k)
    return MaskRCNN(transform, backbone, rpn, roi_heads, cfg, kernels=k)
