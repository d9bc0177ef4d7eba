"""Adapters: the learner's functions, with their exercises' signatures, put behind the model's seams.

Each seam of the model (a kernel handed to ``build_model``, a ``BoxCoder``, the sampler and anchor generator
classes, the torchvision-named methods of ``RegionProposalNetwork`` and ``RoIHeads``) has its own signature;
the functions here say how an exercise's function fills it (``roi_align_one_box`` pools one box from one map;
the model's ``roi_align`` pools K boxes from a batch of C-channel maps, so its adapter loops over boxes and
channels). Every learner's function is called through a ``Timed``, which adds up its time for the parts
table. ``learner_model.py`` wires them in.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.anchors import AnchorGenerator
from ..model.matching import BalancedPositiveNegativeSampler
from ..model.roi_heads import RoIHeads
from ..model.rpn import RegionProposalNetwork
from ..ops import BoxCoder


# ----------------------------------------------------------------------------------------------
# Timing: every learner's function in the model is called through a Timed, which adds up its time
# ----------------------------------------------------------------------------------------------
class Timed:
    """``fn`` with the seconds spent in it added up in ``seconds`` (what the parts table reports)."""

    def __init__(self, fn: Callable):
        self.fn, self.seconds = fn, 0.0
        self.__name__ = getattr(fn, "__name__", "part")

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Adapters: from an exercise's signature to the seam's
# ----------------------------------------------------------------------------------------------
def _pair(size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align_from_one_box(one_box: Callable, fallback: Callable) -> Callable:
    """``ops.roi_align``'s signature from ``one_box(f (H, W), box, output_size, spatial_scale, sampling_ratio)``
    (``aligned=True``): a loop over the K RoIs and the C channels.

    The model pools with ``aligned=False`` (torchvision's Mask R-CNN v1): the box is not shifted by half a
    cell and is at least one cell wide and high. The same samples come from ``aligned=True`` on the box
    shifted by ``+0.5 / spatial_scale`` and grown to one cell. Adaptive sampling (``sampling_ratio <= 0``,
    which the exercise does not ask for) goes to ``fallback``.
    """

    def roi_align(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                  aligned: bool = False) -> Tensor:
        if sampling_ratio <= 0:
            return fallback(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
        ph, pw = _pair(output_size)
        K, C = rois.shape[0], input.shape[1]
        out = input.new_zeros((K, C, ph, pw))
        for k in range(K):
            b = int(rois[k, 0])
            x1, y1, x2, y2 = (float(v) for v in rois[k, 1:])
            if not aligned:
                shift = 0.5 / spatial_scale  # aligned=True takes half a cell off: add it back
                x2 = x2 + shift if (x2 - x1) * spatial_scale >= 1.0 else x1 + shift + 1.0 / spatial_scale
                y2 = y2 + shift if (y2 - y1) * spatial_scale >= 1.0 else y1 + shift + 1.0 / spatial_scale
                x1, y1 = x1 + shift, y1 + shift
            box = [x1, y1, x2, y2]
            out[k] = torch.stack([torch.as_tensor(one_box(input[b, c], box, (ph, pw), spatial_scale, sampling_ratio),
                                                  dtype=input.dtype) for c in range(C)])
        return out

    return roi_align


def batched_nms_from_nms(nms: Callable) -> Callable:
    """``ops.batched_nms``'s signature from ``nms(boxes, scores, iou_threshold)``: NMS within each ``idxs``
    value, then all kept indices by decreasing score (ties: by index, as the package's stable sort)."""

    def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        kept = []
        for value in torch.unique(idxs):
            members = torch.where(idxs == value)[0]
            keep = torch.as_tensor(nms(boxes[members], scores[members], iou_threshold), dtype=torch.int64)
            kept.append(members[keep.to(members.device)])
        kept = torch.cat(kept).sort().values
        return kept[torch.sort(scores[kept], descending=True, stable=True).indices]

    return batched_nms


def paste_masks_from_paste_mask(paste_mask: Callable, fallback: Callable) -> Callable:
    """``paste_masks_in_image``'s signature from ``paste_mask(mask (M, M), box, image_size)``, one mask at a time
    (the exercise's border is the package's ``padding=1``; another padding goes to ``fallback``)."""

    def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape, padding: int = 1) -> Tensor:
        if padding != 1:
            return fallback(masks, boxes, img_shape, padding)
        h, w = int(img_shape[0]), int(img_shape[1])
        out = masks.new_zeros((masks.shape[0], 1, h, w))
        for i in range(masks.shape[0]):
            out[i, 0] = torch.as_tensor(paste_mask(masks[i, 0], boxes[i].tolist(), (h, w)), dtype=masks.dtype)
        return out

    return paste_masks_in_image


class LearnerBoxCoder(BoxCoder):
    """A ``BoxCoder`` whose ``encode_single`` is ``encode(targets, refs, weights)``, whose ``decode_single`` is
    ``decode(deltas, anchors)`` (the RPN's, weights 1) and whose ``decode`` (the box head's ``(R, C * 4)``
    deltas -> ``(R, C, 4)`` boxes) calls ``decode_class_boxes`` once per class; ``None``: the package's."""

    def __init__(self, weights, encode=None, decode=None, decode_class_boxes=None):
        super().__init__(weights)
        self.learner_encode, self.learner_decode, self.learner_decode_class = encode, decode, decode_class_boxes

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        if self.learner_encode is None:
            return super().encode_single(reference_boxes, proposals)
        return self.learner_encode(reference_boxes, proposals, self.weights)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        if self.learner_decode is None:
            return super().decode_single(rel_codes, boxes)
        return self.learner_decode(rel_codes, boxes)

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        if self.learner_decode_class is None:
            return super().decode(rel_codes, boxes)
        proposals = torch.cat(boxes, dim=0)
        R, C = proposals.shape[0], rel_codes.shape[-1] // 4
        rel_codes = rel_codes.reshape(R, C * 4)
        per_class = [self.learner_decode_class(rel_codes, proposals,
                                               torch.full((R,), c, dtype=torch.int64, device=proposals.device))
                     for c in range(C)]
        return torch.stack(per_class, dim=1) if R else rel_codes.new_zeros((0, C, 4))


def _generator_of(device: torch.device) -> torch.Generator:
    """The global generator of ``device``: a sampler drawing from it draws what the package's sampler would."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def sampler_class(sample_balanced: Callable) -> type:
    """A ``BalancedPositiveNegativeSampler`` class whose draw is ``sample_balanced(labels, batch_size_per_image,
    positive_fraction, generator)``, image by image, with the global generator (so the package's draw and a
    correct learner's one use the same random numbers)."""

    class LearnerSampler(BalancedPositiveNegativeSampler):
        def sample_indices(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
            pos_inds, neg_inds = [], []
            for lab in labels:
                pos, neg = sample_balanced(lab, self.batch_size_per_image, self.positive_fraction,
                                           _generator_of(lab.device))
                pos_inds.append(torch.as_tensor(pos, device=lab.device).reshape(-1).long().sort().values)
                neg_inds.append(torch.as_tensor(neg, device=lab.device).reshape(-1).long().sort().values)
            return pos_inds, neg_inds

    return LearnerSampler


def anchor_generator_class(base_anchors: Optional[Callable], grid_anchors: Optional[Callable]) -> type:
    """An ``AnchorGenerator`` class with the learner's ``base_anchors(sizes, ratios)`` as cell anchors and
    ``grid_anchors(base, grid_size, image_size)`` placing them (``None``: the package's)."""

    class LearnerAnchorGenerator(AnchorGenerator):
        def __init__(self, sizes, aspect_ratios):
            super().__init__(sizes, aspect_ratios)
            if base_anchors is not None:
                self.cell_anchors = [torch.as_tensor(base_anchors(list(s), list(r))).to(torch.float32)
                                     for s, r in zip(self.sizes, self.aspect_ratios)]

        def anchors_for(self, image_size, grid_sizes, dtype=torch.float32, device="cpu") -> Tensor:
            if grid_anchors is None:
                return super().anchors_for(image_size, grid_sizes, dtype, device)
            size = (int(image_size[0]), int(image_size[1]))
            return torch.cat([torch.as_tensor(grid_anchors(base.to(dtype=dtype, device=device), (int(g[0]), int(g[1])),
                                                           size)).to(dtype=dtype, device=device)
                              for base, g in zip(self.cell_anchors, grid_sizes)])

    return LearnerAnchorGenerator


class LearnerRPN(RegionProposalNetwork):
    """The RPN with the learner's ``top_n_per_level`` and ``rpn_loss`` (``learner_parts``; missing: the package's)."""

    learner_parts: Dict[str, Callable] = {}

    def _get_top_n_idx(self, objectness: Tensor, num_anchors_per_level: Sequence[int]) -> Tensor:
        fn = self.learner_parts.get("top_n_per_level")
        if fn is None:
            return super()._get_top_n_idx(objectness, num_anchors_per_level)
        return torch.as_tensor(fn(objectness, list(num_anchors_per_level), self.pre_nms_top_n())).long()

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        fn = self.learner_parts.get("rpn_loss")
        if fn is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        pos_inds, neg_inds = self.fg_bg_sampler.sample_indices(labels)
        n = objectness.shape[1]
        pos_mask = torch.zeros(objectness.numel(), dtype=torch.bool, device=objectness.device)
        neg_mask = torch.zeros_like(pos_mask)
        for i, (p, q) in enumerate(zip(pos_inds, neg_inds)):  # image i's anchors start at i * n
            pos_mask[p + i * n] = True
            neg_mask[q + i * n] = True
        return tuple(fn(objectness.reshape(-1), pred_bbox_deltas.reshape(-1, 4), torch.cat(list(labels)),
                        torch.cat(list(regression_targets)), pos_mask, neg_mask))


class LearnerRoIHeads(RoIHeads):
    """The RoI heads with the learner's ``box_iou`` (proposal matching), ``fastrcnn_loss`` and ``mask_targets``."""

    learner_parts: Dict[str, Callable] = {}

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        box_iou = self.learner_parts.get("box_iou")
        if box_iou is None:
            return super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        matched_idxs, labels = [], []
        for p, g, lab in zip(proposals, gt_boxes, gt_labels):
            if g.numel() == 0:  # an image without objects: every proposal is background
                matched_idxs.append(torch.zeros(len(p), dtype=torch.int64, device=p.device))
                labels.append(torch.zeros(len(p), dtype=torch.int64, device=p.device))
                continue
            matched = self.proposal_matcher(box_iou(g, p))                     # (n, P) IoU -> (P,)
            clamped = matched.clamp(min=0)
            lab_i = lab[clamped].to(torch.int64)
            lab_i.masked_fill_(matched == self.proposal_matcher.BELOW_LOW_THRESHOLD, 0)
            lab_i.masked_fill_(matched == self.proposal_matcher.BETWEEN_THRESHOLDS, -1)
            matched_idxs.append(clamped)
            labels.append(lab_i)
        return matched_idxs, labels

    def box_loss(self, class_logits, box_regression, labels, regression_targets):
        fn = self.learner_parts.get("fastrcnn_loss")
        if fn is None:
            return super().box_loss(class_logits, box_regression, labels, regression_targets)
        return tuple(fn(class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets)))

    def mask_loss(self, mask_logits, mask_proposals, targets, pos_matched_idxs):
        fn = self.learner_parts.get("mask_targets")
        if fn is None:
            return super().mask_loss(mask_logits, mask_proposals, targets, pos_matched_idxs)
        # The loss of mask_head.maskrcnn_loss, with the learner's targets: BCE on the GT class's channel.
        M = mask_logits.shape[-1]
        labels = torch.cat([t["labels"][i] for t, i in zip(targets, pos_matched_idxs)])
        if labels.numel() == 0:
            return mask_logits.sum() * 0
        mask_targets = torch.cat([torch.as_tensor(fn(t["masks"], p, i, M)).to(mask_logits)
                                  for t, p, i in zip(targets, mask_proposals, pos_matched_idxs) if len(p)])
        logits = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(logits, mask_targets)
