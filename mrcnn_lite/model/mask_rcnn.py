"""Mask R-CNN assembled from its stages, and torchvision weight loading.

    images (list of (3, h_i, w_i) in [0, 1])
      transform   normalise, resize, pad into one batch                 ImageList (B, 3, H, W)
      backbone    ResNet + FPN                                           features '0'..'3', 'pool'
      rpn         anchors, objectness, deltas -> proposals per image     list of (P_i, 4)
      roi_heads   box branch: RoIAlign 7x7 -> TwoMLPHead -> FastRCNNPredictor
                  mask branch: RoIAlign 14x14 -> MaskRCNNHeads -> MaskRCNNPredictor
      transform.postprocess   boxes back to the original size, masks pasted into the image

Training returns the five losses ``loss_classifier, loss_box_reg, loss_mask, loss_objectness,
loss_rpn_box_reg``; evaluation returns one dict per image with ``boxes (m, 4)``, ``labels (m,)``,
``scores (m,)`` and ``masks (m, 1, H, W)`` (soft, in [0, 1]; threshold at 0.5 for a binary mask).

Module names follow torchvision, so ``build_model(config.r50_fpn(91))`` has exactly the 307 state-dict
keys of torchvision's COCO v1 checkpoint. If you downloaded it (this package never downloads), loading it
is one line, with torchvision's builder and keywords (``maskrcnn_resnet50_fpn`` below)::

    model = ml.maskrcnn_resnet50_fpn(weights="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")

``forward(images, targets, return_intermediates=True)`` also returns a dict of every stage's results
(transformed images, features, anchors, proposals, sampled RoIs, logits, detections before
post-processing, ...) for the notebooks.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import config as _config
from .. import ops
from ..ops import BoxCoder, MultiScaleRoIAlign, box_dtype
from .backbone import resnet_fpn_backbone
from . import box_head as _box_head
from .box_head import FastRCNNPredictor, TwoMLPHead, fastrcnn_loss, postprocess_detections, select_training_samples
from .kernels import kernels
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor, maskrcnn_inference, maskrcnn_loss
from .rpn import BalancedPositiveNegativeSampler, Matcher, build_rpn
from .transform import GeneralizedRCNNTransform


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
    Returns ``(result, losses)``: in eval, B dicts ``boxes, labels, scores, masks (m, 1, 28, 28)``; in
    training, ``{"loss_classifier", "loss_box_reg", "loss_mask"}``.

    The constructor takes torchvision's arguments in torchvision's order; the keypoint branch (Keypoint
    R-CNN) is not built here, so ``keypoint_*`` must stay None. torchvision's methods are here too
    (``add_gt_proposals``, ``assign_targets_to_proposals``, ``subsample``, ``check_targets``,
    ``select_training_samples``, ``postprocess_detections``, ``has_mask``, ``has_keypoint``), each calling
    the function of ``box_head.py`` that does the work.
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
        use_torchvision_ops: bool = True,
    ):
        super().__init__()
        if keypoint_roi_pool is not None or keypoint_head is not None or keypoint_predictor is not None:
            raise ValueError("RoIHeads: keypoint_roi_pool/keypoint_head/keypoint_predictor are not supported "
                             "(mrcnn_lite builds Mask R-CNN, not Keypoint R-CNN); leave them None")
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

        k = kernels(use_torchvision_ops)
        self.batched_nms = k.batched_nms
        self.roi_align = k.roi_align

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def has_keypoint(self) -> bool:
        return False  # Mask R-CNN only

    # ---- torchvision's methods; the work is done by the functions of box_head.py ----
    def add_gt_proposals(self, proposals: List[Tensor], gt_boxes: List[Tensor]) -> List[Tensor]:
        """Each image's ``gt_boxes (n_i, 4)`` appended to its ``proposals (P_i, 4)``."""
        return _box_head.add_gt_proposals(proposals, gt_boxes)

    def assign_targets_to_proposals(self, proposals: List[Tensor], gt_boxes: List[Tensor], gt_labels: List[Tensor]):
        """``(matched_idxs, labels)`` per image, see ``box_head.assign_targets_to_proposals``."""
        return _box_head.assign_targets_to_proposals(proposals, gt_boxes, gt_labels, self.proposal_matcher)

    def subsample(self, labels: List[Tensor]) -> List[Tensor]:
        """Indices of the sampled RoIs per image, ascending (``fg_bg_sampler``'s draw)."""
        return _box_head.subsample(labels, self.fg_bg_sampler)

    def check_targets(self, targets: Optional[List[Dict[str, Tensor]]]) -> None:
        """Training targets must be given, each with ``boxes`` and ``labels`` (and ``masks`` with a mask branch)."""
        if targets is None:
            raise ValueError("RoIHeads: targets must be given in training mode")
        keys = ["boxes", "labels"] + (["masks"] if self.has_mask() else [])
        for i, t in enumerate(targets):
            for key in keys:
                if key not in t:
                    raise ValueError(f"RoIHeads: targets[{i}] has no {key!r}")

    def select_training_samples(self, proposals: List[Tensor], targets: Optional[List[Dict[str, Tensor]]]):
        """``(proposals, matched_idxs, labels, regression_targets)`` of the sampled RoIs, per image."""
        self.check_targets(targets)
        return select_training_samples(proposals, [t["boxes"] for t in targets], [t["labels"] for t in targets],
                                       self.proposal_matcher, self.fg_bg_sampler, self.box_coder)

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
                               image_shapes: List[Tuple[int, int]]):
        """``(boxes, scores, labels)`` per image, see ``box_head.postprocess_detections``."""
        return postprocess_detections(class_logits, box_regression, proposals, image_shapes, self.box_coder,
                                      self.score_thresh, self.nms_thresh, self.detections_per_img, self.batched_nms)

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
            if targets is None:
                raise ValueError("RoIHeads: targets must be given in training mode")
            proposals, matched_idxs, labels, regression_targets = select_training_samples(
                proposals,
                [t["boxes"] for t in targets],
                [t["labels"] for t in targets],
                self.proposal_matcher,
                self.fg_bg_sampler,
                self.box_coder,
            )
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
            # Only positive RoIs get a mask loss; their boxes crop the GT masks (seed 002, point 5).
            # torch.where(lab > 0) per image would read each count back from the GPU; one read for the
            # batch, then nonzero_static (told the count), gives the same indices.
            is_pos = [lab > 0 for lab in labels]
            num_pos = torch.stack([p.sum() for p in is_pos]).tolist()
            mask_proposals, pos_matched_idxs = [], []
            for p, m, pos_mask, n in zip(proposals, matched_idxs, is_pos, num_pos):
                pos = torch.nonzero_static(pos_mask, size=n)[:, 0]
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
            losses["loss_mask"] = maskrcnn_loss(
                mask_logits, mask_proposals,
                [t["masks"] for t in targets], [t["labels"] for t in targets], pos_matched_idxs,
                self.roi_align,
            )
        else:
            for mask_prob, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result):
                r["masks"] = mask_prob
        return result, losses


