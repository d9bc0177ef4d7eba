"""Datasets in the torchvision detection contract, COCO export/import, transforms and collate.

Every dataset here returns ``(image, target)``:
    image: (3, H, W) float32 RGB in [0, 1]
    target: {"boxes": (n, 4) float32 x1y1x2y2, "labels": (n,) int64, "masks": (n, H, W) uint8,
             "image_id": int, "area": (n,) float32, "iscrowd": (n,) int64}

    from mrcnn_lite.data import ShapesDataset, CocoInstances, export_coco, collate_fn
    ds = ShapesDataset(64, seed=0)
    export_coco(ds, "runs/shapes", "train")          # runs/shapes/train/{images/, annotations.json}
    same = CocoInstances("runs/shapes/train/images", "runs/shapes/train/annotations.json")
"""
from .coco import CocoInstances, check_segmentation, export_coco, mask_to_polygons, mask_to_rle
from .images import ImageReadError, read_rgb
from .penn_fudan import PennFudan
from .shapes import CLASSES, ShapesDataset, image_to_tensor, masks_to_boxes
from .transforms import Compose, RandomHorizontalFlip, collate_fn, hflip

__all__ = [
    "CLASSES", "ShapesDataset", "CocoInstances", "PennFudan", "export_coco", "mask_to_rle",
    "mask_to_polygons", "masks_to_boxes", "check_segmentation", "read_rgb", "ImageReadError",
    "image_to_tensor", "collate_fn", "Compose", "RandomHorizontalFlip", "hflip",
]
