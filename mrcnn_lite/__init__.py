"""mrcnn_lite: Mask R-CNN built from scratch in PyTorch.

    import mrcnn_lite as ml
    model = ml.maskrcnn_resnet50_fpn(num_classes=2)    # torchvision's builder: v1 architecture, its keywords
    model = ml.build_model(ml.config.tiny(num_classes=4))
    model = ml.load_checkpoint("runs/demo/checkpoint.pt")  # a trained model, rebuilt from its config
"""
from . import config, detection, ops
from .model.mask_rcnn import build_model, from_torchvision, maskrcnn_resnet50_fpn
from .engine.checkpoint import load_checkpoint

__version__ = "0.1.0"
