"""The box head of Fast R-CNN: classify each proposal and refine its box, one set of deltas per class.

Pieces, in the order they are used (names as in torchvision and the paper):

Training
    ``add_gt_proposals``            the GT boxes join the proposals (so every GT has at least one
                                    perfect positive, even early in training when the RPN is poor)
    ``assign_targets_to_proposals`` IoU matching: >= 0.5 with some GT -> that GT's class, < 0.5 ->
                                    background (0); no "low-quality" matches here (unlike the RPN)
    ``subsample``                   512 RoIs per image, at most 25 % positive
    ``sampled_rois_and_targets``    the sampled RoIs and their regression targets (box coder, 10/10/5/5)
    ``sample_rois``                 matching + sampling + targets on a given pool of boxes
    ``select_training_samples``     the GT boxes added to the proposals, then ``sample_rois``
    ``fastrcnn_loss``               cross-entropy over classes + smooth-L1 (beta 1/9) on the deltas of
                                    the GT class, positives only, divided by the number of sampled RoIs
Model
    ``TwoMLPHead``                  flatten the 7x7 RoIAlign features, fc6 + ReLU, fc7 + ReLU
    ``FastRCNNPredictor``           ``cls_score`` (num_classes logits) and ``bbox_pred`` (4 deltas per class)
Inference
    ``postprocess_detections``      softmax, decode every class's box, clip, drop background, score
                                    threshold, drop tiny boxes, NMS per class, keep the best per image
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import BoxCoder


class TwoMLPHead(nn.Module):
    """``(R, C, 7, 7)`` pooled features -> ``(R, representation_size)``: flatten, fc6 + ReLU, fc7 + ReLU."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        x = F.relu(self.fc6(x))
        x = F.relu(self.fc7(x))
        return x


class FastRCNNPredictor(nn.Module):
    """``(R, in_channels)`` -> class logits ``(R, num_classes)`` and class-specific deltas ``(R, num_classes * 4)``.

    Deltas come in groups of four per class, ``[dx, dy, dw, dh]`` for class 0 (unused), class 1, ...
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


# ----------------------------------------------------------------------------------------------------
# training: matching, sampling, targets, loss
# ----------------------------------------------------------------------------------------------------

def add_gt_proposals(proposals: List[Tensor], gt_boxes: List[Tensor]) -> List[Tensor]:
    """Append each image's ``gt_boxes (n_i, 4)`` to its ``proposals (P_i, 4)`` -> list of ``(P_i + n_i, 4)``."""
    return [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]


def assign_targets_to_proposals(
    proposals: List[Tensor], gt_boxes: List[Tensor], gt_labels: List[Tensor], proposal_matcher
) -> Tuple[List[Tensor], List[Tensor]]:
    """Match every proposal to a GT box and give it that GT's class, background (0) or ignore (-1).

    Args:
        proposals: list of (P_i, 4); gt_boxes: list of (n_i, 4); gt_labels: list of (n_i,) int64
        proposal_matcher: a ``Matcher``; returns, per proposal, the GT index or
            ``BELOW_LOW_THRESHOLD`` (-1) / ``BETWEEN_THRESHOLDS`` (-2)
    Returns:
        matched_idxs: list of (P_i,) GT index per proposal (clamped to >= 0: only meaningful for positives)
        labels:       list of (P_i,) int64 class per proposal; 0 background, -1 ignored
    """
    matched_idxs, labels = [], []
    for proposals_in_image, gt_boxes_in_image, gt_labels_in_image in zip(proposals, gt_boxes, gt_labels):
        P = proposals_in_image.shape[0]
        device = proposals_in_image.device
        if gt_boxes_in_image.numel() == 0:  # an image without objects: everything is background
            clamped = torch.zeros((P,), dtype=torch.int64, device=device)
            labels_in_image = torch.zeros((P,), dtype=torch.int64, device=device)
        else:
            match_quality_matrix = ops.box_iou(gt_boxes_in_image, proposals_in_image)  # (n, P)
            matched = proposal_matcher(match_quality_matrix)
            clamped = matched.clamp(min=0)
            labels_in_image = gt_labels_in_image[clamped].to(dtype=torch.int64)
            labels_in_image.masked_fill_(matched == proposal_matcher.BELOW_LOW_THRESHOLD, 0)
            labels_in_image.masked_fill_(matched == proposal_matcher.BETWEEN_THRESHOLDS, -1)
        matched_idxs.append(clamped)
        labels.append(labels_in_image)
    return matched_idxs, labels


def subsample(labels: List[Tensor], fg_bg_sampler) -> List[Tensor]:
    """Indices of the RoIs kept for the loss, per image, ascending: a ``BalancedPositiveNegativeSampler``
    draws them (the same list as torchvision's ``torch.where(pos_mask | neg_mask)[0]``)."""
    pos_inds, neg_inds = fg_bg_sampler.sample_indices(labels)
    return [torch.cat([pos, neg]).sort().values for pos, neg in zip(pos_inds, neg_inds)]


def sample_rois(
    proposals: List[Tensor],
    gt_boxes: List[Tensor],
    gt_labels: List[Tensor],
    proposal_matcher,
    fg_bg_sampler,
    box_coder: BoxCoder,
) -> Tuple[List[Tensor], List[Tensor], List[Tensor], Tuple[Tensor, ...]]:
    """Match the boxes of ``proposals`` (per image ``(P_i, 4)``) to the GT, sample them, and encode their targets.

    Returns, per image (lists of length B):
        proposals:          (S_i, 4) the sampled RoIs
        matched_idxs:       (S_i,) matched GT index
        labels:             (S_i,) int64 class, 0 = background
        regression_targets: (S_i, 4) deltas from each RoI to its matched GT box (box_coder.encode)
    """
    matched_idxs, labels = assign_targets_to_proposals(proposals, gt_boxes, gt_labels, proposal_matcher)
    sampled_inds = subsample(labels, fg_bg_sampler)
    return sampled_rois_and_targets(proposals, matched_idxs, labels, sampled_inds, gt_boxes, box_coder)