# ----------------------------------------------------------------------------------------------------
# input validation (before any kernel runs)
# ----------------------------------------------------------------------------------------------------

def check_inputs(
    images: Any, targets: Any, num_classes: int, training: bool, need_masks: bool = True
) -> None:
    """Raise a TypeError/ValueError naming the image and the field if the inputs break the contract.

    images: list of float ``(3, H, W)``; targets (required in training): list of dicts with
    ``boxes (n, 4)`` float xyxy of positive width and height, ``labels (n,)`` int64 in
    ``[1, num_classes)`` and ``masks (n, H, W)`` of the image's size. ``n = 0`` is allowed.
    """
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise TypeError(
            f"images must be a list of (3, H, W) tensors, got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if isinstance(images, Tensor) else "")
        )
    if len(images) == 0:
        raise ValueError("images is empty: give at least one (3, H, W) tensor")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise TypeError(f"image {i}: expected a torch.Tensor, got {type(img).__name__}")
        if not img.is_floating_point():
            raise TypeError(f"image {i}: expected a floating-point tensor with values in [0, 1], got {img.dtype}")
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i}: expected shape (3, H, W), got {tuple(img.shape)}")
        if img.shape[1] == 0 or img.shape[2] == 0:
            raise ValueError(f"image {i}: empty image of shape {tuple(img.shape)}")

    if targets is None:
        if training:
            raise ValueError("targets must be given in training mode (a list with one dict per image)")
        return
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    value_problems = []  # per image: a 0-dim bool tensor, True if some box or label *value* is bad
    for i, (img, t) in enumerate(zip(images, targets)):
        if not isinstance(t, dict):
            raise TypeError(f"target {i}: expected a dict, got {type(t).__name__}")
        required = ("boxes", "labels", "masks") if need_masks else ("boxes", "labels")
        for key in required:
            if key not in t:
                raise ValueError(f"target {i}: missing {key!r} (has {sorted(t)})")
            if not isinstance(t[key], Tensor):
                raise TypeError(f"target {i}: {key!r} must be a torch.Tensor, got {type(t[key]).__name__}")
        boxes, labels = t["boxes"], t["labels"]
        if not boxes.is_floating_point():
            raise TypeError(f"target {i}: 'boxes' must be floating point, got {boxes.dtype}")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"target {i}: 'boxes' must have shape (n, 4), got {tuple(boxes.shape)}")
        n = boxes.shape[0]
        if labels.dtype != torch.int64:
            raise TypeError(f"target {i}: 'labels' must be int64, got {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"target {i}: 'labels' must have shape ({n},) to match boxes, got {tuple(labels.shape)}")
        value_problems.append(
            ~torch.isfinite(boxes).all() | (boxes[:, 2:] <= boxes[:, :2]).any()
            | ((labels < 1) | (labels >= num_classes)).any().to(boxes.device)
        )
        if need_masks:
            masks = t["masks"]
            H, W = img.shape[-2:]
            if masks.shape != (n, H, W):
                raise ValueError(
                    f"target {i}: 'masks' must have shape (n, H, W) = ({n}, {H}, {W}) to match the boxes and "
                    f"the image, got {tuple(masks.shape)}"
                )
    # Reading a value is a host-device sync when the targets are on a GPU: one read for the whole batch,
    # and the search for the culprit (for a precise message) only when something is wrong.
    if value_problems and bool(torch.stack([p.to(value_problems[0].device) for p in value_problems]).any()):
        for i, t in enumerate(targets):
            _raise_on_bad_values(i, t["boxes"], t["labels"], num_classes)


def _raise_on_bad_values(i: int, boxes: Tensor, labels: Tensor, num_classes: int) -> None:
    """Raise a ValueError naming target ``i``'s first non-finite or degenerate box or out-of-range label."""
    if not torch.isfinite(boxes).all():
        j = int(torch.where(~torch.isfinite(boxes).all(dim=1))[0][0])
        raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} is not finite")
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
    if degenerate.any():
        j = int(torch.where(degenerate)[0][0])
        raise ValueError(
            f"target {i}: box {j} {boxes[j].tolist()} must have positive width and height (x1 < x2, y1 < y2)"
        )
    bad = (labels < 1) | (labels >= num_classes)
    if bad.any():
        j = int(torch.where(bad)[0][0])
        raise ValueError(
            f"target {i}: label {int(labels[j])} of box {j} is out of range [1, {num_classes}) "
            f"(0 is background, num_classes={num_classes})"
        )


