"""torchvision compatibility, kept out of the paper's rooms: torchvision's builder, an mrcnn_lite model from a
torchvision ``MaskRCNN``, torchvision's checkpoints, and the constructor arguments of torchvision's
``RoIHeads`` that mrcnn_lite does not build (the keypoint branch).

    model = ml.maskrcnn_resnet50_fpn(weights=None, num_classes=2)   # torchvision's builder and keywords
    model = ml.maskrcnn_resnet50_fpn(weights="DEFAULT")     # torchvision's COCO_V1: its cache, else downloaded
    model = ml.maskrcnn_resnet50_fpn(weights="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")   # a file you have
    model = ml.from_torchvision(tv_model)            # same hyperparameters, weights, norm layers, trainability
    cfg = config_from_torchvision(tv_model)          # only the hyperparameters
    skipped = load_torchvision_weights(model, "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")

Module and parameter names are torchvision's throughout the model, so the state dicts map one to one.
torchvision's weights enums (and their names, ``"DEFAULT"``...) are fetched as torchvision fetches them: from
the torch hub cache, or downloaded into it with its checksum; offline, one line says which file to place where
(``torchvision_weights.py`` reads them). Every model is made by ``mrcnn_lite.build_model``.
"""
from __future__ import annotations

import warnings
from typing import Optional

from torch import nn

from . import config as _config
from .build import build_model
from .model.mask_rcnn import MaskRCNN
from .model.roi_heads import RoIHeads as _RoIHeads
# torchvision's checkpoints and weights enums live in torchvision_weights.py; re-exported here, where the
# builder that reads them is
from .torchvision_weights import (DOWNLOAD_TIMEOUT, WEIGHTS_ENUMS, fetch_torchvision_weights,  # noqa: F401
                                  load_torchvision_weights, read_weights)


class RoIHeads(_RoIHeads):
    """``mrcnn_lite.model.roi_heads.RoIHeads`` with the whole constructor of torchvision's ``RoIHeads``:
    its keypoint arguments (Keypoint R-CNN) come after the mask branch's, and must stay None."""

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                 positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                 mask_roi_pool=None, mask_head=None, mask_predictor=None, keypoint_roi_pool=None,
                 keypoint_head=None, keypoint_predictor=None, **kernels):
        if keypoint_roi_pool is not None or keypoint_head is not None or keypoint_predictor is not None:
            raise ValueError("RoIHeads: keypoint_roi_pool, keypoint_head and keypoint_predictor must be None "
                             "(mrcnn_lite builds Mask R-CNN, not Keypoint R-CNN)")
        super().__init__(box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                         mask_roi_pool, mask_head, mask_predictor, **kernels)
        self.keypoint_roi_pool = self.keypoint_head = self.keypoint_predictor = None

    def has_keypoint(self) -> bool:
        return False  # no keypoint branch (see the constructor)


def config_from_torchvision(tv_model: nn.Module, kernels: str = "fast") -> _config.MaskRCNNConfig:
    """The ``MaskRCNNConfig`` of a torchvision ``MaskRCNN`` (v1 layout), read from its attributes;
    ``kernels``: the floor the mrcnn_lite model will run on (``"fast"`` or ``"reference"``)."""
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
    norm = {"FrozenBatchNorm2d": "frozen_bn", "BatchNorm2d": "bn", "GroupNorm": "gn"}.get(type(body.bn1).__name__)
    if norm is None:
        raise TypeError(f"from_torchvision: unsupported normalisation layer {type(body.bn1).__name__} in the ResNet")
    layer_names = ["layer4", "layer3", "layer2", "layer1", "conv1"]
    trainable = 0
    for n in layer_names:
        if any(p.requires_grad for p in getattr(body, n).parameters()):
            trainable += 1
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
        kernels=kernels,
    )


def from_torchvision(tv_model: nn.Module, kernels: str = "fast") -> MaskRCNN:
    """An mrcnn_lite ``MaskRCNN`` with the hyperparameters and weights of a torchvision ``MaskRCNN`` (v1).

    The returned model is in the same train/eval mode, dtype and device as ``tv_model``, with the same
    normalisation layers (a trainable ``BatchNorm2d`` stays one, with its eps and momentum) and the same
    parameters trainable, so that training it gives torchvision's losses, not only its detections.
    """
    cfg = config_from_torchvision(tv_model, kernels)
    model = build_model(cfg)
    p = next(tv_model.parameters())
    model.to(device=p.device, dtype=p.dtype)
    # A BatchNorm2d's step counter (num_batches_tracked) has no place in a FrozenBatchNorm2d or GroupNorm.
    own = model.state_dict()
    state = {k: v for k, v in tv_model.state_dict().items() if k in own or not k.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=True)
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


# ---------------------------------------------------------------------------------------------------
# torchvision's builder: maskrcnn_resnet50_fpn(*, weights, progress, num_classes, weights_backbone, ...)
# ---------------------------------------------------------------------------------------------------

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


def maskrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                          weights_backbone=None, trainable_backbone_layers: Optional[int] = None,
                          **kwargs) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1), with its keywords and their meaning.

    Args:
        weights: Mask R-CNN weights: a state dict, a checkpoint path, or torchvision's
            ``MaskRCNN_ResNet50_FPN_Weights`` / its name (``"DEFAULT"``, ``"COCO_V1"``), read from the torch
            hub cache or downloaded into it with its checksum, as torchvision does (see ``read_weights``;
            offline: a one-line ``DownloadError``). The model then has ``FrozenBatchNorm2d`` (eps 0, as
            torchvision's COCO_V1) and ``num_classes`` defaults to the checkpoint's.
        progress: show a progress bar while downloading (torchvision's meaning).
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
    state = read_weights(weights, "weights", progress) if weights is not None else None
    backbone_state = None
    if state is not None:
        ckpt_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
        if num_classes is not None and num_classes != ckpt_classes:
            raise ValueError(f"num_classes={num_classes} does not match the weights' {ckpt_classes} classes; "
                             f"build with the weights, then replace the predictors")
        num_classes = ckpt_classes
    elif weights_backbone is not None:
        backbone_state = read_weights(weights_backbone, "weights_backbone", progress)
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
