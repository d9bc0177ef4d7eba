"""COCO-format instance segmentation: export any dataset to COCO, and read any COCO dataset back.

COCO format in one paragraph: one JSON file with three lists. ``images`` holds
``{"id", "file_name", "width", "height"}``; ``categories`` holds ``{"id", "name"}``; ``annotations``
holds one object instance each: ``{"id", "image_id", "category_id", "bbox": [x, y, w, h],
"area", "iscrowd", "segmentation"}``. The segmentation is either a list of polygons
``[[x1, y1, x2, y2, ...], ...]`` (pixel-corner coordinates) or a run-length encoding (RLE)
``{"size": [h, w], "counts": ...}``, where counts is a list of ints ("uncompressed", used for crowds)
or pycocotools' compact string ("compressed"). pycocotools turns all three into a binary mask.

Layout written by :func:`export_coco` (and read by :class:`CocoInstances`)::

    out_dir/<split>/images/000000.png ...
    out_dir/<split>/annotations.json
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from .shapes import image_to_tensor

# --------------------------------------------------------------------------------------------
# masks <-> COCO segmentations
# --------------------------------------------------------------------------------------------


def mask_to_rle(mask) -> dict:
    """(H, W) binary mask -> compressed COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))  # pycocotools wants column-major uint8
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON; the string is plain ASCII
    return rle


