"""The parts the paper's ablations (Mask R-CNN, He et al. 2017, Table 2) swap into the course model.

Each variant changes one part of a built ``MaskRCNN`` and leaves every other part the paper's:

* mask loss (Table 2b): ``SoftmaxMaskRoIHeads`` (a per-pixel softmax over the classes, the "multinomial"
  loss of FCNs) and ``ClassAgnosticMaskRoIHeads`` (one mask for all classes, paper section 4.2);
* RoI feature extraction (Table 2c, 2d): ``roi_pool_kernel`` (Fast R-CNN's RoIPool: quantised box,
  quantised bins, max) and ``roi_warp_kernel`` (MNC's RoIWarp: quantised box, bilinear bins), both with
  RoIAlign's call signature so that ``MultiScaleRoIAlign`` runs them unchanged; ``coarse_pooler`` pools
  every RoI from one stride-16 level instead of the FPN level that suits its size;
* mask head (Table 2e): ``MLPMaskHead``, fully connected layers in place of the FCN;
* mask targets cropped with the GT box instead of the proposal: ``GTBoxMaskTargetsRoIHeads``;
* sampling RoIs from the RPN's proposals only, without the GT boxes added: ``NoGTProposalsRoIHeads``.

A ``RoIHeads`` subclass overrides one of the methods ``RoIHeads.forward`` calls through ``self``
(``mask_loss``, ``mask_probabilities`` or ``add_gt_proposals``) and is put in place with ``use_heads``: the
model's modules and weights stay.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..model.mask_head import maskrcnn_inference, maskrcnn_loss, project_masks_on_boxes
from ..model.roi_heads import RoIHeads
from ..ops.poolers import MultiScaleRoIAlign
from ..ops.roi_ops import _round_half_away


def use_heads(model: nn.Module, heads_class: type) -> nn.Module:
    """Make ``model.roi_heads`` a ``heads_class`` (a ``RoIHeads`` subclass): same modules, same weights,
    the subclass's methods. Returns the model."""
    if not issubclass(heads_class, RoIHeads):
        raise TypeError(f"use_heads: {heads_class.__name__} is not a RoIHeads subclass")
    model.roi_heads.__class__ = heads_class
    return model


# ------------------------------------------------------------------------------------- (b) mask loss

class SoftmaxMaskRoIHeads(RoIHeads):
    """Table 2b's multinomial loss: the K mask channels compete for each pixel through a softmax.

    Each target pixel is "the GT class" with the projected mask's value t and "background" (channel 0)
    with 1 - t; the loss is the cross-entropy of the per-pixel softmax against that. At test time the
    mask is the predicted class's softmax probability.
    """

    def mask_loss(self, mask_logits: Tensor, mask_proposals: List[Tensor], targets: List[Dict[str, Tensor]],
                  pos_matched_idxs: List[Tensor]) -> Tensor:
        M = mask_logits.shape[-1]
        labels = torch.cat([t["labels"][i] for t, i in zip(targets, pos_matched_idxs)])
        if labels.numel() == 0:
            return mask_logits.sum() * 0
        mask_targets = torch.cat([project_masks_on_boxes(t["masks"], p, i, M, self.roi_align)
                                  for t, p, i in zip(targets, mask_proposals, pos_matched_idxs) if len(p)])
        soft = torch.zeros_like(mask_logits)                      # (P, K, M, M) target distribution
        rows = torch.arange(labels.numel(), device=labels.device)
        soft[rows, labels] = mask_targets
        soft[:, 0] += 1 - mask_targets
        return F.cross_entropy(mask_logits, soft)

    def mask_probabilities(self, mask_logits: Tensor, labels: List[Tensor]) -> List[Tensor]:
        prob = mask_logits.softmax(dim=1)
        index = torch.arange(prob.shape[0], device=prob.device)
        picked = prob[index, torch.cat(labels)][:, None] if prob.shape[0] else prob[:, :1]
        return list(picked.split([len(lab) for lab in labels]))


class ClassAgnosticMaskRoIHeads(RoIHeads):
    """One mask per RoI whatever its class (the mask predictor has one output channel): the BCE of
    ``maskrcnn_loss`` on channel 0. Build with ``class_agnostic_masks(model)``."""

    def mask_loss(self, mask_logits, mask_proposals, targets, pos_matched_idxs):
        return maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                             [torch.zeros_like(t["labels"]) for t in targets], pos_matched_idxs, self.roi_align)

    def mask_probabilities(self, mask_logits, labels):
        return maskrcnn_inference(mask_logits, [torch.zeros_like(lab) for lab in labels])


def class_agnostic_masks(model: nn.Module) -> nn.Module:
    """The mask predictor's last 1x1 conv replaced by one with a single output channel."""
    old = model.roi_heads.mask_predictor.mask_fcn_logits
    new = nn.Conv2d(old.in_channels, 1, kernel_size=1)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(new.bias)
    model.roi_heads.mask_predictor.mask_fcn_logits = new
    return use_heads(model, ClassAgnosticMaskRoIHeads)


