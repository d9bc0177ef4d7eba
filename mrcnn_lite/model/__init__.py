"""The Mask R-CNN stages, one module each, in the order an image flows through them:
transform -> backbone (ResNet + FPN) -> anchors + RPN -> box head -> mask head; ``mask_rcnn`` assembles them.

This package is the reference floor: the paper's algorithm in plain PyTorch. It imports ``ops`` and
``config`` only; ``mrcnn_lite.build_model`` makes the parts and hands them the kernels ``cfg.kernels`` picks.
"""
