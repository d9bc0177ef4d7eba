"""Model configuration: one dataclass, two presets.

Field names are torchvision's ``MaskRCNN`` keyword arguments (``min_size``, ``rpn_fg_iou_thresh``,
``box_detections_per_img``, ...), so ``ml.maskrcnn_resnet50_fpn(**kwargs)`` passes them straight through
and a learner can read both code bases side by side.

Presets:
    ``tiny(num_classes)``    narrow ResNet-18-style backbone and small heads for 128-px images on a CPU.
    ``r50_fpn(num_classes)`` torchvision's ``maskrcnn_resnet50_fpn`` architecture and defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass
class MaskRCNNConfig:
    num_classes: int = 91  # including background (class 0)

    # --- backbone (ResNet + FPN) ---
    depth: int = 50                     # 18, 34, 50 or 101
    base_width: int = 64                # channels of the stem; stage widths are 1x, 2x, 4x, 8x this
    trainable_layers: int = 3           # how many of layer4, layer3, ..., conv1 are trained (0..5)
    frozen_bn_eps: float = 0.0          # torchvision's COCO v1 checkpoint was trained with eps = 0
    # Normalisation layer of the ResNet body:
    #   "frozen_bn" fixed statistics and affine (for pretrained weights; torchvision's choice),
    #   "bn"        trainable BatchNorm2d (batch statistics; best when training from scratch),
    #   "gn"        GroupNorm (per-image statistics; independent of the batch size).
    norm: str = "frozen_bn"
    fpn_out_channels: int = 256
    returned_layers: Tuple[int, ...] = (1, 2, 3, 4)  # ResNet stages that feed the FPN

    # --- transform ---
    min_size: int = 800
    max_size: int = 1333
    image_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32

    # --- anchors and RPN ---
    anchor_sizes: Tuple[Tuple[int, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # h / w, the same at every level
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0

    # --- box head ---
    box_roi_output_size: int = 7
    box_roi_sampling_ratio: int = 2
    box_representation_size: int = 1024
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: Optional[Tuple[float, float, float, float]] = None  # None = (10, 10, 5, 5)

    # --- mask head ---
    mask_roi_output_size: int = 14
    mask_roi_sampling_ratio: int = 2
    mask_layers: Tuple[int, ...] = (256, 256, 256, 256)
    mask_dilation: int = 1
    mask_dim_reduced: Optional[int] = None  # channels of conv5_mask; None = mask_layers[-1] (256 for r50_fpn)
    # Training: the mask loss on at most this many positive RoIs per image, a random subset of the box
    # branch's positives; None = every positive (the paper, torchvision).
    mask_batch_size_per_image: Optional[int] = None

    # --- how it runs (same numbers either way; tests prove it) ---
    # "reference": the plain from-scratch code of mrcnn_lite.ops and mrcnn_lite.model, as the course
    #              builds it; "fast": the speed kernels of mrcnn_lite.fast (torchvision's compiled
    #              kernels where importable). ``model.kernels_used()`` says what ran.
    kernels: str = "fast"
    # Run the backbone in NHWC memory layout (faster convolutions on CPUs and GPUs; same numbers up to
    # float rounding). Kept in the config so that a checkpoint rebuilds the model it was trained as.
    channels_last: bool = True

    def __post_init__(self):
        if self.kernels not in ("reference", "fast"):
            raise ValueError(f"kernels must be 'reference' or 'fast', got {self.kernels!r}")
        m = self.mask_batch_size_per_image
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"mask_batch_size_per_image must be None or an integer >= 1, got {m!r}")

    def replace(self, **changes) -> "MaskRCNNConfig":
        """A copy with some fields changed; unknown names raise a TypeError that lists them."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MaskRCNNConfig":
        d = dict(d)
        # Checkpoints written before the two floors had a boolean switch; True picked the fast kernels.
        if "use_torchvision_ops" in d:
            old = d.pop("use_torchvision_ops")
            d.setdefault("kernels", "fast" if old else "reference")
        # JSON / checkpoints turn tuples into lists; turn them back.
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return cls().replace(**d)


def r50_fpn(num_classes: int = 91, **changes) -> MaskRCNNConfig:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1): ResNet-50 + FPN, 800/1333 images."""
    return MaskRCNNConfig(num_classes=num_classes).replace(**changes)


def tiny(num_classes: int = 4, **changes) -> MaskRCNNConfig:
    """A small Mask R-CNN for 128x128 images on a CPU (the course's default model).

    ResNet-18 layout at a quarter of the width (16..128 channels), a 64-channel FPN, anchors from
    8 to 128 px, and lighter heads. Trains on the shapes data in minutes on 2 cores.
    """
    cfg = MaskRCNNConfig(
        num_classes=num_classes,
        depth=18,
        base_width=16,
        trainable_layers=5,
        frozen_bn_eps=1e-5,
        fpn_out_channels=64,
        min_size=128,
        max_size=128,
        anchor_sizes=((8,), (16,), (32,), (64,), (128,)),
        rpn_pre_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_representation_size=256,
        box_batch_size_per_image=128,
        box_detections_per_img=50,
        mask_layers=(64, 64, 64, 64),
    )
    return cfg.replace(**changes)
