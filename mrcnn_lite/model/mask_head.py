"""The mask branch: a small FCN on 14x14 RoI features that predicts one 28x28 mask per class.

Pieces, in the order they are used (names as in torchvision and the paper):

``MaskRCNNHeads``        four 3x3 conv + ReLU on the ``(P, 256, 14, 14)`` RoIAlign features
``MaskRCNNPredictor``    2x2 transposed conv (stride 2) + ReLU -> ``(P, 256, 28, 28)``, then a 1x1 conv to
                         ``num_classes`` mask logits ``(P, C, 28, 28)``
``project_masks_on_boxes`` training targets: the GT mask cropped with the *positive proposal* (not the GT
                         box) and resampled to 28x28 with RoIAlign, so that target pixel (u, v) sits
                         exactly where prediction pixel (u, v) looks in the image
``maskrcnn_loss``        per-pixel binary cross-entropy on the channel of the GT class only
                         (a sigmoid per class: classes do not compete for a pixel; the box head decides
                         the class)
``maskrcnn_inference``   at test time, the predicted class's channel through a sigmoid -> ``(m, 1, 28, 28)``
``paste_masks_in_image`` the 28x28 probabilities resized into their boxes on a full-size canvas
                         ``(m, 1, H, W)``; torchvision's geometry; a loop over masks on CPU, all masks
                         at once with ``grid_sample`` on a GPU
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


class MaskRCNNHeads(nn.Sequential):
    """``len(layers)`` blocks of 3x3 conv + ReLU: ``(P, in_channels, 14, 14)`` -> ``(P, layers[-1], 14, 14)``.

    Each block is ``Sequential(conv, relu)``, so the parameter names are ``0.0.weight``, ``1.0.weight``, ...
    exactly as torchvision's ``MaskRCNNHeads`` (built from ``Conv2dNormActivation`` without a norm layer).
    """

    def __init__(self, in_channels: int, layers: Sequence[int], dilation: int = 1,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None):
        blocks = []
        next_feature = in_channels
        for layer_features in layers:
            # With a norm layer (torchvision's v2 heads) the conv has no bias: the norm's shift replaces it.
            conv = nn.Conv2d(next_feature, layer_features, kernel_size=3, stride=1, padding=dilation,
                             dilation=dilation, bias=norm_layer is None)
            norm = [] if norm_layer is None else [norm_layer(layer_features)]
            blocks.append(nn.Sequential(conv, *norm, nn.ReLU(inplace=True)))
            next_feature = layer_features
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """Upsample x2 and predict one mask per class: ``(P, in_channels, 14, 14)`` -> logits ``(P, num_classes, 28, 28)``."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, kernel_size=2, stride=2, padding=0)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, kernel_size=1, stride=1, padding=0)),
                ]
            )
        )
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


# ----------------------------------------------------------------------------------------------------
# training: targets and loss
# ----------------------------------------------------------------------------------------------------

