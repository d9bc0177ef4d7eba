"""Walk a Mask R-CNN through one image, stage by stage, keeping what each stage produced.

Like matterport's ``inspect_model`` notebook, but one function on one image throughout:

    walk = stage_walk(model, image, target)      # eval mode, no gradients
    walk["counts"]                               # how many boxes survive each stage
    draw_stage_walk(walk, image)                 # one picture per stage
    draw_objectness(walk)                        # the RPN's objectness, one heat map per FPN level

Every number comes from one call of the model itself, ``model(images, return_intermediates=True)``, which
keeps what each stage produced, so the walk ends with exactly the model's output. Boxes in ``walk`` are in the *resized* image's pixels (the model's inside); ``scale`` maps
them back to the input image (``box * scale``), which is what the drawings do.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from .draw import draw_instances

STAGES = ("anchors", "top-scored (pre-NMS)", "proposals (after NMS)", "RoIs scored by the box head",
          "class-box pairs above score_thresh", "detections (after per-class NMS)", "masks")


@torch.no_grad()
def stage_walk(model, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None,
               top_k: int = 20) -> Dict[str, Any]:
    """Run ``model`` (put in eval mode) on one ``image (3, H, W)`` in [0, 1], one stage at a time.

    Args:
        target: optional ground truth (``boxes (n, 4)``, ``labels (n,)``); with it the walk also shows the
            RoIs the box head would be *trained* on for this image (GT boxes added, matched, sampled).
        top_k: how many of the best-scored anchors to keep for the "before/after regression" picture.

    Returns a dict (boxes ``(n, 4)`` x1y1x2y2 in the resized image's pixels):
        ``counts``: stage name -> number of boxes (the keys of ``STAGES``, in order);
        ``levels``: FPN level names the RPN ran on; ``anchors_per_level``; ``objectness``: per level
        ``(A, H_l, W_l)`` probabilities (sigmoid of the logits);
        ``top_anchors`` / ``top_decoded`` / ``top_scores``: the ``top_k`` best anchors before and after
        their predicted deltas are applied, and their objectness;
        ``pre_nms_boxes`` / ``pre_nms_scores``: the per-level top-n the RPN keeps before NMS;
        ``proposals`` / ``proposal_scores``: after NMS and the post-NMS cap;
        ``sampled_rois`` / ``sampled_labels``: (with ``target``) the training sample of RoIs;
        ``class_scores``: ``(R, K)`` softmax of the box head per proposal;
        ``candidates``: number of (proposal, class) pairs with score > ``score_thresh``;
        ``detections``: the box head's result (``boxes, labels, scores``, ``masks (m, 1, 28, 28)``);
        ``output``: the model's output for the input image (boxes and pasted masks at its size);
        ``scale``: ``(4,)`` factors from resized-image to input-image pixels.
    """
    model.eval()
    heads = model.roi_heads
    H, W = int(image.shape[-2]), int(image.shape[-1])
    targets = [dict(target)] if target is not None else None
    (output,), inter = model([image], targets, return_intermediates=True)
    h, w = inter["image_sizes"][0]

    # ---- the RPN's steps, as RegionProposalNetwork.forward recorded them (image 0 of the batch)
    anchors = inter["anchors"][0]                                                 # (N, 4)
    objectness = inter["objectness"][0]                                           # (N,) logits
    decoded = inter["decoded_proposals"][0]                                       # (N, 4)
    top = objectness.topk(min(top_k, objectness.numel())).indices
    pre_idx = inter["pre_nms_top_n_idx"][0]                                       # the per-level top-n
    proposals, proposal_scores = inter["proposals"][0], inter["proposal_scores"][0]

    # ---- the RoI heads: what they scored at test time, and (with a target) what a training step would sample
    sampled_rois = sampled_labels = None
    if targets is not None:
        t = dict(inter["targets"][0])
        # the sample does not look at the masks; zeros stand in when the target has none
        t.setdefault("masks", torch.zeros((len(t["boxes"]), h, w), dtype=torch.uint8, device=anchors.device))
        rois, _, labels, _ = heads.select_training_samples([proposals.clone()], [t])
        sampled_rois, sampled_labels = rois[0], labels[0]
    class_scores = torch.softmax(inter["class_logits"].float(), -1)
    candidates = int((class_scores[:, 1:] > heads.score_thresh).sum())
    det = {k: v.clone() for k, v in inter["detections"][0].items()}
    objectness_per_level = inter["objectness_per_level"]

    counts = dict(zip(STAGES, (len(anchors), len(pre_idx), len(proposals), len(proposals), candidates,
                               len(det["boxes"]), len(det.get("masks", ())))))
    return {
        "counts": counts,
        "levels": list(inter["features"]),
        "anchors_per_level": list(inter["num_anchors_per_level"]),
        "num_anchors_per_location": int(objectness_per_level[0].shape[1]),
        "objectness": [torch.sigmoid(o[0].float()) for o in objectness_per_level],
        "strides": [inter["images"].shape[-2] / o.shape[-2] for o in objectness_per_level],
        "anchors": anchors,
        "top_anchors": anchors[top], "top_decoded": decoded[top], "top_scores": torch.sigmoid(objectness[top]),
        "pre_nms_boxes": decoded[pre_idx], "pre_nms_scores": torch.sigmoid(objectness[pre_idx]),
        "proposals": proposals, "proposal_scores": proposal_scores,
        "sampled_rois": sampled_rois, "sampled_labels": sampled_labels,
        "class_scores": class_scores, "candidates": candidates,
        "detections": det, "output": output,
        "image_size": (h, w), "input_size": (H, W),
        "scale": torch.tensor([W / w, H / h, W / w, H / h]),
    }


@torch.no_grad()
def rpn_proposals(model, images: Sequence[torch.Tensor]):
    """The RPN's anchors and final proposals for a list of images.

    ``images``: B ``(3, H, W)`` in [0, 1]. Returns ``(anchors, proposals)``: two lists of B ``(N_i, 4)``
    boxes x1y1x2y2 in each *input* image's pixels (the model works on resized images; we scale back).
    Read from the model's own intermediates (``return_intermediates=True``; the whole model runs).
    """
    model.eval()
    _, inter = model(list(images), return_intermediates=True)
    out_a, out_p = [], []
    for img, (h, w), a, p in zip(images, inter["image_sizes"], inter["anchors"], inter["proposals"]):
        scale = torch.tensor([img.shape[-1] / w, img.shape[-2] / h] * 2)
        out_a.append(a * scale)
        out_p.append(p * scale)
    return out_a, out_p


def _boxes(ax, boxes, color, lw=1.0, ls="-", alpha=1.0):
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw,
                               linestyle=ls, alpha=alpha))


def draw_stage_walk(walk: Dict[str, Any], image: torch.Tensor, class_names: Optional[Sequence[str]] = None,
                    score_thresh: float = 0.5, max_drawn: int = 50, axes=None):
    """One panel per stage of ``walk`` (from ``stage_walk``), drawn on the input ``image``; returns the axes.

    Panels: the best anchors (dashed) and where regression moves them (solid); the RPN's pre-NMS top-n;
    the proposals after NMS; the RoIs a training step would sample (green positives, grey negatives; only
    with a target); the detections (score >= ``score_thresh``) and their pasted masks.
    """
    c = walk["counts"]
    panels = 6 if walk["sampled_rois"] is not None else 5
    if axes is None:
        _, axes = plt.subplots(1, panels, figsize=(2.9 * panels, 3.2))
    axes = list(np.ravel(axes))
    draw_rpn_steps(walk, image, axes=axes[:3], max_drawn=max_drawn)
    s = walk["scale"]

    def base(ax, title):
        draw_instances(image, ax=ax, title=title)

    i = 3
    if walk["sampled_rois"] is not None:
        labels = walk["sampled_labels"]
        pos = labels > 0
        base(axes[i], f"training sample: {int(pos.sum())} positive,\n{int((~pos).sum())} negative RoIs")
        _boxes(axes[i], walk["sampled_rois"][~pos] * s, "0.6", lw=0.5, alpha=0.6)
        _boxes(axes[i], walk["sampled_rois"][pos] * s, "lime", lw=0.9)
        i += 1

    out = walk["output"]
    shown = int((out["scores"] >= score_thresh).sum())
    draw_instances(image, out["boxes"], out["labels"], out["scores"], ax=axes[i], class_names=class_names,
                   score_thresh=score_thresh,
                   title=f"{c['RoIs scored by the box head']} RoIs -> {c['class-box pairs above score_thresh']} pairs\n"
                         f"-> {c['detections (after per-class NMS)']} detections ({shown} with score >= {score_thresh})")
    draw_instances(image, out["boxes"], out["labels"], out["scores"], out["masks"], class_names=class_names,
                   ax=axes[i + 1], score_thresh=score_thresh, show_text=False,
                   title=f"{c['masks']} masks (28x28, pasted)")
    plt.tight_layout()
    return axes


def draw_rpn_steps(walk: Dict[str, Any], image: torch.Tensor, axes=None, max_drawn: int = 50):
    """The RPN's three steps on the input ``image``: the best anchors before (dashed white) and after
    (yellow) their predicted deltas; the per-level top-n before NMS; the proposals after NMS. Returns the axes."""
    s = walk["scale"]
    c = walk["counts"]
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(8.7, 3.2))
    axes = list(np.ravel(axes))

    k = len(walk["top_anchors"])
    draw_instances(image, ax=axes[0], title=f"{c['anchors']} anchors: best {k},\nbefore (dashed) / after regression")
    _boxes(axes[0], walk["top_anchors"] * s, "white", lw=0.8, ls="--")
    _boxes(axes[0], walk["top_decoded"] * s, "yellow", lw=1.0)

    order = walk["pre_nms_scores"].argsort(descending=True)[:max_drawn]
    draw_instances(image, ax=axes[1], title=f"{c['top-scored (pre-NMS)']} top-scored before NMS\n"
                                            f"(best {min(max_drawn, len(order))} drawn)")
    _boxes(axes[1], walk["pre_nms_boxes"][order] * s, "orange", lw=0.6, alpha=0.8)

    n = min(max_drawn, len(walk["proposals"]))
    draw_instances(image, ax=axes[2], title=f"{c['proposals (after NMS)']} proposals after NMS\n(best {n} drawn)")
    _boxes(axes[2], walk["proposals"][:n] * s, "cyan", lw=0.6, alpha=0.9)
    return axes


def draw_objectness(walk: Dict[str, Any], axes=None, vmax: float = 1.0, title: str = ""):
    """The RPN's objectness probability per FPN level: at each location, the best of its A anchors.

    Returns the axes (one per level). The colour scale is the same on every level (0 .. ``vmax``), so a
    level that "lights up" is one the RPN trusts for objects of its size.
    """
    maps = walk["objectness"]
    if axes is None:
        _, axes = plt.subplots(1, len(maps), figsize=(2.6 * len(maps), 2.6))
    axes = list(np.ravel(axes))
    for ax, name, m, stride in zip(axes, walk["levels"], maps, walk["strides"]):
        im = ax.imshow(m.max(0).values.cpu().numpy(), cmap="magma", vmin=0.0, vmax=vmax)
        ax.set_title(f"{title}level '{name}' (stride {stride:.0f})\nmax p = {float(m.max()):.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    plt.colorbar(im, ax=axes, fraction=0.02)
    return axes
