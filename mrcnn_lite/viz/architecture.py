"""The Mask R-CNN architecture as a diagram drawn with matplotlib (boxes and arrows, no image files).

    draw_architecture()      # each box names the stage, what it outputs, and the notebook that builds it

The boxes follow ``MaskRCNN.forward``: transform -> backbone -> FPN -> RPN (with the anchors) -> RoIAlign ->
box head -> mask head -> postprocess. Shapes are those of the course model on a 128-px shapes image
(resized to 192 px inside) where they help; the torchvision-sized model has the same stages.
"""
from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

# (key, x, y, title, detail, notebook, colour); x, y = the box centre in data units
_W, _H = 2.6, 1.35
BOXES = (
    ("image", 1.3, 5.0, "images", "list of (3, h, w)\nin [0, 1]", "00", "#eeeeee"),
    ("transform", 4.7, 5.0, "transform", "normalise, resize,\npad to a batch", "09", "#dde8f5"),
    ("backbone", 8.1, 5.0, "ResNet backbone", "stem + 4 stages\nC2..C5 (stride 4..32)", "02", "#cfe0f3"),
    ("fpn", 11.5, 5.0, "feature pyramid", "P2..P5 + P6 ('pool')\n256 ch (course: 64)", "03", "#bcd5ef"),
    ("anchors", 14.9, 6.95, "anchors", "3 ratios per location,\none size per level", "04", "#fbe3c8"),
    ("rpn", 14.9, 5.0, "RPN", "objectness + deltas\n-> NMS -> proposals", "05", "#f8d2a8"),
    ("ops", 18.3, 5.0, "boxes, IoU, NMS", "box coder\n(dx, dy, dw, dh)", "01", "#f1f1d0"),
    ("roialign", 14.9, 2.0, "RoIAlign", "each RoI -> 7x7 (box)\nor 14x14 (mask)", "06", "#d6ecd2"),
    ("boxhead", 11.5, 2.0, "box head", "class scores +\nclass-specific deltas", "07", "#c3e3bd"),
    ("maskhead", 8.1, 2.0, "mask head", "K masks of 28x28\nper RoI (sigmoid)", "08", "#b0daa8"),
    ("post", 4.7, 2.0, "postprocess", "boxes to input size,\nmasks pasted", "08, 09", "#e6d5ef"),
    ("out", 1.3, 2.0, "detections", "boxes, labels, scores,\nmasks (m, 1, h, w)", "11", "#eeeeee"),
)
ARROWS = (
    ("image", "transform", ""), ("transform", "backbone", "batch"), ("backbone", "fpn", "C2..C5"),
    ("fpn", "rpn", "P2..P6"), ("anchors", "rpn", ""), ("ops", "rpn", ""), ("rpn", "roialign", "proposals"),
    ("fpn", "roialign", "P2..P5"), ("roialign", "boxhead", "7x7"), ("boxhead", "maskhead", "boxes"),
    ("maskhead", "post", "28x28"), ("post", "out", ""),
)


def draw_architecture(ax=None, title: Optional[str] = "Mask R-CNN: the stages and the notebooks that build them"):
    """Draw the stages as boxes (title, what it outputs, "nb NN") joined by arrows; returns the Axes.

    Training (losses, optimiser: notebook 10), evaluation (COCO AP: 11), your own data (12) and speed (13)
    are listed under the diagram: they act on the whole model, not on one stage.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(14, 5.6))
    centre = {}
    for key, x, y, name, detail, nb, colour in BOXES:
        centre[key] = (x, y)
        ax.add_patch(FancyBboxPatch((x - _W / 2, y - _H / 2), _W, _H, boxstyle="round,pad=0.05",
                                    facecolor=colour, edgecolor="0.3", linewidth=1.0))
        ax.text(x, y + 0.36, name, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.text(x, y - 0.12, detail, ha="center", va="center", fontsize=7.5, linespacing=1.1)
        ax.text(x + _W / 2 - 0.05, y - _H / 2 + 0.05, f"nb {nb}", ha="right", va="bottom", fontsize=7.5,
                color="#a03000", fontweight="bold")

    def edge(a, b):
        """Where the segment between the centres of a and b leaves box a (and enters box b)."""
        (xa, ya), (xb, yb) = centre[a], centre[b]
        dx, dy = xb - xa, yb - ya
        t = min((_W / 2 + 0.08) / abs(dx) if dx else 1e9, (_H / 2 + 0.08) / abs(dy) if dy else 1e9)
        return (xa + t * dx, ya + t * dy), (xb - t * dx, yb - t * dy)

    for a, b, label in ARROWS:
        start, end = edge(a, b)
        dashed = a in ("ops", "anchors")
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="0.25",
                                     linewidth=1.1, linestyle="--" if dashed else "-",
                                     connectionstyle="arc3,rad=0.0"))
        if label:
            ax.text((start[0] + end[0]) / 2 + (0.12 if start[0] == end[0] else 0), (start[1] + end[1]) / 2 + 0.1,
                    label, ha="left" if start[0] == end[0] else "center", va="bottom",
                    fontsize=7, color="0.2", bbox=dict(facecolor="white", edgecolor="none", pad=0.5, alpha=0.8))
    ax.text(9.8, 0.55, "the whole model:  training loop, losses, checkpoints (nb 10)  ·  COCO AP (nb 11)  ·  "
            "your own COCO-format data (nb 12)  ·  profiling, AMP, several GPUs (nb 13)",
            ha="center", va="center", fontsize=8.5, color="0.25")
    ax.text(6.6, 3.2, ("the mask head pools its own 14x14 RoIs from the FPN levels: at test time at the boxes the box head "
             "kept, in training at the positive sampled proposals"),
            ha="center", va="center", fontsize=7, color="0.35", style="italic")
    ax.set_xlim(-0.2, 19.8)
    ax.set_ylim(0.2, 7.8)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    return ax