def project_masks_on_boxes(
    gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, M: int, roi_align: Callable = ops.roi_align
) -> Tensor:
    """Crop each matched GT mask with its proposal and resample it to ``M x M``.

    Args:
        gt_masks:     (n, H, W) the image's GT instance masks (0/1)
        boxes:        (P, 4) positive proposals, xyxy in the same pixels as the masks
        matched_idxs: (P,) which GT each proposal was matched to
        M:            output size (28)
    Returns:
        (P, M, M) float targets in [0, 1] (bilinear sampling makes the edges soft)

    Trick: treat the n masks as a batch of n one-channel images; an RoI ``(k, x1, y1, x2, y2)`` then
    samples mask k. RoIAlign with ``spatial_scale=1`` and adaptive sampling, as torchvision.
    """
    matched_idxs = matched_idxs.to(boxes)
    rois = torch.cat([matched_idxs[:, None], boxes], dim=1)  # (P, 5): batch index, box
    gt_masks = gt_masks[:, None].to(rois)                     # (n, 1, H, W)
    return roi_align(gt_masks, rois, (M, M), 1.0)[:, 0]


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: List[Tensor],
    gt_masks: List[Tensor],
    gt_labels: List[Tensor],
    mask_matched_idxs: List[Tensor],
    roi_align: Callable = ops.roi_align,
) -> Tensor:
    """Mean per-pixel BCE between the GT class's mask logits and the projected GT masks.

    Args:
        mask_logits:       (P, C, M, M) for the positive proposals of all images, concatenated
        proposals:         list of (P_i, 4) positive proposals per image
        gt_masks:          list of (n_i, H, W) GT masks per image
        gt_labels:         list of (n_i,) GT classes per image
        mask_matched_idxs: list of (P_i,) the GT each positive proposal was matched to
    Returns:
        scalar loss; exactly 0 (still attached to the graph) when there are no positives.
    """
    M = mask_logits.shape[-1]
    labels = [gt_label[idxs] for gt_label, idxs in zip(gt_labels, mask_matched_idxs)]
    mask_targets = [
        project_masks_on_boxes(m, p, i, M, roi_align) if len(p) > 0 else mask_logits.new_zeros((0, M, M))
        for m, p, i in zip(gt_masks, proposals, mask_matched_idxs)
    ]
    labels = torch.cat(labels, dim=0)
    mask_targets = torch.cat(mask_targets, dim=0)

    if mask_targets.numel() == 0:  # no positive proposal in the batch: a zero that backward accepts
        return mask_logits.sum() * 0

    # Per-class sigmoid: only the GT class's channel gets a loss; the other channels are left alone.
    logits_of_gt_class = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits_of_gt_class, mask_targets)


# ----------------------------------------------------------------------------------------------------
# inference: pick the channel, paste into the image
# ----------------------------------------------------------------------------------------------------

def maskrcnn_inference(mask_logits: Tensor, labels: List[Tensor]) -> List[Tensor]:
    """Probabilities of the predicted class: ``mask_logits (m, C, M, M)``, labels list of (m_i,) -> list of (m_i, 1, M, M)."""
    mask_prob = mask_logits.sigmoid()
    boxes_per_image = [len(lab) for lab in labels]
    labels = torch.cat(labels)
    index = torch.arange(mask_logits.shape[0], device=labels.device)
    mask_prob = mask_prob[index, labels][:, None]
    return list(mask_prob.split(boxes_per_image, dim=0))


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Grow ``boxes (N, 4) xyxy`` about their centres by ``scale`` (same arithmetic as torchvision)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    img_shape: Tuple[int, int],
    padding: int = 1,
    max_pixels_per_chunk: int = 1 << 22,
    method: str = "auto",
) -> Tensor:
    """Paste ``masks (N, 1, M, M)`` (probabilities) into their ``boxes (N, 4)`` on an ``img_shape (H, W)`` canvas.

    Returns ``(N, 1, H, W)``, zero outside each box. torchvision's geometry, reproduced exactly:

    1. pad each mask with a 1-pixel zero border (M -> M + 2) and grow its box by (M + 2) / M, so the
       border lands just outside the original box and the mask fades to 0 there;
    2. round the grown box to integers (truncation, as ``.to(torch.int64)``): x0, y0, x1, y1;
    3. resize the padded mask bilinearly (``align_corners=False``) to ``(y1 - y0 + 1, x1 - x0 + 1)``
       and put its top-left at pixel (x0, y0).

    Two ways to do step 3, same numbers (``method``):

    * ``"loop"``: one ``interpolate`` per mask into its box, as torchvision does. Each mask only
      touches the pixels of its own box, so on a CPU this is the fastest way.
    * ``"grid"``: every canvas pixel *samples* its mask with one ``grid_sample`` for many masks at
      once (in chunks of at most ``max_pixels_per_chunk`` output pixels). Far fewer, larger
      kernels: the better choice on a GPU, where a Python loop of small kernels is launch-bound.
    * ``"auto"`` (default): ``"loop"`` on CPU, ``"grid"`` elsewhere.
    """
    if method not in ("auto", "loop", "grid"):
        raise ValueError(f"paste_masks_in_image: method must be 'auto', 'loop' or 'grid', got {method!r}")
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    N = masks.shape[0]
    if N == 0:
        return masks.new_zeros((0, 1, im_h, im_w))
    M = masks.shape[-1]
    padded = F.pad(masks, (padding,) * 4)                       # (N, 1, M+2p, M+2p)
    scale = float(M + 2 * padding) / M
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)    # integer pixel boxes (truncated)
    if method == "loop" or (method == "auto" and masks.device.type == "cpu"):
        return _paste_loop(padded, boxes, im_h, im_w)
    return _paste_grid(padded, boxes, im_h, im_w, max_pixels_per_chunk)


