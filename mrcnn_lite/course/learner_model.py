"""Your own Mask R-CNN: the functions you wrote in notebooks 01-09, put into the course model and trained.

Each build exercise of notebooks 01-09 that is a part of the model becomes that part of a *learner's
model*. The functions enter through the same outside seams the paper's ablations use
(``mrcnn_lite.experiments.variants``), never through flags in the stage modules:

* kernels handed to ``build_model``: ``roi_align`` (the box and mask poolers), ``batched_nms`` (the RPN's
  proposals and the final detections), ``paste_masks_in_image`` (masks into the image), the sampler class
  and the anchor generator class;
* a ``BoxCoder`` subclass (``encode``, the RPN's ``decode``, the box head's class-specific decode);
* ``RoIHeads`` / ``RegionProposalNetwork`` subclasses whose torchvision-named methods (called through
  ``self``) call your function: ``_get_top_n_idx``, ``compute_loss``, ``assign_targets_to_proposals``,
  ``box_loss``, ``mask_loss``.

Where a seam's signature differs from the exercise's, a small adapter says how (your ``roi_align_one_box``
pools one box from one map; the model's ``roi_align`` pools K boxes from a batch of C-channel maps, so the
adapter loops over boxes and channels). Before anything is built, each function is run through its
exercise's own checker (``mrcnn_lite.course.checks``): one that fails, or is missing, is replaced by the
package's part, and the table says so and why.

Getting your functions from notebooks 01-09 to notebook 10::

    from mrcnn_lite.course.learner_model import save_part
    save_part("box_iou", my_box_iou)                         # in notebook 01, after the check
    save_part("fastrcnn_loss", fastrcnn_loss_by_hand, smooth_l1)   # helpers your function calls go too

``save_part`` stores the function's *source code* (not a pickle) in ``~/.mrcnn_lite/parts/<name>.py``
(or the folder in the environment variable ``MRCNN_LITE_PARTS``). ``load_parts()`` runs each file in a
fresh namespace in which ``torch``, ``math``, ``F`` (``torch.nn.functional``), ``Tensor`` and the
``typing`` names are already imported, and returns ``{name: function}``. The files are plain Python: read
them, edit them, delete one to go back to the package's part. Loading runs that code, so load only files
you wrote yourself.

    from mrcnn_lite.course.learner_model import learner_model, load_parts
    built = learner_model(load_parts())      # checks every part, builds the course model with yours
    print(built.table())
    built.model                              # a MaskRCNN: train it with mrcnn_lite.engine.Trainer
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import config as _config
from ..build import build_model, kernels_for
from ..model.anchors import AnchorGenerator
from ..model.matching import BalancedPositiveNegativeSampler
from ..model.roi_heads import RoIHeads
from ..model.rpn import RegionProposalNetwork
from ..ops import BoxCoder
from ..recipes import TINY_SHAPES_MODEL

__all__ = ["PARTS", "Part", "save_part", "load_parts", "parts_dir", "check_parts", "learner_model",
           "LearnerBuild", "course_config", "amp_for_this_cpu", "recipe_trainer", "heldout_ap", "reference_parts", "reference_sample_balanced"]


@dataclass(frozen=True)
class Part:
    """One exercise that is a part of the model. ``name``: the key of ``save_part`` / ``load_parts``;
    ``function``: the name the notebook gives it; ``checker``: its check in ``mrcnn_lite.course.checks``;
    ``seam``: where the model calls it."""

    name: str
    notebook: str
    function: str
    checker: str
    seam: str


PARTS: Tuple[Part, ...] = (
    Part("box_iou", "01", "my_box_iou", "check_box_iou",
         "IoU of the RPN's anchor matching (rpn.box_similarity) and of the RoI heads' proposal matching"),
    Part("encode", "01", "my_encode", "check_encode", "BoxCoder.encode_single: the RPN's and the box head's targets"),
    Part("decode", "01", "fixed_decode", "check_decode_lab", "the RPN's BoxCoder.decode_single: proposals from deltas"),
    Part("nms", "01", "my_nms", "check_nms", "batched_nms (one call per class or level): proposals and detections"),
    Part("base_anchors", "04", "base_anchors", "check_base_anchors", "AnchorGenerator's cell anchors"),
    Part("grid_anchors", "04", "grid_anchors", "check_grid_anchors", "AnchorGenerator.anchors_for"),
    Part("rpn_loss", "05", "rpn_loss", "check_rpn_loss", "RegionProposalNetwork.compute_loss"),
    Part("top_n_per_level", "05", "top_n_per_level", "check_top_n_per_level",
         "RegionProposalNetwork._get_top_n_idx"),
    Part("roi_align", "06", "roi_align_one_box", "check_roi_align_one_box",
         "roi_align of the box and mask poolers (looped over boxes and channels)"),
    Part("sample_balanced", "07", "sample_balanced", "check_sample_balanced",
         "the RPN's and the RoI heads' fg_bg_sampler"),
    Part("fastrcnn_loss", "07", "fastrcnn_loss_by_hand", "check_fastrcnn_loss", "RoIHeads.box_loss"),
    Part("decode_class_boxes", "07", "decode_class_boxes", "check_decode_class_boxes",
         "the box head's BoxCoder.decode (one call per class): final boxes"),
    Part("mask_targets", "08", "mask_targets", "check_mask_targets", "RoIHeads.mask_loss's targets"),
    Part("paste_mask", "09", "paste_mask", "check_paste_mask", "paste_masks_in_image (one call per mask)"),
)
_BY_NAME = {p.name: p for p in PARTS}

# Exercises of notebooks 01-09 that are *not* parts of the learner's model, and why (for the report).
NOT_WIRED = {
    "bottleneck, top_down (02, 03)": "modules with weights: the course model's own backbone and FPN are built",
    "frozen_bn lab (02)": "the course recipe trains with BatchNorm (norm='bn'), not frozen BN",
    "flatten_head lab (05)": "RegionProposalNetwork.forward calls concat_box_prediction_layers directly (no hook)",
    "bilinear (06)": "part of roi_align_one_box, which is wired",
    "level lab (06)": "MultiScaleRoIAlign maps levels itself (no hook)",
    "training_proposals lab (07), mask_loss lab (08)": "labs: their fixes are add_gt_proposals and the mask loss, "
                                                        "whose parts (box_iou, mask_targets) are wired",
}


# ----------------------------------------------------------------------------------------------
# Saving and loading the learner's functions as source code
# ----------------------------------------------------------------------------------------------
def parts_dir(path=None) -> Path:
    """Where parts are stored: ``path``, else ``$MRCNN_LITE_PARTS``, else ``~/.mrcnn_lite/parts``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("MRCNN_LITE_PARTS")
    return Path(env) if env else Path.home() / ".mrcnn_lite" / "parts"


