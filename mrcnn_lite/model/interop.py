"""torchvision interop: build an mrcnn_lite model from a torchvision ``MaskRCNN``, or load torchvision's
checkpoints into one.

    model = ml.from_torchvision(tv_model)            # same hyperparameters and weights
    cfg = config_from_torchvision(tv_model)          # only the hyperparameters
    skipped = load_torchvision_weights(model, "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")

Module and parameter names are torchvision's throughout the model, so the state dicts map one to one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import config as _config
from .mask_rcnn import MaskRCNN, build_model


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
        frozen_bn_eps=float(body.bn1.eps),
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

    The returned model is in the same train/eval mode, dtype and device as ``tv_model``.
    """
    cfg = config_from_torchvision(tv_model, kernels)
    model = build_model(cfg)
    p = next(tv_model.parameters())
    model.to(device=p.device, dtype=p.dtype)
    # torchvision's unpretrained models use BatchNorm2d (extra num_batches_tracked keys): drop them.
    state = {k: v for k, v in tv_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=True)
    model.train(tv_model.training)
    return model


def load_torchvision_weights(model, path) -> list:
    """Load a torchvision ``maskrcnn_resnet50_fpn`` COCO state dict into ``model`` (same architecture).

    Tensors whose shape differs (the class-specific predictor layers when your dataset has another
    number of classes than COCO's 91) are skipped and keep their fresh initialisation. Returns the
    names of the skipped tensors. Loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a mrcnn_lite or torchvision-references training checkpoint
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} keys are not in the model (first: {unknown[:3]}); "
                         f"is it a maskrcnn_resnet50_fpn state dict?")
    skipped = [k for k, v in state.items() if own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return sorted(skipped + missing)
