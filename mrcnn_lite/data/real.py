"""A real, expert-annotated data set that ships with the course: nuclei from the 2018 Data Science Bowl.

Where it comes from. The ``stardist`` package (version 0.9.2, BSD-3-Clause code) ships one 2-D
fluorescence microscopy image and its instance labels inside its wheel, documented there as
"Fluorescence microscopy image and mask from the 2018 kaggle DSB challenge" (Caicedo et al.,
*Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl*, Nature Methods 16,
2019). The Data Science Bowl images and annotations (image set BBBC038v1 of the Broad Bioimage
Benchmark Collection) are released under CC0 1.0 (public domain dedication):

    stardist/data/images/img2d.tif    512x512, 16-bit grayscale, values 0..235 (so 8 bits hold them exactly)
    stardist/data/images/mask2d.tif   512x512, 16-bit label map: 0 = background, k = nucleus k (125 nuclei)

The labels were drawn by people (the challenge's annotators), not by a classical method.

What the course ships (``data/dsb2018-nuclei/``, made by :func:`build_nuclei`): the image cut into
a 4x4 grid of 128x128 tiles, each tile a COCO image, each nucleus in it a COCO annotation (mask as
compressed RLE, category 1 = "nucleus"). A nucleus cut by a tile border is kept as the part inside
the tile; a part smaller than ``MIN_AREA`` pixels is dropped (a sliver a detector cannot be asked
to find). The held-out split is one spatial block, the bottom-right 2x2 tiles, so that held-out
nuclei share as little border as possible with training ones::

    data/dsb2018-nuclei/train/images/img2d_y000_x000.png ...   12 tiles
    data/dsb2018-nuclei/train/annotations.json
    data/dsb2018-nuclei/val/images/img2d_y256_x256.png ...     4 tiles
    data/dsb2018-nuclei/val/annotations.json

Image id = the tile's index in the grid (row * 4 + column), so ids never repeat across splits.

    from mrcnn_lite.data.real import nuclei
    train, val = nuclei("train"), nuclei("val")      # CocoInstances: (3,128,128) images, label 1

Rebuild from the package's own files (needs the ``real-data`` extra, or just the wheel)::

    pip download --no-deps stardist==0.9.2 -d /tmp/wheels
    python -m mrcnn_lite.data.real --wheel /tmp/wheels/stardist-0.9.2-*.whl --out data/dsb2018-nuclei
    python -m mrcnn_lite.data.real --out data/dsb2018-nuclei     # or from an installed stardist
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .coco import CocoInstances
from .segmentation import mask_to_rle
from .shapes import masks_to_boxes

# Where the shipped derivative lives in the repository (the same place load_course_model looks).
NUCLEI_ROOT = Path(__file__).resolve().parent.parent.parent / "data" / "dsb2018-nuclei"
TILE = 128       # tile side in pixels: the course model's training images are 128x128
MIN_AREA = 20    # a nucleus part inside a tile smaller than this (pixels) is dropped
GRID = 4         # 512 / 128 tiles per side
HELD_OUT = {(2, 2), (2, 3), (3, 2), (3, 3)}  # (row, column) of the held-out tiles: the bottom-right block

# The package files, checked by their SHA-256 before anything is made from them, so that a different
# stardist release cannot silently change the data set.
SOURCE = {
    "package": "stardist",
    "version": "0.9.2",
    "image": "stardist/data/images/img2d.tif",
    "mask": "stardist/data/images/mask2d.tif",
    "sha256": {
        "stardist/data/images/img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
        "stardist/data/images/mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
    },
    "origin": "2018 Data Science Bowl (BBBC038v1, Broad Bioimage Benchmark Collection); Caicedo et al., "
              "Nature Methods 16, 1247-1253 (2019)",
    "labels": "expert instance annotations of the challenge (one label per nucleus), as shipped by stardist",
}
LICENSE = {"id": 1, "name": "CC0 1.0 Universal (public domain dedication), BBBC038v1",
           "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
CATEGORIES = [{"id": 1, "name": "nucleus", "supercategory": "cell"}]
CLASS_NAMES = ("__background__", "nucleus")


# --------------------------------------------------------------------------------------------
# reading the package's files
# --------------------------------------------------------------------------------------------


def _source_bytes(wheel=None) -> dict:
    """The two TIFF files' bytes, from a stardist wheel (a zip) or an installed stardist.

    The installed package is found with ``importlib.util.find_spec``, which does not import it
    (importing stardist would pull in csbdeep and numba).
    """
    names = (SOURCE["image"], SOURCE["mask"])
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise FileNotFoundError(f"stardist wheel not found: {wheel}")
        with zipfile.ZipFile(wheel) as zf:
            missing = [n for n in names if n not in zf.namelist()]
            if missing:
                raise ValueError(f"{wheel} has no {missing[0]}: is it stardist {SOURCE['version']}?")
            data = {n: zf.read(n) for n in names}
    else:
        spec = importlib.util.find_spec("stardist")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"stardist is not installed: pip install 'stardist=={SOURCE['version']}' (or the "
                f"project's 'real-data' extra), or pass --wheel with the file from "
                f"'pip download --no-deps stardist=={SOURCE['version']}'")
        pkg = Path(list(spec.submodule_search_locations)[0])
        data = {}
        for n in names:
            p = pkg.parent / n
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: is the installed stardist {SOURCE['version']}?")
            data[n] = p.read_bytes()
    for n, b in data.items():
        got = hashlib.sha256(b).hexdigest()
        if got != SOURCE["sha256"][n]:
            raise ValueError(f"{n}: SHA-256 {got} is not the one of stardist {SOURCE['version']} "
                             f"({SOURCE['sha256'][n]}); this script is made for that release")
    return data


def read_source(wheel=None):
    """The image and its label map from the stardist package.

    Returns image: (512, 512) uint8 (the 16-bit values, all <= 255, cast without scaling) and
    ids_map: (512, 512) int64, 0 = background, k > 0 = nucleus k.
    """
    data = _source_bytes(wheel)
    with Image.open(io.BytesIO(data[SOURCE["image"]])) as im:
        raw = np.array(im)
    with Image.open(io.BytesIO(data[SOURCE["mask"]])) as im:
        ids_map = np.array(im).astype(np.int64)
    if raw.max() > 255:  # not the case for 0.9.2's file; scaling would then be a choice to document
        raise ValueError(f"{SOURCE['image']}: values up to {raw.max()} do not fit 8 bits unscaled")
    if raw.shape != ids_map.shape:
        raise ValueError(f"image {raw.shape} and mask {ids_map.shape} differ in size")
    return raw.astype(np.uint8), ids_map


# --------------------------------------------------------------------------------------------
# tiles -> COCO
# --------------------------------------------------------------------------------------------


def tile_instances(image, ids_map, tile: int = TILE, min_area: int = MIN_AREA):
    """Cut ``image`` and its label map into a grid of ``tile`` x ``tile`` tiles.

    image: (H, W) uint8; ids_map: (H, W) ints, 0 = background, k = instance k. H and W are
    multiples of ``tile``.
    Returns a list, row by row, of dicts ``{"row", "col", "image": (tile, tile) uint8,
    "masks": (n, tile, tile) uint8, "source_ids": (n,) the label of each mask in ids_map}``;
    instances inside a tile are in increasing label order, and parts smaller than ``min_area``
    pixels are left out.
    """
    H, W = image.shape
    if H % tile or W % tile:
        raise ValueError(f"image {H}x{W} is not a whole number of {tile}-px tiles")
    tiles = []
    for r in range(H // tile):
        for c in range(W // tile):
            win = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            ids_tile = ids_map[win]
            ids, counts = np.unique(ids_tile, return_counts=True)
            keep = (ids != 0) & (counts >= min_area)
            ids = ids[keep]
            masks = (ids_tile[None] == ids[:, None, None]).astype(np.uint8)
            tiles.append({"row": r, "col": c, "image": image[win].copy(), "masks": masks,
                          "source_ids": ids})
    return tiles


def coco_split(tiles, split: str) -> dict:
    """The COCO dict of the tiles of one split (``"train"`` or ``"val"``), as :func:`build_nuclei` writes it."""
    images, annotations = [], []
    ann_id = 1  # COCO annotation ids start at 1 (pycocotools reads 0 as "no match")
    for t in tiles:
        r, c = t["row"], t["col"]
        if ((r, c) in HELD_OUT) != (split == "val"):
            continue
        image_id = r * GRID + c
        h, w = t["image"].shape
        images.append({"id": image_id, "file_name": tile_file_name(r, c), "width": w, "height": h,
                       "license": LICENSE["id"]})
        boxes = masks_to_boxes(t["masks"])
        for mask, box, src_id in zip(t["masks"], boxes, t["source_ids"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()), "iscrowd": 0,
                "segmentation": mask_to_rle(mask),
                "source_label": int(src_id),  # the nucleus' label in mask2d.tif
            })
            ann_id += 1
    return {
        "info": {
            "description": f"dsb2018-nuclei {split}: {TILE}x{TILE} tiles of stardist's DSB 2018 "
                           f"nucleus image, made by mrcnn_lite.data.real",
            "source": {k: SOURCE[k] for k in ("package", "version", "image", "mask", "sha256",
                                              "origin", "labels")},
            "tile": TILE, "min_area": MIN_AREA,
            "held_out_tiles": sorted([list(rc) for rc in HELD_OUT]),
        },
        "licenses": [LICENSE],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def tile_file_name(row: int, col: int) -> str:
    return f"img2d_y{row * TILE:03d}_x{col * TILE:03d}.png"


def build_nuclei(out_dir=NUCLEI_ROOT, wheel=None) -> Path:
    """Make ``out_dir/{train,val}/{images/*.png, annotations.json}`` from stardist's files.

    The new folder is written beside ``out_dir`` and moved into place at the end, so an
    interrupted run leaves the old one untouched. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    image, ids_map = read_source(wheel)
    tiles = tile_instances(image, ids_map)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for split in ("train", "val"):
            coco = coco_split(tiles, split)
            (tmp / split / "images").mkdir(parents=True)
            for t in tiles:
                if ((t["row"], t["col"]) in HELD_OUT) == (split == "val"):
                    # grayscale PNG: the loader reads it as RGB with three equal channels
                    Image.fromarray(t["image"], mode="L").save(
                        tmp / split / "images" / tile_file_name(t["row"], t["col"]), optimize=True)
            (tmp / split / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------------
# loading the shipped set
# --------------------------------------------------------------------------------------------


def nuclei(split: str = "train", root=NUCLEI_ROOT, transforms=None) -> CocoInstances:
    """The shipped nucleus tiles of one split (``"train"``: 12 tiles, ``"val"``: the 4 held-out ones).

    Returns a :class:`CocoInstances`: ``ds[i] -> (image (3, 128, 128) float in [0, 1], target)``
    with label 1 = nucleus.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    ann = root / split / "annotations.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} not found: rebuild it with "
                                f"'python -m mrcnn_lite.data.real --out {root}'")
    return CocoInstances(root / split / "images", ann, transforms=transforms)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mrcnn_lite.data.real",
        description="Rebuild data/dsb2018-nuclei (COCO tiles) from the image and labels that the "
                    f"stardist {SOURCE['version']} package ships.")
    p.add_argument("--wheel", type=Path, default=None,
                   help="a stardist wheel (pip download --no-deps stardist==0.9.2); "
                        "default: the installed stardist")
    p.add_argument("--out", type=Path, default=NUCLEI_ROOT, help=f"output folder (default {NUCLEI_ROOT})")
    args = p.parse_args(argv)
    try:
        out = build_nuclei(args.out, wheel=args.wheel)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split in ("train", "val"):
        coco = json.loads((out / split / "annotations.json").read_text())
        print(f"{out / split}: {len(coco['images'])} tiles, {len(coco['annotations'])} nuclei")
    return 0


if __name__ == "__main__":
    sys.exit(main())
