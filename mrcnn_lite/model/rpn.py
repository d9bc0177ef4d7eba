"""The Region Proposal Network (Faster R-CNN, Ren et al. 2015), as used by Mask R-CNN.

The RPN looks at every anchor (see ``anchors.py``) and answers two questions with a tiny conv head
shared over all FPN levels:

* objectness: is there an object here?        ``cls_logits``: A logits per location
* box deltas: how should the anchor move?      ``bbox_pred``:  4 A deltas per location

From those it produces *proposals* -- a few hundred to a few thousand boxes per image that the box
head will classify. During training it also learns: each anchor is matched to the ground truth
(``Matcher``), labelled object (1) / background (0) / ignore (-1), a balanced random subset is
sampled (``BalancedPositiveNegativeSampler``), and two losses are computed on that subset.

The pieces, in the order the data flows through ``RegionProposalNetwork.forward``::

    features --RPNHead--> objectness (B, sum A*H*W), pred_bbox_deltas (B, sum A*H*W, 4)
    anchors  --BoxCoder.decode(deltas)--> proposals (B, sum A*H*W, 4)
    filter_proposals: top-n per level -> sigmoid -> clip -> remove small -> remove low score
                      -> NMS per level -> top-n per image
    training: assign_targets_to_anchors (Matcher) -> labels, regression_targets -> compute_loss

Semantics, argument names and defaults follow ``torchvision.models.detection.rpn`` so the two can be
read side by side; the tests prove the same weights give the same proposals and losses. Where
torchvision loops over the images of a batch, we vectorise when the result is identical (target
assignment, top-n selection); clipping, filtering and NMS stay per image, since each image keeps a
different number of boxes.

On a GPU, every read of a tensor's *value* by Python (``.item()``, ``.tolist()``, ``if t.any():``,
``torch.where(mask)``, ``x[bool_mask]``: the result's size depends on the data) waits for all queued
work to finish: a host-device sync. The code avoids the ones it can without changing a number
(see ``Matcher.set_low_quality_matches_``, ``BalancedPositiveNegativeSampler.sample_indices`` and
``filter_proposals``); the rest are listed in notebook 13.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import BoxCoder, box_dtype
from .anchors import AnchorGenerator

__all__ = [
    "Matcher",
    "BalancedPositiveNegativeSampler",
    "RPNHead",
    "RegionProposalNetwork",
    "concat_box_prediction_layers",
    "build_rpn",
]


# --------------------------------------------------------------------------------------------------
# Matching: which ground-truth box does each anchor (or proposal) belong to?
# --------------------------------------------------------------------------------------------------
class Matcher:
    """Assigns to every prediction (anchor / proposal) at most one ground-truth box, by IoU.

    ``matcher(match_quality_matrix)`` with ``match_quality_matrix (M, N)`` = IoU of M ground-truth
    boxes with N predictions returns ``matched_idxs (N,) int64``:

    * ``m in [0, M)`` if the best IoU of prediction n is ``>= high_threshold`` (a foreground match);
    * ``BETWEEN_THRESHOLDS = -2`` if it is in ``[low_threshold, high_threshold)`` (ambiguous: ignored);
    * ``BELOW_LOW_THRESHOLD = -1`` if it is ``< low_threshold`` (background).

    ``allow_low_quality_matches=True`` (the RPN uses it) adds, for every ground-truth box, the
    prediction(s) that overlap it most -- ties included -- even if that best IoU is below
    ``high_threshold``. Without it a small or oddly shaped object that no anchor covers at IoU >= 0.7
    would have no positive anchor at all, and the RPN would never learn to propose it.

    Batched form (used by the RPN to match all images at once): ``match_quality_matrix (B, M, N)``
    where images with fewer than M boxes are padded with rows of a negative value (e.g. -1). IoU is
    never negative, so padded rows never win a max and are skipped by the low-quality rule.
    Returns ``(B, N)``. An image with only padded rows gets all ``BELOW_LOW_THRESHOLD``.

    Same semantics and constructor as ``torchvision.models.detection._utils.Matcher``.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        if not isinstance(match_quality_matrix, Tensor):
            raise TypeError(f"Matcher: match_quality_matrix must be a Tensor, got {type(match_quality_matrix).__name__}")
        if match_quality_matrix.dim() == 2:
            # Same contract as torchvision: an empty matrix is a caller error during training.
            if match_quality_matrix.numel() == 0:
                if match_quality_matrix.shape[0] == 0:
                    raise ValueError("Matcher: no ground-truth boxes available for one of the images during training")
                raise ValueError("Matcher: no proposal boxes available for one of the images during training")
            return self._match(match_quality_matrix[None])[0]
        if match_quality_matrix.dim() == 3:
            batch, num_gt, num_pred = match_quality_matrix.shape
            if num_gt == 0:  # no image of the batch has a ground-truth box: all background
                return torch.full((batch, num_pred), self.BELOW_LOW_THRESHOLD, dtype=torch.int64,
                                  device=match_quality_matrix.device)
            return self._match(match_quality_matrix)
        raise ValueError(
            f"Matcher: match_quality_matrix must have shape (M, N) or (B, M, N), got {tuple(match_quality_matrix.shape)}"
        )

    def _match(self, quality: Tensor) -> Tensor:
        """``quality (B, M, N)`` with M >= 1 -> ``matched_idxs (B, N)``."""
        # For every prediction, its best ground truth (first one on ties, like torch.max).
        matched_vals, matches = quality.max(dim=1)                     # (B, N), (B, N)
        all_matches = matches.clone() if self.allow_low_quality_matches else None

        below_low_threshold = matched_vals < self.low_threshold
        between_thresholds = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches.masked_fill_(below_low_threshold, self.BELOW_LOW_THRESHOLD)
        matches.masked_fill_(between_thresholds, self.BETWEEN_THRESHOLDS)

        if all_matches is not None:
            self.set_low_quality_matches_(matches, all_matches, quality)
        return matches

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, quality: Tensor) -> None:
        """Give each ground-truth box its best prediction(s), even when that IoU is low (in place).

        ``matches, all_matches (B, N)``, ``quality (B, M, N)``. For every real GT box, every prediction
        whose IoU with it equals that box's highest IoU (ties included) gets back its best match from
        ``all_matches`` -- which is this GT unless another GT overlaps the prediction even more.
        """
        highest_quality_foreach_gt = quality.max(dim=2).values           # (B, M)
        is_best = quality == highest_quality_foreach_gt[:, :, None]      # (B, M, N)
        is_best &= (highest_quality_foreach_gt >= 0)[:, :, None]         # skip padded GT rows
        # torchvision lists the (image, prediction) pairs with torch.where(is_best) and writes those; a
        # mask over predictions does the same without asking the GPU how many pairs there are (a sync).
        is_best_for_some_gt = is_best.any(dim=1)                         # (B, N)
        matches.copy_(torch.where(is_best_for_some_gt, all_matches, matches))


