"""``torchvision.models.detection``'s names for mrcnn_lite's Mask R-CNN and its building blocks.

Code written against torchvision swaps one import::

    from torchvision.models.detection import maskrcnn_resnet50_fpn, MaskRCNN        # before
    from mrcnn_lite.detection import maskrcnn_resnet50_fpn, MaskRCNN                 # after

Same names and constructor arguments, in torchvision's order (ours may add keywords after them).
"""
from .model.anchors import AnchorGenerator
from .model.box_head import FastRCNNPredictor, TwoMLPHead
from .model.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from .model.mask_rcnn import MaskRCNN
from .model.rpn import RegionProposalNetwork
from .model.rpn_head import RPNHead
from .model.transform import GeneralizedRCNNTransform, ImageList
from .torchvision_compat import RoIHeads, from_torchvision, maskrcnn_resnet50_fpn, validate_trainable_layers

__all__ = [
    "maskrcnn_resnet50_fpn", "MaskRCNN", "from_torchvision", "validate_trainable_layers",
    "GeneralizedRCNNTransform", "ImageList", "AnchorGenerator", "RPNHead", "RegionProposalNetwork",
    "RoIHeads", "TwoMLPHead", "FastRCNNPredictor", "MaskRCNNHeads", "MaskRCNNPredictor",
]
