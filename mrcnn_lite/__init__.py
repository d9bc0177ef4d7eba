"""mrcnn_lite: Mask R-CNN built from scratch in PyTorch.

    import mrcnn_lite as ml
    model = ml.maskrcnn_resnet50_fpn(num_classes=91)   # torchvision v1 architecture and state_dict keys
    model = ml.build_model(ml.config.tiny(num_classes=4))
    model = ml.load_checkpoint("runs/demo/checkpoint.pt")  # a trained model, rebuilt from its config
    model = ml.load_course_model()           # the shipped trained course model (float32, eval mode)
"""
from . import config, ops
from .model.mask_rcnn import build_model, from_torchvision, maskrcnn_resnet50_fpn
from .engine.checkpoint import load_checkpoint
from .pretrained import course_model_info, load_course_model

__version__ = "0.1.0"
