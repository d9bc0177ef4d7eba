"""The cross-stage labs' models: the shipped course model with one planted bug each (notebooks 09 and 11).

LEARNERS: do not read this file before you have done the labs. Each lab hands you a model that misbehaves
and asks you to find *where* from its outputs alone, with the course's inspection tools (the stage walk, the
model's intermediates, the explorers), then to write the broken part correctly.

Teachers: the answer key is in docs/teachers.md ("Cross-stage labs"). Each bug is put into a freshly loaded
course model through the seams the ablations use (``experiments/variants.py``): a pooler's RoIAlign kernel, a
``RoIHeads`` subclass's hook method; no stage module knows about the labs. ``lab_model(name, fix=fn)`` puts the
learner's corrected function in the broken part's place instead, so that the notebook can show the model
recover.

* ``"nine"`` (notebook 09): the mask branch's multi-scale RoIAlign samples each box at the scale of the next
  coarser pyramid level (half the right one), so the mask head sees the features of the wrong place. The
  fix: ``mask_roi_pool(features, boxes, image_size)``.
* ``"eleven"`` (notebook 11): the step that turns the box head's per-class scores into labelled candidate
  detections numbers the classes from 0 instead of 1 (every detection is called the class below its own,
  circles "background"). The fix: ``detection_candidates(boxes, scores)``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..experiments.variants import use_heads
from ..model.roi_heads import RoIHeads
from ..ops.poolers import MultiScaleRoIAlign

__all__ = ["LABS", "SUSPECTS", "lab_model", "mask_roi_pool_of", "candidates_of"]

LABS = ("nine", "eleven")

SUSPECTS: Dict[str, Tuple[str, ...]] = {
    "nine": ("anchors", "proposal decoding", "box pooling", "box classification", "mask pooling", "mask head",
             "mask pasting"),
    "eleven": ("anchors", "proposal decoding", "box pooling", "box classification", "box decoding",
               "detection labels", "mask head", "evaluation"),
}
"""What each lab's learner chooses from: the stages, in the order an image flows through them."""


# ----------------------------------------------------------------------------------------------
# Lab "nine": the mask branch's pooler
# ----------------------------------------------------------------------------------------------
def _planted_roi_align(roi_align: Callable) -> Callable:
    def roi_align_kernel(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0,
                         sampling_ratio: int = -1) -> Tensor:
        return roi_align(input, rois, output_size, spatial_scale=spatial_scale / 2, sampling_ratio=sampling_ratio)
    roi_align_kernel.__name__ = getattr(roi_align, "__name__", "roi_align")
    return roi_align_kernel


class LearnerMaskPool(nn.Module):
    """The mask branch's pooler made of a learner's ``mask_roi_pool(features, boxes, image_size)``:
    ``features`` the four level maps ``(1, C, H_l, W_l)`` of one image (strides 4, 8, 16, 32), ``boxes (K, 4)``
    in the resized image's pixels, ``image_size (h, w)`` the batch's largest resized image (what the package's
    ``MultiScaleRoIAlign`` infers the level scales from) -> ``(K, C, 14, 14)``."""

    def __init__(self, fn: Callable, featmap_names: Sequence[str]):
        super().__init__()
        self.fn, self.featmap_names = fn, list(featmap_names)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        feats = [x[name] for name in self.featmap_names]
        size = (max(int(s[0]) for s in image_shapes), max(int(s[1]) for s in image_shapes))
        pooled = [torch.as_tensor(self.fn([f[i:i + 1] for f in feats], b, size)).to(feats[0])
                  for i, b in enumerate(boxes)]
        return torch.cat(pooled) if pooled else feats[0].new_zeros((0, feats[0].shape[1], 14, 14))


def mask_roi_pool_of(model: nn.Module) -> Callable:
    """``model``'s mask pooler as a function of the lab's signature ``(features, boxes, image_size)``
    (for the notebook's side-by-side: the working and the broken model's pooler on the same input)."""
    pool = model.roi_heads.mask_roi_pool

    def mask_roi_pool(features: List[Tensor], boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
        names = [str(i) for i in range(len(features))]
        return pool(dict(zip(names, features)), [boxes], [tuple(image_size)])
    return mask_roi_pool


# ----------------------------------------------------------------------------------------------
# Lab "eleven": from per-class scores to labelled candidate detections
# ----------------------------------------------------------------------------------------------
def _planted_candidates(boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    labels = torch.arange(scores.shape[1] - 1, device=scores.device).view(1, -1).expand(scores.shape[0], -1)
    return boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels.reshape(-1)


class CandidatesRoIHeads(RoIHeads):
    """``RoIHeads`` whose ``postprocess_detections`` takes its (RoI, class) candidates from
    ``self.detection_candidates(boxes (R, K, 4), scores (R, K)) -> (boxes (R(K-1), 4), scores, labels)``;
    the rest is ``box_head.postprocess_detections``'s: decode, clip, threshold, NMS per class, the best ones."""

    detection_candidates: Callable = staticmethod(_planted_candidates)

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0),
                                              pred_scores.split(boxes_per_image, 0), image_shapes):
            boxes = ops.clip_boxes_to_image(boxes, image_shape)
            boxes, scores, labels = (torch.as_tensor(v) for v in self.detection_candidates(boxes, scores))
            labels = labels.to(torch.int64)
            keep = torch.where((scores > self.score_thresh) & ops.large_box_mask(boxes, 1e-2))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = self.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels


def candidates_of(fn: Callable) -> type:
    """A ``CandidatesRoIHeads`` subclass whose candidates come from ``fn``."""
    return type("RoIHeads", (CandidatesRoIHeads,), {"detection_candidates": staticmethod(fn)})


# ----------------------------------------------------------------------------------------------
def lab_model(name: str, fix: Optional[Callable] = None, model: Optional[nn.Module] = None) -> nn.Module:
    """The course model (``ml.load_course_model()``, or ``model`` itself, changed in place) with lab ``name``'s
    planted bug, or with ``fix`` (the learner's corrected function, of the lab's signature) in its place.

    ``"nine"``: ``fix(features, boxes, image_size)``, the mask branch's pooler (see :class:`LearnerMaskPool`).
    ``"eleven"``: ``fix(boxes (R, K, 4), scores (R, K))``, the labelled candidates (see :class:`CandidatesRoIHeads`).
    """
    if name not in LABS:
        raise ValueError(f"lab_model: name must be one of {list(LABS)}, got {name!r}")
    if model is None:
        from .. import load_course_model
        model = load_course_model()
    heads = model.roi_heads
    if name == "nine":
        old = heads.mask_roi_pool
        if fix is None:
            heads.mask_roi_pool = MultiScaleRoIAlign(
                old.featmap_names, old.output_size, old.sampling_ratio, canonical_scale=old.canonical_scale,
                canonical_level=old.canonical_level, roi_align=_planted_roi_align(old.roi_align))
        else:
            heads.mask_roi_pool = LearnerMaskPool(fix, old.featmap_names)
    else:
        use_heads(model, candidates_of(fix if fix is not None else _planted_candidates))
    return model.eval()
