"""Datasets in the torchvision detection contract, COCO export/import, transforms and collate.

Modules: ``item`` (the item every dataset returns), ``shapes`` (ShapesDataset), ``coco`` (reading a COCO
file, every record checked), ``segmentation`` (masks <-> RLE and polygons), ``coco_export`` (writing
COCO), ``images`` (reading image files), ``penn_fudan`` (the Penn-Fudan folder and its download), ``real``
(the DSB 2018 nucleus tiles shipped in data/), ``transforms`` (paired transforms, collate).

Every dataset here returns ``(image, target)``:
    image: (3, H, W) float32 RGB in [0, 1]
    target: {"boxes": (n, 4) float32 x1y1x2y2, "labels": (n,) int64, "masks": (n, H, W) uint8,
             "image_id": int, "area": (n,) float32, "iscrowd": (n,) int64}

    from mrcnn_lite.data import ShapesDataset, CocoInstances, export_coco, collate_fn
    ds = ShapesDataset(64, seed=0)
    export_coco(ds, "runs/shapes", "train")          # runs/shapes/train/{images/, annotations.json}
    same = CocoInstances("runs/shapes/train/images", "runs/shapes/train/annotations.json")
"""
from .coco import CocoInstances
from .coco_export import export_coco
from .images import ImageReadError, read_rgb
from .item import detection_item, image_to_tensor, masks_to_boxes
from .penn_fudan import DownloadError, PennFudan, download_penn_fudan
from .real import nuclei
from .segmentation import check_segmentation, crop_to_rle, mask_to_polygons, mask_to_rle, segmentation_to_mask
from .shapes import CLASSES, ShapesDataset
from .transforms import Compose, RandomHorizontalFlip, collate_fn, hflip

__all__ = [
    "CLASSES", "ShapesDataset", "CocoInstances", "PennFudan", "download_penn_fudan", "DownloadError", "nuclei",
    "export_coco", "mask_to_rle", "mask_to_polygons", "crop_to_rle", "masks_to_boxes", "check_segmentation",
    "segmentation_to_mask", "read_rgb",
    "ImageReadError", "image_to_tensor", "detection_item", "collate_fn", "Compose", "RandomHorizontalFlip", "hflip",
]