# --------------------------------------------------------------------------------------------------
# Sampling: a fixed-size, balanced mini-batch of anchors per image for the loss.
# --------------------------------------------------------------------------------------------------
class BalancedPositiveNegativeSampler:
    """Picks ``batch_size_per_image`` examples per image, at most ``positive_fraction`` of them positive.

    An image has ~100k anchors, almost all background. Training on all of them would drown the few
    positives; sampling e.g. 256 with up to half positive keeps the objectness loss balanced.
    If there are too few positives the rest is filled with negatives (and vice versa).

    ``sampler(labels)``: ``labels`` is a list (one per image) of ``(N_i,)`` tensors in which ``-1``
    (or any negative value) means ignore, ``0`` background and ``>= 1`` foreground.
    Returns ``(pos_masks, neg_masks)``: two lists of ``(N_i,)`` bool tensors marking the sampled
    positives and negatives (torchvision returns the same masks as uint8; use ``torch.where`` or
    boolean indexing on either).

    The random draw is one ``torch.randperm`` of the positives then one of the negatives per image,
    exactly as torchvision does, so with the same seed both pick the same examples.

    ``sampler.sample_indices(labels)`` returns the same draw as sorted index tensors instead of masks.
    It reads the numbers of positives and negatives of all images in *one* host-device transfer
    (``randperm`` needs them on the host); torchvision's two ``torch.where`` per image cost one each.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be >= 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        pos_inds, neg_inds = self.sample_indices(labels)
        pos_masks, neg_masks = [], []
        for labels_per_image, pos_chosen, neg_chosen in zip(labels, pos_inds, neg_inds):
            pos_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            pos_mask[pos_chosen] = True
            neg_mask[neg_chosen] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

    def sample_indices(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """The sampled positives and negatives of each image as sorted int64 indices into its labels.

        Same draw as ``__call__``: ``torch.where(pos_masks[i])[0]`` equals ``sample_indices(labels)[0][i]``.
        """
        for i, labels_per_image in enumerate(labels):
            if not isinstance(labels_per_image, Tensor) or labels_per_image.dim() != 1:
                raise ValueError(f"sampler: labels[{i}] must be a 1-D tensor, got "
                                 f"{getattr(labels_per_image, 'shape', type(labels_per_image).__name__)}")
        if len(labels) == 0:
            return [], []
        is_pos = [labels_per_image >= 1 for labels_per_image in labels]
        is_neg = [labels_per_image == 0 for labels_per_image in labels]
        # How many positives and negatives each image has: one host read for the whole batch.
        counts = torch.stack([torch.stack([p.sum(), n.sum()]) for p, n in zip(is_pos, is_neg)]).tolist()

        pos_inds, neg_inds = [], []
        for p, n, (n_pos, n_neg) in zip(is_pos, is_neg, counts):
            # All positives / negatives, ascending, as torch.where would list them; nonzero_static is told
            # how many there are, so it need not read that back from the GPU.
            positive = torch.nonzero_static(p, size=n_pos)[:, 0]
            negative = torch.nonzero_static(n, size=n_neg)[:, 0]

            num_pos = min(n_pos, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(n_neg, self.batch_size_per_image - num_pos)

            # A random subset of each pool (a random permutation, then its first k).
            pos_chosen = positive[torch.randperm(n_pos, device=positive.device)[:num_pos]]
            neg_chosen = negative[torch.randperm(n_neg, device=negative.device)[:num_neg]]
            pos_inds.append(pos_chosen.sort().values)
            neg_inds.append(neg_chosen.sort().values)
        return pos_inds, neg_inds


# --------------------------------------------------------------------------------------------------
# The head: one small conv net shared by all FPN levels.
# --------------------------------------------------------------------------------------------------
class _ConvReLU(nn.Sequential):
    """3x3 conv (padding 1, with bias) + ReLU. Its own Sequential so the state-dict keys read
    ``conv.0.0.weight`` like torchvision's (which wraps it in ``Conv2dNormActivation``)."""

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True))


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then two sibling 1x1 convs: objectness logits and box deltas.

    Args:
        in_channels: channels C of every FPN level (they are all the same).
        num_anchors: anchors per location A (the same at every level).
        conv_depth: number of 3x3 conv + ReLU blocks before the two predictors.

    ``forward(features)`` with ``features`` a list of ``(B, C, H_l, W_l)`` returns two lists, one entry
    per level: ``objectness (B, A, H_l, W_l)`` logits and ``bbox_deltas (B, 4 A, H_l, W_l)`` where
    channels ``4a..4a+3`` are ``(dx, dy, dw, dh)`` of anchor a.

    State-dict keys: ``conv.0.0.weight``, ``conv.0.0.bias``, ``cls_logits.weight/bias``,
    ``bbox_pred.weight/bias`` -- torchvision's. All convs start from N(0, 0.01) weights and zero bias.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*[_ConvReLU(in_channels) for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1, stride=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1, stride=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        objectness, bbox_deltas = [], []
        for feature in features:  # the same weights at every level
            t = self.conv(feature)
            objectness.append(self.cls_logits(t))
            bbox_deltas.append(self.bbox_pred(t))
        return objectness, bbox_deltas


