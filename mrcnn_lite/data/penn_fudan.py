"""Penn-Fudan pedestrians (170 images, 345 people): a small real dataset in our contract.

Get it from https://www.cis.upenn.edu/~jshi/ped_html/ (PennFudanPed.zip) and unzip::

    PennFudanPed/PNGImages/FudanPed00001.png ...
    PennFudanPed/PedMasks/FudanPed00001_mask.png ...   # 0 = background, 1..k = person k

Every person becomes one instance with label 1 ("person").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import ImageReadError, read_rgb
from .shapes import image_to_tensor, masks_to_boxes


class PennFudan(torch.utils.data.Dataset):
    """``PennFudan("data/PennFudanPed")[i] -> (image, target)`` like ShapesDataset; label 1 = person."""

    class_names = ("__background__", "person")

    def __init__(self, root, transforms=None):
        self.root = Path(root)
        self.transforms = transforms
        img_dir, mask_dir = self.root / "PNGImages", self.root / "PedMasks"
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"Penn-Fudan folder not found: {d}")
        self.images = sorted(img_dir.glob("*.png"))
        self.masks = [mask_dir / f"{p.stem}_mask.png" for p in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if not self.masks[index].is_file():
            raise FileNotFoundError(f"mask for {self.images[index].name} not found: "
                                    f"{self.masks[index]}")
        image_u8 = read_rgb(self.images[index], image_id=index)
        try:
            with Image.open(self.masks[index]) as im:
                ids_map = np.array(im)  # (H, W) instance ids, 0 = background
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageReadError(f"cannot read the mask of image {index} ({self.masks[index]}): "
                                 f"{err}") from err
        if ids_map.shape != image_u8.shape[:2]:
            raise ValueError(f"mask {self.masks[index]} is {ids_map.shape[0]}x{ids_map.shape[1]} "
                             f"(HxW) but its image {self.images[index]} is "
                             f"{image_u8.shape[0]}x{image_u8.shape[1]}")
        # one binary mask per instance id: compare the id map with each id (broadcasting)
        ids = np.unique(ids_map)
        ids = ids[ids != 0]
        masks = (ids_map[None] == ids[:, None, None]).astype(np.uint8)
        n = len(ids)
        target = {
            "boxes": torch.from_numpy(masks_to_boxes(masks)),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": int(index),
            "area": torch.from_numpy(masks.sum(axis=(1, 2)).astype(np.float32)),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        image = image_to_tensor(image_u8)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