# ----------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------

class MaskRCNN(nn.Module):
    """Mask R-CNN built from a ``MaskRCNNConfig`` (see ``mrcnn_lite.config``).

    ``channels_last=True`` (default) runs the backbone in NHWC memory layout, which is faster on
    CPUs (oneDNN) and GPUs (tensor cores); ``False`` keeps PyTorch's default NCHW.

    Submodules (torchvision's names): ``transform``, ``backbone``, ``rpn``, ``roi_heads``.

    ``model(images, targets=None, return_intermediates=False)``:
        images:  list of B float ``(3, h_i, w_i)`` in [0, 1] (sizes may differ)
        targets: list of B dicts ``boxes (n, 4)`` float xyxy, ``labels (n,)`` int64, ``masks (n, h_i, w_i)`` uint8
        training -> dict of the five losses; eval -> list of B dicts ``boxes, labels, scores, masks (m, 1, h_i, w_i)``.
        With ``return_intermediates=True`` the result is ``(output, intermediates)``.
    """

    def __init__(self, cfg: _config.MaskRCNNConfig, channels_last: bool = True):
        super().__init__()
        self.cfg = cfg
        self.channels_last = channels_last
        k = kernels(cfg.use_torchvision_ops)

        self.transform = GeneralizedRCNNTransform(
            cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std, cfg.size_divisible
        )
        self.backbone = resnet_fpn_backbone(cfg)
        if channels_last:
            # Store the conv weights channels-last (NHWC) as well as feeding NHWC images: the conv
            # kernels (oneDNN on CPU, cuDNN tensor cores on GPU) then skip layout conversions.
            # Same numbers up to float rounding; state-dict keys and shapes are unchanged.
            self.backbone.to(memory_format=torch.channels_last)
        out_channels = self.backbone.out_channels
        self.rpn = build_rpn(cfg, out_channels, nms_fn=k.batched_nms)

        levels = ["0", "1", "2", "3"]  # the FPN levels the RoI heads pool from (not 'pool')
        box_roi_pool = MultiScaleRoIAlign(levels, cfg.box_roi_output_size, cfg.box_roi_sampling_ratio,
                                          roi_align=k.roi_align)
        resolution = box_roi_pool.output_size[0]
        box_head = TwoMLPHead(out_channels * resolution ** 2, cfg.box_representation_size)
        box_predictor = FastRCNNPredictor(cfg.box_representation_size, cfg.num_classes)

        mask_roi_pool = MultiScaleRoIAlign(levels, cfg.mask_roi_output_size, cfg.mask_roi_sampling_ratio,
                                           roi_align=k.roi_align)
        mask_head = MaskRCNNHeads(out_channels, cfg.mask_layers, cfg.mask_dilation)
        dim_reduced = cfg.mask_dim_reduced if cfg.mask_dim_reduced is not None else cfg.mask_layers[-1]
        mask_predictor = MaskRCNNPredictor(cfg.mask_layers[-1], dim_reduced, cfg.num_classes)

        self.roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor,
            cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh,
            cfg.box_batch_size_per_image, cfg.box_positive_fraction, cfg.bbox_reg_weights,
            cfg.box_score_thresh, cfg.box_nms_thresh, cfg.box_detections_per_img,
            mask_roi_pool, mask_head, mask_predictor,
            use_torchvision_ops=cfg.use_torchvision_ops,
        )

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def forward(
        self,
        images: List[Tensor],
        targets: Optional[List[Dict[str, Tensor]]] = None,
        return_intermediates: bool = False,
    ):
        check_inputs(images, targets, self.cfg.num_classes, self.training, need_masks=self.training)
        inter: Dict[str, Any] = {}
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]

        image_list, targets_t = self.transform(images, targets)
        batch = image_list.tensors
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.backbone(batch)
        proposals, proposal_losses = self.rpn(image_list.tensors, image_list.image_sizes, features, targets_t)
        if return_intermediates:
            inter.update(
                images=image_list.tensors, image_sizes=image_list.image_sizes,
                original_image_sizes=original_image_sizes, targets=targets_t, features=features,
                anchors=self.rpn.anchor_generator(image_list.tensors, list(features.values())),
                proposals=proposals, proposal_scores=list(self.rpn.last_scores),
            )
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets_t if self.training else None,
            inter if return_intermediates else None,
        )

        if self.training:
            losses: Dict[str, Tensor] = {}
            losses.update(detector_losses)
            losses.update(proposal_losses)
            return (losses, inter) if return_intermediates else losses

        if return_intermediates:  # before postprocess: resized-image boxes, 28x28 masks
            inter["detections"] = [dict(d) for d in detections]
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)
        return (detections, inter) if return_intermediates else detections

    def forward_with_intermediates(self, images, targets=None):
        """``model(images, targets, return_intermediates=True)``: ``(output, intermediates)``."""
        return self.forward(images, targets, return_intermediates=True)


