"""mrcnn_lite: Mask R-CNN built from scratch in PyTorch.

    import mrcnn_lite as ml
    model = ml.maskrcnn_resnet50_fpn(num_classes=2)    # torchvision's builder: v1 architecture, its keywords
    model = ml.build_model(ml.config.tiny(num_classes=4))
    model = ml.load_checkpoint("runs/demo/checkpoint.pt")  # a trained model, rebuilt from its config
    model = ml.load_course_model()           # the shipped trained course model (float32, eval mode)

``cfg.kernels`` picks the floor a model runs on: ``"reference"`` (the plain code in ``ops`` and ``model``)
or ``"fast"`` (the default: ``mrcnn_lite.fast``); both give the same numbers. ``build_model``
(``build.py``) is the one place that picks the kernels and makes the parts; torchvision's builder and
model conversion live in ``torchvision_compat.py``.
"""
from . import config, detection, ops
from .build import build_model
from .downloads import DownloadError
from .torchvision_compat import from_torchvision, maskrcnn_resnet50_fpn

__version__ = "0.1.0"


def load_checkpoint(path, map_location="cpu"):
    """``mrcnn_lite.engine.checkpoint.load_checkpoint``: a trained model rebuilt from its ``checkpoint.pt``.

    Imported when called, so that ``import mrcnn_lite`` (the model and its ops) does not need the
    training and evaluation stack (pycocotools).
    """
    from .engine.checkpoint import load_checkpoint as load
    return load(path, map_location=map_location)


def load_course_model(path=None, map_location="cpu"):
    """``mrcnn_lite.pretrained.load_course_model``: the shipped trained course model, float32, eval mode.

    Imported when called, like ``load_checkpoint``.
    """
    from .pretrained import load_course_model as load
    return load(path, map_location=map_location)


def course_model_info(path=None):
    """``mrcnn_lite.pretrained.course_model_info``: the shipped file's config, metrics and training history."""
    from .pretrained import course_model_info as info
    return info(path)
