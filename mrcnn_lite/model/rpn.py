"""The Region Proposal Network (Faster R-CNN, Ren et al. 2015), as used by Mask R-CNN.

The RPN looks at every anchor (see ``anchors.py``) and answers two questions with a tiny conv head
shared over all FPN levels (``rpn_head.py``):

* objectness: is there an object here?        ``cls_logits``: A logits per location
* box deltas: how should the anchor move?      ``bbox_pred``:  4 A deltas per location

From those it produces *proposals* -- a few hundred to a few thousand boxes per image that the box
head will classify. During training it also learns: each anchor is matched to the ground truth
(``matching.Matcher``), labelled object (1) / background (0) / ignore (-1), a balanced random subset is
sampled (``matching.BalancedPositiveNegativeSampler``), and two losses are computed on that subset.

The pieces, in the order the data flows through ``RegionProposalNetwork.forward``::

    features --RPNHead--> objectness (B, sum A*H*W), pred_bbox_deltas (B, sum A*H*W, 4)
    anchors  --BoxCoder.decode(deltas)--> proposals (B, sum A*H*W, 4)
    filter_proposals: top-n per level (_get_top_n_idx) -> sigmoid -> clip -> remove small
                      -> remove low score -> NMS per level -> top-n per image
    training: assign_targets_to_anchors (Matcher) -> labels, regression_targets
              -> compute_loss (fg_bg_sampler, then rpn_loss)

The file follows that order. Every step is a method with torchvision's name, called through ``self``, so
a subclass that overrides one (``filter_proposals``, ``_get_top_n_idx``, ``pre_nms_top_n``,
``assign_targets_to_anchors``, ``compute_loss``, ...) changes what the RPN does.

Semantics, argument names and defaults follow ``torchvision.models.detection.rpn`` so the two can be
read side by side; the tests prove the same weights give the same proposals and losses. Target
assignment and top-n selection handle all images of the batch at once (same result as a loop);
clipping, filtering and NMS go image by image, since each image keeps a different number of boxes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import BoxCoder, box_dtype
from .anchors import AnchorGenerator
from .matching import BalancedPositiveNegativeSampler, Matcher
from .rpn_head import RPNHead, concat_box_prediction_layers
from .transform import ImageList

__all__ = ["RPNHead", "RegionProposalNetwork", "concat_box_prediction_layers", "rpn_loss", "build_rpn"]


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
        pre_nms_top_n: ``dict(training=, testing=)`` -- proposals kept *per level* before NMS
            (one int: the same number in both modes).
        post_nms_top_n: ``dict(training=, testing=)`` -- proposals kept *per image* after NMS (or an int).
        nms_thresh: IoU threshold of the NMS between proposals (0.7).
        score_thresh: drop proposals with objectness probability below this (0.0).
        nms_fn: ``batched_nms(boxes, scores, idxs, iou_threshold)`` to use; default the from-scratch
            ``mrcnn_lite.ops.batched_nms``. ``build_model`` passes the one its ``cfg.kernels`` picks.
        sampler: the class of ``fg_bg_sampler``, built with ``batch_size_per_image`` and
            ``positive_fraction``; default ``BalancedPositiveNegativeSampler``.

    ``forward(images, features, targets=None, intermediates=None)`` (torchvision's signature):
        images: an ``ImageList``: the padded batch ``(B, C, H, W)`` (its shape places the anchors) and
            ``image_sizes``, B pairs ``(h, w)`` before padding (proposals are clipped to them).
        features: ``OrderedDict[str, (B, C, H_l, W_l)]`` from the FPN.
        targets: in training, B dicts with ``"boxes" (n_i, 4)`` xyxy; ``n_i`` may be 0.
        Returns ``(proposals, losses)``: ``proposals`` a list of B ``(N_i, 4)`` boxes (detached, sorted by
        decreasing objectness), ``losses`` ``{"loss_objectness", "loss_rpn_box_reg"}`` in training and
        ``{}`` in eval. ``intermediates``, a dict, receives for the notebooks: ``anchors``,
        ``objectness_per_level`` (the head's logits ``(B, A, H_l, W_l)``), ``objectness`` (the same, flat
        in the anchors' order, ``(B, N)``), ``num_anchors_per_level``, ``decoded_proposals`` (every anchor
        moved by its deltas, ``(B, N, 4)``), ``pre_nms_top_n_idx`` (``(B, K)`` indices into N: the
        per-level top-n), ``proposals`` and ``proposal_scores`` (probabilities).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: Union[int, Mapping[str, int]],
        post_nms_top_n: Union[int, Mapping[str, int]],
        nms_thresh: float,
        score_thresh: float = 0.0,
        nms_fn: Optional[Callable[[Tensor, Tensor, Tensor, float], Tensor]] = None,
        sampler: Type[BalancedPositiveNegativeSampler] = BalancedPositiveNegativeSampler,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        # RPN deltas are not rescaled: weights (1, 1, 1, 1).
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.box_similarity = ops.box_iou
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = sampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = _top_n_dict("pre_nms_top_n", pre_nms_top_n)
        self._post_nms_top_n = _top_n_dict("post_nms_top_n", post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3  # proposals thinner than this (pixels) are dropped
        self.nms_fn = nms_fn if nms_fn is not None else ops.batched_nms

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

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
            # 2. clip to the image's own (unpadded) size.
            boxes_i = ops.clip_boxes_to_image(proposals[i], image_size)

            # 3. drop near-empty boxes (the test of ops.remove_small_boxes) and 4. low scores (">=", as torchvision);
            # both conditions are listed with one torch.where (one host read on a GPU).
            keep = torch.where(ops.large_box_mask(boxes_i, self.min_size) & (scores[i] >= self.score_thresh))[0]
            boxes_i, scores_i, lvl_i = boxes_i[keep], scores[i][keep], levels[i][keep]

            # 5. NMS, independently per level; 6. the best post_nms_top_n.
            kept = self.nms_fn(boxes_i, scores_i, lvl_i, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes_i[kept])
            final_scores.append(scores_i[kept])
        return final_boxes, final_scores

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
        """Sample anchors with ``self.fg_bg_sampler``, then ``rpn_loss``. ``objectness (B, N)`` logits,
        ``pred_bbox_deltas (B, N, 4)``, ``labels``/``regression_targets``: B tensors ``(N,)`` / ``(N, 4)``."""
        pos_inds, neg_inds = self.fg_bg_sampler.sample_indices(labels)
        offsets = [i * objectness.shape[1] for i in range(len(pos_inds))]  # image i's anchors start here
        return rpn_loss(
            objectness.reshape(-1), pred_bbox_deltas.reshape(-1, 4),
            torch.cat(list(labels)), torch.cat(list(regression_targets)),
            torch.cat([p + o for p, o in zip(pos_inds, offsets)]),
            torch.cat([n + o for n, o in zip(neg_inds, offsets)]),
        )

    # ---- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        images: ImageList,
        features: Mapping[str, Tensor],
        targets: Optional[Sequence[Mapping[str, Tensor]]] = None,
        intermediates: Optional[Dict[str, Any]] = None,
    ) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        features = list(features.values())
        objectness_per_level, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)                      # B x (N, 4)
        num_anchors_per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness_per_level]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness_per_level, pred_bbox_deltas)
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
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        if intermediates is not None:
            intermediates.update(
                anchors=anchors, objectness_per_level=objectness_per_level, objectness=objectness,
                num_anchors_per_level=num_anchors_per_level, decoded_proposals=proposals,
                proposals=boxes, proposal_scores=scores,
                pre_nms_top_n_idx=self._get_top_n_idx(objectness.detach(), num_anchors_per_level),
            )

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


def rpn_loss(
    objectness: Tensor,
    pred_bbox_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    sampled_pos_inds: Tensor,
    sampled_neg_inds: Tensor,
) -> Tuple[Tensor, Tensor]:
    """The two RPN losses on a sample of anchors.

    ``objectness (N,)`` logits, ``pred_bbox_deltas (N, 4)``, ``labels (N,)`` (1 / 0 / -1),
    ``regression_targets (N, 4)``, and the sampled anchors as indices ``sampled_pos_inds (P,)``,
    ``sampled_neg_inds (Q,)`` (all images of a batch concatenated). Returns ``(objectness_loss, box_loss)``:

    * objectness: binary cross-entropy with logits, mean over the sampled anchors;
    * box: smooth-L1 (beta = 1/9) summed over the sampled *positives*, divided by the number of
      sampled anchors (positives + negatives) -- so the two losses share one normaliser.
    """
    sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds])
    box_loss = F.smooth_l1_loss(
        pred_bbox_deltas[sampled_pos_inds],
        regression_targets[sampled_pos_inds],
        beta=1 / 9,
        reduction="sum",
    ) / max(sampled_inds.numel(), 1)
    objectness_loss = F.binary_cross_entropy_with_logits(
        objectness[sampled_inds], labels.to(objectness.dtype)[sampled_inds]
    )
    return objectness_loss, box_loss


def build_rpn(
    cfg,
    in_channels: int,
    nms_fn: Callable[[Tensor, Tensor, Tensor, float], Tensor] = ops.batched_nms,
    sampler: Type[BalancedPositiveNegativeSampler] = BalancedPositiveNegativeSampler,
    anchor_generator: Type[AnchorGenerator] = AnchorGenerator,
) -> RegionProposalNetwork:
    """The RPN described by a ``MaskRCNNConfig``: anchor sizes/ratios and every ``rpn_*`` field.

    ``in_channels``: the FPN's output channels. ``nms_fn``, ``sampler``, ``anchor_generator``: the pieces
    to build with (default the reference floor's; ``mrcnn_lite.build_model`` passes those ``cfg.kernels`` picks).
    """
    generator = anchor_generator(cfg.anchor_sizes, (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
    head = RPNHead(in_channels, generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        generator,
        head,
        fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=cfg.rpn_positive_fraction,
        pre_nms_top_n=dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=cfg.rpn_post_nms_top_n_train, testing=cfg.rpn_post_nms_top_n_test),
        nms_thresh=cfg.rpn_nms_thresh,
        score_thresh=cfg.rpn_score_thresh,
        nms_fn=nms_fn,
        sampler=sampler,
    )