def build_model(cfg: _config.MaskRCNNConfig) -> MaskRCNN:
    """A Mask R-CNN from a config, e.g. ``build_model(config.tiny(num_classes=4))`` for the CPU lessons."""
    return MaskRCNN(cfg)


def compile_backbone(model: MaskRCNN, mode: Optional[str] = None, **compile_kwargs) -> MaskRCNN:
    """Compile the fixed-shape part of ``model`` with ``torch.compile``: the backbone (ResNet + FPN) and the
    RPN head. In place; returns ``model``. Opt-in: nothing else in the package compiles.

    Why only these: they are pure convolution stacks whose shapes depend only on the padded batch's shape,
    so one compiled graph serves every step when that shape is fixed (e.g. all images of one size). The
    rest of the model -- proposal filtering, NMS, sampling, RoI heads -- has data-dependent shapes (how many
    boxes survive), which a compiler can only handle with graph breaks or dynamic shapes, for little gain.

    What it buys: the compiler fuses the elementwise work (frozen BN, ReLU, the residual adds, the FPN's
    upsample-and-add) into the convolutions' epilogues, and on a GPU ``mode="reduce-overhead"`` records
    the kernels in a CUDA graph and replays them with one launch, which removes the per-kernel launch
    overhead (a few microseconds each, for a couple of hundred kernels per forward pass: it matters at
    batch 1-2). A change of input shape triggers a recompilation (and a new CUDA graph); keep shapes
    fixed, or pass ``dynamic=True``.

    Args:
        mode: ``torch.compile``'s mode: ``None`` (default), ``"reduce-overhead"`` (CUDA graphs) or
            ``"max-autotune"``.
        compile_kwargs: passed on to ``torch.compile``, e.g. ``backend="eager"`` to check that the code
            traces as one graph (``fullgraph=True``) without the C++/Triton compiler the default backend needs.

    ``nn.Module.compile`` compiles a module in place, so state-dict keys stay the same (no ``_orig_mod.``)
    and checkpoints load unchanged. The first call of each new shape (and of train vs eval) compiles:
    seconds to minutes.
    """
    model.backbone.compile(mode=mode, **compile_kwargs)
    model.rpn.head.compile(mode=mode, **compile_kwargs)
    return model


