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

Your functions get from notebooks 01-09 to notebook 10 with ``save_part`` and ``load_parts``
(``learner_parts.py`` says how they are stored and loaded)::

    from mrcnn_lite.course.learner_model import learner_model, load_parts
    built = learner_model(load_parts())      # checks every part, builds the course model with yours
    print(built.table())
    built.model                              # a MaskRCNN: train it with mrcnn_lite.engine.Trainer

The parts and their storage are in ``learner_parts.py``, the adapters in ``learner_adapters.py``; this
module checks the parts, builds the model, times it and trains it (and re-exports ``save_part``,
``load_parts``, ``PARTS``...).
"""
from __future__ import annotations

import contextlib
import copy
import io
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import config as _config
from ..build import build_model, kernels_for
from ..model.roi_heads import RoIHeads
from ..model.rpn import RegionProposalNetwork
from ..recipes import TINY_SHAPES_MODEL
from .learner_adapters import (LearnerBoxCoder, LearnerRoIHeads, LearnerRPN, Timed, _pair,  # noqa: F401
                               anchor_generator_class, batched_nms_from_nms, paste_masks_from_paste_mask,
                               roi_align_from_one_box, sampler_class)
from .learner_parts import (_BY_NAME, NOT_WIRED, PARTS, Part, course_solutions, load_parts, parts_dir, reference_parts,  # noqa: F401
                            reference_sample_balanced, reference_top_n_per_level, save_part)

__all__ = ["PARTS", "Part", "save_part", "load_parts", "parts_dir", "check_parts", "learner_model",
           "LearnerBuild", "course_config", "amp_for_this_cpu", "recipe_trainer", "heldout_ap", "reference_parts", "reference_sample_balanced"]


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
