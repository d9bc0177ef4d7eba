"""PredictionExplorer: browse a dataset's images with a model's predictions next to the ground truth.

    explorer = PredictionExplorer(model, dataset, class_names=CLASSES)
    explorer                       # in a notebook: image slider, score and mask thresholds, GT | prediction
    explorer.update(index=3, score_thresh=0.7)   # the same, headless (tests call this)

The logic lives in ``prediction_view`` (a plain function: thresholds in, kept detections and counts
out); the widget only draws its result into an ``ipywidgets.Image`` as PNG bytes.
"""
from __future__ import annotations

import io
from typing import Dict, Optional, Sequence

import torch

from ...ops import box_iou


def prediction_view(target: dict, output: dict, score_thresh: float = 0.5, mask_thresh: float = 0.5,
                    iou_thresh: float = 0.5) -> Dict[str, object]:
    """Keep the detections with ``score >= score_thresh`` and match them to the ground truth.

    target: ``boxes (n, 4)``, ``labels (n,)``, ``masks (n, H, W)``.
    output: model output for the same image: ``boxes (m, 4)``, ``labels (m,)``, ``scores (m,)``,
        ``masks (m, 1, H, W)`` probabilities.
    Returns a dict with the kept ``boxes``, ``labels``, ``scores``, binary ``masks (k, H, W)``
    (probability >= ``mask_thresh``), and counts: ``num_gt``, ``num_pred``, ``true_positives``
    (greedy matching in score order: same class, box IoU >= ``iou_thresh``), ``false_positives``,
    ``missed`` (GT without a match), plus ``matched (k,)`` bool per kept detection.
    """
    keep = output["scores"] >= score_thresh
    boxes, labels, scores = output["boxes"][keep], output["labels"][keep], output["scores"][keep]
    masks = output["masks"][keep][:, 0] >= mask_thresh if "masks" in output else None
    gt_boxes, gt_labels = target["boxes"], target["labels"]
    matched = torch.zeros(len(boxes), dtype=torch.bool)
    gt_used = torch.zeros(len(gt_boxes), dtype=torch.bool)
    if len(boxes) and len(gt_boxes):
        iou = box_iou(boxes.float(), gt_boxes.float())
        iou[labels[:, None] != gt_labels[None, :]] = 0.0   # a match needs the right class
        for i in torch.argsort(scores, descending=True).tolist():
            cand = iou[i].clone()
            cand[gt_used] = -1.0
            j = int(cand.argmax())
            if cand[j] >= iou_thresh:
                matched[i] = True
                gt_used[j] = True
    tp = int(matched.sum())
    return {"boxes": boxes, "labels": labels, "scores": scores, "masks": masks, "matched": matched,
            "num_gt": len(gt_boxes), "num_pred": len(boxes), "true_positives": tp,
            "false_positives": len(boxes) - tp, "missed": len(gt_boxes) - tp}


class PredictionExplorer:
    """Interactive viewer (ipywidgets): ground truth on the left, predictions on the right.

    Args:
        model: a Mask R-CNN (switched to eval mode); run once per image, results cached.
        dataset: items ``(image (3, H, W), target)``.
        class_names: names indexed by label (optional).
        score_thresh, mask_thresh: starting values of the sliders.
        outputs: optional precomputed model outputs, one per dataset item (then ``model`` may be None).

    ``explorer.update(index=..., score_thresh=..., mask_thresh=...)`` sets controls and redraws once
    (headless: no browser needed); it returns the view dict (see ``prediction_view``). The picture is
    PNG bytes in ``explorer.image_widget.value``; ``explorer.widget`` is the whole UI.
    """

    def __init__(self, model, dataset, class_names: Optional[Sequence[str]] = None, score_thresh: float = 0.5,
                 mask_thresh: float = 0.5, outputs: Optional[list] = None, figsize=(8.0, 4.2)):
        import ipywidgets as w

        if len(dataset) == 0:
            raise ValueError("PredictionExplorer needs a dataset with at least one image")
        if model is None and outputs is None:
            raise ValueError("give a model or precomputed outputs")
        self.model, self.dataset, self.class_names = model, dataset, class_names
        self.figsize = figsize
        self._cache: Dict[int, dict] = dict(enumerate(outputs)) if outputs is not None else {}
        style = {"description_width": "90px"}
        self.controls = {
            "index": w.IntSlider(value=0, min=0, max=len(dataset) - 1, description="image", style=style),
            "score_thresh": w.FloatSlider(value=score_thresh, min=0.0, max=1.0, step=0.05,
                                          description="score >=", style=style),
            "mask_thresh": w.FloatSlider(value=mask_thresh, min=0.05, max=0.95, step=0.05,
                                         description="mask prob >=", style=style),
        }
        self.image_widget = w.Image(format="png")
        self.info = w.HTML()
        self.widget = w.VBox([w.HBox(list(self.controls.values())), self.image_widget, self.info])
        self._updating = False
        self.view: Dict[str, object] = {}
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.render()

    def output(self, index: int) -> dict:
        """The model's output for dataset item ``index`` (computed once, then cached)."""
        if index not in self._cache:
            self.model.eval()
            with torch.no_grad():
                out = self.model([self.dataset[index][0]])[0]
            self._cache[index] = {k: v.cpu() for k, v in out.items()}
        return self._cache[index]

    def update(self, **values) -> Dict[str, object]:
        """Set ``index``, ``score_thresh`` and/or ``mask_thresh`` and redraw once; returns the view."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise TypeError(f"PredictionExplorer.update: unknown control(s) {unknown}; valid: {sorted(self.controls)}")
        self._updating = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._updating = False
        return self.render()

    def _on_change(self, change) -> None:
        if not self._updating:
            self.render()

    def render(self) -> Dict[str, object]:
        """Recompute the view from the controls and redraw the PNG and the counts."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ..draw import draw_instances

        index = self.controls["index"].value
        image, target = self.dataset[index]
        v = prediction_view(target, self.output(index), self.controls["score_thresh"].value,
                            self.controls["mask_thresh"].value)
        self.view = v
        fig = Figure(figsize=self.figsize, dpi=80)
        FigureCanvasAgg(fig)
        ax_gt, ax_pred = fig.subplots(1, 2)
        draw_instances(image, target["boxes"], target["labels"], masks=target["masks"],
                       class_names=self.class_names, ax=ax_gt, title=f"ground truth ({v['num_gt']})")
        draw_instances(image, v["boxes"], v["labels"], v["scores"], v["masks"], class_names=self.class_names,
                       ax=ax_pred, score_thresh=0.0, title=f"prediction ({v['num_pred']})")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image_widget.value = buf.getvalue()
        self.info.value = (f"image {index}: {v['num_gt']} objects, {v['num_pred']} detections, "
                           f"<b>{v['true_positives']}</b> correct (same class, IoU >= 0.5), "
                           f"{v['false_positives']} false positives, {v['missed']} missed")
        return v

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