def mask_to_polygons(mask) -> list:
    """(H, W) binary mask -> list of polygons ``[[x1, y1, x2, y2, ...], ...]`` along pixel edges.

    We walk the outline of the mask along the cracks between pixels, so the vertices sit on pixel
    corners (integers). Each connected region gives one outer polygon. COCO polygons are a union,
    so *holes cannot be expressed*: a region with a hole comes back filled.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)  # a frame of zeros: every region has an outside
    inside = m[1:-1, 1:-1]
    rows, cols = np.nonzero(inside)
    # Directed boundary edges, clockwise on screen (y points down) around each foreground pixel.
    # Pixel (r, c) covers [c, c+1] x [r, r+1]; an edge is on the outline when the neighbour is out.
    edges = []
    for (dr, dc), (x0, y0, x1, y1) in (
        ((-1, 0), (0, 0, 1, 0)),  # top edge, heading right
        ((0, 1), (1, 0, 1, 1)),   # right edge, heading down
        ((1, 0), (1, 1, 0, 1)),   # bottom edge, heading left
        ((0, -1), (0, 1, 0, 0)),  # left edge, heading up
    ):
        out = ~m[rows + 1 + dr, cols + 1 + dc]
        for r, c in zip(rows[out].tolist(), cols[out].tolist()):
            edges.append(((c + x0, r + y0), (c + x1, r + y1)))
    starts = {}
    for e in edges:
        starts.setdefault(e[0], []).append(e[1])

    polygons = []
    while starts:
        # start where there is only one way on, so the turn rule below decides every fork
        start = next((v for v, o in starts.items() if len(o) == 1), next(iter(starts)))
        loop, here, heading = [start], start, None
        while True:
            options = starts[here]
            if len(options) == 1 or heading is None:
                nxt = options[0]
            else:
                # two ways on (pixels touching only at a corner): turn right, hugging the current
                # pixel, so diagonal neighbours stay separate regions
                right = (-heading[1], heading[0])
                nxt = next((o for o in options if (o[0] - here[0], o[1] - here[1]) == right),
                           options[0])
            options.remove(nxt)
            if not options:
                del starts[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            if here == start:  # back where we began: the outline is closed
                break
            loop.append(here)
        # drop vertices in the middle of straight runs
        pts = np.array(loop, dtype=np.float64)
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - \
                (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
        pts = pts[cross != 0]
        # shoelace with y down: outer outlines (clockwise on screen) are positive, holes negative
        x, y = pts[:, 0], pts[:, 1]
        signed = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        if signed > 0 and len(pts) >= 3:
            polygons.append(pts.reshape(-1).tolist())
    return polygons


def _segmentation_to_mask(seg, height: int, width: int, ann_id) -> np.ndarray:
    """Decode one COCO segmentation (polygons, uncompressed or compressed RLE) to (H, W) uint8.

    Raises ValueError naming the annotation id when the segmentation is malformed.
    """
    where = f"annotation id {ann_id}"
    if isinstance(seg, list):
        if len(seg) == 0:
            raise ValueError(f"{where}: empty polygon list")
        for poly in seg:
            if not isinstance(poly, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
                raise ValueError(f"{where}: a polygon must be a flat list of numbers "
                                 f"[x1, y1, x2, y2, ...], got {str(poly)[:60]}")
            if len(poly) < 6 or len(poly) % 2:
                raise ValueError(f"{where}: a polygon needs an even number >= 6 of coordinates "
                                 f"(3 points), got {len(poly)}")
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in seg], height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise ValueError(f"{where}: an RLE segmentation needs 'size' and 'counts'")
        if list(seg["size"]) != [height, width]:
            raise ValueError(f"{where}: RLE size {list(seg['size'])} does not match the image "
                             f"size [height, width] = [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE (crowds): runs of 0s and 1s, column-major
            if sum(counts) != height * width:
                raise ValueError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, "
                                 f"expected height*width = {height * width}")
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width],
                   "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise ValueError(f"{where}: RLE counts must be a list or a string, "
                             f"got {type(counts).__name__}")
    else:
        raise ValueError(f"{where}: segmentation must be a list of polygons or an RLE dict, "
                         f"got {type(seg).__name__}")
    try:
        with warnings.catch_warnings():  # pycocotools + numpy 2 warn about __array__(copy=...)
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except Exception as err:  # pycocotools' own message does not say which annotation
        raise ValueError(f"{where}: could not decode the segmentation ({err})") from err
    if m.shape != (height, width):
        raise ValueError(f"{where}: decoded mask has shape {m.shape}, "
                         f"expected ({height}, {width})")
    return m.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# reading any COCO instance dataset
# --------------------------------------------------------------------------------------------


class CocoInstances(torch.utils.data.Dataset):
    """Any COCO-format instance-segmentation dataset, in the same contract as ShapesDataset.

    Args:
        images_dir: folder that the ``file_name`` of each image entry is relative to.
        annotation_json: the COCO annotations file (e.g. ``instances_val2017.json``).
        transforms: optional callable ``(image, target) -> (image, target)``.
        skip_crowd: leave out ``iscrowd=1`` annotations (crowd regions are usually ignored in training).
        drop_degenerate: drop annotations whose bbox has width or height <= 0 (counted in
            ``self.num_dropped``) instead of raising ValueError.

    ``ds[i]`` returns ``(image, target)`` with
        image: (3, H, W) float32 RGB in [0, 1];
        boxes: (n, 4) float32 x1y1x2y2 (the COCO bbox [x, y, w, h] -> [x, y, x + w, y + h]);
        labels: (n,) int64 = category_id (no remapping: COCO ids have gaps, 1..90);
        masks: (n, H, W) uint8 decoded with pycocotools; image_id: int (the COCO image id);
        area: (n,) float32 (the annotation's area); iscrowd: (n,) int64.
    Images without annotations are valid: boxes (0, 4), masks (0, H, W).

    Bad input raises FileNotFoundError / ValueError naming the file, image id or annotation id.
    """

    def __init__(self, images_dir, annotation_json, transforms=None, skip_crowd: bool = False,
                 drop_degenerate: bool = False):
        self.images_dir = Path(images_dir)
        self.annotation_json = Path(annotation_json)
        self.transforms = transforms
        if not self.annotation_json.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.annotation_json}")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir}")
        text = self.annotation_json.read_text()
        if not text.strip():
            raise ValueError(f"annotation file is empty: {self.annotation_json}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"annotation file is not valid JSON: {self.annotation_json} "
                             f"({err})") from err
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"not a COCO instances file (needs 'images' and 'annotations'): "
                             f"{self.annotation_json}")
        self.dataset = data  # the raw dict, as pycocotools calls it

        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.image_by_id = {im["id"]: im for im in self.images}
        self.categories = {c["id"]: c["name"] for c in data.get("categories", [])}
        self.anns_by_image = {im["id"]: [] for im in self.images}
        self.num_dropped = 0
        for ann in data["annotations"]:
            ann_id = ann.get("id")
            if ann.get("image_id") not in self.anns_by_image:
                raise ValueError(f"annotation id {ann_id} points to image_id "
                                 f"{ann.get('image_id')}, which has no entry in 'images' "
                                 f"of {self.annotation_json}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(f"annotation id {ann_id}: bbox must be [x, y, w, h], got {bbox}")
            if not (bbox[2] > 0 and bbox[3] > 0):
                if drop_degenerate:
                    self.num_dropped += 1
                    continue
                raise ValueError(f"annotation id {ann_id}: bbox {bbox} has non-positive "
                                 f"width or height")
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            self.anns_by_image[ann["image_id"]].append(ann)

    @property
    def class_names(self) -> list:
        """Names indexed by label (= category id); gaps in the ids are empty strings."""
        names = [""] * (max(self.categories, default=0) + 1)
        names[0] = "__background__"
        for cid, name in self.categories.items():
            names[cid] = name
        return names

    @property
    def coco(self):
        """A pycocotools ``COCO`` object over the same annotations (built once, on first use)."""
        if getattr(self, "_coco", None) is None:
            from pycocotools.coco import COCO
            import contextlib
            import io
            coco = COCO()
            coco.dataset = self.dataset
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "creating index..."
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> np.ndarray:
        """Image ``index`` as an (H, W, 3) uint8 RGB array, checked against its entry's size."""
        info = self.images[index]
        path = self.images_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image file for image id {info['id']} not found: {path}")
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))  # a writable copy
        h, w = arr.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(f"image id {info['id']} ({path}) is {h}x{w} (HxW) but its entry "
                             f"says {info.get('height')}x{info.get('width')}")
        return arr

    def __getitem__(self, index: int):
        info = self.images[index]
        image_u8 = self.load_image(index)
        H, W = image_u8.shape[:2]
        anns = self.anns_by_image[info["id"]]
        n = len(anns)
        boxes = np.zeros((n, 4), dtype=np.float32)
        masks = np.zeros((n, H, W), dtype=np.uint8)
        for j, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            boxes[j] = (x, y, x + w, y + h)
            if "segmentation" not in ann:
                raise ValueError(f"annotation id {ann.get('id')} has no segmentation")
            masks[j] = _segmentation_to_mask(ann["segmentation"], H, W, ann.get("id"))
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": int(info["id"]),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        image = image_to_tensor(image_u8)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"CocoInstances({str(self.images_dir)!r}, {str(self.annotation_json)!r}: "
                f"{len(self)} images, {len(self.dataset['annotations'])} annotations, "
                f"{len(self.categories)} categories)")
