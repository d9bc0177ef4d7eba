"""The second stage: classify each proposal, refine its box, and predict its mask.

``RoIHeads`` runs the box branch (``box_head.py``: RoIAlign 7x7 -> TwoMLPHead -> FastRCNNPredictor) and the
mask branch (``mask_head.py``: RoIAlign 14x14 -> MaskRCNNHeads -> MaskRCNNPredictor) on the RPN's
proposals. In training it first picks the RoIs to learn from and returns the three losses of the second
stage; at test time it returns the detections.

``forward`` calls each step through ``self``, under torchvision's method names, so that a subclass that
overrides one changes what the model does (the paper's ablations, ``mrcnn_lite.experiments.variants``,
work that way)::

    training:  select_training_samples  (check_targets -> add_gt_proposals -> assign_targets_to_proposals
                                          -> subsample -> the sampled RoIs and their targets)
               box branch -> box_loss (fastrcnn_loss)
               select_mask_rois -> mask branch -> mask_loss
    inference: box branch -> postprocess_detections -> mask branch -> mask_probabilities
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import BoxCoder, box_dtype
from . import box_head
from .mask_head import maskrcnn_inference, maskrcnn_loss
from .matching import BalancedPositiveNegativeSampler, Matcher


class RoIHeads(nn.Module):
    """The second stage: box classification/regression and masks for the RPN's proposals.

    Constructor: torchvision's arguments in torchvision's order (the keypoint branch of Keypoint R-CNN
    is not built here: ``mrcnn_lite.torchvision_compat.RoIHeads`` takes and refuses its arguments), then
    keyword-only the pieces the builder picks:
        batched_nms:        ``ops.batched_nms``'s signature, for the final per-class NMS
        roi_align:          ``ops.roi_align``'s signature, resamples the GT masks into the mask targets
        sampler:            the class of ``fg_bg_sampler`` (``BalancedPositiveNegativeSampler``)
        mask_roi_subsample: training only, ``(K,) indices of an image's positive RoIs -> the subset the mask
                            loss sees``; None (the default, the paper's): every positive
    Attribute names are torchvision's (``box_roi_pool``, ``box_head``, ``box_predictor``,
    ``mask_roi_pool``, ``mask_head``, ``mask_predictor``, ``proposal_matcher``, ``fg_bg_sampler``,
    ``box_coder``, ``score_thresh``, ``nms_thresh``, ``detections_per_img``).

    ``forward(features, proposals, image_shapes, targets=None, intermediates=None)``:
        features:     OrderedDict of FPN maps ``(B, C, H_l, W_l)``
        proposals:    list of B ``(P_i, 4)`` boxes in resized-image pixels
        image_shapes: list of B ``(h, w)`` resized image sizes
        targets:      in training, B dicts with ``boxes (n_i, 4)``, ``labels (n_i,)``, ``masks (n_i, h, w)``
        intermediates: optional dict, filled with the branch's inner results (for the notebooks)
    Returns ``(result, losses)``: in eval, B dicts ``boxes, labels, scores, masks (m, 1, 28, 28)``; in
    training, ``{"loss_classifier", "loss_box_reg", "loss_mask"}``.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: Optional[Tuple[float, float, float, float]],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        mask_roi_pool: Optional[nn.Module] = None,
        mask_head: Optional[nn.Module] = None,
        mask_predictor: Optional[nn.Module] = None,
        *,
        batched_nms: Callable = ops.batched_nms,
        roi_align: Callable = ops.roi_align,
        sampler: Type[BalancedPositiveNegativeSampler] = BalancedPositiveNegativeSampler,
        mask_roi_subsample: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        super().__init__()
        # Box branch training: IoU >= fg -> positive, < bg -> background, and no low-quality matches
        # (the GT boxes themselves are added to the proposals, so every GT has a perfect positive).
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = sampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights if bbox_reg_weights is not None else (10.0, 10.0, 5.0, 5.0))

        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

        self.batched_nms = batched_nms
        self.roi_align = roi_align
        self.mask_roi_subsample = mask_roi_subsample

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    # ---- training: which RoIs to learn from (box_head.py does the work) ----
    def check_targets(self, targets: Optional[List[Dict[str, Tensor]]]) -> None:
        """Training targets are given, each with ``boxes`` and ``labels``, and ``masks`` if there is a mask branch."""
        if targets is None:
            raise ValueError("RoIHeads: targets must be given in training mode")
        keys = ("boxes", "labels", "masks") if self.has_mask() else ("boxes", "labels")
        for i, t in enumerate(targets):
            for key in keys:
                if key not in t:
                    raise ValueError(f"RoIHeads: targets[{i}] has no {key!r}")

    def add_gt_proposals(self, proposals: List[Tensor], gt_boxes: List[Tensor]) -> List[Tensor]:
        """Each image's ``gt_boxes (n_i, 4)`` appended to its ``proposals (P_i, 4)``."""
        return box_head.add_gt_proposals(proposals, gt_boxes)

    def assign_targets_to_proposals(
        self, proposals: List[Tensor], gt_boxes: List[Tensor], gt_labels: List[Tensor]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image, ``matched_idxs (P_i,)`` and ``labels (P_i,)`` (0 background, -1 ignored)."""
        return box_head.assign_targets_to_proposals(proposals, gt_boxes, gt_labels, self.proposal_matcher)

    def subsample(self, labels: List[Tensor]) -> List[Tensor]:
        """Per image, the indices of the RoIs ``fg_bg_sampler`` draws for the loss, ascending."""
        return box_head.subsample(labels, self.fg_bg_sampler)

    def select_training_samples(
        self, proposals: List[Tensor], targets: Optional[List[Dict[str, Tensor]]]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], Tuple[Tensor, ...]]:
        """Per image, the sampled RoIs ``(S_i, 4)`` and their ``matched_idxs``, ``labels`` and ``regression_targets``."""
        self.check_targets(targets)
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        sampled_inds = self.subsample(labels)
        return box_head.sampled_rois_and_targets(proposals, matched_idxs, labels, sampled_inds, gt_boxes,
                                                 self.box_coder)

    def select_mask_rois(
        self, proposals: List[Tensor], matched_idxs: List[Tensor], labels: List[Tensor]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """The RoIs the mask loss trains on: per image, the positive sampled RoIs ``(K_i, 4)`` and their
        ``matched_idxs (K_i,)`` (only positives get a mask loss; ``mask_roi_subsample`` may keep fewer)."""
        mask_proposals, pos_matched_idxs = [], []
        for p, m, lab in zip(proposals, matched_idxs, labels):
            pos = torch.where(lab > 0)[0]
            if self.mask_roi_subsample is not None:
                pos = self.mask_roi_subsample(pos)
            mask_proposals.append(p[pos])
            pos_matched_idxs.append(m[pos])
        return mask_proposals, pos_matched_idxs

    # ---- inference (box_head.py does the work) ----
    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Per image, the final ``boxes (m, 4)``, ``scores (m,)`` and ``labels (m,)``, best first."""
        return box_head.postprocess_detections(class_logits, box_regression, proposals, image_shapes,
                                               self.box_coder, self.score_thresh, self.nms_thresh,
                                               self.detections_per_img, self.batched_nms)

    # ---- the box branch's loss (box_head.py) ----
    def box_loss(self, class_logits: Tensor, box_regression: Tensor, labels: List[Tensor],
                 regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(loss_classifier, loss_box_reg)`` of the sampled RoIs (``fastrcnn_loss``): ``class_logits (S, K)``,
        ``box_regression (S, K * 4)``, per image ``labels (S_i,)`` and ``regression_targets (S_i, 4)``."""
        return box_head.fastrcnn_loss(class_logits, box_regression, labels, regression_targets)

    # ---- the mask branch's loss and output (the paper's per-class sigmoid; mask_head.py) ----
    def mask_loss(self, mask_logits: Tensor, mask_proposals: List[Tensor], targets: List[Dict[str, Tensor]],
                  pos_matched_idxs: List[Tensor]) -> Tensor:
        """BCE on the GT class's channel, targets cropped with the positive proposals (``maskrcnn_loss``)."""
        return maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                             [t["labels"] for t in targets], pos_matched_idxs, self.roi_align)

    def mask_probabilities(self, mask_logits: Tensor, labels: List[Tensor]) -> List[Tensor]:
        """The predicted class's channel through a sigmoid, per image ``(m_i, 1, M, M)`` (``maskrcnn_inference``)."""
        return maskrcnn_inference(mask_logits, labels)

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[List[Dict[str, Tensor]]] = None,
        intermediates: Optional[Dict[str, Any]] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        inter = intermediates if intermediates is not None else {}
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            inter.update(sampled_proposals=proposals, matched_idxs=matched_idxs, labels=labels,
                         regression_targets=regression_targets)

        # ---- box branch ----
        box_features = self.box_roi_pool(features, proposals, image_shapes)  # (R, C, 7, 7)
        box_features = self.box_head(box_features)                           # (R, representation)
        class_logits, box_regression = self.box_predictor(box_features)     # (R, K), (R, K * 4)
        # Under autocast the fc layers return float16/bfloat16; softmax, box decoding, NMS and the losses
        # run in float32 (ops.box_dtype). A no-op for a float32 or float64 model.
        class_logits = class_logits.to(box_dtype(class_logits.dtype))
        box_regression = box_regression.to(box_dtype(box_regression.dtype))
        inter.update(box_features=box_features, class_logits=class_logits, box_regression=box_regression)

        result: List[Dict[str, Tensor]] = []
        losses: Dict[str, Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = self.box_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, det_labels = self.postprocess_detections(class_logits, box_regression, proposals,
                                                                    image_shapes)
            result = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, det_labels, scores)]

        if not self.has_mask():
            return result, losses

        # ---- mask branch ----
        if self.training:
            # The positive RoIs; their *proposal* boxes (not the GT boxes) crop the GT masks, so that the
            # target lines up with what the mask head saw.
            mask_proposals, pos_matched_idxs = self.select_mask_rois(proposals, matched_idxs, labels)
        else:
            mask_proposals = [r["boxes"] for r in result]  # at test time: the final detections

        mask_features = self.mask_roi_pool(features, mask_proposals, image_shapes)  # (P, C, 14, 14)
        mask_features = self.mask_head(mask_features)
        mask_logits = self.mask_predictor(mask_features)                             # (P, K, 28, 28)
        mask_logits = mask_logits.to(box_dtype(mask_logits.dtype))  # loss and probabilities in float32
        inter.update(mask_proposals=mask_proposals, mask_logits=mask_logits)

        if self.training:
            losses["loss_mask"] = self.mask_loss(mask_logits, mask_proposals, targets, pos_matched_idxs)
        else:
            for mask_prob, r in zip(self.mask_probabilities(mask_logits, [r["labels"] for r in result]), result):
                r["masks"] = mask_prob
        return result, losses
