"""The model's first and last step: images in, one padded batch out; detections back to the original size.

Mask R-CNN takes a *list* of images of any size. Before the backbone sees them, ``GeneralizedRCNNTransform``

1. normalises each image with the ImageNet mean and std (the backbone was pre-trained that way),
2. resizes it so that its short side is ``min_size`` unless that makes the long side exceed
   ``max_size`` (bilinear for images, nearest for masks, boxes scaled by the same factors),
3. copies all images into one zero-padded batch ``(B, 3, H, W)`` whose H and W are multiples of
   ``size_divisible`` (32: the coarsest FPN level has stride 32, so every level lines up).

After the heads, ``postprocess`` maps boxes back to each original image and pastes the 28x28 mask
probabilities into full-size masks (``paste_masks_in_image``), or, for camera-sized images, keeps each
mask thresholded and cropped to its box (``mask_format = "compact"``, ``paste_masks_cropped``). Targets are copied, never modified in place.
The inputs were checked at the model's entrance (``inputs.py``).

Same arithmetic as torchvision's ``GeneralizedRCNNTransform`` (the tests prove equality).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageList:
    """A padded batch and the size of each image in it before padding.

    tensors:     (B, C, H, W) the padded batch
    image_sizes: list of B (h, w): the resized image's size, top-left aligned inside the padding
    """

    def __init__(self, tensors: Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensors = tensors
        self.image_sizes = image_sizes

    def to(self, device) -> "ImageList":
        return ImageList(self.tensors.to(device), self.image_sizes)

    def __repr__(self) -> str:
        return f"ImageList(tensors={tuple(self.tensors.shape)}, image_sizes={self.image_sizes})"


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale ``boxes (N, 4) xyxy`` from an image of ``original_size (h, w)`` to one of ``new_size (h, w)``.

    The ratios are computed in float32, as torchvision does, so float64 models give the same numbers.
    They stay 0-dim CPU tensors, which PyTorch passes to a GPU kernel as plain numbers (no copy).
    """
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(original_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(original_size[1], dtype=torch.float32)
    xmin, ymin, xmax, ymax = boxes.unbind(1)
    return torch.stack((xmin * ratio_w, ymin * ratio_h, xmax * ratio_w, ymax * ratio_h), dim=1)


def resize_image_and_masks(
    image: Tensor, min_size: int, max_size: int, target: Optional[Dict[str, Tensor]] = None
) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
    """Resize ``image (3, h, w)`` (bilinear) and ``target["masks"] (n, h, w)`` (nearest) by one scale factor.

    The factor makes the short side ``min_size`` unless the long side would then exceed ``max_size``.
    Boxes are not touched here (``GeneralizedRCNNTransform.resize`` scales them).
    """
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    # recompute_scale_factor=True: the output size is floor(h * scale), and the interpolation then
    # uses the exact ratio in / out (what torchvision does; it matters for equality, not for learning).
    image = F.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]
    if target is not None and "masks" in target:
        masks = target["masks"]
        masks = F.interpolate(masks[:, None].float(), scale_factor=scale, recompute_scale_factor=True)[:, 0].byte()
        target["masks"] = masks
    return image, target


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Grow ``boxes (N, 4) xyxy`` about their centres by ``scale`` (same arithmetic as torchvision)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)


def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1) -> Tensor:
    """Paste ``masks (N, 1, M, M)`` (probabilities) into their ``boxes (N, 4)`` on an ``img_shape (H, W)`` canvas.

    Returns ``(N, 1, H, W)``, zero outside each box. torchvision's geometry, reproduced exactly:

    1. pad each mask with a 1-pixel zero border (M -> M + 2) and grow its box by (M + 2) / M, so the
       border lands just outside the original box and the mask fades to 0 there;
    2. round the grown box to integers (truncation, as ``.to(torch.int64)``): x0, y0, x1, y1;
    3. resize the padded mask bilinearly (``align_corners=False``) to ``(y1 - y0 + 1, x1 - x0 + 1)``
       and put its top-left at pixel (x0, y0), one mask at a time.

    Memory: the output is allocated once and each mask is written straight into it, so the peak is the
    output plus one box-sized mask (torchvision pastes each mask onto its own full-size canvas and
    stacks them: twice the output). For camera-sized images use :func:`paste_masks_cropped`.
    """
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    out = masks.new_zeros((masks.shape[0], 1, im_h, im_w))
    for i, (x0, y0, crop) in enumerate(_pasted_crops(masks, boxes, im_h, im_w, padding)):
        out[i, 0, y0: y0 + crop.shape[0], x0: x0 + crop.shape[1]] = crop
    return out


