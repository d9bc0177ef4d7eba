"""AnchorExplorer: see which anchors the RPN calls object, background or "ignore" for one image.

    from mrcnn_lite.viz.widgets import AnchorExplorer
    image, target = ds[0]
    AnchorExplorer(image, target["boxes"])          # sliders: size, ratios, level/stride, IoU thresholds, x, y

All the logic is the plain function ``anchor_view`` (tests call it without a browser): it builds the
anchors of one FPN level with the package's ``AnchorGenerator``, matches them to the ground truth with
the package's ``Matcher`` (low-quality matches allowed, as in the RPN) and returns the labels, counts
and the anchors at the chosen location. The widget only draws what ``anchor_view`` returns.
"""
from __future__ import annotations

import io
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ...model.anchors import AnchorGenerator
from ...model.matching import Matcher
from ...ops import box_iou

__all__ = ["anchor_view", "render_anchor_view", "AnchorExplorer"]

POSITIVE, NEGATIVE, NEUTRAL = 1, 0, -1
_COLORS = {POSITIVE: (0.10, 0.75, 0.20), NEUTRAL: (1.00, 0.60, 0.00), NEGATIVE: (0.25, 0.45, 0.95)}
_RATIO_CHOICES = (0.25, 0.5, 1.0, 2.0, 4.0)
_STRIDES = (4, 8, 16, 32, 64)  # FPN levels P2..P6


