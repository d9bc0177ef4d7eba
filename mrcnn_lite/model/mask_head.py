"""The mask branch: a small FCN on 14x14 RoI features that predicts one 28x28 mask per class.

Pieces, in the order they are used (names as in torchvision and the paper):

``MaskRCNNHeads``        four 3x3 conv + ReLU on the ``(P, 256, 14, 14)`` RoIAlign features
``MaskRCNNPredictor``    2x2 transposed conv (stride 2) + ReLU -> ``(P, 256, 28, 28)``, then a 1x1 conv to
                         ``num_classes`` mask logits ``(P, C, 28, 28)``
``project_masks_on_boxes`` training targets: the GT mask cropped with the *positive proposal* (not the GT
                         box) and resampled to 28x28 with RoIAlign, so that target pixel (u, v) sits
                         exactly where prediction pixel (u, v) looks in the image
``maskrcnn_loss``        per-pixel binary cross-entropy on the channel of the GT class only
                         (a sigmoid per class: classes do not compete for a pixel; the box head decides
                         the class)
``maskrcnn_inference``   at test time, the predicted class's channel through a sigmoid -> ``(m, 1, 28, 28)``

The last step, pasting the 28x28 probabilities into the full-size image, is ``transform.paste_masks_in_image``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


class MaskRCNNHeads(nn.Sequential):
    """``len(layers)`` blocks of 3x3 conv + ReLU: ``(P, in_channels, 14, 14)`` -> ``(P, layers[-1], 14, 14)``.

    Each block is ``Sequential(conv, relu)``, so the parameter names are ``0.0.weight``, ``1.0.weight``, ...
    exactly as torchvision's ``MaskRCNNHeads`` (built from ``Conv2dNormActivation`` without a norm layer).
    """

    def __init__(self, in_channels: int, layers: Sequence[int], dilation: int = 1):
        blocks = []
        next_feature = in_channels
        for layer_features in layers:
            conv = nn.Conv2d(next_feature, layer_features, kernel_size=3, stride=1, padding=dilation, dilation=dilation)
            blocks.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
            next_feature = layer_features
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """Upsample x2 and predict one mask per class: ``(P, in_channels, 14, 14)`` -> logits ``(P, num_classes, 28, 28)``."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, kernel_size=2, stride=2, padding=0)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, kernel_size=1, stride=1, padding=0)),
                ]
            )
        )
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


# ----------------------------------------------------------------------------------------------------
# training: targets and loss
# ----------------------------------------------------------------------------------------------------

def project_masks_on_boxes(
    gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, M: int, roi_align: Callable = ops.roi_align
) -> Tensor:
    """Crop each matched GT mask with its proposal and resample it to ``M x M``.

    Args:
        gt_masks:     (n, H, W) the image's GT instance masks (0/1)
        boxes:        (P, 4) positive proposals, xyxy in the same pixels as the masks
        matched_idxs: (P,) which GT each proposal was matched to
        M:            output size (28)
    Returns:
        (P, M, M) float targets in [0, 1] (bilinear sampling makes the edges soft)

    Trick: treat the n masks as a batch of n one-channel images; an RoI ``(k, x1, y1, x2, y2)`` then
    samples mask k. RoIAlign with ``spatial_scale=1`` and adaptive sampling, as torchvision.
    """
    matched_idxs = matched_idxs.to(boxes)
    rois = torch.cat([matched_idxs[:, None], boxes], dim=1)  # (P, 5): batch index, box
    gt_masks = gt_masks[:, None].to(rois)                     # (n, 1, H, W)
    return roi_align(gt_masks, rois, (M, M), 1.0)[:, 0]


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: List[Tensor],
    gt_masks: List[Tensor],
    gt_labels: List[Tensor],
    mask_matched_idxs: List[Tensor],
    roi_align: Callable = ops.roi_align,
) -> Tensor:
    """Mean per-pixel BCE between the GT class's mask logits and the projected GT masks.

    Args:
        mask_logits:       (P, C, M, M) for the positive proposals of all images, concatenated
        proposals:         list of (P_i, 4) positive proposals per image
        gt_masks:          list of (n_i, H, W) GT masks per image
        gt_labels:         list of (n_i,) GT classes per image
        mask_matched_idxs: list of (P_i,) the GT each positive proposal was matched to
    Returns:
        scalar loss; exactly 0 (still attached to the graph) when there are no positives.
    """
    M = mask_logits.shape[-1]
    labels = [gt_label[idxs] for gt_label, idxs in zip(gt_labels, mask_matched_idxs)]
    mask_targets = [
        project_masks_on_boxes(m, p, i, M, roi_align) if len(p) > 0 else mask_logits.new_zeros((0, M, M))
        for m, p, i in zip(gt_masks, proposals, mask_matched_idxs)
    ]
    labels = torch.cat(labels, dim=0)
    mask_targets = torch.cat(mask_targets, dim=0)

    if mask_targets.numel() == 0:  # no positive proposal in the batch: a zero that backward accepts
        return mask_logits.sum() * 0

    # Per-class sigmoid: only the GT class's channel gets a loss; the other channels are left alone.
    logits_of_gt_class = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits_of_gt_class, mask_targets)


# ----------------------------------------------------------------------------------------------------
# inference: the predicted class's channel (transform.paste_masks_in_image puts it in the image)
# ----------------------------------------------------------------------------------------------------

def maskrcnn_inference(mask_logits: Tensor, labels: List[Tensor]) -> List[Tensor]:
    """Probabilities of the predicted class: ``mask_logits (m, C, M, M)``, labels list of (m_i,) -> list of (m_i, 1, M, M)."""
    mask_prob = mask_logits.sigmoid()
    boxes_per_image = [len(lab) for lab in labels]
    labels = torch.cat(labels)
    index = torch.arange(mask_logits.shape[0], device=labels.device)
    mask_prob = mask_prob[index, labels][:, None]
    return list(mask_prob.split(boxes_per_image, dim=0))