def paste_masks_cropped(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], threshold: float = 0.5,
                        padding: int = 1) -> Tuple[List[Tensor], Tensor]:
    """The binary masks of :func:`paste_masks_in_image`, each kept only over the pixels it was pasted into.

    masks: (N, 1, M, M) probabilities; boxes: (N, 4) x1y1x2y2 in the image of size ``img_shape (H, W)``;
    threshold: a pixel is in the mask when its pasted probability is ``>= threshold`` (0 < threshold <= 1).

    Returns ``(crops, origins)``: ``crops`` a list of N bool tensors ``(h_i, w_i)``, ``origins`` (N, 2)
    int64 ``(x0, y0)``, the image pixel of each crop's top-left. Outside its crop a pasted mask is 0,
    so ``crops_to_masks(crops, origins, img_shape)`` equals ``paste_masks_in_image(...)[:, 0] >= threshold``
    exactly. Memory: N box-sized bool crops instead of N full-size float masks (a 6000x4000 photo with
    50 detections: a few MB instead of 4.8 GB).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}: below it the zeros around each crop "
                         f"would count as mask pixels")
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    crops, origins = [], []
    for x0, y0, crop in _pasted_crops(masks, boxes, im_h, im_w, padding):
        crops.append(crop >= threshold)
        origins.append((x0, y0))
    return crops, torch.tensor(origins, dtype=torch.int64, device=boxes.device).reshape(-1, 2)


def crops_to_masks(crops: List[Tensor], origins: Tensor, img_shape: Tuple[int, int]) -> Tensor:
    """Full-size ``(N, H, W)`` bool masks from :func:`paste_masks_cropped`'s ``crops`` and ``origins (N, 2)``."""
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    out = torch.zeros((len(crops), im_h, im_w), dtype=torch.bool, device=origins.device)
    for i, (crop, (x0, y0)) in enumerate(zip(crops, origins.tolist())):
        out[i, y0: y0 + crop.shape[0], x0: x0 + crop.shape[1]] = crop
    return out