def sampled_rois_and_targets(
    proposals: List[Tensor],
    matched_idxs: List[Tensor],
    labels: List[Tensor],
    sampled_inds: List[Tensor],
    gt_boxes: List[Tensor],
    box_coder: BoxCoder,
) -> Tuple[List[Tensor], List[Tensor], List[Tensor], Tuple[Tensor, ...]]:
    """Keep the sampled RoIs of each image and encode their regression targets.

    Per image: ``proposals (P_i, 4)``, ``matched_idxs``/``labels (P_i,)`` from ``assign_targets_to_proposals``,
    ``sampled_inds (S_i,)`` from ``subsample``, ``gt_boxes (n_i, 4)``. Returns what ``sample_rois`` returns.
    """
    dtype, device = proposals[0].dtype, proposals[0].device
    proposals, matched_idxs, labels = list(proposals), list(matched_idxs), list(labels)
    matched_gt_boxes = []
    for i, inds in enumerate(sampled_inds):
        proposals[i] = proposals[i][inds]
        labels[i] = labels[i][inds]
        matched_idxs[i] = matched_idxs[i][inds]
        g = gt_boxes[i]
        if g.numel() == 0:  # background image: any box will do, the loss ignores negatives' deltas
            g = torch.zeros((1, 4), dtype=dtype, device=device)
        matched_gt_boxes.append(g[matched_idxs[i]])
    regression_targets = box_coder.encode(matched_gt_boxes, proposals)
    return proposals, matched_idxs, labels, regression_targets


def select_training_samples(
    proposals: List[Tensor],
    gt_boxes: List[Tensor],
    gt_labels: List[Tensor],
    proposal_matcher,
    fg_bg_sampler,
    box_coder: BoxCoder,
) -> Tuple[List[Tensor], List[Tensor], List[Tensor], Tuple[Tensor, ...]]:
    """The RoIs the box head trains on, and their targets: ``sample_rois`` on the proposals with the GT
    boxes added to them (``add_gt_proposals``). Returns what ``sample_rois`` returns."""
    gt_boxes = [g.to(proposals[0].dtype) for g in gt_boxes]
    return sample_rois(add_gt_proposals(proposals, gt_boxes), gt_boxes, gt_labels,
                       proposal_matcher, fg_bg_sampler, box_coder)


def fastrcnn_loss(
    class_logits: Tensor, box_regression: Tensor, labels: List[Tensor], regression_targets: List[Tensor]
) -> Tuple[Tensor, Tensor]:
    """The Fast R-CNN loss for all sampled RoIs of the batch.

    Args:
        class_logits:       (S, num_classes)
        box_regression:     (S, num_classes * 4)
        labels:             list of (S_i,) int64, concatenated they give S
        regression_targets: list of (S_i, 4)
    Returns:
        classification_loss: mean cross-entropy over the S RoIs
        box_loss: smooth-L1 (beta = 1/9) between the *GT class's* predicted deltas and the targets,
                  summed over positive RoIs and divided by S (not by the number of positives), so
                  that an image with few objects does not get a huge regression weight.
    """
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)

    pos = torch.where(labels > 0)[0]
    labels_pos = labels[pos]
    N = class_logits.shape[0]
    box_regression = box_regression.reshape(N, box_regression.size(-1) // 4, 4)  # (S, C, 4)
    box_loss = F.smooth_l1_loss(
        box_regression[pos, labels_pos], regression_targets[pos], beta=1 / 9, reduction="sum"
    )
    return classification_loss, box_loss / labels.numel()


# ----------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------

def postprocess_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: List[Tensor],
    image_shapes: List[Tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    batched_nms: Callable = ops.batched_nms,
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """From the predictor's outputs to final detections, per image.

    Args:
        class_logits:   (R, C) for the proposals of all images, concatenated
        box_regression: (R, C * 4)
        proposals:      list of (R_i, 4)
        image_shapes:   list of (h, w) of the resized images (boxes are clipped to them)
    Returns:
        boxes (m_i, 4), scores (m_i,), labels (m_i,) per image, best score first.

    Every (proposal, class) pair with class > 0 is a candidate detection: the proposal decoded with
    that class's deltas, scored with that class's softmax probability.
    """
    num_classes = class_logits.shape[-1]
    boxes_per_image = [p.shape[0] for p in proposals]
    pred_boxes = box_coder.decode(box_regression, proposals)  # (R, C, 4)
    pred_scores = F.softmax(class_logits, -1)                  # (R, C)

    all_boxes, all_scores, all_labels = [], [], []
    for boxes, scores, image_shape in zip(
        pred_boxes.split(boxes_per_image, 0), pred_scores.split(boxes_per_image, 0), image_shapes
    ):
        boxes = ops.clip_boxes_to_image(boxes, image_shape)
        labels = torch.arange(num_classes, device=class_logits.device).view(1, -1).expand_as(scores)

        # drop the background column, then treat every (proposal, class) pair as its own detection
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)

        # drop low scores and (nearly) empty boxes (ops.remove_small_boxes's test with min_size 1e-2),
        # both listed with one torch.where (one host read on a GPU)
        keep = torch.where((scores > score_thresh) & ops.large_box_mask(boxes, 1e-2))[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_thresh)      # NMS within each class only
        keep = keep[:detections_per_img]                           # sorted by score: the best ones
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels
