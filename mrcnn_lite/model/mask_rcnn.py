"""Mask R-CNN assembled from its stages.

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
is one line (torchvision's builder and its keywords live in ``interop.py``)::

    model = ml.maskrcnn_resnet50_fpn(weights="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")

``forward(images, targets, return_intermediates=True)`` also returns a dict of every stage's results
(transformed images, features, anchors, proposals, sampled RoIs, logits, detections before
post-processing, ...) for the notebooks: each stage fills it as it runs.

The inputs are checked once, here at the entrance (``inputs.py``). The swappable kernels (RoIAlign,
NMS, mask pasting, frozen batch norm, the sampler) come from ``cfg.kernels`` (``kernels.py``): the
plain reference code or the fast floor, same numbers. Loading torchvision models and checkpoints:
``interop.py``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from .. import config as _config
from ..ops import MultiScaleRoIAlign
from .backbone import resnet_fpn_backbone
from .frozen_bn import FrozenBatchNorm2d
from .box_head import FastRCNNPredictor, TwoMLPHead
from .inputs import check_inputs
from .kernels import Kernels, kernels_for
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor
from .roi_heads import RoIHeads
from .rpn import build_rpn
from .transform import GeneralizedRCNNTransform


class MaskRCNN(nn.Module):
    """Mask R-CNN built from a ``MaskRCNNConfig`` (see ``mrcnn_lite.config``).

    Submodules (torchvision's names): ``transform``, ``backbone``, ``rpn``, ``roi_heads``.
    ``kernels``: the implementations to build with (default ``kernels_for(cfg.kernels)``).
    ``cfg.channels_last`` runs the backbone in NHWC memory layout (faster convolutions; same numbers up
    to float rounding; state-dict keys unchanged).

    ``model(images, targets=None, return_intermediates=False)``:
        images:  list of B float ``(3, h_i, w_i)`` in [0, 1] (sizes may differ)
        targets: list of B dicts ``boxes (n, 4)`` float xyxy, ``labels (n,)`` int64, ``masks (n, h_i, w_i)`` 0/1
        training -> dict of the five losses; eval -> list of B dicts ``boxes, labels, scores, masks (m, 1, h_i, w_i)``.
        With ``return_intermediates=True`` the result is ``(output, intermediates)``.
    """

    def __init__(self, cfg: _config.MaskRCNNConfig, kernels: Optional[Kernels] = None):
        super().__init__()
        self.cfg = cfg
        k = kernels if kernels is not None else kernels_for(cfg.kernels)
        self.kernels = k

        self.transform = GeneralizedRCNNTransform(
            cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std, cfg.size_divisible,
            paste_masks=k.paste_masks_in_image,
        )
        self.backbone = resnet_fpn_backbone(cfg, frozen_bn=k.frozen_bn)
        if cfg.channels_last:
            # Store the conv weights channels-last (NHWC) as well as feeding NHWC images: the conv
            # kernels (oneDNN on CPU, cuDNN tensor cores on GPU) then skip layout conversions.
            self.backbone.to(memory_format=torch.channels_last)
        out_channels = self.backbone.out_channels
        self.rpn = build_rpn(cfg, out_channels, k)

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
            batched_nms=k.batched_nms, roi_align=k.roi_align,
            mask_batch_size_per_image=cfg.mask_batch_size_per_image,
        )
        self.roi_heads.fg_bg_sampler = k.sampler(cfg.box_batch_size_per_image, cfg.box_positive_fraction)

    @property
    def num_classes(self) -> int:
        """Classes including background: the box predictor's outputs, which stay right when a fine-tuning
        script replaces the predictors (torchvision's recipe); ``cfg.num_classes`` is what was built."""
        cls_score = getattr(self.roi_heads.box_predictor, "cls_score", None)
        return cls_score.out_features if isinstance(cls_score, nn.Linear) else self.cfg.num_classes

    def kernels_used(self) -> Dict[str, str]:
        """Which implementation ran each swappable op: op -> implementation(s), comma-separated.

        RoIAlign, NMS and mask pasting are recorded as they are called (an op not called yet is absent);
        frozen batch norm and the sampler are the classes of the objects the model holds and calls.
        """
        used = {op: ", ".join(sorted(impls)) for op, impls in sorted(self.kernels.log.calls.items())}
        frozen = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in self.modules()
                         if isinstance(m, FrozenBatchNorm2d)})
        used["frozen_bn"] = ", ".join(frozen) if frozen else "none (folded, or another norm layer)"
        samplers = {type(s) for s in (self.rpn.fg_bg_sampler, self.roi_heads.fg_bg_sampler)}
        used["sampler"] = ", ".join(sorted(f"{s.__module__}.{s.__name__}" for s in samplers))
        return used

    def forward(
        self,
        images: List[Tensor],
        targets: Optional[List[Dict[str, Tensor]]] = None,
        return_intermediates: bool = False,
    ):
        param = next(self.parameters())
        check_inputs(images, targets, self.num_classes, self.training, self.transform.min_size,
                     self.transform.max_size, param.dtype, param.device)
        inter: Optional[Dict[str, Any]] = {} if return_intermediates else None
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]

        image_list, targets_t = self.transform(images, targets)
        batch = image_list.tensors
        if self.cfg.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.backbone(batch)
        if inter is not None:
            inter.update(images=image_list.tensors, image_sizes=image_list.image_sizes,
                         original_image_sizes=original_image_sizes, targets=targets_t, features=features)
        proposals, proposal_losses = self.rpn(image_list, features, targets_t, inter)
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets_t if self.training else None, inter,
        )

        if self.training:
            losses: Dict[str, Tensor] = {}
            losses.update(detector_losses)
            losses.update(proposal_losses)
            return (losses, inter) if return_intermediates else losses

        if inter is not None:  # before postprocess: resized-image boxes, 28x28 masks
            inter["detections"] = [dict(d) for d in detections]
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)
        return (detections, inter) if return_intermediates else detections


def build_model(cfg: _config.MaskRCNNConfig) -> MaskRCNN:
    """A Mask R-CNN from a config, e.g. ``build_model(config.tiny(num_classes=4))`` for the CPU lessons."""
    return MaskRCNN(cfg)