def _pasted_crops(masks: Tensor, boxes: Tensor, im_h: int, im_w: int, padding: int):
    """Yield ``(x0, y0, crop)`` per mask: the part of its resized mask (steps 1-3 of
    :func:`paste_masks_in_image`) that lies on the ``im_h x im_w`` canvas, with its top-left pixel
    (``crop`` is (0, 0) when the box misses the canvas)."""
    if masks.shape[0] == 0:
        return
    M = masks.shape[-1]
    padded = F.pad(masks, (padding,) * 4)                       # (N, 1, M+2p, M+2p)
    scale = float(M + 2 * padding) / M
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)    # integer pixel boxes (truncated)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        # The part of the box that lies on the canvas (a box may stick out of the image).
        cx0, cx1 = min(max(x0, 0), im_w), min(x1 + 1, im_w)
        cy0, cy1 = min(max(y0, 0), im_h), min(y1 + 1, im_h)
        if cx1 <= cx0 or cy1 <= cy0:
            yield cx0, cy0, padded.new_zeros((0, 0))
            continue
        resized = F.interpolate(padded[i: i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        yield cx0, cy0, resized[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]


class GeneralizedRCNNTransform(nn.Module):
    """Normalise, resize and batch the input images (and their targets); map detections back.

    Args:
        min_size:   short side after resizing; a tuple picks one at random per image in training
                    (multi-scale training), the last one is used at evaluation
        max_size:   the long side never exceeds this
        image_mean, image_std: per-channel normalisation (RGB, images in [0, 1])
        size_divisible: the padded batch's H and W are multiples of this
        paste_masks: ``paste_masks_in_image`` or a function with its signature (the model's fast floor
                    passes its own)

    How detections' masks come out (attributes, set them on ``model.transform``):
        mask_format: ``"full"`` (default, torchvision's contract): ``"masks"`` (m, 1, H, W) float
                    probabilities in [0, 1] at the original image size. ``"compact"``: instead of
                    ``"masks"``, ``"mask_crops"`` a list of m bool tensors (h_i, w_i), the mask thresholded
                    at ``mask_threshold`` and cropped to the pixels it was pasted into, and
                    ``"mask_origins"`` (m, 2) int64 (x0, y0) of each crop's top-left pixel
                    (``paste_masks_cropped``; ``crops_to_masks`` makes them full-size again). For
                    camera-sized images: 50 full masks of a 6000x4000 photo take 4.8 GB, their crops a few MB.
        mask_threshold: ``"compact"`` keeps the pixels with probability >= this (default 0.5).
    """

    def __init__(
        self,
        min_size: Union[int, Sequence[int]],
        max_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int = 32,
        paste_masks: Callable[[Tensor, Tensor, Tuple[int, int]], Tensor] = paste_masks_in_image,
    ):
        super().__init__()
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = size_divisible
        self.paste_masks = paste_masks
        self.mask_format = "full"
        self.mask_threshold = 0.5

    @property
    def mask_format(self) -> str:
        return self._mask_format

    @mask_format.setter
    def mask_format(self, value: str) -> None:
        # checked when set, so a typo fails before a forward pass, not after it
        if value not in ("full", "compact"):
            raise ValueError(f"mask_format must be 'full' or 'compact', got {value!r}")
        self._mask_format = value

    @property
    def mask_threshold(self) -> float:
        return self._mask_threshold

    @mask_threshold.setter
    def mask_threshold(self, value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"mask_threshold must be in (0, 1], got {value!r}")
        self._mask_threshold = float(value)

    def forward(
        self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Tuple[ImageList, Optional[List[Dict[str, Tensor]]]]:
        """images: list of B ``(3, h_i, w_i)`` float in [0, 1]; targets: list of B dicts (boxes, labels, masks).

        Returns the padded ``ImageList`` and new target dicts (the caller's dicts are left untouched).
        """
        images = list(images)
        if targets is not None:
            targets = [dict(t) for t in targets]  # shallow copies: we replace entries, never edit tensors
        for i, image in enumerate(images):
            target = targets[i] if targets is not None else None
            image = self.normalize(image)
            image, target = self.resize(image, target)
            images[i] = image
            if targets is not None:
                targets[i] = target

        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch = self.batch_images(images, self.size_divisible)
        return ImageList(batch, image_sizes), targets

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - mean) / std`` per channel; ``image (3, h, w)`` float."""
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def torch_choice(self, k: Sequence[int]) -> int:
        """A random element of ``k`` drawn with PyTorch's generator (so ``torch.manual_seed`` controls it)."""
        index = int(torch.empty(1).uniform_(0.0, float(len(k))).item())
        return k[index]

    def resize(
        self, image: Tensor, target: Optional[Dict[str, Tensor]] = None
    ) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        """Resize one normalised ``image (3, h, w)`` and its target (boxes scaled, masks nearest)."""
        h, w = image.shape[-2:]
        size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        image, target = resize_image_and_masks(image, size, self.max_size, target)
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target

    def batch_images(self, images: List[Tensor], size_divisible: int = 32) -> Tensor:
        """Copy ``images`` (list of ``(C, h_i, w_i)``) top-left into a zero batch ``(B, C, H, W)``.

        H and W are the largest h_i, w_i rounded up to a multiple of ``size_divisible``.
        """
        C = max(img.shape[0] for img in images)
        H = max(img.shape[1] for img in images)
        W = max(img.shape[2] for img in images)
        H = int(math.ceil(H / size_divisible) * size_divisible)
        W = int(math.ceil(W / size_divisible) * size_divisible)
        batch = images[0].new_zeros((len(images), C, H, W))
        for i, img in enumerate(images):
            batch[i, : img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        return batch

    def postprocess(
        self,
        result: List[Dict[str, Tensor]],
        image_shapes: List[Tuple[int, int]],
        original_image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """``postprocess`` (the function below) with this transform's mask paster, ``mask_format`` and
        ``mask_threshold``; nothing in training mode (there are no detections then)."""
        if self.training:
            return result
        return postprocess(result, image_shapes, original_image_sizes, self.paste_masks,
                           mask_format=self.mask_format, mask_threshold=self.mask_threshold)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(\n    Normalize(mean={self.image_mean}, std={self.image_std})\n"
            f"    Resize(min_size={self.min_size}, max_size={self.max_size}, mode='bilinear')\n)"
        )


def postprocess(
    result: List[Dict[str, Tensor]],
    image_shapes: List[Tuple[int, int]],
    original_image_sizes: List[Tuple[int, int]],
    paste_masks: Callable[[Tensor, Tensor, Tuple[int, int]], Tensor] = paste_masks_in_image,
    mask_format: str = "full",
    mask_threshold: float = 0.5,
) -> List[Dict[str, Tensor]]:
    """Map each image's detections from the resized size ``image_shapes[i]`` to ``original_image_sizes[i]``.

    boxes (m, 4) are rescaled; masks (m, 1, 28, 28) become, with ``mask_format="full"``, ``"masks"``
    (m, 1, H, W) soft masks in [0, 1] (``paste_masks``); with ``"compact"``, ``"mask_crops"`` (list of m
    bool (h_i, w_i)) and ``"mask_origins"`` (m, 2) int64 x0, y0 (``paste_masks_cropped`` at
    ``mask_threshold``). The dicts of ``result`` are updated and returned.
    """
    if mask_format not in ("full", "compact"):
        raise ValueError(f"mask_format must be 'full' or 'compact', got {mask_format!r}")
    for i, (pred, im_s, o_im_s) in enumerate(zip(result, image_shapes, original_image_sizes)):
        boxes = resize_boxes(pred["boxes"], im_s, o_im_s)
        result[i]["boxes"] = boxes
        if "masks" not in pred:
            continue
        if mask_format == "full":
            result[i]["masks"] = paste_masks(pred["masks"], boxes, o_im_s)
        else:
            crops, origins = paste_masks_cropped(pred.pop("masks"), boxes, o_im_s, mask_threshold)
            result[i]["mask_crops"], result[i]["mask_origins"] = crops, origins
    return result