def _paste_loop(padded: Tensor, boxes: Tensor, im_h: int, im_w: int) -> Tensor:
    """Step 3 mask by mask: ``padded (N, 1, S, S)``, integer ``boxes (N, 4)`` -> ``(N, 1, im_h, im_w)``."""
    out = padded.new_zeros((padded.shape[0], 1, im_h, im_w))
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):  # one host copy of all boxes, not one per box
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        # The part of the box that lies on the canvas (a box may stick out of the image).
        cx0, cx1 = max(x0, 0), min(x1 + 1, im_w)
        cy0, cy1 = max(y0, 0), min(y1 + 1, im_h)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        resized = F.interpolate(padded[i: i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out[i, 0, cy0:cy1, cx0:cx1] = resized[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]
    return out


def _paste_grid(padded: Tensor, boxes: Tensor, im_h: int, im_w: int, max_pixels_per_chunk: int) -> Tensor:
    """Step 3 for all masks at once with ``grid_sample``; same arguments as ``_paste_loop``.

    Pixel x of the canvas is pixel (x - x0) of the resized mask. grid_sample's normalised coordinate
    g in [-1, 1] (align_corners=False) reads source position ((g + 1) * size - 1) / 2, so
    g = (2 * (x - x0) + 1) / w - 1 reads exactly where ``interpolate(size=(h, w))`` reads.
    """
    N = padded.shape[0]
    x0, y0, x1, y1 = boxes.unbind(1)
    w = (x1 - x0 + 1).clamp(min=1)                              # size the mask is resized to
    h = (y1 - y0 + 1).clamp(min=1)
    dtype, device = padded.dtype, padded.device
    xs = torch.arange(im_w, device=device)
    ys = torch.arange(im_h, device=device)
    out = padded.new_zeros((N, 1, im_h, im_w))
    chunk = max(1, max_pixels_per_chunk // max(1, im_h * im_w))
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        gx = (2 * (xs[None, :] - x0[s:e, None]) + 1).to(dtype) / w[s:e, None].to(dtype) - 1  # (n, W)
        gy = (2 * (ys[None, :] - y0[s:e, None]) + 1).to(dtype) / h[s:e, None].to(dtype) - 1  # (n, H)
        n = e - s
        grid = torch.stack((gx[:, None, :].expand(n, im_h, im_w), gy[:, :, None].expand(n, im_h, im_w)), dim=-1)
        pasted = F.grid_sample(padded[s:e], grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Outside its (integer) box torchvision's canvas is 0.
        inside_x = (xs[None, :] >= x0[s:e, None]) & (xs[None, :] < x0[s:e, None] + w[s:e, None])  # (n, W)
        inside_y = (ys[None, :] >= y0[s:e, None]) & (ys[None, :] < y0[s:e, None] + h[s:e, None])  # (n, H)
        inside = inside_y[:, :, None] & inside_x[:, None, :]
        out[s:e, 0] = pasted[:, 0] * inside.to(dtype)
    return out