def concat_box_prediction_layers(
    objectness: Sequence[Tensor], bbox_deltas: Sequence[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Flatten the per-level head outputs into the anchors' order (level -> y -> x -> anchor).

    ``objectness[l] (B, A, H_l, W_l)``, ``bbox_deltas[l] (B, 4 A, H_l, W_l)`` ->
    ``objectness (B, N)`` and ``bbox_deltas (B, N, 4)`` with ``N = sum_l H_l W_l A``.
    """
    flat_obj, flat_deltas = [], []
    for obj, deltas in zip(objectness, bbox_deltas):
        B, A, H, W = obj.shape
        # (B, A, H, W) -> (B, H, W, A): y, then x, then anchor, as AnchorGenerator orders them.
        flat_obj.append(obj.permute(0, 2, 3, 1).reshape(B, -1))
        # (B, A*4, H, W) -> (B, A, 4, H, W) -> (B, H, W, A, 4)
        flat_deltas.append(deltas.view(B, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, 4))
    return torch.cat(flat_obj, dim=1), torch.cat(flat_deltas, dim=1)


# --------------------------------------------------------------------------------------------------
# The RPN: anchors + head + proposal filtering + training targets and losses.
# --------------------------------------------------------------------------------------------------
def _top_n_dict(name: str, value: Union[int, Mapping[str, int]]) -> Dict[str, int]:
    """``{"training": n, "testing": m}`` from torchvision's dict, or from one int used in both modes."""
    if isinstance(value, int):
        return {"training": value, "testing": value}
    if isinstance(value, Mapping) and {"training", "testing"} <= set(value):
        return {"training": int(value["training"]), "testing": int(value["testing"])}
    raise ValueError(f"{name} must be an int or a dict with keys 'training' and 'testing', got {value!r}")


class RegionProposalNetwork(nn.Module):
    """Region Proposal Network: proposals for every image, and (in training) the two RPN losses.

    Args (torchvision's names and meanings):
        anchor_generator: an ``AnchorGenerator``.
        head: an ``RPNHead`` (stored as ``self.head`` -> keys ``rpn.head.conv.0.0.weight`` ...).
        fg_iou_thresh: an anchor with IoU >= this with some GT box is foreground (label 1).
        bg_iou_thresh: an anchor whose best IoU is < this is background (label 0); between: ignored (-1).
        batch_size_per_image: anchors sampled per image for the loss (torchvision's default 256).
        positive_fraction: at most this fraction of them positive (0.5).
        pre_nms_top_n: ``dict(training=, testing=)`` -- proposals kept *per level* before NMS.
        post_nms_top_n: ``dict(training=, testing=)`` -- proposals kept *per image* after NMS.
        nms_thresh: IoU threshold of the NMS between proposals (0.7).
        score_thresh: drop proposals with objectness probability below this (0.0).
        nms_fn: ``batched_nms(boxes, scores, idxs, iou_threshold)`` to use; default the from-scratch
            ``mrcnn_lite.ops.batched_nms``. The model passes ``kernels(cfg.use_torchvision_ops).batched_nms``.

    ``forward(images, image_sizes, features, targets=None)``:
        images: padded batch ``(B, C, H, W)`` (only its shape is used, for the anchors).
        image_sizes: B pairs ``(h, w)``: the size of each image *before* padding (proposals are clipped to it).
        features: ``OrderedDict[str, (B, C, H_l, W_l)]`` (or a list) from the FPN.
        targets: in training, B dicts with ``"boxes" (n_i, 4)`` xyxy; ``n_i`` may be 0.
        Returns ``(proposals, losses)``: ``proposals`` a list of B ``(N_i, 4)`` boxes (detached, sorted by
        decreasing objectness), ``losses`` ``{"loss_objectness", "loss_rpn_box_reg"}`` in training and
        ``{}`` in eval. The scores of the last call are kept in ``self.last_scores`` for inspection.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: Mapping[str, int],
        post_nms_top_n: Mapping[str, int],
        nms_thresh: float,
        score_thresh: float = 0.0,
        nms_fn: Optional[Callable[[Tensor, Tensor, Tensor, float], Tensor]] = None,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        # RPN deltas are not rescaled: weights (1, 1, 1, 1).
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.box_similarity = ops.box_iou
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = _top_n_dict("pre_nms_top_n", pre_nms_top_n)
        self._post_nms_top_n = _top_n_dict("post_nms_top_n", post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3  # proposals thinner than this (pixels) are dropped
        self.nms_fn = nms_fn if nms_fn is not None else ops.batched_nms
        self.last_scores: List[Tensor] = []

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    # ---- training targets ------------------------------------------------------------------------
    def assign_targets_to_anchors(
        self, anchors: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Label every anchor and find the GT box it should regress to.

        ``anchors``: B tensors ``(N, 4)``; ``targets[i]["boxes"] (n_i, 4)``.
        Returns ``labels`` (B tensors ``(N,)``: 1 foreground, 0 background, -1 ignored) and
        ``matched_gt_boxes`` (B tensors ``(N, 4)``: the GT box matched to each anchor; meaningful only
        where the label is 1). An image without boxes gets all-background labels.

        All images are matched at once: their GT boxes are padded to the largest count and padded
        rows get IoU -1, which the ``Matcher`` ignores.
        """
        anchors = torch.stack(list(anchors))                                   # (B, N, 4)
        B, N, _ = anchors.shape
        gt_boxes = [t["boxes"].to(anchors.dtype) for t in targets]
        max_gt = max(len(b) for b in gt_boxes)
        padded_gt = anchors.new_zeros((B, max(max_gt, 1), 4))                  # zero boxes as padding
        is_real = torch.zeros((B, max(max_gt, 1)), dtype=torch.bool, device=anchors.device)
        for i, boxes in enumerate(gt_boxes):
            padded_gt[i, : len(boxes)] = boxes
            is_real[i, : len(boxes)] = True

        # IoU of every GT box with every anchor, (B, M, N): the anchors are the same for every image
        # in practice, but we compute per image so that any anchor generator works.
        match_quality_matrix = torch.stack([self.box_similarity(g, a) for g, a in zip(padded_gt, anchors)])
        match_quality_matrix = match_quality_matrix.masked_fill(~is_real[:, :, None], -1.0)
        matched_idxs = self.proposal_matcher(match_quality_matrix)             # (B, N)

        # matched_idxs can be -1 / -2: clamp to gather *some* box; only positives use it.
        matched_gt_boxes = torch.gather(
            padded_gt, 1, matched_idxs.clamp(min=0)[:, :, None].expand(B, N, 4)
        )
        labels = (matched_idxs >= 0).to(anchors.dtype)
        labels.masked_fill_(matched_idxs == Matcher.BELOW_LOW_THRESHOLD, 0.0)
        labels.masked_fill_(matched_idxs == Matcher.BETWEEN_THRESHOLDS, -1.0)
        return list(labels.unbind(0)), list(matched_gt_boxes.unbind(0))

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: Sequence[Tensor],
        regression_targets: Sequence[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """The two RPN losses on a balanced sample of anchors.

        ``objectness (B, N)`` logits, ``pred_bbox_deltas (B, N, 4)``, ``labels``/``regression_targets``
        B tensors ``(N,)`` / ``(N, 4)``. Returns ``(objectness_loss, box_loss)``:

        * objectness: binary cross-entropy with logits, mean over the sampled anchors;
        * box: smooth-L1 (beta = 1/9) summed over the sampled *positives*, divided by the number of
          sampled anchors (positives + negatives) -- so the two losses share one normaliser.
        """
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        sampled_pos_inds = torch.where(torch.cat(pos_masks))[0]
        sampled_neg_inds = torch.where(torch.cat(neg_masks))[0]
        sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds])

        objectness = objectness.reshape(-1)
        pred_bbox_deltas = pred_bbox_deltas.reshape(-1, 4)
        labels = torch.cat(list(labels)).to(objectness.dtype)
        regression_targets = torch.cat(list(regression_targets))

        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[sampled_pos_inds],
            regression_targets[sampled_pos_inds],
            beta=1 / 9,
            reduction="sum",
        ) / max(sampled_inds.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled_inds], labels[sampled_inds])
        return objectness_loss, box_loss

    # ---- proposals --------------------------------------------------------------------------------
    def _get_top_n_idx(self, objectness: Tensor, num_anchors_per_level: Sequence[int]) -> Tensor:
        """Indices ``(B, K)`` of the ``pre_nms_top_n`` highest logits of each level (levels concatenated)."""
        top_n_idx, offset = [], 0
        for ob in objectness.split(list(num_anchors_per_level), dim=1):
            k = min(self.pre_nms_top_n(), ob.shape[1])
            top_n_idx.append(ob.topk(k, dim=1).indices + offset)
            offset += ob.shape[1]
        return torch.cat(top_n_idx, dim=1)

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        num_anchors_per_level: Sequence[int],
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """From all decoded anchors to the final proposals of each image.

        ``proposals (B, N, 4)`` decoded boxes, ``objectness (B, N)`` logits. Returns B boxes ``(N_i, 4)``
        and B scores ``(N_i,)`` (probabilities), sorted by decreasing score.
        """
        B = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().reshape(B, -1)  # no gradient flows through the selection
        levels = torch.cat([
            torch.full((n,), lvl, dtype=torch.int64, device=device) for lvl, n in enumerate(num_anchors_per_level)
        ])

        # 1. top-n per level, on the logits (sigmoid is monotonic, so the order is the same).
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)     # (B, K)
        batch_idx = torch.arange(B, device=device)[:, None]
        objectness = objectness[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]                            # (B, K, 4)
        levels = levels[top_n_idx]                                             # (B, K)
        scores = torch.sigmoid(objectness)

        final_boxes, final_scores = [], []
        for i, image_size in enumerate(image_sizes):
            # 2. clip to the image's own (unpadded) size. Its (h, w) are Python numbers, so this needs
            # no host-to-device copy (a sizes tensor for the whole batch would need one: a sync on a GPU).
            boxes_i = ops.clip_boxes_to_image(proposals[i], image_size)

            # 3. drop near-empty boxes and low scores (">=" like torchvision). One torch.where, then
            # plain indexing: each boolean-mask index would be a host-device sync of its own.
            widths = boxes_i[:, 2] - boxes_i[:, 0]
            heights = boxes_i[:, 3] - boxes_i[:, 1]
            keep = torch.where((widths >= self.min_size) & (heights >= self.min_size)
                               & (scores[i] >= self.score_thresh))[0]
            boxes_i, scores_i, lvl_i = boxes_i[keep], scores[i][keep], levels[i][keep]

            # 4. NMS, independently per level; 5. the best post_nms_top_n.
            kept = self.nms_fn(boxes_i, scores_i, lvl_i, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes_i[kept])
            final_scores.append(scores_i[kept])
        return final_boxes, final_scores

    # ---- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        image_sizes: Optional[Sequence[Tuple[int, int]]],
        features: Union[Mapping[str, Tensor], Sequence[Tensor]],
        targets: Optional[Sequence[Mapping[str, Tensor]]] = None,
    ) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        images_tensor = getattr(images, "tensors", images)
        if image_sizes is None:  # an ImageList carries its own sizes
            image_sizes = getattr(images, "image_sizes", None)
        features = list(features.values()) if isinstance(features, Mapping) else list(features)
        self._check_inputs(images_tensor, image_sizes, features, targets)

        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images_tensor, features)               # B x (N, 4)
        num_anchors_per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Under autocast the head's convs return float16/bfloat16. Decoding, clipping, NMS and the losses
        # run in float32 (ops.box_dtype); for a float32 or float64 model this is a no-op.
        objectness = objectness.to(box_dtype(objectness.dtype))
        pred_bbox_deltas = pred_bbox_deltas.to(box_dtype(pred_bbox_deltas.dtype))
        B, N = objectness.shape

        # Decode every anchor with its predicted deltas. Detached: Faster R-CNN does not backprop
        # through the proposal boxes (the box head treats them as fixed inputs).
        proposals = self.box_coder.decode_single(
            pred_bbox_deltas.detach().reshape(-1, 4), torch.cat(anchors)
        ).view(B, N, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, image_sizes, num_anchors_per_level)
        self.last_scores = scores

        losses: Dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RegionProposalNetwork: targets must be given in training mode")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, list(anchors))
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses

    def _check_inputs(self, images, image_sizes, features, targets) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise TypeError(f"RPN: images must be the padded batch tensor (B, C, H, W), got "
                            f"{getattr(images, 'shape', type(images).__name__)}")
        B = images.shape[0]
        if image_sizes is None or len(image_sizes) != B:
            raise ValueError(f"RPN: image_sizes must list one (h, w) per image ({B}), got {image_sizes}")
        if len(features) == 0:
            raise ValueError("RPN: features must contain at least one feature map")
        for level, f in enumerate(features):
            if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[0] != B:
                raise ValueError(f"RPN: feature level {level} must have shape ({B}, C, H, W), got "
                                 f"{getattr(f, 'shape', type(f).__name__)}")
        if targets is None:
            return
        if len(targets) != B:
            raise ValueError(f"RPN: got {len(targets)} targets for {B} images")
        for i, t in enumerate(targets):
            if "boxes" not in t:
                raise ValueError(f"RPN: targets[{i}] has no 'boxes'")
            boxes = t["boxes"]
            if not isinstance(boxes, Tensor) or not boxes.is_floating_point():
                raise TypeError(f"RPN: targets[{i}]['boxes'] must be a floating-point tensor, got "
                                f"{getattr(boxes, 'dtype', type(boxes).__name__)}")
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"RPN: targets[{i}]['boxes'] must have shape (n, 4), got {tuple(boxes.shape)}")


def build_rpn(cfg, in_channels: int, nms_fn: Optional[Callable] = None) -> RegionProposalNetwork:
    """The RPN described by a ``MaskRCNNConfig`` (anchor sizes/ratios and every ``rpn_*`` field).

    ``in_channels``: the FPN's output channels. ``nms_fn`` defaults to the one chosen by
    ``cfg.use_torchvision_ops`` (see ``kernels.py``).
    """
    from .kernels import kernels

    anchor_generator = AnchorGenerator(cfg.anchor_sizes, (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchor_generator,
        head,
        fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=cfg.rpn_positive_fraction,
        pre_nms_top_n=dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=cfg.rpn_post_nms_top_n_train, testing=cfg.rpn_post_nms_top_n_test),
        nms_thresh=cfg.rpn_nms_thresh,
        score_thresh=cfg.rpn_score_thresh,
        nms_fn=nms_fn if nms_fn is not None else kernels(cfg.use_torchvision_ops).batched_nms,
    )
