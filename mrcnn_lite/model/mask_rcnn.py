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

``MaskRCNN`` only assembles the parts it is given, as torchvision's ``GeneralizedRCNN`` does;
``mrcnn_lite.build_model(cfg)`` (``mrcnn_lite/build.py``) makes the parts from a config, with the kernels
``cfg.kernels`` picks. Module names follow torchvision, so ``build_model(config.r50_fpn(91))`` has exactly
the 307 state-dict keys of torchvision's COCO v1 checkpoint. If you downloaded it (this package never
downloads), loading it is one line (torchvision's builder and its keywords live in
``mrcnn_lite/torchvision_compat.py``)::

    model = ml.maskrcnn_resnet50_fpn(weights="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")

``forward(images, targets, return_intermediates=True)`` also returns a dict of every stage's results
(transformed images, features, anchors, proposals, sampled RoIs, logits, detections before
post-processing, ...) for the notebooks: each stage fills it as it runs.

The inputs are checked once, here at the entrance (``inputs.py``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from .. import config as _config
from .frozen_bn import FrozenBatchNorm2d
from .inputs import check_inputs
from .kernels import Kernels
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork
from .transform import GeneralizedRCNNTransform


class MaskRCNN(nn.Module):
    """Mask R-CNN assembled from its four parts (torchvision's names): ``transform``, ``backbone``, ``rpn``,
    ``roi_heads``. ``mrcnn_lite.build_model(cfg)`` makes them from a ``MaskRCNNConfig``.

    Args:
        transform: a ``GeneralizedRCNNTransform``.
        backbone: ResNet + FPN (``backbone.resnet_fpn_backbone``), a module with ``out_channels``.
        rpn: a ``RegionProposalNetwork``.
        roi_heads: a ``RoIHeads``.
        cfg: the ``MaskRCNNConfig`` the parts were built from (checkpoints record it, so that
            ``load_checkpoint`` builds the same model again). ``cfg.channels_last``: feed the backbone NHWC
            (its weights should then be channels-last too; ``build_model`` does both).
        kernels: the ``Kernels`` set the parts were built with; ``kernels_used()`` reads its log.

    ``model(images, targets=None, return_intermediates=False)``:
        images:  list of B float ``(3, h_i, w_i)`` in [0, 1] (sizes may differ)
        targets: list of B dicts ``boxes (n, 4)`` float xyxy, ``labels (n,)`` int64, ``masks (n, h_i, w_i)`` 0/1
        training -> dict of the five losses; eval -> list of B dicts ``boxes, labels, scores, masks (m, 1, h_i, w_i)``.
        With ``return_intermediates=True`` the result is ``(output, intermediates)``.
    """

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module, rpn: RegionProposalNetwork,
                 roi_heads: RoIHeads, cfg: _config.MaskRCNNConfig, kernels: Optional[Kernels] = None):
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    @property
    def num_classes(self) -> int:
        """Classes including background: the box predictor's outputs, which stay right when a fine-tuning
        script replaces the predictors (torchvision's recipe); ``cfg.num_classes`` is what was built."""
        cls_score = getattr(self.roi_heads.box_predictor, "cls_score", None)
        return cls_score.out_features if isinstance(cls_score, nn.Linear) else self.cfg.num_classes

    def kernels_used(self) -> Dict[str, str]:
        """Which implementation ran each swappable op: op -> implementation(s), comma-separated.

        RoIAlign, NMS and mask pasting are recorded as they are called (an op not called yet is absent;
        nothing is recorded without a ``kernels`` set); frozen batch norm and the sampler are the classes
        of the objects the model holds and calls.
        """
        calls = self.kernels.log.calls if self.kernels is not None else {}
        used = {op: ", ".join(sorted(impls)) for op, impls in sorted(calls.items())}
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
