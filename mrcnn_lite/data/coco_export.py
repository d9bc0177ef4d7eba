"""Write any dataset in our contract as COCO: ``out_dir/<split>/images/*.png`` + ``annotations.json``.

The layout :class:`~mrcnn_lite.data.CocoInstances` reads back (see ``coco.py`` for the format)::

    out_dir/<split>/images/000000.png ...
    out_dir/<split>/annotations.json
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .segmentation import mask_to_polygons, mask_to_rle


def export_coco(dataset, out_dir, split_name: str, mask_format: str = "rle",
                class_names=None) -> Path:
    """Write ``dataset`` in COCO format: ``out_dir/<split_name>/images/*.png`` + ``annotations.json``.

    dataset: any dataset returning ``(image (3,H,W) float in [0,1], target)`` in our contract
        (boxes, labels, masks, image_id; area optional).
    mask_format: ``"rle"`` (compressed RLE, exact) or ``"polygon"`` (outlines on pixel corners;
        holes are filled, see :func:`mask_to_polygons`).
    class_names: names indexed by label; defaults to ``dataset.class_names``. Index 0 is background
        and is not written as a category.
    Returns the path of the annotations JSON. Images are PNG (lossless): reading them back gives the
    same 8-bit pixels.
    """
    if mask_format not in ("rle", "polygon"):
        raise ValueError(f"mask_format must be 'rle' or 'polygon', got {mask_format!r}")
    class_names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    if class_names is None:
        raise ValueError("pass class_names (the dataset has no .class_names)")
    split_dir = Path(out_dir) / split_name
    img_dir = split_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    images, annotations = [], []
    ann_id = 1  # COCO annotation ids start at 1 (COCOeval uses 0 for "no match")
    for index in range(len(dataset)):
        image, target = dataset[index]
        image_id = int(target.get("image_id", index))
        arr = image.detach().cpu().numpy().transpose(1, 2, 0)  # (H, W, 3) float in [0, 1]
        u8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        H, W = u8.shape[:2]
        file_name = f"{image_id:06d}.png"
        Image.fromarray(u8).save(img_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": W, "height": H})

        masks = target["masks"].cpu().numpy().astype(np.uint8)
        areas = target.get("area")
        for j in range(len(target["labels"])):
            x1, y1, x2, y2 = (float(v) for v in target["boxes"][j])
            mask = masks[j]
            seg = mask_to_rle(mask) if mask_format == "rle" else mask_to_polygons(mask)
            annotations.append({
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(target["labels"][j]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],  # COCO boxes are x, y, width, height
                "area": float(areas[j]) if areas is not None else float(mask.sum()),
                "iscrowd": int(target["iscrowd"][j]) if "iscrowd" in target else 0,
                "segmentation": seg,
            })
            ann_id += 1

    categories = [{"id": i, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(class_names) if i > 0]
    coco = {
        "info": {"description": f"{split_name} split exported by mrcnn_lite", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_path = split_dir / "annotations.json"
    ann_path.write_text(json.dumps(coco, separators=(",", ":")))
    return ann_path
