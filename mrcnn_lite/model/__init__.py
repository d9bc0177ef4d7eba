"""The Mask R-CNN stages, one module each, in the order an image flows through them:
transform -> backbone (ResNet + FPN) -> anchors + RPN -> box head -> mask head; ``mask_rcnn`` assembles them.
"""