# ---------------------------------------------------------------------------------------------------
# torchvision's builder: maskrcnn_resnet50_fpn(*, weights, progress, num_classes, weights_backbone, ...)
# ---------------------------------------------------------------------------------------------------

# torchvision's weights, by the names its enums accept, and the file its download would have left in the
# torch hub cache. mrcnn_lite never downloads: a name means "that file, if it is in the cache".
MASKRCNN_WEIGHTS_FILES = {"COCO_V1": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"}
MASKRCNN_WEIGHTS_FILES["DEFAULT"] = MASKRCNN_WEIGHTS_FILES["COCO_V1"]
RESNET50_WEIGHTS_FILES = {"IMAGENET1K_V1": "resnet50-0676ba61.pth", "IMAGENET1K_V2": "resnet50-11ad3fa6.pth"}
RESNET50_WEIGHTS_FILES["DEFAULT"] = RESNET50_WEIGHTS_FILES["IMAGENET1K_V2"]


# torchvision's MaskRCNN keywords that take a module (a replacement for one of the model's parts).
TORCHVISION_MODULE_ARGUMENTS = ("rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head", "box_predictor",
                                "mask_roi_pool", "mask_head", "mask_predictor")


def validate_trainable_layers(is_trained: bool, trainable_backbone_layers: Optional[int], max_value: int = 5,
                              default_value: int = 3) -> int:
    """torchvision's rule for ``trainable_backbone_layers``: without pretrained weights every layer trains
    (a value given anyway draws a warning); with them the default is 3; the valid range is 0..max_value."""
    if not is_trained:
        if trainable_backbone_layers is not None:
            warnings.warn(
                "Changing trainable_backbone_layers has no effect if neither weights nor weights_backbone are "
                f"given, falling back to trainable_backbone_layers={max_value} so that all layers are trainable"
            )
        trainable_backbone_layers = max_value
    if trainable_backbone_layers is None:
        trainable_backbone_layers = default_value
    if not 0 <= trainable_backbone_layers <= max_value:
        raise ValueError(
            f"trainable_backbone_layers should be in the range [0, {max_value}], got {trainable_backbone_layers}"
        )
    return trainable_backbone_layers


def read_weights(weights, known_files: Dict[str, str], argument: str) -> Dict[str, Tensor]:
    """A state dict from what torchvision's builders take as ``weights``, without downloading anything.

    ``weights``: a state dict; a path to a checkpoint file (loaded with ``weights_only=True``); or one of
    torchvision's weights enums (anything with a ``.url``) or its name (``"DEFAULT"``,
    ``"COCO_V1"``, ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``...), looked up in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``), where torchvision keeps the files it downloaded.
    """
    if isinstance(weights, Mapping):
        return dict(weights)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    name = weights.rsplit(".", 1)[-1] if isinstance(weights, str) else None  # "ResNet50_Weights.DEFAULT" -> "DEFAULT"
    if hasattr(weights, "url"):  # a torchvision WeightsEnum member
        path = cache / os.path.basename(weights.url)
    elif name in known_files and not Path(weights).is_file():
        path = cache / known_files[name]
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
    else:
        raise TypeError(f"{argument} must be a state dict, a checkpoint path or torchvision weights, "
                        f"got {type(weights).__name__}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{argument}: {path} not found. mrcnn_lite never downloads: pass a state dict or a checkpoint path, "
            f"or put torchvision's file in {cache} (where its download keeps it) and name it by its weights "
            f"{sorted(known_files)}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"{argument}: {path} does not hold a state dict (got {type(state).__name__})")
    if isinstance(state.get("model"), Mapping):  # a training checkpoint {"model": ..., "optimizer": ...}
        state = state["model"]
    return dict(state)


def maskrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                          weights_backbone=None, trainable_backbone_layers: Optional[int] = None,
                          **kwargs) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1), with its keywords and their meaning.

    Args:
        weights: Mask R-CNN weights: a state dict, a checkpoint path, or torchvision's
            ``MaskRCNN_ResNet50_FPN_Weights`` / its name, read from the torch hub cache (never downloaded;
            see ``read_weights``). The model then has ``FrozenBatchNorm2d`` (eps 0, as torchvision's COCO_V1)
            and ``num_classes`` defaults to the checkpoint's.
        progress: accepted for torchvision's signature; nothing is downloaded.
        num_classes: classes including background; default 91 (or the checkpoint's).
        weights_backbone: an ImageNet ResNet-50 for the body (same forms; ``ResNet50_Weights``); then
            ``FrozenBatchNorm2d`` with eps 1e-5, as torchvision.
        trainable_backbone_layers: 0..5 of (layer4, layer3, layer2, layer1, conv1) trained; default 3 with
            weights. Without any weights every layer trains and the normalisation is a trainable
            ``BatchNorm2d``, as torchvision builds it (a value given anyway warns and becomes 5).
        kwargs: torchvision's ``MaskRCNN`` keywords. Numbers and tuples are config fields (``min_size``,
            ``rpn_*``, ``box_*``, ...; see ``MaskRCNNConfig``); config fields given here (e.g.
            ``norm="frozen_bn"``) win over the choices above. Modules (``rpn_anchor_generator``,
            ``rpn_head``, ``box_roi_pool``, ``box_head``, ``box_predictor``, ``mask_roi_pool``, ``mask_head``,
            ``mask_predictor``) replace the model's parts before the weights load, as torchvision's;
            ``num_classes`` then defaults to the ``box_predictor``'s. A config does not record such
            modules: ``load_checkpoint`` rebuilds the default parts.
    """
    if "trainable_layers" in kwargs and trainable_backbone_layers is not None:
        raise TypeError("give trainable_backbone_layers or trainable_layers, not both")
    parts = {name: kwargs.pop(name) for name in TORCHVISION_MODULE_ARGUMENTS if kwargs.get(name) is not None}
    if "box_predictor" in parts:
        predictor_classes = parts["box_predictor"].cls_score.out_features
        if num_classes is not None and num_classes != predictor_classes:
            raise ValueError(f"num_classes={num_classes} does not match box_predictor's {predictor_classes} classes")
        num_classes = predictor_classes
    state = read_weights(weights, MASKRCNN_WEIGHTS_FILES, "weights") if weights is not None else None
    backbone_state = None
    if state is not None:
        ckpt_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
        if num_classes is not None and num_classes != ckpt_classes:
            raise ValueError(f"num_classes={num_classes} does not match the weights' {ckpt_classes} classes; "
                             f"build with the weights, then replace the predictors")
        num_classes = ckpt_classes
    elif weights_backbone is not None:
        backbone_state = read_weights(weights_backbone, RESNET50_WEIGHTS_FILES, "weights_backbone")
    if num_classes is None:
        num_classes = 91
    is_trained = state is not None or backbone_state is not None
    layers = validate_trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    choices = dict(trainable_layers=layers)
    if state is not None:
        choices.update(norm="frozen_bn", frozen_bn_eps=0.0)
    elif backbone_state is not None:
        choices.update(norm="frozen_bn", frozen_bn_eps=1e-5)
    else:
        choices.update(norm="bn")
    choices.update(kwargs)
    model = build_model(_config.r50_fpn(num_classes, **choices))
    rpn, heads = model.rpn, model.roi_heads
    rpn.anchor_generator = parts.get("rpn_anchor_generator", rpn.anchor_generator)
    rpn.head = parts.get("rpn_head", rpn.head)
    heads.box_roi_pool = parts.get("box_roi_pool", heads.box_roi_pool)
    heads.box_head = parts.get("box_head", heads.box_head)
    heads.box_predictor = parts.get("box_predictor", heads.box_predictor)
    heads.mask_roi_pool = parts.get("mask_roi_pool", heads.mask_roi_pool)
    heads.mask_head = parts.get("mask_head", heads.mask_head)
    heads.mask_predictor = parts.get("mask_predictor", heads.mask_predictor)
    if state is not None:
        model.load_state_dict(state, strict=True)
    if backbone_state is not None:
        body = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
        model.backbone.body.load_state_dict(body, strict=True)
    return model


# ----------------------------------------------------------------------------------------------------
# torchvision interop
# ----------------------------------------------------------------------------------------------------

def config_from_torchvision(tv_model: nn.Module, use_torchvision_ops: bool = True) -> _config.MaskRCNNConfig:
    """The ``MaskRCNNConfig`` of a torchvision ``MaskRCNN`` (v1 layout), read from its attributes."""
    for name in ("transform", "backbone", "rpn", "roi_heads"):
        if not hasattr(tv_model, name):
            raise TypeError(f"from_torchvision: expected a torchvision MaskRCNN, got {type(tv_model).__name__} without .{name}")
    t, rpn, rh = tv_model.transform, tv_model.rpn, tv_model.roi_heads
    if getattr(rh, "mask_predictor", None) is None:
        raise TypeError("from_torchvision: the torchvision model has no mask branch (a Faster R-CNN?)")
    if not hasattr(rh.box_head, "fc6"):
        raise TypeError("from_torchvision: only the v1 box head (TwoMLPHead fc6/fc7) is supported")
    body = tv_model.backbone.body
    layer3 = body.layer3
    depth = {(6, True): 50, (23, True): 101, (36, True): 152, (2, False): 18, (6, False): 34}.get(
        (len(layer3), hasattr(layer3[0], "conv3"))
    )
    if depth is None:
        raise TypeError(f"from_torchvision: unsupported ResNet layout (layer3 has {len(layer3)} blocks)")
    layer_names = ["layer4", "layer3", "layer2", "layer1", "conv1"]
    trainable = 0
    for n in layer_names:
        if any(p.requires_grad for p in getattr(body, n).parameters()):
            trainable += 1
    norm = {"FrozenBatchNorm2d": "frozen_bn", "BatchNorm2d": "bn", "GroupNorm": "gn"}.get(type(body.bn1).__name__)
    if norm is None:
        raise TypeError(f"from_torchvision: unsupported normalisation layer {type(body.bn1).__name__} in the ResNet")
    returned_layers = tuple(sorted(int(k[len("layer"):]) for k in body.return_layers))
    anchors = rpn.anchor_generator
    ratios = {tuple(r) for r in anchors.aspect_ratios}
    if len(ratios) != 1:
        raise TypeError("from_torchvision: aspect ratios differ between levels; MaskRCNNConfig has one set")
    box_pool, mask_pool = rh.box_roi_pool, rh.mask_roi_pool
    min_size = tuple(t.min_size)
    return _config.MaskRCNNConfig(
        num_classes=rh.box_predictor.cls_score.out_features,
        depth=depth,
        base_width=body.conv1.out_channels,
        trainable_layers=trainable,
        norm=norm,
        frozen_bn_eps=float(body.bn1.eps) if norm == "frozen_bn" else 0.0,
        fpn_out_channels=tv_model.backbone.out_channels,
        returned_layers=returned_layers,
        min_size=min_size[0] if len(min_size) == 1 else min_size,
        max_size=t.max_size,
        image_mean=tuple(t.image_mean),
        image_std=tuple(t.image_std),
        size_divisible=t.size_divisible,
        anchor_sizes=tuple(tuple(s) for s in anchors.sizes),
        aspect_ratios=tuple(ratios.pop()),
        rpn_pre_nms_top_n_train=rpn._pre_nms_top_n["training"],
        rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"],
        rpn_post_nms_top_n_train=rpn._post_nms_top_n["training"],
        rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"],
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.proposal_matcher.high_threshold,
        rpn_bg_iou_thresh=rpn.proposal_matcher.low_threshold,
        rpn_batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        rpn_positive_fraction=rpn.fg_bg_sampler.positive_fraction,
        rpn_score_thresh=rpn.score_thresh,
        box_roi_output_size=box_pool.output_size[0],
        box_roi_sampling_ratio=box_pool.sampling_ratio,
        box_representation_size=rh.box_head.fc7.out_features,
        box_score_thresh=rh.score_thresh,
        box_nms_thresh=rh.nms_thresh,
        box_detections_per_img=rh.detections_per_img,
        box_fg_iou_thresh=rh.proposal_matcher.high_threshold,
        box_bg_iou_thresh=rh.proposal_matcher.low_threshold,
        box_batch_size_per_image=rh.fg_bg_sampler.batch_size_per_image,
        box_positive_fraction=rh.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=tuple(float(w) for w in rh.box_coder.weights),
        mask_roi_output_size=mask_pool.output_size[0],
        mask_roi_sampling_ratio=mask_pool.sampling_ratio,
        mask_layers=tuple(block[0].out_channels for block in rh.mask_head),
        mask_dilation=rh.mask_head[0][0].dilation[0],
        mask_dim_reduced=rh.mask_predictor.conv5_mask.out_channels,
        use_torchvision_ops=use_torchvision_ops,
    )


def from_torchvision(tv_model: nn.Module, use_torchvision_ops: bool = True) -> MaskRCNN:
    """An mrcnn_lite ``MaskRCNN`` with the hyperparameters and weights of a torchvision ``MaskRCNN`` (v1).

    The returned model is in the same train/eval mode, dtype and device as ``tv_model``.
    """
    cfg = config_from_torchvision(tv_model, use_torchvision_ops)
    model = build_model(cfg)
    p = next(tv_model.parameters())
    model.to(device=p.device, dtype=p.dtype)
    # torchvision's unpretrained models use BatchNorm2d (extra num_batches_tracked keys): drop them.
    ours = model.state_dict()
    state = {k: v for k, v in tv_model.state_dict().items() if k in ours or not k.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=True)
    # Same normalisation settings and the same parameters trained as the source.
    tv_modules = dict(tv_model.named_modules())
    for name, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.eps = tv_modules[name].eps
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = tv_modules[name].momentum
    requires_grad = {n: p.requires_grad for n, p in tv_model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(requires_grad[n])
    model.train(tv_model.training)
    return model
