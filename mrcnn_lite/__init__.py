"""mrcnn_lite: Mask R-CNN built from scratch in PyTorch.

    import mrcnn_lite as ml
    model = ml.maskrcnn_resnet50_fpn(num_classes=2)    # torchvision's builder: v1 architecture, its keywords
    model = ml.build_model(ml.config.tiny(num_classes=4))
    model = ml.load_checkpoint("runs/demo/checkpoint.pt")  # a trained model, rebuilt from its config

``cfg.kernels`` picks the floor a model runs on: ``"reference"`` (the plain code in ``ops`` and ``model``)
or ``"fast"`` (the default: ``mrcnn_lite.fast``); both give the same numbers.
"""
from . import config, detection, ops
from .model.interop import from_torchvision, maskrcnn_resnet50_fpn
from .model.mask_rcnn import build_model

__version__ = "0.1.0"


def load_checkpoint(path, map_location="cpu"):
    """``mrcnn_lite.engine.checkpoint.load_checkpoint``: a trained model rebuilt from its ``checkpoint.pt``.

    Imported when called, so that ``import mrcnn_lite`` (the model and its ops) does not need the
    training and evaluation stack (pycocotools).
    """
    from .engine.checkpoint import load_checkpoint as load
    return load(path, map_location=map_location)
