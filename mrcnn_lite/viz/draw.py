"""Drawing helpers used by every notebook: an image with its boxes, labels, scores and masks.

    from mrcnn_lite.viz import draw_instances, draw_grid
    image, target = ds[0]
    draw_instances(image, target["boxes"], target["labels"], masks=target["masks"],
                   class_names=ds.class_names)
    fig = draw_grid(ds, n=8, cols=4)

Each instance gets the colour of its class (a fixed palette), so "square" is the same colour in
every plot of the course. Masks are blended into the image; boxes are matplotlib Rectangle patches.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

# A fixed palette (tab10 without grey): class k gets PALETTE[k % len(PALETTE)].
PALETTE = (
    (0.122, 0.467, 0.706),  # blue
    (1.000, 0.498, 0.055),  # orange
    (0.173, 0.627, 0.173),  # green
    (0.839, 0.153, 0.157),  # red
    (0.580, 0.404, 0.741),  # purple
    (0.549, 0.337, 0.294),  # brown
    (0.890, 0.467, 0.761),  # pink
    (0.737, 0.741, 0.133),  # olive
    (0.090, 0.745, 0.812),  # cyan
)


def class_color(label: int) -> tuple:
    """RGB colour (floats in [0, 1]) for a class label; the same label always gets the same colour."""
    return PALETTE[int(label) % len(PALETTE)]


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _image_hwc(image) -> np.ndarray:
    """(3, H, W) float tensor/array in [0, 1], or (H, W, 3) uint8/float -> (H, W, 3) float in [0, 1]."""
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img.astype(np.float32)
    if _to_numpy(image).dtype == np.uint8:
        img = img / 255.0
    return np.clip(img, 0.0, 1.0)


def draw_instances(image, boxes=None, labels=None, scores=None, masks=None, class_names=None,
                   ax=None, score_thresh: float = 0.5, mask_alpha: float = 0.45,
                   mask_thresh: float = 0.5, title: str | None = None, show_text: bool = True):
    """Draw one image with its instances and return the matplotlib Axes.

    image: (3, H, W) float in [0, 1] (tensor or array), or (H, W, 3) uint8.
    boxes: (n, 4) x1y1x2y2 in pixels, or None.
    labels: (n,) int class ids (0 = background), or None (all drawn in one colour).
    scores: (n,) float in [0, 1], or None (ground truth). Instances with score < score_thresh
        are not drawn.
    masks: (n, H, W) binary masks, or (n, 1, H, W) probabilities (model output), thresholded at
        mask_thresh; or None.
    class_names: names indexed by label (e.g. ShapesDataset.class_names); None shows the number.
    One Rectangle patch is added per drawn box, so ``len(ax.patches)`` counts the drawn instances.
    """
    img = _image_hwc(image)
    H, W = img.shape[:2]
    boxes, labels, scores, masks = (_to_numpy(v) for v in (boxes, labels, scores, masks))
    n = max((len(v) for v in (boxes, labels, scores, masks) if v is not None), default=0)
    keep = np.ones(n, dtype=bool)
    if scores is not None:
        keep &= scores >= score_thresh
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * H / max(W, 1)))

    # masks: blend each instance's class colour into the image where its mask is on
    if masks is not None and len(masks):
        if masks.ndim == 4:  # (n, 1, H, W) probabilities from the model
            masks = masks[:, 0]
        for i in np.flatnonzero(keep):
            m = masks[i] >= mask_thresh if masks.dtype != bool else masks[i]
            colour = np.array(class_color(labels[i] if labels is not None else 1))
            img[m] = (1 - mask_alpha) * img[m] + mask_alpha * colour
    ax.imshow(img, extent=(0, W, H, 0))  # extent: pixel edges, so box coordinates line up
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)

    if boxes is not None:
        for i in np.flatnonzero(keep):
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            colour = class_color(labels[i] if labels is not None else 1)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                   linewidth=1.5))
            if show_text and (labels is not None or scores is not None):
                text = ""
                if labels is not None:
                    lab = int(labels[i])
                    text = class_names[lab] if class_names is not None and lab < len(class_names) \
                        else str(lab)
                if scores is not None:
                    text = f"{text} {float(scores[i]):.2f}".strip()
                # above the box, or just inside it when the box touches the top edge
                ax.text(x1, y1, text, fontsize=7, color="white", ha="left",
                        va="bottom" if y1 >= 0.08 * H else "top",
                        bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"),
                        clip_on=True)
    return ax


def draw_grid(dataset_or_samples, n: int = 8, cols: int = 4, class_names=None,
              indices=None, size: float = 2.6, title: str | None = None):
    """Draw ``n`` samples in a grid and return the matplotlib Figure.

    dataset_or_samples: a dataset (``ds[i] -> (image, target)``) or a list of ``(image, target)``.
    indices: which items to draw (default: the first n). class_names: default the dataset's
    ``class_names`` when it has them. Each panel is titled with the item's image_id and
    instance count.
    """
    if indices is None:
        indices = list(range(min(n, len(dataset_or_samples))))
    samples = [dataset_or_samples[i] for i in indices]
    if class_names is None:
        class_names = getattr(dataset_or_samples, "class_names", None)
    cols = max(1, min(cols, len(samples)))
    rows = max(1, int(np.ceil(len(samples) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[len(samples):]:
        ax.axis("off")
    for ax, i, (image, target) in zip(axes.flat, indices, samples):
        k = len(target["boxes"]) if "boxes" in target else 0
        draw_instances(image, target.get("boxes"), target.get("labels"), target.get("scores"),
                       target.get("masks"), class_names=class_names, ax=ax,
                       title=f"id {target.get('image_id', i)}: {k} instance{'s' * (k != 1)}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
