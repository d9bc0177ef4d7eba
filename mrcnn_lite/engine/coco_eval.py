"""COCO-style evaluation: box and mask AP through pycocotools' COCOeval.

The ground truth comes from any dataset in the package's contract (``ShapesDataset``,
``CocoInstances``, your own): each item is ``(image, target)`` with ``boxes (n, 4) xyxy``,
``labels (n,)``, ``masks (n, H, W) uint8`` and ``image_id``. Category ids are the model's labels.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rle(mask: np.ndarray) -> dict:
    """Binary mask (H, W) -> COCO compressed RLE with ``counts`` as str (JSON-friendly)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_from_targets(targets: Iterable[dict], image_sizes: Iterable[tuple], num_classes: int) -> COCO:
    """Build an in-memory pycocotools ``COCO`` ground truth from targets in the package's contract.

    Args:
        targets: per image, a dict with ``boxes (n, 4) xyxy``, ``labels (n,)``, ``masks (n, H, W)``,
            ``image_id`` and optionally ``iscrowd (n,)``.
        image_sizes: per image, ``(H, W)``.
        num_classes: including background; categories ``1 .. num_classes - 1`` are declared.
    """
    images, annotations = [], []
    ann_id = 1
    for target, (h, w) in zip(targets, image_sizes):
        image_id = int(target["image_id"])
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        boxes = target["boxes"].tolist()
        labels = target["labels"].tolist()
        masks = target["masks"].numpy() if "masks" in target else None
        crowd = target.get("iscrowd", torch.zeros(len(labels), dtype=torch.int64)).tolist()
        for i, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
            ann = {"id": ann_id, "image_id": image_id, "category_id": int(label),
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(crowd[i])}
            if masks is not None:
                ann["segmentation"] = _rle(masks[i])
                ann["area"] = float(masks[i].sum())
            else:
                ann["area"] = float((x2 - x1) * (y2 - y1))
            annotations.append(ann)
            ann_id += 1
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections_to_coco(image_id: int, output: dict, mask_threshold: float = 0.5) -> Dict[str, List[dict]]:
    """One image's model output -> COCO result entries for ``bbox`` and (if masks) ``segm``.

    ``output``: ``boxes (m, 4) xyxy``, ``labels (m,)``, ``scores (m,)``, optionally ``masks (m, 1, H, W)``
    soft in [0, 1] (thresholded at ``mask_threshold`` for the RLE).
    """
    boxes = output["boxes"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    bbox, segm = [], []
    masks = output.get("masks")
    if masks is not None:
        masks = (masks.detach().cpu()[:, 0] > mask_threshold).numpy()
    for i, ((x1, y1, x2, y2), label, score) in enumerate(zip(boxes, labels, scores)):
        entry = {"image_id": int(image_id), "category_id": int(label), "score": float(score)}
        bbox.append({**entry, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if masks is not None:
            segm.append({**entry, "segmentation": _rle(masks[i])})
    return {"bbox": bbox, "segm": segm}


def coco_summary(coco_gt: COCO, results: List[dict], iou_type: str, verbose: bool = False) -> Dict[str, float]:
    """Run COCOeval for ``iou_type`` ('bbox' or 'segm') and return ``{AP, AP50, AP75, APs, APm, APl}``.

    With no detections at all every metric is 0.0 (COCOeval itself cannot load an empty result list).
    COCOeval reports -1 where a size range has no ground truth; we keep that value as COCO does.
    """
    if not results:
        return {k: 0.0 for k in METRICS}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(f"--- {iou_type} ---\n" + out.getvalue().split("DONE", 1)[-1].split("\n", 1)[-1].strip())
    return {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


def _num_classes_of(model) -> Optional[int]:
    """Classes (incl. background) of an mrcnn_lite model (its config) or a torchvision-style one (its box predictor)."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return cfg.num_classes
    cls_score = getattr(getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_score", None)
    return getattr(cls_score, "out_features", None)


def _batches(data, batch_size: int):
    """``(images, targets)`` batches from a dataset (indexable, items ``(image, target)``) or from an iterable
    of batches such as a ``DataLoader`` with torchvision's ``collate_fn`` (``tuple(zip(*batch))``)."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # a Dataset; a DataLoader has no __getitem__
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            yield [img for img, _ in items], [t for _, t in items]
    else:
        for i, batch in enumerate(data):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"evaluate: batch {i} of the data loader must be (images, targets), "
                                f"got {type(batch).__name__}")
            yield list(batch[0]), list(batch[1])


@torch.no_grad()
def evaluate(model, data, device="cpu", batch_size: int = 4, mask_threshold: float = 0.5,
             verbose: bool = False, num_classes: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Run ``model`` (eval mode) over ``data`` and return COCO ``{"bbox": {...}, "segm": {...}}``.

    Takes what torchvision's ``references/detection/engine.evaluate(model, data_loader, device)`` takes:
    ``model`` an mrcnn_lite or torchvision detection model (or one wrapped in DistributedDataParallel);
    ``data`` a ``DataLoader`` yielding ``(images, targets)`` batches, or a dataset of ``(image, target)``
    items (read ``batch_size`` at a time); targets need ``boxes``, ``labels``, ``image_id`` (int or tensor)
    and, for mask AP, ``masks``. ``segm`` is scored when the model returns masks.

    ``num_classes`` (incl. background) defaults to the model's: its config, else its box predictor's outputs.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if num_classes is None:
        num_classes = _num_classes_of(model)
    if num_classes is None:
        raise ValueError("evaluate: cannot tell the model's number of classes; pass num_classes=")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    targets, sizes, results = [], [], {"bbox": [], "segm": []}
    for images, batch_targets in _batches(data, batch_size):
        outputs = model([img.to(device) for img in images])
        for img, target, output in zip(images, batch_targets, outputs):
            targets.append(target)
            sizes.append(tuple(img.shape[-2:]))
            res = detections_to_coco(int(target["image_id"]), output, mask_threshold)
            results["bbox"] += res["bbox"]
            results["segm"] += res["segm"]
    model.train(was_training)
    coco_gt = coco_from_targets(targets, sizes, num_classes)
    return {t: coco_summary(coco_gt, results[t], t, verbose) for t in ("bbox", "segm")}