def anchor_view(
    image_size: Tuple[int, int],
    gt_boxes,
    size: float = 32,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    stride: int = 8,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    location: Optional[Tuple[float, float]] = None,
    allow_low_quality_matches: bool = True,
) -> Dict[str, object]:
    """Anchors of one FPN level and their RPN labels against the ground truth.

    Args:
        image_size: ``(H, W)`` of the image in pixels (padded up to a multiple of ``stride``).
        gt_boxes: ``(n, 4)`` xyxy ground-truth boxes (tensor or array); n may be 0.
        size: anchor size in pixels (a square anchor of that side; other ratios keep its area).
        aspect_ratios: ratios ``h / w`` (at least one).
        stride: pixels between neighbouring anchor centres (the FPN level: 4 for P2 ... 64 for P6).
        fg_iou_thresh, bg_iou_thresh: the RPN's thresholds (0.7 / 0.3).
        location: ``(x, y)`` in pixels; the anchors of the nearest grid cell are returned. Default: centre.
        allow_low_quality_matches: give every GT box its best anchor(s) even below ``fg_iou_thresh``.

    Returns a dict:
        ``anchors (N, 4)``, ``labels (N,)`` int64 (1 positive, 0 negative, -1 neutral / ignored),
        ``max_iou (N,)`` best IoU of each anchor with any GT box (0 when there is none),
        ``matched_idxs (N,)`` the Matcher's output, ``counts`` {"positive", "negative", "neutral", "total"},
        ``gt_positive_counts (n,)`` positives per GT box, ``grid_size (H_f, W_f)``, ``num_anchors_per_location A``,
        ``cell (row, col)`` of the chosen location, ``anchors_at_location (A, 4)``,
        ``indices_at_location (A,)``, ``labels_at_location (A,)``, ``iou_at_location (A,)``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    stride = int(stride)
    if stride <= 0:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    aspect_ratios = tuple(float(r) for r in aspect_ratios)
    if len(aspect_ratios) == 0:
        raise ValueError("aspect_ratios must contain at least one ratio")
    if not 0.0 <= bg_iou_thresh <= fg_iou_thresh <= 1.0:
        raise ValueError(f"need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got {bg_iou_thresh}, {fg_iou_thresh}")
    gt = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float32) if not isinstance(gt_boxes, Tensor) else gt_boxes)
    gt = gt.to(torch.float32).reshape(-1, 4)

    # One level: a feature map of ceil(H / stride) x ceil(W / stride) cells over the padded image.
    grid_size = (math.ceil(height / stride), math.ceil(width / stride))
    padded_size = (grid_size[0] * stride, grid_size[1] * stride)
    generator = AnchorGenerator(((size,),), (aspect_ratios,))
    anchors = generator.anchors_for(padded_size, [grid_size])
    num_per_location = generator.num_anchors_per_location()[0]

    if len(gt) > 0:
        iou = box_iou(gt, anchors)                                             # (n, N)
        matched_idxs = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)(iou)
        max_iou = iou.max(dim=0).values
        labels = torch.where(matched_idxs >= 0, POSITIVE,
                             torch.where(matched_idxs == Matcher.BETWEEN_THRESHOLDS, NEUTRAL, NEGATIVE))
        gt_positive_counts = torch.bincount(matched_idxs[matched_idxs >= 0], minlength=len(gt))
    else:  # no object: every anchor is background
        matched_idxs = torch.full((len(anchors),), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64)
        max_iou = torch.zeros(len(anchors))
        labels = torch.zeros(len(anchors), dtype=torch.int64)
        gt_positive_counts = torch.zeros(0, dtype=torch.int64)
    labels = labels.to(torch.int64)

    # The grid cell whose anchor centre (col * stride, row * stride) is nearest to the location.
    x, y = location if location is not None else (width / 2, height / 2)
    col = int(min(max(round(x / stride), 0), grid_size[1] - 1))
    row = int(min(max(round(y / stride), 0), grid_size[0] - 1))
    first = (row * grid_size[1] + col) * num_per_location                  # order: y -> x -> anchor
    indices = torch.arange(first, first + num_per_location)

    counts = {
        "positive": int((labels == POSITIVE).sum()),
        "negative": int((labels == NEGATIVE).sum()),
        "neutral": int((labels == NEUTRAL).sum()),
        "total": int(len(labels)),
    }
    return {
        "anchors": anchors, "labels": labels, "max_iou": max_iou, "matched_idxs": matched_idxs,
        "counts": counts, "gt_boxes": gt, "gt_positive_counts": gt_positive_counts,
        "grid_size": grid_size, "num_anchors_per_location": num_per_location, "stride": stride,
        "size": size, "aspect_ratios": aspect_ratios, "image_size": (height, width), "cell": (row, col),
        "anchors_at_location": anchors[indices], "indices_at_location": indices,
        "labels_at_location": labels[indices], "iou_at_location": max_iou[indices],
    }


def _image_hwc(image) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)                                      # (C, H, W) -> (H, W, C)
    if image.dtype != np.uint8:
        image = np.clip(image, 0.0, 1.0)
    return image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image


def render_anchor_view(image, view: Dict[str, object], ax, max_drawn: int = 400) -> None:
    """Draw ``view`` (from ``anchor_view``) on a matplotlib Axes: image, GT boxes (white), positive anchors
    (green boxes), neutral anchors (orange dashed), negatives (blue dots at their centres), and the
    anchors at the chosen location (thick magenta)."""
    from matplotlib.patches import Rectangle

    ax.imshow(_image_hwc(image), extent=(0, view["image_size"][1], view["image_size"][0], 0))
    anchors, labels = view["anchors"].numpy(), view["labels"].numpy()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    neg = labels == NEGATIVE
    ax.scatter(centres[neg, 0], centres[neg, 1], s=5, color=_COLORS[NEGATIVE], alpha=0.6, linewidths=0)
    for lab, style in ((NEUTRAL, "--"), (POSITIVE, "-")):
        for x1, y1, x2, y2 in anchors[labels == lab][:max_drawn]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.8, ls=style,
                                   edgecolor=_COLORS[lab], alpha=0.8))
    for x1, y1, x2, y2 in view["gt_boxes"].numpy():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.0, edgecolor="white"))
    for x1, y1, x2, y2 in view["anchors_at_location"].numpy():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.0, edgecolor="magenta"))
    row, col = view["cell"]
    ax.plot([col * view["stride"]], [row * view["stride"]], "+", color="magenta", ms=10, mew=2)
    H, W = view["image_size"]
    ax.set_xlim(-0.25 * W, 1.25 * W)   # anchors may stick out of the image: show a margin
    ax.set_ylim(1.25 * H, -0.25 * H)
    c = view["counts"]
    ax.set_title(f"+{c['positive']}  -{c['negative']}  ~{c['neutral']}  of {c['total']} anchors", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])


class AnchorExplorer:
    """Interactive anchor explorer over one image (ipywidgets).

    Args:
        image: ``(3, H, W)`` float in [0, 1] (tensor or array) or ``(H, W, 3)`` uint8.
        boxes_gt: ``(n, 4)`` xyxy ground-truth boxes.
        size, aspect_ratios, stride, fg_iou_thresh, bg_iou_thresh, location: the starting values
            (see ``anchor_view``).
        level_sizes: anchor size per FPN level P2..P6; picking a level in the dropdown also moves the
            size slider to that level's size (as the FPN does: bigger stride, bigger anchors).
            Default: the tiny preset's ``(8, 16, 32, 64, 128)``.
        figsize: matplotlib figure size in inches.

    ``explorer.update(size=64, stride=16, ...)`` sets any controls at once and redraws (headless: no
    browser needed); it returns the new view dict, also kept in ``explorer.view``. The picture is a PNG in
    ``explorer.image_widget.value``; ``explorer.widget`` is the whole UI (shown by ``display(explorer)``).
    """

    def __init__(self, image, boxes_gt, *, size: float = 16, aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 stride: int = 8, fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3,
                 location: Optional[Tuple[float, float]] = None,
                 level_sizes: Sequence[float] = (8, 16, 32, 64, 128), figsize=(5.0, 5.0)):
        import ipywidgets as w

        self.image = image
        self.boxes_gt = boxes_gt
        hwc = _image_hwc(image)
        self.image_size = (int(hwc.shape[0]), int(hwc.shape[1]))
        if len(level_sizes) != len(_STRIDES):
            raise ValueError(f"level_sizes must give one size per level P2..P6 ({len(_STRIDES)}), got {level_sizes}")
        self.level_sizes = dict(zip(_STRIDES, level_sizes))
        self.figsize = figsize
        H, W = self.image_size
        x, y = location if location is not None else (W // 2, H // 2)
        ratios = tuple(float(r) for r in aspect_ratios)
        options = tuple(sorted(set(_RATIO_CHOICES) | set(ratios)))
        style = {"description_width": "110px"}
        layout = w.Layout(width="360px")
        self.controls = {
            "size": w.IntSlider(value=int(size), min=4, max=max(256, int(size)), step=2,
                                description="anchor size", style=style, layout=layout),
            "aspect_ratios": w.SelectMultiple(options=options, value=ratios, rows=len(options),
                                              description="ratios h/w", style=style),
            "stride": w.Dropdown(options=[(f"P{i + 2} (stride {s})", s) for i, s in enumerate(_STRIDES)],
                                 value=int(stride), description="FPN level", style=style, layout=layout),
            "fg_iou_thresh": w.FloatSlider(value=fg_iou_thresh, min=0.0, max=1.0, step=0.05,
                                           description="fg IoU >=", style=style, layout=layout),
            "bg_iou_thresh": w.FloatSlider(value=bg_iou_thresh, min=0.0, max=1.0, step=0.05,
                                           description="bg IoU <", style=style, layout=layout),
            "x": w.IntSlider(value=int(x), min=0, max=W - 1, description="location x", style=style, layout=layout),
            "y": w.IntSlider(value=int(y), min=0, max=H - 1, description="location y", style=style, layout=layout),
        }
        self.image_widget = w.Image(format="png", layout=w.Layout(width=f"{int(figsize[0] * 80)}px"))
        self.info = w.HTML()
        self.widget = w.HBox([self.image_widget, w.VBox(list(self.controls.values()) + [self.info])])
        self._updating = False
        self.view: Dict[str, object] = {}
        for name, control in self.controls.items():
            control.observe(self._on_change, names="value")
        self.render()

    # -- values <-> controls -------------------------------------------------------------------------
    def values(self) -> Dict[str, object]:
        """The current control values, as ``anchor_view`` arguments."""
        c = self.controls
        fg = c["fg_iou_thresh"].value
        return dict(size=c["size"].value, aspect_ratios=tuple(c["aspect_ratios"].value) or (1.0,),
                    stride=c["stride"].value, fg_iou_thresh=fg, bg_iou_thresh=min(c["bg_iou_thresh"].value, fg),
                    location=(c["x"].value, c["y"].value))

    def update(self, **values) -> Dict[str, object]:
        """Set controls (``size``, ``aspect_ratios``, ``stride``, ``fg_iou_thresh``, ``bg_iou_thresh``,
        ``x``, ``y`` or ``location=(x, y)``) and redraw once. Returns the new view dict."""
        if "location" in values:
            values["x"], values["y"] = values.pop("location")
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise TypeError(f"AnchorExplorer.update: unknown control(s) {unknown}; valid: {sorted(self.controls)}")
        self._updating = True  # one redraw for all changes, not one per control
        try:
            for name, value in values.items():
                if name == "aspect_ratios":
                    value = tuple(float(r) for r in value)
                    control = self.controls[name]
                    control.options = tuple(sorted(set(control.options) | set(value)))
                self.controls[name].value = value
        finally:
            self._updating = False
        return self.render()

    def _on_change(self, change) -> None:
        if self._updating:
            return
        if change["owner"] is self.controls["stride"]:
            # Picking a level from the UI also picks that level's anchor size.
            self._updating = True
            try:
                self.controls["size"].value = int(self.level_sizes[change["new"]])
            finally:
                self._updating = False
        self.render()

    # -- drawing ---------------------------------------------------------------------------------------
    def render(self) -> Dict[str, object]:
        """Recompute the view from the controls and redraw the PNG and the counts."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.view = anchor_view(self.image_size, self.boxes_gt, **self.values())
        fig = Figure(figsize=self.figsize, dpi=80)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
        render_anchor_view(self.image, self.view, ax)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image_widget.value = buf.getvalue()
        self.info.value = self._info_html()
        return self.view

    def _info_html(self) -> str:
        v = self.view
        c = v["counts"]
        names = {POSITIVE: "positive", NEGATIVE: "negative", NEUTRAL: "neutral"}
        rows = "".join(
            f"<tr><td>{[round(float(t)) for t in box]}</td><td>{float(iou):.2f}</td><td>{names[int(lab)]}</td></tr>"
            for box, iou, lab in zip(v["anchors_at_location"], v["iou_at_location"], v["labels_at_location"])
        )
        per_gt = ", ".join(str(int(n)) for n in v["gt_positive_counts"]) or "no GT boxes"
        return (
            f"<b>{c['total']}</b> anchors on a {v['grid_size'][0]}x{v['grid_size'][1]} grid "
            f"x {v['num_anchors_per_location']} per cell: "
            f"<span style='color:#1abf33'>{c['positive']} positive</span>, "
            f"<span style='color:#3f73f2'>{c['negative']} negative</span>, "
            f"<span style='color:#ff9900'>{c['neutral']} neutral</span><br>"
            f"positives per GT box: {per_gt}<br>"
            f"anchors at cell {v['cell']}:<table><tr><th>box</th><th>best IoU</th><th>label</th></tr>{rows}</table>"
        )

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