def save_part(name: str, fn: Callable, *helpers: Callable, path=None) -> Path:
    """Store the source of ``fn`` (and of the ``helpers`` it calls) as part ``name``; returns the file.

    ``name``: one of ``PARTS`` (``box_iou``, ``encode``, ...). The file is written atomically.
    """
    if name not in _BY_NAME:
        raise ValueError(f"save_part: unknown part {name!r}; the parts are {', '.join(_BY_NAME)}")
    sources = []
    for f in (*helpers, fn):
        f = inspect.unwrap(f)  # checks.or_reference wraps a function with functools.wraps
        if not inspect.isfunction(f):
            raise TypeError(f"save_part({name!r}): {f!r} is not a function defined with def")
        try:
            sources.append(textwrap.dedent(inspect.getsource(f)))
        except (OSError, TypeError) as exc:
            raise ValueError(f"save_part({name!r}): the source of {f.__name__} cannot be read ({exc}); "
                             f"define it with def in a notebook cell or a file") from exc
    text = f"# part: {name}\n# function: {inspect.unwrap(fn).__name__}\n\n" + "\n\n".join(sources)
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.py"
    tmp = target.with_suffix(".py.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def _namespace() -> dict:
    import typing
    ns = {"torch": torch, "math": math, "F": F, "nn": nn, "Tensor": Tensor, "__name__": "learner_part"}
    ns.update({k: getattr(typing, k) for k in ("Any", "Dict", "List", "Optional", "Sequence", "Tuple")})
    return ns


def load_parts(path=None) -> Dict[str, Callable]:
    """``{name: function}`` of every stored part; each file is run in a fresh namespace (see the module doc)."""
    folder = parts_dir(path)
    parts = {}
    for name in _BY_NAME:
        file = folder / f"{name}.py"
        if not file.exists():
            continue
        text = file.read_text()
        header = [line for line in text.splitlines()[:3] if line.startswith("# function: ")]
        if not header:
            raise ValueError(f"load_parts: {file} has no '# function: NAME' line (write it with save_part)")
        ns = _namespace()
        exec(compile(text, str(file), "exec"), ns)
        fn_name = header[0][len("# function: "):].strip()
        if fn_name not in ns:
            raise ValueError(f"load_parts: {file} defines no function {fn_name!r}")
        parts[name] = ns[fn_name]
    return parts


# ----------------------------------------------------------------------------------------------
# Checking: each exercise's own checker decides whether the learner's function is used
# ----------------------------------------------------------------------------------------------
def check_parts(parts: Mapping[str, Callable]) -> Dict[str, Tuple[bool, str]]:
    """``{name: (passed, why)}`` for every part in ``PARTS``: run the exercise's checker on the learner's
    function, quietly (its printout and its entry in the grader's results are dropped: this is not grading)."""
    from . import checks

    unknown = set(parts) - set(_BY_NAME)
    if unknown:
        raise ValueError(f"learner_model: unknown parts {sorted(unknown)}; the parts are {', '.join(_BY_NAME)}")
    results = {}
    recorded = getattr(checks, "RESULTS", None)
    with torch.random.fork_rng(devices=[]):  # checking draws no number from the global RNG the model is built from
        for part in PARTS:
            _check_one(checks, part, parts, results, recorded)
    return results


def _check_one(checks, part: Part, parts, results, recorded) -> None:
    """Run ``part``'s checker on the learner's function; put ``(passed, why)`` in ``results[part.name]``."""
    if part.name not in parts:
        results[part.name] = (False, f"not saved (save_part({part.name!r}, {part.function}) in notebook {part.notebook})")
        return
    n_before = len(recorded) if recorded is not None else 0
    with contextlib.redirect_stdout(io.StringIO()):
        result = getattr(checks, part.checker)(parts[part.name])
    if recorded is not None:
        del recorded[n_before:]
    if result.passed:
        results[part.name] = (True, f"passes {part.checker}")
    else:
        first = result.message.splitlines()[0]
        results[part.name] = (False, f"fails {part.checker}: {first.split(': ', 1)[-1][:80]}")


# ----------------------------------------------------------------------------------------------
# Timing: every learner's function in the model is called through a Timed, which adds up its time
# ----------------------------------------------------------------------------------------------
class Timed:
    """``fn`` with the seconds spent in it added up in ``seconds`` (what the parts table reports)."""

    def __init__(self, fn: Callable):
        self.fn, self.seconds = fn, 0.0
        self.__name__ = getattr(fn, "__name__", "part")

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Adapters: from an exercise's signature to the seam's
# ----------------------------------------------------------------------------------------------
def _pair(size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align_from_one_box(one_box: Callable, fallback: Callable) -> Callable:
    """``ops.roi_align``'s signature from ``one_box(f (H, W), box, output_size, spatial_scale, sampling_ratio)``
    (``aligned=True``): a loop over the K RoIs and the C channels.

    The model pools with ``aligned=False`` (torchvision's Mask R-CNN v1): the box is not shifted by half a
    cell and is at least one cell wide and high. The same samples come from ``aligned=True`` on the box
    shifted by ``+0.5 / spatial_scale`` and grown to one cell. Adaptive sampling (``sampling_ratio <= 0``,
    which the exercise does not ask for) goes to ``fallback``.
    """

    def roi_align(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                  aligned: bool = False) -> Tensor:
        if sampling_ratio <= 0:
            return fallback(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
        ph, pw = _pair(output_size)
        K, C = rois.shape[0], input.shape[1]
        out = input.new_zeros((K, C, ph, pw))
        for k in range(K):
            b = int(rois[k, 0])
            x1, y1, x2, y2 = (float(v) for v in rois[k, 1:])
            if not aligned:
                shift = 0.5 / spatial_scale  # aligned=True takes half a cell off: add it back
                x2 = x2 + shift if (x2 - x1) * spatial_scale >= 1.0 else x1 + shift + 1.0 / spatial_scale
                y2 = y2 + shift if (y2 - y1) * spatial_scale >= 1.0 else y1 + shift + 1.0 / spatial_scale
                x1, y1 = x1 + shift, y1 + shift
            box = [x1, y1, x2, y2]
            out[k] = torch.stack([torch.as_tensor(one_box(input[b, c], box, (ph, pw), spatial_scale, sampling_ratio),
                                                  dtype=input.dtype) for c in range(C)])
        return out

    return roi_align


def batched_nms_from_nms(nms: Callable) -> Callable:
    """``ops.batched_nms``'s signature from ``nms(boxes, scores, iou_threshold)``: NMS within each ``idxs``
    value, then all kept indices by decreasing score (ties: by index, as the package's stable sort)."""

    def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        kept = []
        for value in torch.unique(idxs):
            members = torch.where(idxs == value)[0]
            keep = torch.as_tensor(nms(boxes[members], scores[members], iou_threshold), dtype=torch.int64)
            kept.append(members[keep.to(members.device)])
        kept = torch.cat(kept).sort().values
        return kept[torch.sort(scores[kept], descending=True, stable=True).indices]

    return batched_nms


def paste_masks_from_paste_mask(paste_mask: Callable, fallback: Callable) -> Callable:
    """``paste_masks_in_image``'s signature from ``paste_mask(mask (M, M), box, image_size)``, one mask at a time
    (the exercise's border is the package's ``padding=1``; another padding goes to ``fallback``)."""

    def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape, padding: int = 1) -> Tensor:
        if padding != 1:
            return fallback(masks, boxes, img_shape, padding)
        h, w = int(img_shape[0]), int(img_shape[1])
        out = masks.new_zeros((masks.shape[0], 1, h, w))
        for i in range(masks.shape[0]):
            out[i, 0] = torch.as_tensor(paste_mask(masks[i, 0], boxes[i].tolist(), (h, w)), dtype=masks.dtype)
        return out

    return paste_masks_in_image


class LearnerBoxCoder(BoxCoder):
    """A ``BoxCoder`` whose ``encode_single`` is ``encode(targets, refs, weights)``, whose ``decode_single`` is
    ``decode(deltas, anchors)`` (the RPN's, weights 1) and whose ``decode`` (the box head's ``(R, C * 4)``
    deltas -> ``(R, C, 4)`` boxes) calls ``decode_class_boxes`` once per class; ``None``: the package's."""

    def __init__(self, weights, encode=None, decode=None, decode_class_boxes=None):
        super().__init__(weights)
        self.learner_encode, self.learner_decode, self.learner_decode_class = encode, decode, decode_class_boxes

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        if self.learner_encode is None:
            return super().encode_single(reference_boxes, proposals)
        return self.learner_encode(reference_boxes, proposals, self.weights)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        if self.learner_decode is None:
            return super().decode_single(rel_codes, boxes)
        return self.learner_decode(rel_codes, boxes)

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        if self.learner_decode_class is None:
            return super().decode(rel_codes, boxes)
        proposals = torch.cat(boxes, dim=0)
        R, C = proposals.shape[0], rel_codes.shape[-1] // 4
        rel_codes = rel_codes.reshape(R, C * 4)
        per_class = [self.learner_decode_class(rel_codes, proposals,
                                               torch.full((R,), c, dtype=torch.int64, device=proposals.device))
                     for c in range(C)]
        return torch.stack(per_class, dim=1) if R else rel_codes.new_zeros((0, C, 4))


def _autocast(amp: str, device: torch.device):
    if amp not in ("off", "bf16"):
        raise ValueError(f"amp must be 'off' or 'bf16', got {amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def amp_for_this_cpu() -> str:
    """The course recipe's ``"bf16"`` where oneDNN runs bfloat16 on this CPU, else ``"off"``: without bfloat16
    instructions, autocast to bfloat16 makes a CPU step several times slower (docs/recipe.md)."""
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return "off"


def _generator_of(device: torch.device) -> torch.Generator:
    """The global generator of ``device``: a sampler drawing from it draws what the package's sampler would."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def sampler_class(sample_balanced: Callable) -> type:
    """A ``BalancedPositiveNegativeSampler`` class whose draw is ``sample_balanced(labels, batch_size_per_image,
    positive_fraction, generator)``, image by image, with the global generator (so the package's draw and a
    correct learner's one use the same random numbers)."""

    class LearnerSampler(BalancedPositiveNegativeSampler):
        def sample_indices(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
            pos_inds, neg_inds = [], []
            for lab in labels:
                pos, neg = sample_balanced(lab, self.batch_size_per_image, self.positive_fraction,
                                           _generator_of(lab.device))
                pos_inds.append(torch.as_tensor(pos, device=lab.device).reshape(-1).long().sort().values)
                neg_inds.append(torch.as_tensor(neg, device=lab.device).reshape(-1).long().sort().values)
            return pos_inds, neg_inds

    return LearnerSampler


def anchor_generator_class(base_anchors: Optional[Callable], grid_anchors: Optional[Callable]) -> type:
    """An ``AnchorGenerator`` class with the learner's ``base_anchors(sizes, ratios)`` as cell anchors and
    ``grid_anchors(base, grid_size, image_size)`` placing them (``None``: the package's)."""

    class LearnerAnchorGenerator(AnchorGenerator):
        def __init__(self, sizes, aspect_ratios):
            super().__init__(sizes, aspect_ratios)
            if base_anchors is not None:
                self.cell_anchors = [torch.as_tensor(base_anchors(list(s), list(r))).to(torch.float32)
                                     for s, r in zip(self.sizes, self.aspect_ratios)]

        def anchors_for(self, image_size, grid_sizes, dtype=torch.float32, device="cpu") -> Tensor:
            if grid_anchors is None:
                return super().anchors_for(image_size, grid_sizes, dtype, device)
            size = (int(image_size[0]), int(image_size[1]))
            return torch.cat([torch.as_tensor(grid_anchors(base.to(dtype=dtype, device=device), (int(g[0]), int(g[1])),
                                                           size)).to(dtype=dtype, device=device)
                              for base, g in zip(self.cell_anchors, grid_sizes)])

    return LearnerAnchorGenerator


class LearnerRPN(RegionProposalNetwork):
    """The RPN with the learner's ``top_n_per_level`` and ``rpn_loss`` (``learner_parts``; missing: the package's)."""

    learner_parts: Dict[str, Callable] = {}

    def _get_top_n_idx(self, objectness: Tensor, num_anchors_per_level: Sequence[int]) -> Tensor:
        fn = self.learner_parts.get("top_n_per_level")
        if fn is None:
            return super()._get_top_n_idx(objectness, num_anchors_per_level)
        return torch.as_tensor(fn(objectness, list(num_anchors_per_level), self.pre_nms_top_n())).long()

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        fn = self.learner_parts.get("rpn_loss")
        if fn is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        pos_inds, neg_inds = self.fg_bg_sampler.sample_indices(labels)
        n = objectness.shape[1]
        pos_mask = torch.zeros(objectness.numel(), dtype=torch.bool, device=objectness.device)
        neg_mask = torch.zeros_like(pos_mask)
        for i, (p, q) in enumerate(zip(pos_inds, neg_inds)):  # image i's anchors start at i * n
            pos_mask[p + i * n] = True
            neg_mask[q + i * n] = True
        return tuple(fn(objectness.reshape(-1), pred_bbox_deltas.reshape(-1, 4), torch.cat(list(labels)),
                        torch.cat(list(regression_targets)), pos_mask, neg_mask))


class LearnerRoIHeads(RoIHeads):
    """The RoI heads with the learner's ``box_iou`` (proposal matching), ``fastrcnn_loss`` and ``mask_targets``."""

    learner_parts: Dict[str, Callable] = {}

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        box_iou = self.learner_parts.get("box_iou")
        if box_iou is None:
            return super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        matched_idxs, labels = [], []
        for p, g, lab in zip(proposals, gt_boxes, gt_labels):
            if g.numel() == 0:  # an image without objects: every proposal is background
                matched_idxs.append(torch.zeros(len(p), dtype=torch.int64, device=p.device))
                labels.append(torch.zeros(len(p), dtype=torch.int64, device=p.device))
                continue
            matched = self.proposal_matcher(box_iou(g, p))                     # (n, P) IoU -> (P,)
            clamped = matched.clamp(min=0)
            lab_i = lab[clamped].to(torch.int64)
            lab_i.masked_fill_(matched == self.proposal_matcher.BELOW_LOW_THRESHOLD, 0)
            lab_i.masked_fill_(matched == self.proposal_matcher.BETWEEN_THRESHOLDS, -1)
            matched_idxs.append(clamped)
            labels.append(lab_i)
        return matched_idxs, labels

    def box_loss(self, class_logits, box_regression, labels, regression_targets):
        fn = self.learner_parts.get("fastrcnn_loss")
        if fn is None:
            return super().box_loss(class_logits, box_regression, labels, regression_targets)
        return tuple(fn(class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets)))

    def mask_loss(self, mask_logits, mask_proposals, targets, pos_matched_idxs):
        fn = self.learner_parts.get("mask_targets")
        if fn is None:
            return super().mask_loss(mask_logits, mask_proposals, targets, pos_matched_idxs)
        # The loss of mask_head.maskrcnn_loss, with the learner's targets: BCE on the GT class's channel.
        M = mask_logits.shape[-1]
        labels = torch.cat([t["labels"][i] for t, i in zip(targets, pos_matched_idxs)])
        if labels.numel() == 0:
            return mask_logits.sum() * 0
        mask_targets = torch.cat([torch.as_tensor(fn(t["masks"], p, i, M)).to(mask_logits)
                                  for t, p, i in zip(targets, mask_proposals, pos_matched_idxs) if len(p)])
        logits = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(logits, mask_targets)


# ----------------------------------------------------------------------------------------------
# Building the learner's model
# ----------------------------------------------------------------------------------------------
def course_config(**changes) -> _config.MaskRCNNConfig:
    """The course recipe's model (``recipes.TINY_SHAPES_MODEL`` on ``config.tiny``), on the reference floor."""
    return _config.tiny(num_classes=4, **{**TINY_SHAPES_MODEL, "kernels": "reference", **changes})


@dataclass
class Row:
    part: Part
    yours: bool
    why: str
    timer: Optional[Timed] = None
    estimated: bool = False  # the time is an estimate (see LearnerBuild.measure)


@dataclass
class LearnerBuild:
    """What ``learner_model`` built: ``model`` and, per part, whose function it runs and why (``rows``)."""

    model: nn.Module
    rows: List[Row]
    package_roi_align: Callable = None  # the package's RoIAlign, which LearnerBuild.measure times in its place
    step_seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def yours(self) -> List[str]:
        return [r.part.name for r in self.rows if r.yours]

    def reset_timers(self) -> None:
        for r in self.rows:
            if r.timer is not None:
                r.timer.seconds = 0.0

    def measure(self, images: List[Tensor], targets: List[dict], package_model: Optional[nn.Module] = None,
                estimate: Sequence[str] = ("roi_align",), amp: str = "off") -> None:
        """Time one training step (forward and backward) of the learner's model, and of ``package_model`` if given;
        each of your parts' own time in that step goes in its row. The model is left as it was (weights, buffers,
        random state). ``amp``: ``"bf16"`` times the step under bfloat16 autocast, as a run with that ``amp`` trains.

        A part in ``estimate`` is not run in the timed step: your ``roi_align_one_box`` is called once per box
        and channel (tens of thousands of calls, minutes per step on a CPU). The step counts those calls with
        the package's RoIAlign in its place; the part's cost is then that count times the mean time of 10 calls
        of your function on a typical box (marked ``~`` in the table).
        """
        def one_step(model):
            model = copy.deepcopy(model).train()
            start = time.perf_counter()
            with _autocast(amp, images[0].device):
                losses = model(images, targets)
            sum(losses.values()).backward()
            return time.perf_counter() - start

        if package_model is not None:
            self.step_seconds["package"] = one_step(package_model)
        pools = [self.model.roi_heads.box_roi_pool, self.model.roi_heads.mask_roi_pool]
        swapped = {}
        counts: Dict[Tuple[Tuple[int, int], int], int] = {}
        row = self._row("roi_align")
        if "roi_align" in estimate and row.yours:
            package_roi_align = self.package_roi_align

            def counting(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
                if sampling_ratio > 0:
                    key = (_pair(output_size), int(sampling_ratio))
                    counts[key] = counts.get(key, 0) + rois.shape[0] * input.shape[1]
                return package_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

            for pool in pools:
                swapped[pool] = pool.roi_align
                pool.roi_align = counting
        self.reset_timers()
        model = self.model
        state = copy.deepcopy(model.state_dict())
        was_training = model.training
        rng = torch.get_rng_state()
        try:
            model.train()
            start = time.perf_counter()
            with _autocast(amp, images[0].device):
                losses = model(images, targets)
            sum(losses.values()).backward()
            self.step_seconds["yours"] = time.perf_counter() - start
        finally:
            for pool, fn in swapped.items():
                pool.roi_align = fn
            torch.set_rng_state(rng)
            model.zero_grad(set_to_none=True)
            model.load_state_dict(state)
            model.train(was_training)
        if swapped:
            f = torch.randn(48, 48)
            total = 0.0
            for (size, ratio), n in counts.items():
                start = time.perf_counter()
                for _ in range(10):
                    row.timer.fn(f, [20.0, 24.0, 60.0, 52.0], size, 0.25, ratio)
                total += (time.perf_counter() - start) / 10 * n
            row.timer.seconds = total
            row.estimated = True
            self.step_seconds["yours"] += total

    def _row(self, name: str) -> "Row":
        return next(r for r in self.rows if r.part.name == name)

    def table(self) -> str:
        """The parts table: part, yours / package's, why, and the ms each of your parts took in one measured step."""
        timed = bool(self.step_seconds)
        lines = [f"{'part':<20} {'nb':<3} {'used':<10} {'ms/step':>8}  why", "-" * 96]
        for r in self.rows:
            used = "yours" if r.yours else "package's"
            ms = (f"{'~' if r.estimated else ''}{1000 * r.timer.seconds:.1f}".rjust(8) if (timed and r.timer is not None)
                  else f"{'-':>8}")
            lines.append(f"{r.part.name:<20} {r.part.notebook:<3} {used:<10} {ms}  {r.why}")
        if timed:
            lines.append("-" * 96)
            pk = self.step_seconds.get("package")
            lines.append(f"one training step (forward + backward): yours {1000 * self.step_seconds['yours']:.0f} ms"
                         + (" (~: estimated)" if any(r.estimated for r in self.rows) else "")
                         + (f", the package's model {1000 * pk:.0f} ms" if pk is not None else ""))
        return "\n".join(lines)


def learner_model(parts: Mapping[str, Callable], cfg: Optional[_config.MaskRCNNConfig] = None, check: bool = True,
                  package: Sequence[str] = (), why_package: str = "you chose the package's") -> LearnerBuild:
    """The course model with the learner's ``parts`` (``{name: function}``, names from ``PARTS``) in place.

    ``cfg``: the model's config (default ``course_config()``: the course recipe's model, reference floor).
    ``check``: run each part's checker first; a part that fails (or is missing) is the package's.
    ``package``: names to take from the package even if yours passes (e.g. a slow part), said with
    ``why_package`` in the table. Weights are drawn from the global RNG exactly as ``build_model(cfg)`` draws
    them: with the same seed, the learner's model starts from the package model's weights.
    """
    cfg = cfg if cfg is not None else course_config()
    unknown = (set(parts) | set(package)) - set(_BY_NAME)
    if unknown:
        raise ValueError(f"learner_model: unknown parts {sorted(unknown)}; the parts are {', '.join(_BY_NAME)}")
    verdicts = check_parts(parts) if check else {n: ((n in parts), "not checked" if n in parts else "not given")
                                                 for n in _BY_NAME}
    rows, use = [], {}
    for part in PARTS:
        ok, why = verdicts[part.name]
        if ok and part.name in package:
            ok, why = False, why_package
        timer = Timed(parts[part.name]) if ok else None
        if ok:
            use[part.name] = timer
        rows.append(Row(part, ok, why, timer))
    if "decode_class_boxes" in use and cfg.bbox_reg_weights not in (None, (10.0, 10.0, 5.0, 5.0)):
        use.pop("decode_class_boxes")
        row = next(r for r in rows if r.part.name == "decode_class_boxes")
        row.yours, row.why, row.timer = False, f"the exercise decodes with (10, 10, 5, 5), the model with {cfg.bbox_reg_weights}", None

    k = kernels_for(cfg.kernels)
    package_roi_align = k.roi_align
    if "roi_align" in use:
        k.roi_align = roi_align_from_one_box(use["roi_align"], fallback=k.roi_align)
    if "nms" in use:
        k.batched_nms = batched_nms_from_nms(use["nms"])
    if "paste_mask" in use:
        k.paste_masks_in_image = paste_masks_from_paste_mask(use["paste_mask"], fallback=k.paste_masks_in_image)
    if "sample_balanced" in use:
        k.sampler = sampler_class(use["sample_balanced"])
    if "base_anchors" in use or "grid_anchors" in use:
        k.anchor_generator = anchor_generator_class(use.get("base_anchors"), use.get("grid_anchors"))
    for op, name in (("roi_align", "roi_align"), ("batched_nms", "nms"), ("paste_masks_in_image", "paste_mask"),
                     ("sampler", "sample_balanced"), ("anchor_generator", "grid_anchors")):
        if name in use:
            k.log.record(op, f"the learner's {name}")
    model = build_model(cfg, kernels=k)

    # (The mask targets crop the GT masks with adaptive sampling, sampling_ratio -1: the adapter hands that
    # call to the package's RoIAlign.)
    heads: RoIHeads = model.roi_heads
    heads.__class__ = LearnerRoIHeads
    heads.learner_parts = {n: use[n] for n in ("box_iou", "fastrcnn_loss", "mask_targets") if n in use}
    heads.box_coder = LearnerBoxCoder(heads.box_coder.weights, encode=use.get("encode"),
                                      decode_class_boxes=use.get("decode_class_boxes"))
    rpn: RegionProposalNetwork = model.rpn
    rpn.__class__ = LearnerRPN
    rpn.learner_parts = {n: use[n] for n in ("top_n_per_level", "rpn_loss") if n in use}
    rpn.box_coder = LearnerBoxCoder(rpn.box_coder.weights, encode=use.get("encode"), decode=use.get("decode"))
    if "box_iou" in use:
        rpn.box_similarity = use["box_iou"]
    return LearnerBuild(model, rows, package_roi_align)


# ----------------------------------------------------------------------------------------------
# The reference solutions: the package's own functions, with the exercises' signatures
# ----------------------------------------------------------------------------------------------
def reference_sample_balanced(labels: Tensor, batch_size_per_image: int, positive_fraction: float,
                              generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``BalancedPositiveNegativeSampler``'s draw for one image, from ``generator``: ``(pos_idx, neg_idx)``."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    pos = positive[torch.randperm(positive.numel(), generator=generator, device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), generator=generator, device=labels.device)[:num_neg]]
    return pos, neg


def reference_top_n_per_level(objectness: Tensor, num_anchors_per_level: Sequence[int], pre_nms_top_n: int) -> Tensor:
    """``RegionProposalNetwork._get_top_n_idx`` with ``pre_nms_top_n``: ``(B, K)`` indices, level by level.
    (The checker's reference builds an RPN, which draws random weights: it would move the sampler's draws.)"""
    class TopN:
        def pre_nms_top_n(self):
            return int(pre_nms_top_n)

    return RegionProposalNetwork._get_top_n_idx(TopN(), objectness, list(num_anchors_per_level))


def reference_parts() -> Dict[str, Callable]:
    """Every part as the package computes it, with the exercise's signature (what a correct solution gives)."""
    from .. import ops
    from ..model.anchors import generate_base_anchors
    from . import checks

    return {
        "box_iou": ops.box_iou, "encode": checks.reference_encode, "decode": checks.reference_decode,
        "nms": ops.nms, "base_anchors": generate_base_anchors, "grid_anchors": checks.reference_grid_anchors,
        "rpn_loss": checks.reference_rpn_loss, "top_n_per_level": reference_top_n_per_level,
        "roi_align": checks.reference_roi_align_one_box, "sample_balanced": reference_sample_balanced,
        "fastrcnn_loss": checks.reference_fastrcnn_loss, "decode_class_boxes": checks.reference_decode_class_boxes,
        "mask_targets": checks.reference_mask_targets, "paste_mask": checks.reference_paste_mask,
    }


# ----------------------------------------------------------------------------------------------
# Training with the course recipe (notebook 10 and tools/learner_model_bench.py)
# ----------------------------------------------------------------------------------------------
HELDOUT = dict(num_images=100, seed=99)  # the course's held-out split (make demo, the shipped model's metrics)


def recipe_steps() -> int:
    """Steps of the whole course recipe: ``TINY_SHAPES_RECIPE``'s images / batch size x epochs."""
    from ..recipes import TINY_SHAPES_RECIPE as r
    return -(-r["num_train"] // r["batch_size"]) * r["epochs"]


def recipe_trainer(model: nn.Module, out_dir, steps: Optional[int] = None, seed: int = 0, progress: bool = True,
                   amp: Optional[str] = None):
    """A ``Trainer`` that trains ``model`` with the course recipe (``TINY_SHAPES_RECIPE``, as
    ``python -m mrcnn_lite train --config tiny-shapes --seed SEED --num-val 0`` does), for the whole recipe or its
    first ``steps`` steps' worth of images (then the warmup is at most a tenth of the run and the cosine ends there).
    ``amp``: the recipe's (``"bf16"``) unless given (``"off"``: faster on a CPU without bfloat16 instructions).
    ``trainer.fit()`` runs it; no evaluation inside the run."""
    from ..data import ShapesDataset
    from ..engine import TrainConfig, Trainer
    from ..recipes import TINY_SHAPES_RECIPE as r

    total = recipe_steps() if steps is None else int(steps)
    if total < 1:
        raise ValueError(f"recipe_trainer: steps must be >= 1, got {steps}")
    num_train = r["num_train"] if steps is None else total * r["batch_size"]
    train_set = ShapesDataset(num_train, seed=seed, min_shapes=r["min_shapes"], max_shapes=r["max_shapes"])
    tcfg = TrainConfig(epochs=r["epochs"] if steps is None else 1, batch_size=r["batch_size"], lr=r["lr"],
                       optimizer=r["optimizer"], weight_decay=r["weight_decay"],
                       warmup_iters=r["warmup"] if steps is None else min(r["warmup"], max(1, total // 10)),
                       amp=r["amp"] if amp is None else amp, eval_every=0, seed=seed, progress=progress)
    return Trainer(model, train_set, tcfg, out_dir)


def heldout_ap(model: nn.Module, num_images: int = HELDOUT["num_images"]) -> Dict[str, float]:
    """COCO box and mask AP of ``model`` on the course's held-out split, ``ShapesDataset(num_images, seed=99)``."""
    from ..data import ShapesDataset
    from ..engine import evaluate

    metrics = evaluate(model.eval(), ShapesDataset(num_images, seed=HELDOUT["seed"]))
    return {"box_AP": metrics["bbox"]["AP"], "mask_AP": metrics["segm"]["AP"], "mask_AP50": metrics["segm"]["AP50"]}