# --------------------------------------------------------------------- (c), (d) RoI feature extraction

def _quantised(rois: Tensor, spatial_scale: float) -> Tensor:
    """``(K, 5)`` RoIs with the corners rounded to whole feature cells (RoIPool's first quantisation)."""
    q = rois.clone()
    q[:, 1:] = _round_half_away(rois[:, 1:] * spatial_scale) / spatial_scale
    return q


def roi_pool_kernel(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0,
                    sampling_ratio: int = -1) -> Tensor:
    """Fast R-CNN's RoIPool (``ops.roi_pool``: quantised box, quantised bins, max) with RoIAlign's
    signature; ``sampling_ratio`` has no meaning for it."""
    return ops.roi_pool(input, rois, output_size, spatial_scale)


def make_roi_warp_kernel(roi_align):
    """MNC's RoIWarp: the box quantised to whole cells as RoIPool does, then bilinear sampling and
    averaging in each bin as RoIAlign does (``roi_align``: the kernel to call, e.g. the model's)."""

    def roi_warp_kernel(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0,
                        sampling_ratio: int = -1) -> Tensor:
        return roi_align(input, _quantised(rois, spatial_scale), output_size=output_size,
                         spatial_scale=spatial_scale, sampling_ratio=sampling_ratio)

    return roi_warp_kernel


def set_poolers(model: nn.Module, kernel=None, levels=None) -> nn.Module:
    """Both branches' poolers rebuilt with ``kernel`` (RoIAlign's signature; None: the model's RoIAlign)
    and ``levels`` (FPN map names; None: the same levels as now). Returns the model."""
    heads = model.roi_heads
    for name in ("box_roi_pool", "mask_roi_pool"):
        old: MultiScaleRoIAlign = getattr(heads, name)
        setattr(heads, name, MultiScaleRoIAlign(
            levels if levels is not None else old.featmap_names, old.output_size, old.sampling_ratio,
            canonical_scale=old.canonical_scale, canonical_level=old.canonical_level,
            roi_align=kernel if kernel is not None else old.roi_align))
    return model


# The "coarse features" of Table 2d: every RoI pooled from the stride-16 level P4 (FPN map "2").
COARSE_LEVELS = ["2"]


# ------------------------------------------------------------------------------------ (e) mask head

class MLPMaskHead(nn.Module):
    """Table 2e's MLP mask head: ``(P, C, 14, 14)`` -> flatten -> fc -> ReLU -> fc -> ReLU -> fc ->
    ``(P, num_classes, 28, 28)`` logits. Every output pixel sees every input cell, but the spatial layout
    is no longer built into the layers: it must be learned. Used as ``mask_head`` with an identity
    ``mask_predictor``."""

    def __init__(self, in_channels: int, resolution: int, hidden: int, num_classes: int, out_size: int = 28):
        super().__init__()
        self.num_classes, self.out_size = num_classes, out_size
        self.fc1 = nn.Linear(in_channels * resolution ** 2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mask_fc_logits = nn.Linear(hidden, num_classes * out_size ** 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(start_dim=1)))
        x = F.relu(self.fc2(x))
        return self.mask_fc_logits(x).view(-1, self.num_classes, self.out_size, self.out_size)


def mlp_mask_head(model: nn.Module, hidden: int) -> nn.Module:
    """The FCN mask head and predictor replaced by an ``MLPMaskHead`` with ``hidden`` units."""
    heads = model.roi_heads
    C = model.backbone.out_channels
    R = heads.mask_roi_pool.output_size[0]
    heads.mask_head = MLPMaskHead(C, R, hidden, model.num_classes)
    heads.mask_predictor = nn.Identity()
    return model


# ------------------------------------------------------------------------------ mask targets, sampling

class GTBoxMaskTargetsRoIHeads(RoIHeads):
    """Mask targets cropped with each positive RoI's *GT box* instead of the RoI itself: the target then
    no longer lines up with what the mask head saw (the paper crops with the RoI)."""

    def mask_loss(self, mask_logits, mask_proposals, targets, pos_matched_idxs):
        gt_boxes = [t["boxes"][i].to(p) for t, p, i in zip(targets, mask_proposals, pos_matched_idxs)]
        return super().mask_loss(mask_logits, gt_boxes, targets, pos_matched_idxs)


class NoGTProposalsRoIHeads(RoIHeads):
    """Training RoIs sampled from the RPN's proposals alone: the GT boxes are *not* added to them, so
    early in training, while the RPN is still poor, the second stage sees few or no positives."""

    def add_gt_proposals(self, proposals: List[Tensor], gt_boxes: List[Tensor]) -> List[Tensor]:
        return list(proposals)
