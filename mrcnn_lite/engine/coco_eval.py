"""COCO-style evaluation: box and mask AP through pycocotools' COCOeval.

The ground truth comes from any dataset in the package's contract (``ShapesDataset``,
``CocoInstances``, your own): each item is ``(image, target)`` with ``boxes (n, 4) xyxy``,
``labels (n,)``, ``masks (n, H, W) uint8`` and ``image_id``. Category ids are the model's labels.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Optional

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import CocoInstances
from ..data.segmentation import mask_to_rle

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _gt_annotations(target: dict, first_ann_id: int, label_to_category=None) -> List[dict]:
    """One image's target -> COCO ground-truth annotations, masks as compressed RLE (a few hundred
    bytes each instead of H*W: evaluation keeps these, not the decoded masks, until the end)."""
    image_id = int(target["image_id"])
    boxes = target["boxes"].tolist()
    labels = target["labels"].tolist()
    masks = target["masks"].numpy() if "masks" in target else None
    crowd = target.get("iscrowd", torch.zeros(len(labels), dtype=torch.int64)).tolist()
    anns = []
    for i, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        cat = int(label) if label_to_category is None else int(label_to_category[label])
        ann = {"id": first_ann_id + i, "image_id": image_id, "category_id": cat,
               "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(crowd[i])}
        if masks is not None:
            ann["segmentation"] = mask_to_rle(masks[i])
            ann["area"] = float(masks[i].sum())
        else:
            ann["area"] = float((x2 - x1) * (y2 - y1))
        anns.append(ann)
    return anns


def _coco_gt(images: List[dict], annotations: List[dict], category_ids: Iterable[int]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": int(c), "name": str(c)} for c in category_ids]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_from_targets(targets: Iterable[dict], image_sizes: Iterable[tuple], num_classes: int) -> COCO:
    """Build an in-memory pycocotools ``COCO`` ground truth from targets in the package's contract.

    Args:
        targets: per image, a dict with ``boxes (n, 4) xyxy``, ``labels (n,)``, ``masks (n, H, W)``,
            ``image_id`` and optionally ``iscrowd (n,)``.
        image_sizes: per image, ``(H, W)``.
        num_classes: including background; categories ``1 .. num_classes - 1`` are declared.
    """
    images, annotations = [], []
    for target, (h, w) in zip(targets, image_sizes):
        images.append({"id": int(target["image_id"]), "height": int(h), "width": int(w)})
        annotations += _gt_annotations(target, len(annotations) + 1)
    return _coco_gt(images, annotations, range(1, num_classes))


def detections_to_coco(image_id: int, output: dict, mask_threshold: float = 0.5,
                       label_to_category=None) -> Dict[str, List[dict]]:
    """One image's model output -> COCO result entries for ``bbox`` and (if masks) ``segm``.

    ``output``: ``boxes (m, 4) xyxy``, ``labels (m,)``, ``scores (m,)``, optionally ``masks (m, 1, H, W)``
    soft in [0, 1] (thresholded at ``mask_threshold`` for the RLE). ``label_to_category``: the
    category id of each label (a dataset with large ids was relabelled 1..K); None: label = category id.
    """
    boxes = output["boxes"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    bbox, segm = [], []
    masks = output.get("masks")
    if masks is not None:
        masks = (masks.detach().cpu()[:, 0] > mask_threshold).numpy()
    for i, ((x1, y1, x2, y2), label, score) in enumerate(zip(boxes, labels, scores)):
        cat = int(label) if label_to_category is None else int(label_to_category[label])
        entry = {"image_id": int(image_id), "category_id": cat, "score": float(score)}
        bbox.append({**entry, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if masks is not None:
            segm.append({**entry, "segmentation": mask_to_rle(masks[i])})
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
    """Classes (incl. background) of a detection model: its box predictor's outputs (right also after a
    fine-tuning script replaced the predictor), else its config's."""
    cls_score = getattr(getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_score", None)
    if isinstance(cls_score, torch.nn.Linear):
        return cls_score.out_features
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "num_classes", None)


def _batches(data, batch_size: int):
    """``(images, targets)`` batches from a dataset (items ``(image, target)``, read ``batch_size`` at a time)
    or from a ``DataLoader`` with torchvision's ``collate_fn`` (``tuple(zip(*batch))``)."""
    if isinstance(data, torch.utils.data.DataLoader):
        for i, batch in enumerate(data):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"evaluate: batch {i} of the data loader must be (images, targets), "
                                f"got {type(batch).__name__}")
            yield list(batch[0]), list(batch[1])
    else:
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            yield [img for img, _ in items], [t for _, t in items]


@torch.no_grad()
def evaluate(model, data, device="cpu", batch_size: int = 4, mask_threshold: float = 0.5,
             verbose: bool = False, num_classes: Optional[int] = None,
             label_to_category: Optional[List[int]] = None) -> Dict[str, Dict[str, float]]:
    """Run ``model`` (eval mode) over ``data`` and return COCO ``{"bbox": {...}, "segm": {...}}``.

    Takes what torchvision's ``references/detection/engine.evaluate(model, data_loader, device)`` takes:
    ``model`` an mrcnn_lite or torchvision detection model (or either in DistributedDataParallel), ``data``
    a ``DataLoader`` of ``(images, targets)`` batches or a dataset of ``(image, target)`` items.
    ``num_classes`` defaults to the model's (its config, else its box predictor's outputs).
    ``label_to_category``: the category id of each of the model's labels (default: the dataset's
    ``label_to_category`` when it has one, else label = category id).

    Ground truth: for a ``CocoInstances`` dataset evaluated whole, its annotation file as it is (crowd
    regions included, which pycocotools counts as "ignore", polygons and RLE as stored); otherwise the
    targets, their masks encoded as RLE as soon as the image is done. Either way no decoded ground-truth
    mask is kept beyond its batch.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    if len(data) == 0:
        raise ValueError("cannot evaluate on a dataset with no images")
    if num_classes is None:
        num_classes = _num_classes_of(model)
    if num_classes is None:
        raise ValueError("evaluate: cannot tell the model's number of classes; pass num_classes=")
    if label_to_category is None:
        label_to_category = getattr(dataset, "label_to_category", None)
    if label_to_category is not None and len(label_to_category) < num_classes:
        raise ValueError(f"label_to_category has {len(label_to_category)} entries, the model "
                         f"{num_classes} labels")
    was_training = model.training
    model.eval()
    images_gt, anns_gt, results = [], [], {"bbox": [], "segm": []}
    for images, targets in _batches(data, batch_size):
        outputs = model([img.to(device) for img in images])
        for img, target, output in zip(images, targets, outputs):
            images_gt.append({"id": int(target["image_id"]), "height": int(img.shape[-2]),
                              "width": int(img.shape[-1])})
            anns_gt += _gt_annotations(target, len(anns_gt) + 1, label_to_category)
            res = detections_to_coco(int(target["image_id"]), output, mask_threshold, label_to_category)
            results["bbox"] += res["bbox"]
            results["segm"] += res["segm"]
        del images, targets, outputs
    model.train(was_training)
    if isinstance(dataset, CocoInstances) and len(images_gt) == len(dataset):
        coco_gt = dataset.coco  # evaluated whole: the file, crowds included
    else:
        cats = label_to_category[1:num_classes] if label_to_category is not None else range(1, num_classes)
        coco_gt = _coco_gt(images_gt, anns_gt, cats)
    return {t: coco_summary(coco_gt, results[t], t, verbose) for t in ("bbox", "segm")}
