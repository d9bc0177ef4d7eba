"""The second stage: classify each proposal, refine its box, and predict its mask.

``RoIHeads`` runs the box branch (``box_head.py``: RoIAlign 7x7 -> TwoMLPHead -> FastRCNNPredictor) and the
mask branch (``mask_head.py``: RoIAlign 14x14 -> MaskRCNNHeads -> MaskRCNNPredictor) on the RPN's
proposals. In training it first picks the RoIs to learn from (``box_head.select_training_samples``,
with ``matching.py``'s Matcher and sampler) and returns the three losses of the second stage; at test
time it returns the detections. Attribute names follow torchvision's ``RoIHeads``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import BoxCoder, box_dtype
from . import box_head
from .box_head import fastrcnn_loss, postprocess_detections, select_training_samples
from .mask_head import maskrcnn_inference, maskrcnn_loss
from .matching import BalancedPositiveNegativeSampler, Matcher


class RoIHeads(nn.Module):
    """The second stage: box classification/regression and masks for the RPN's proposals.

    Attribute names are torchvision's (``box_roi_pool``, ``box_head``, ``box_predictor``,
    ``mask_roi_pool``, ``mask_head``, ``mask_predictor``, ``proposal_matcher``, ``fg_bg_sampler``,
    ``box_coder``, ``score_thresh``, ``nms_thresh``, ``detections_per_img``).

    ``forward(features, proposals, image_shapes, targets=None, intermediates=None)``:
        features:     OrderedDict of FPN maps ``(B, C, H_l, W_l)``
        proposals:    list of B ``(P_i, 4)`` boxes in resized-image pixels
        image_shapes: list of B ``(h, w)`` resized image sizes
        targets:      in training, B dicts with ``boxes (n_i, 4)``, ``labels (n_i,)``, ``masks (n_i, h, w)``
        intermediates: optional dict, filled with the branch's inner results (for the notebooks)
    ``batched_nms`` and ``roi_align`` (keyword arguments) are the kernels to call;
    ``mask_batch_size_per_image`` (keyword, training only) caps the RoIs per image that the mask loss
    sees, drawn at random from the positives (None, the default: every positive, as in the paper).
    The constructor takes torchvision's arguments in torchvision's order; the keypoint branch (Keypoint
    R-CNN) is not built here, so ``keypoint_*`` must stay None.

    torchvision's methods are here too (``add_gt_proposals``, ``assign_targets_to_proposals``, ``subsample``,
    ``check_targets``, ``select_training_samples``, ``postprocess_detections``, ``has_mask``,
    ``has_keypoint``), each calling the function of ``box_head.py`` that does the work, and two of the
    mask branch (``mask_loss``, ``mask_probabilities``). The paper's ablations (``mrcnn_lite.experiments``)
    swap a part by overriding one of these methods in a subclass.
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
        keypoint_roi_pool: Optional[nn.Module] = None,
        keypoint_head: Optional[nn.Module] = None,
        keypoint_predictor: Optional[nn.Module] = None,
        batched_nms: Callable = ops.batched_nms,
        roi_align: Callable = ops.roi_align,
        mask_batch_size_per_image: Optional[int] = None,
    ):
        super().__init__()
        if keypoint_roi_pool is not None or keypoint_head is not None or keypoint_predictor is not None:
            raise ValueError("RoIHeads: keypoint_roi_pool, keypoint_head and keypoint_predictor must be None "
                             "(mrcnn_lite builds Mask R-CNN, not Keypoint R-CNN)")
        self.box_similarity = ops.box_iou
        # Box branch training: IoU >= fg -> positive, < bg -> background, and no low-quality matches
        # (the GT boxes themselves are added to the proposals, so every GT has a perfect positive).
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
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
        self.keypoint_roi_pool = self.keypoint_head = self.keypoint_predictor = None

        self.batched_nms = batched_nms  # the kernels the model's cfg.kernels picks (see kernels.py)
        self.roi_align = roi_align      # resamples the GT masks for the mask targets
        # Training: the mask loss on at most this many of an image's positive RoIs (None: all of them).
        self.mask_batch_size_per_image = mask_batch_size_per_image

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def has_keypoint(self) -> bool:
        return False  # no keypoint branch (see the constructor)

    # ---- torchvision's methods: each one calls the function of box_head.py that does the work ----
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

    def check_targets(self, targets: Optional[List[Dict[str, Tensor]]]) -> None:
        """Training targets are given, each with ``boxes`` and ``labels``, and ``masks`` if there is a mask branch."""
        if targets is None:
            raise ValueError("RoIHeads: targets must be given in training mode")
        keys = ("boxes", "labels", "masks") if self.has_mask() else ("boxes", "labels")
        for i, t in enumerate(targets):
            for key in keys:
                if key not in t:
                    raise ValueError(f"RoIHeads: targets[{i}] has no {key!r}")

    def select_training_samples(
        self, proposals: List[Tensor], targets: Optional[List[Dict[str, Tensor]]]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], Tuple[Tensor, ...]]:
        """Per image, the sampled RoIs and their ``matched_idxs``, ``labels`` and ``regression_targets``."""
        self.check_targets(targets)
        return select_training_samples(proposals, [t["boxes"] for t in targets], [t["labels"] for t in targets],
                                       self.proposal_matcher, self.fg_bg_sampler, self.box_coder)

    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Per image, the final ``boxes (m, 4)``, ``scores (m,)`` and ``labels (m,)``, best first."""
        return postprocess_detections(class_logits, box_regression, proposals, image_shapes, self.box_coder,
                                      self.score_thresh, self.nms_thresh, self.detections_per_img, self.batched_nms)

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
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            boxes, scores, det_labels = postprocess_detections(
                class_logits, box_regression, proposals, image_shapes, self.box_coder,
                self.score_thresh, self.nms_thresh, self.detections_per_img, self.batched_nms,
            )
            result = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, det_labels, scores)]

        if not self.has_mask():
            return result, losses

        # ---- mask branch ----
        if self.training:
            # Only positive RoIs get a mask loss; their *proposal* boxes (not the GT boxes) crop the GT
            # masks, so that the target lines up with what the mask head saw.
            mask_proposals, pos_matched_idxs = [], []
            for p, m, lab in zip(proposals, matched_idxs, labels):
                pos = torch.where(lab > 0)[0]
                cap = self.mask_batch_size_per_image
                if cap is not None and pos.numel() > cap:
                    # A random subset: an image with few objects has many positives on the same object,
                    # so fewer of them cost less and teach the mask head nearly as much.
                    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:cap]]
                mask_proposals.append(p[pos])
                pos_matched_idxs.append(m[pos])
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
