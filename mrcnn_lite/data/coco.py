"""Reading any COCO-format instance-segmentation dataset, every record checked before training starts.

COCO format in one paragraph: one JSON file with three lists. ``images`` holds
``{"id", "file_name", "width", "height"}``; ``categories`` holds ``{"id", "name"}``; ``annotations``
holds one object instance each: ``{"id", "image_id", "category_id", "bbox": [x, y, w, h],
"area", "iscrowd", "segmentation"}``. The segmentation is either a list of polygons
``[[x1, y1, x2, y2, ...], ...]`` (pixel-corner coordinates) or a run-length encoding (RLE)
``{"size": [h, w], "counts": ...}``, where counts is a list of ints ("uncompressed", used for crowds)
or pycocotools' compact string ("compressed"). pycocotools turns all three into a binary mask.

Layout written by :func:`~mrcnn_lite.data.export_coco` (``coco_export.py``) and read by
:class:`CocoInstances`; the segmentations are decoded and checked in ``segmentation.py``::

    out_dir/<split>/images/000000.png ...
    out_dir/<split>/annotations.json
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from PIL import Image

from .images import read_rgb
from .item import detection_item, masks_to_boxes
from .segmentation import check_segmentation, is_number, segmentation_to_mask


class CocoInstances(torch.utils.data.Dataset):
    """Any COCO-format instance-segmentation dataset, in the same contract as ShapesDataset.

    Args:
        images_dir: folder that the ``file_name`` of each image entry is relative to.
        annotation_json: the COCO annotations file (e.g. ``instances_val2017.json``).
        transforms: optional callable ``(image, target) -> (image, target)``.
        skip_crowd: leave out ``iscrowd=1`` annotations (default True, as torchvision's reference
            scripts do: a crowd region is one mask over many objects, not an object to learn).
            Evaluation does not need them in the targets: ``engine.evaluate`` scores against the
            file's own annotations, where pycocotools treats crowds as "ignore".
        drop_degenerate: drop annotations whose bbox has no width or height (<= 0, or 0 once in
            float32 and clipped to the image), with a warning listing their ids (counted in
            ``self.num_dropped``), instead of raising ValueError.

    ``ds[i]`` returns ``(image, target)`` with
        image: (3, H, W) float32 RGB in [0, 1] (EXIF orientation applied, 16-bit images scaled);
        boxes: (n, 4) float32 x1y1x2y2 (the COCO bbox [x, y, w, h] -> [x, y, x + w, y + h]),
            clipped to the image;
        labels: (n,) int64, the model's label of each ``category_id`` (see below);
        masks: (n, H, W) uint8 decoded with pycocotools; image_id: int (the COCO image id);
        area: (n,) float32 (the annotation's area); iscrowd: (n,) int64.
    Images without annotations are valid: boxes (0, 4), masks (0, H, W).

    Labels: a model has one output per label up to the largest, so category ids up to
    ``MAX_DIRECT_CATEGORY_ID`` (1000) are the labels themselves (COCO's 1..90 with gaps keep the
    meaning torchvision's COCO weights give them). Larger ids (e.g. 10**7) are mapped to 1..K in
    increasing order. ``self.label_to_category[label]`` gives the category id back (index 0 is
    background) and ``self.category_to_label`` the other way; the ``train`` command saves the
    mapping in the checkpoint, and ``predict`` and ``evaluate`` report category ids with it.

    Everything in the file is checked when the dataset is built, so a bad record stops you before
    any training: image and annotation ids (present, non-negative integers, unique; annotation id
    0 is refused because pycocotools' matcher reads 0 as "unmatched"), ``file_name`` (a relative
    path inside ``images_dir``, no ``..``), ``category_id`` (declared in ``categories``, not 0 =
    background), ``bbox`` (four finite numbers), the segmentation (polygons: finite, an even count
    >= 6, near the image; RLE: runs that sum to H*W, see :func:`check_segmentation`). Each error is
    a ValueError naming the record (annotation id, image id). Image files are read when used:
    a missing one raises FileNotFoundError, an unreadable one ``ImageReadError`` (a ValueError),
    both naming the file and image id; :meth:`check_files` checks that every file exists up front.

    Boxes that do not fit the data: a bbox entirely outside its image is refused (ValueError at
    load time); one sticking out of the image by more than a pixel is clipped to the image with a
    warning. A bbox whose width or height is positive in the file but 0 in float32 (x = 1e6, w = 0.01)
    or once clipped to the image is degenerate like w = 0 (ValueError, or dropped with a warning
    naming the annotation ids under ``drop_degenerate=True``; ``self.dropped_ids``). A bbox that
    contradicts its mask is repaired when the image is read, with a warning naming the annotation:
    a non-empty mask whose tight box overlaps the bbox with IoU < 0.5 replaces the bbox by that
    tight box; an empty mask drops the annotation from the target.
    """

    def __init__(self, images_dir, annotation_json, transforms=None, skip_crowd: bool = True,
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
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise ValueError(f"not a COCO instances file (needs 'images' and 'annotations' lists): "
                             f"{self.annotation_json}")
        self.dataset = data  # the raw dict, as pycocotools calls it
        src = self.annotation_json.name

        # The categories define the model's labels and names: without them a class that happens to have
        # no annotation in this file would silently get no label, and the names would be numbers.
        cats = data.get("categories")
        if not isinstance(cats, list) or not cats:
            found = "has no 'categories'" if cats is None else f"has 'categories' = {str(cats)[:60]}"
            raise ValueError(f"{self.annotation_json} {found}; a COCO instances file needs a non-empty "
                             f"list like [{{\"id\": 1, \"name\": \"cat\"}}, ...]")
        self.categories = {}
        for c in cats:
            cid = c.get("id") if isinstance(c, dict) else None
            if not _is_int(cid) or cid < 0:
                raise ValueError(f"{src}: category {str(c)[:80]} needs an integer 'id'")
            if not isinstance(c.get("name"), str) or not c["name"].strip():
                raise ValueError(f"{src}: category id {cid} needs a 'name' (a non-empty string), "
                                 f"got {c.get('name')!r}")
            if cid == 0:
                raise ValueError(f"{src}: category id 0 ({c.get('name')!r}) is declared, but label 0 "
                                 f"is the background; number categories from 1")
            if cid in self.categories:
                raise ValueError(f"{src}: category id {cid} is declared twice")
            self.categories[cid] = str(c.get("name", cid))

        self.image_by_id = {}
        for k, im in _objects(data, "images", src):
            iid = im.get("id")
            if not _is_int(iid) or iid < 0:
                raise ValueError(f"{src}: images[{k}] (file_name {im.get('file_name')!r}) needs a "
                                 f"non-negative integer 'id', got {iid!r}")
            if iid in self.image_by_id:
                raise ValueError(f"{src}: image id {iid} appears twice ({self.image_by_id[iid].get('file_name')!r} "
                                 f"and {im.get('file_name')!r}); ids must be unique")
            _check_file_name(im.get("file_name"), f"{src}: image id {iid}")
            for key in ("height", "width"):
                if key in im and (not _is_int(im[key]) or im[key] <= 0):
                    raise ValueError(f"{src}: image id {iid}: {key} must be a positive integer, "
                                     f"got {im[key]!r}")
            self.image_by_id[iid] = im
        self.images = sorted(data["images"], key=lambda im: im["id"])

        self.anns_by_image = {im["id"]: [] for im in self.images}
        self.num_dropped = 0
        self.dropped_ids = set()
        seen, clipped = set(), []
        for k, ann in _objects(data, "annotations", src):
            ann_id = ann.get("id")
            if not _is_int(ann_id) or ann_id < 1:
                raise ValueError(f"{src}: annotations[{k}] needs an integer 'id' >= 1, got {ann_id!r} "
                                 f"(pycocotools' evaluation reads id 0 as 'no match')")
            if ann_id in seen:
                raise ValueError(f"{src}: annotation id {ann_id} appears twice; ids must be unique")
            seen.add(ann_id)
            image_id = ann.get("image_id")
            if not _is_int(image_id) or image_id not in self.image_by_id:
                raise ValueError(f"annotation id {ann_id} points to image_id "
                                 f"{image_id!r}, which has no entry in 'images' "
                                 f"of {self.annotation_json}")
            where = f"annotation id {ann_id} (image id {image_id})"
            cat = ann.get("category_id")
            if not _is_int(cat):
                raise ValueError(f"{where}: category_id must be an integer, got {cat!r}")
            if cat <= 0:
                raise ValueError(f"{where}: category_id {cat} is not allowed (0 is the background)")
            if cat not in self.categories:
                raise ValueError(f"{where}: category_id {cat} is not declared in 'categories' "
                                 f"(declared: {sorted(self.categories)[:20]})")
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
                raise ValueError(f"{where}: bbox must be [x, y, w, h] (4 numbers), got {bbox}")
            if not all(math.isfinite(v) for v in bbox):
                raise ValueError(f"{where}: bbox {bbox} has a non-finite number")
            info = self.image_by_id[image_id]
            problem = _degenerate(bbox, info.get("height"), info.get("width"))
            if problem:
                if drop_degenerate:
                    self.num_dropped += 1
                    self.dropped_ids.add(ann_id)
                    continue
                raise ValueError(f"annotation id {ann_id}: bbox {bbox} {problem} (drop_degenerate=True "
                                 f"drops such boxes with a warning)")
            if ann.get("iscrowd", 0) not in (0, 1):
                raise ValueError(f"{where}: iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
            if "segmentation" not in ann:
                raise ValueError(f"annotation id {ann_id} has no segmentation")
            if "height" in info and "width" in info:
                H, W = info["height"], info["width"]
                check_segmentation(ann["segmentation"], H, W, where)
                x, y, w, h = bbox
                if x >= W or y >= H or x + w <= 0 or y + h <= 0:
                    raise ValueError(f"{where}: bbox {bbox} lies entirely outside the {W}x{H} (WxH) image")
                if x < -1 or y < -1 or x + w > W + 1 or y + h > H + 1:
                    clipped.append(ann_id)
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            self.anns_by_image[image_id].append(ann)
        if self.dropped_ids:
            ids = sorted(self.dropped_ids)
            warnings.warn(f"{self.annotation_json}: dropped {len(ids)} annotations whose bbox has no width or "
                          f"height in float32 after clipping to the image (annotation ids {ids[:10]}{' ...' if len(ids) > 10 else ''})",
                          stacklevel=2)
        if clipped:
            warnings.warn(f"{self.annotation_json}: {len(clipped)} bboxes stick out of their image by "
                          f"more than a pixel and are clipped to it (annotation ids "
                          f"{clipped[:10]}{' ...' if len(clipped) > 10 else ''})", stacklevel=2)

        ids = sorted(self.categories)
        if ids and ids[-1] > MAX_DIRECT_CATEGORY_ID:
            self.label_to_category = [0] + ids           # label k -> the k-th smallest category id
        else:
            self.label_to_category = list(range(ids[-1] + 1 if ids else 1))  # label = category id
        self.category_to_label = {c: label for label, c in enumerate(self.label_to_category) if label}

    @property
    def class_names(self) -> list:
        """Names indexed by label; labels whose category id is not declared are empty strings."""
        names = [self.categories.get(c, "") for c in self.label_to_category]
        names[0] = "__background__"
        return names

    @property
    def coco(self):
        """A pycocotools ``COCO`` object over the same annotations (built once, on first use).

        This is the ground truth ``engine.evaluate`` scores against: every annotation of the file,
        crowds included, with the segmentation as stored (RLE or polygons, never decoded masks).
        Annotations dropped as degenerate are left out; a missing ``area`` is the bbox's area and a
        missing ``iscrowd`` is 0 (pycocotools needs both).
        """
        if getattr(self, "_coco", None) is None:
            from pycocotools.coco import COCO
            import contextlib
            import io
            anns = [a if "area" in a and "iscrowd" in a else
                    {"area": float(a["bbox"][2] * a["bbox"][3]), "iscrowd": 0, **a}
                    for a in self.dataset["annotations"] if a["id"] not in self.dropped_ids]
            coco = COCO()
            coco.dataset = {**self.dataset, "annotations": anns}
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "creating index..."
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __len__(self) -> int:
        return len(self.images)

    def check_files(self) -> None:
        """Raise FileNotFoundError listing the image files that do not exist (checks every entry)."""
        missing = [(im["id"], self.images_dir / im["file_name"]) for im in self.images
                   if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            first = ", ".join(f"image id {i}: {p}" for i, p in missing[:3])
            raise FileNotFoundError(f"{len(missing)} of {len(self.images)} image files listed in "
                                    f"{self.annotation_json} are missing ({first}"
                                    f"{', ...' if len(missing) > 3 else ''})")

    def load_image(self, index: int) -> np.ndarray:
        """Image ``index`` as an (H, W, 3) uint8 RGB array, checked against its entry's size."""
        info = self.images[index]
        path = self.images_dir / info["file_name"]
        arr = read_rgb(path, image_id=info["id"])
        h, w = arr.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(f"image id {info['id']} ({path}) is {h}x{w} (HxW) but its entry "
                             f"says {info.get('height')}x{info.get('width')}"
                             + (" (after applying its EXIF orientation)" if _exif_rotated(path) else ""))
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
            where = f"annotation id {ann['id']} (image id {info['id']})"
            masks[j] = segmentation_to_mask(ann["segmentation"], H, W, where)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)  # clipped like torchvision's references do
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
        keep = _reconcile_boxes_with_masks(boxes, masks, anns, info["id"])
        if not keep.all():
            boxes, masks, anns = boxes[keep], masks[keep], [a for a, k in zip(anns, keep) if k]
        return detection_item(image_u8, boxes, [self.category_to_label[a["category_id"]] for a in anns], masks,
                              info["id"], area=[float(a.get("area", 0.0)) for a in anns],
                              iscrowd=[int(a.get("iscrowd", 0)) for a in anns], transforms=self.transforms)

    def __repr__(self) -> str:
        return (f"CocoInstances({str(self.images_dir)!r}, {str(self.annotation_json)!r}: "
                f"{len(self)} images, {len(self.dataset['annotations'])} annotations, "
                f"{len(self.categories)} categories)")


MAX_DIRECT_CATEGORY_ID = 1000
"""Category ids up to this are used as labels directly; a dataset with larger ids is relabelled 1..K."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _objects(data: dict, key: str, src: str):
    """``(k, record)`` for each entry of the file's ``key`` list, refusing one that is not a JSON object."""
    for k, record in enumerate(data[key]):
        if not isinstance(record, dict):
            raise ValueError(f"{src}: {key}[{k}] is not an object: {str(record)[:60]}")
        yield k, record


def _check_file_name(name, where: str) -> None:
    """A file_name must be a relative path that stays inside the images folder."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: needs a 'file_name' (a path relative to the images folder), got {name!r}")
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or PureWindowsPath(name).drive or ".." in p.parts:
        raise ValueError(f"{where}: file_name {name!r} must be a path inside the images folder "
                         f"(no absolute path, no '..')")


def _degenerate(bbox, height, width) -> str:
    """Why COCO ``bbox [x, y, w, h]`` gives the model a box without area, or "" when it does not.

    The check is made on the box the model gets: x1y1x2y2 in float32 (``__getitem__``), clipped to the
    image when its size is known. A width of 0.01 at x = 1e6, or of 1e-9 at x = 0.5, is positive in the
    file (float64) and 0 in float32; a box from x = 99.99999999 in a 100-px-wide image is clipped to
    nothing. Such a box has no pixels to learn from and breaks the box encoding (log of 0 width).
    """
    x, y, w, h = bbox
    if not (w > 0 and h > 0):
        return "has non-positive width or height"
    x1, y1, x2, y2 = np.array([x, y, x + w, y + h], dtype=np.float32)
    if height and width and x < width and y < height and x + w > 0 and y + h > 0:  # (outside: refused later)
        x1, x2 = np.clip([x1, x2], 0, width)
        y1, y2 = np.clip([y1, y2], 0, height)
    if not (x2 > x1 and y2 > y1):
        return (f"has a positive width and height that vanish in float32, the model's precision "
                f"(x1y1x2y2 = {[float(v) for v in (x1, y1, x2, y2)]} after clipping to the image)")
    return ""


def _exif_rotated(path) -> bool:
    try:
        with Image.open(path) as im:
            return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap H and W
    except Exception:
        return False


def _reconcile_boxes_with_masks(boxes: np.ndarray, masks: np.ndarray, anns, image_id) -> np.ndarray:
    """Repair, with a warning naming the annotation, a bbox that contradicts its own mask.

    boxes: (n, 4) x1y1x2y2 clipped to the image (changed in place); masks: (n, H, W) uint8.
    Returns ``keep`` (n,) bool.

    * The mask is not empty but its tight box overlaps the bbox with IoU < 0.5 (e.g. every mask pixel
      outside the box): the box is recomputed from the mask. The mask is the finer annotation (COCO's
      bboxes are derived from the masks), and Mask R-CNN crops its mask targets with boxes matched to
      this one: a box beside its mask would teach the mask head an empty mask.
    * The mask is empty (a polygon that covers no pixel centre, an all-zero RLE): the annotation is
      dropped from the training target; its mask target would say "no object here" over the box.
    """
    tight = masks_to_boxes(masks)
    keep = np.ones(len(anns), dtype=bool)
    for j, ann in enumerate(anns):
        where = f"annotation id {ann['id']} (image id {image_id})"
        a = [round(float(v), 1) for v in boxes[j]]
        if not masks[j].any():
            keep[j] = False
            warnings.warn(f"{where}: its mask is empty while its bbox {a} (x1y1x2y2) is not; the "
                          f"annotation is dropped (no mask to learn)", stacklevel=3)
            continue
        iou = _iou(boxes[j], tight[j])
        if iou < 0.5:
            warnings.warn(f"{where}: bbox {a} and its mask's box {[float(v) for v in tight[j]]} (x1y1x2y2) "
                          f"overlap with IoU {iou:.2f} < 0.5; the box is recomputed from the mask",
                          stacklevel=3)
            boxes[j] = tight[j]
    return keep


def _iou(a, b) -> float:
    """IoU of two x1y1x2y2 boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
