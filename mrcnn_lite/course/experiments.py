"""Notebook 16's graded experiments: predict, run, explain. Each run changes one thing through the package's
outside seams (``experiments/variants.py``: ``set_poolers``; the model's ``AnchorGenerator``; the mask head's
``project_masks_on_boxes`` and the transform's ``paste_masks_in_image``) and returns a results dict.

    python -m mrcnn_lite.course experiment levels --seeds 0,1 --budget full --out benchmarks/experiments

Four experiments (``EXPERIMENTS``), each run by ``run(name, change, seeds, budget)``:

* ``levels``: RoI features from one level (P4, stride 16) vs the FPN's level rule. The trained course model's
  backbone and RPN, frozen; fresh RoI heads (same initialisation for both conditions, from the seed) trained
  for ``steps`` steps on each pooling; COCO AP on held-out shapes. ``change(model) -> model`` makes the
  one-level model.
* ``anchors``: anchor sizes and ratios vs how well the anchors cover the held-out GT boxes (the fraction whose
  best anchor IoU reaches the RPN's positive threshold 0.7), by class and size; no training.
  ``change(base_sizes, per_octave) -> sizes`` makes several sizes per octave.
* ``mask_res``: the ceiling of a perfect mask head at M x M (GT mask -> M x M target in its GT box -> pasted
  back -> mask IoU with the GT), by object size; no training. ``change(gt_masks, boxes, M) -> masks``.
* ``misalign``: the trained course model evaluated with quantised RoI features (RoIWarp, RoIPool) swapped in at
  test time vs the RoIAlign it was trained with. ``change(rois, spatial_scale) -> rois`` quantises the boxes.

A seed is a training seed (``levels``) or a held-out data seed (the other three: the held-out split is
``ShapesDataset(n, seed=99 + seed)``). ``budget`` is ``"quick"`` (the notebook's default, seconds) or
``"full"`` (the shipped reference results in ``benchmarks/experiments/``, at most ~3 minutes per seed on 2
cores).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import ops
from ..build import build_model
from ..config import MaskRCNNConfig
from ..course_data import course_data
from ..data import CLASSES, ShapesDataset
from ..engine.checkpoint import atomic_write_text
from ..engine.coco_eval import evaluate
from ..experiments import variants as V
from ..model.anchors import AnchorGenerator
from ..model.mask_head import project_masks_on_boxes
from ..model.transform import paste_masks_in_image
from ..pretrained import course_model_info, load_course_model

HELDOUT_SEED = 99          # held-out split of the shipped course model; data seed k reads seed 99 + k
TRAIN_DATA_SEED = 0        # the images the heads of `levels` train on
SMALL = 32 ** 2            # COCO's "small": area below 32 x 32 pixels (in the 128-px images)
REFERENCE_DIR = course_data("benchmarks/experiments")   # the repository's, or the wheel's copy


@dataclass(frozen=True)
class Experiment:
    title: str
    question: str
    choices: Tuple[str, ...]
    budgets: Dict[str, Dict[str, int]]


EXPERIMENTS: Dict[str, Experiment] = {
    "levels": Experiment(
        "one feature level (P4, stride 16) vs the FPN's level rule",
        "Every RoI pooled from P4 instead of the FPN level its size picks: which mask AP falls more?",
        ("AP75 falls more", "AP50 falls more", "they fall about equally"),
        {"quick": dict(steps=12, images=12), "full": dict(steps=220, images=100)}),
    "anchors": Experiment(
        "anchor sizes and ratios vs anchor coverage of the GT boxes",
        "From 1 size x 3 ratios (0.5, 1, 2) per level to 3 sizes per octave x ratio 1 (the same 3 anchors per "
        "cell): the fraction of held-out GT boxes whose best anchor has IoU >= 0.7 ...",
        ("rises", "stays within 5 points", "falls"),
        {"quick": dict(images=60), "full": dict(images=1000)}),
    "mask_res": Experiment(
        "mask resolution: the ceiling of a perfect mask head at 14, 28 and 56",
        "A perfect mask head at 14 x 14 instead of 28 x 28: the mean mask IoU of the pasted masks falls more "
        "for ...",
        ("small objects", "medium objects", "both about equally"),
        {"quick": dict(images=40), "full": dict(images=1000)}),
    "misalign": Experiment(
        "misalignment at test time: RoIPool and RoIWarp in the trained RoIAlign model",
        "The trained model with RoIPool swapped in for RoIAlign at test time: which mask AP falls more?",
        ("AP75 falls more", "AP50 falls more", "they fall about equally"),
        {"quick": dict(images=12), "full": dict(images=400)}),
}


# --------------------------------------------------------------------------------------- the references
def reference_one_level(model):
    """``levels``' change: both poolers pool every RoI from P4 (FPN map ``"2"``, stride 16) with RoIAlign."""
    return V.set_poolers(model, None, V.COARSE_LEVELS)


def reference_octave_sizes(base_sizes: Sequence[float], per_octave: int) -> Tuple[Tuple[float, ...], ...]:
    """``anchors``' change: for each level's base size ``s``, the sizes ``s * 2 ** (k / per_octave)``,
    ``k = 0 .. per_octave - 1`` (RetinaNet's scales), as floats."""
    return tuple(tuple(float(s) * 2.0 ** (k / per_octave) for k in range(per_octave)) for s in base_sizes)


def reference_round_trip(gt_masks: Tensor, boxes: Tensor, M: int) -> Tensor:
    """``mask_res``' change: ``gt_masks (n, H, W)`` 0/1, ``boxes (n, 4)`` -> ``(n, H, W)`` bool: each mask's
    ``M x M`` target in its own box (``project_masks_on_boxes``), pasted back (``paste_masks_in_image``) and
    kept where the pasted value is ``>= 0.5``: what a mask head that predicts its target exactly would give."""
    n, H, W = gt_masks.shape
    boxes = boxes.to(torch.float32)
    targets = project_masks_on_boxes(gt_masks.to(torch.float32), boxes, torch.arange(n), M)
    return paste_masks_in_image(targets[:, None], boxes, (H, W))[:, 0] >= 0.5


def reference_quantise(rois: Tensor, spatial_scale: float) -> Tensor:
    """``misalign``' change: ``rois (K, 5)`` (batch index, x1, y1, x2, y2 in pixels) with each corner moved to
    the nearest feature-cell boundary (``x * spatial_scale`` rounded half away from zero, divided back)."""
    return V._quantised(rois, spatial_scale)


# --------------------------------------------------------------------------------------- helpers
def _course_config() -> MaskRCNNConfig:
    return MaskRCNNConfig.from_dict(course_model_info()["model_config"])


def _heldout(images: int, seed: int) -> ShapesDataset:
    return ShapesDataset(images, seed=HELDOUT_SEED + seed)


def _ap(metrics: dict) -> Dict[str, float]:
    out = {}
    for kind, key in (("bbox", "box"), ("segm", "mask")):
        for m in ("AP", "AP50", "AP75", "APs", "APm"):
            out[f"{key}_{m}"] = round(float(metrics[kind][m]), 4)
    return out


def _machine() -> str:
    return (f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


# --------------------------------------------------------------------------------------- levels
def _heads_model(seed: int):
    """The course model's trained backbone and RPN (frozen) with fresh RoI heads from ``seed``."""
    torch.manual_seed(seed)
    model = build_model(_course_config())
    trained = load_course_model()
    model.backbone.load_state_dict(trained.backbone.state_dict())
    model.rpn.load_state_dict(trained.rpn.state_dict())
    for p in list(model.backbone.parameters()) + list(model.rpn.parameters()):
        p.requires_grad_(False)
    return model


def train_heads(model, steps: int, seed: int, batch_size: int = 4, lr: float = 2e-3, warmup: int = 20) -> float:
    """Train the RoI heads of ``model`` (backbone and RPN frozen, BatchNorm in eval mode) for ``steps`` steps of
    ``batch_size`` fresh shapes images with AdamW and a linear warmup; returns the seconds it took."""
    data = ShapesDataset(steps * batch_size, seed=TRAIN_DATA_SEED)
    params = [p for p in model.roi_heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    start = time.perf_counter()
    model.train()
    model.backbone.eval()          # frozen: its BatchNorm keeps the trained statistics
    for step in range(steps):
        batch = [data[i] for i in order[step * batch_size:(step + 1) * batch_size]]
        images, targets = [b[0] for b in batch], [b[1] for b in batch]
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup)
        losses = model(images, targets)
        loss = losses["loss_classifier"] + losses["loss_box_reg"] + losses["loss_mask"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    model.eval()
    return time.perf_counter() - start


def pooled_levels(model, boxes: Tensor) -> Dict[str, Tensor]:
    """Which feature map each of ``boxes (K, 4)`` (pixels of the model's input) is pooled from by the box and the
    mask pooler: ``{"box": (K,), "mask": (K,)}`` indices into the pooler's ``featmap_names``, found by pooling
    features that hold their level's index."""
    out = {}
    names = ["0", "1", "2", "3", "pool"]
    sizes = {"0": 48, "1": 24, "2": 12, "3": 6, "pool": 3}
    for which in ("box", "mask"):
        pooler = getattr(model.roi_heads, f"{which}_roi_pool")
        feats = {n: torch.full((1, 1, sizes[n], sizes[n]), float(k)) for k, n in enumerate(names)}
        got = pooler(feats, [boxes.to(torch.float32)], [(192, 192)])
        out[which] = got.mean(dim=(1, 2, 3)).round().to(torch.int64)
    return out


def run_levels(change: Callable, seeds: Sequence[int], budget: str) -> dict:
    b = EXPERIMENTS["levels"].budgets[budget]
    metrics: Dict[str, Dict[str, List[float]]] = {}
    seconds: Dict[str, List[float]] = {}
    for seed in seeds:
        for cond in ("FPN levels", "P4 only"):
            model = _heads_model(seed)
            if cond == "P4 only":
                model = change(model)
            seconds.setdefault(cond, []).append(round(train_heads(model, b["steps"], seed), 1))
            ap = _ap(evaluate(model, _heldout(b["images"], 0)))
            for k, v in ap.items():
                metrics.setdefault(cond, {}).setdefault(k, []).append(v)
    return dict(metrics=metrics, train_seconds=seconds,
                setup="the course model's backbone and RPN (frozen) + fresh RoI heads (seed) trained "
                      f"{b['steps']} steps of 4 images on each pooling; held-out ShapesDataset({b['images']}, "
                      f"seed={HELDOUT_SEED})")


# --------------------------------------------------------------------------------------- anchors
GRIDS = [(48, 48), (24, 24), (12, 12), (6, 6), (3, 3)]     # the course model's P2-P6 on its 192-px input
INPUT_SCALE = 192 / 128                                     # the model enlarges the 128-px images to 192


def anchor_sets(change: Callable) -> Dict[str, Tuple[tuple, tuple]]:
    """condition -> (sizes per level, ratios) of the course model's five levels."""
    base = tuple(s[0] for s in _course_config().anchor_sizes)
    octave = tuple(tuple(float(v) for v in level) for level in change(base, 3))
    return {"1 size x 3 ratios (course)": (tuple((s,) for s in base), (0.5, 1.0, 2.0)),
            "1 size x ratio 1": (tuple((s,) for s in base), (1.0,)),
            "3 sizes/octave x ratio 1": (octave, (1.0,)),
            "3 sizes/octave x 3 ratios": (octave, (0.5, 1.0, 2.0))}


def best_anchor_iou(sizes, ratios, gt_boxes: Tensor) -> Tensor:
    """``(n,)`` the best IoU of each of ``gt_boxes (n, 4)`` (model-input pixels) with any anchor of the set."""
    anchors = AnchorGenerator(sizes, ratios).anchors_for((192, 192), GRIDS)
    if len(gt_boxes) == 0:
        return torch.zeros(0)
    return ops.box_iou(gt_boxes, anchors).max(dim=1).values


def _gt_of(ds: ShapesDataset):
    boxes, labels = [], []
    for i in range(len(ds)):
        t = ds[i][1]
        boxes.append(t["boxes"])
        labels.append(t["labels"])
    return torch.cat(boxes), torch.cat(labels)


def run_anchors(change: Callable, seeds: Sequence[int], budget: str) -> dict:
    b = EXPERIMENTS["anchors"].budgets[budget]
    metrics: Dict[str, Dict[str, List[float]]] = {}
    curves = {}
    start = time.perf_counter()
    for seed in seeds:
        boxes, labels = _gt_of(_heldout(b["images"], seed))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        groups = {"all": torch.ones_like(labels, dtype=torch.bool), "small": area < SMALL, "medium": area >= SMALL}
        groups.update({CLASSES[c]: labels == c for c in (1, 2, 3)})
        for cond, (sizes, ratios) in anchor_sets(change).items():
            best = best_anchor_iou(sizes, ratios, boxes * INPUT_SCALE)
            m = metrics.setdefault(cond, {})
            for g, sel in groups.items():
                m.setdefault(f"coverage_{g}", []).append(round(float((best[sel] >= 0.7).float().mean()), 4))
            m.setdefault("mean_best_iou", []).append(round(float(best.mean()), 4))
            m.setdefault("anchors_per_image", []).append(int(sum(
                len(s) * len(ratios) * gh * gw for s, (gh, gw) in zip(sizes, GRIDS))))
            if seed == seeds[0]:
                curves[cond] = {"side": area.sqrt().tolist(), "best_iou": best.tolist()}
    return dict(metrics=metrics, curves=curves, seconds_compute=round(time.perf_counter() - start, 1),
                setup=f"GT boxes of ShapesDataset({b['images']}, seed=99 + data seed), x1.5 into the model's "
                      "192-px input; anchors of the course model's 5 levels (strides 4-64)")


# --------------------------------------------------------------------------------------- mask_res
def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """``(n,)`` IoU of the bool masks ``a (n, H, W)`` and ``b (n, H, W)``, pair by pair."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return inter / union.clamp(min=1)


def run_mask_res(change: Callable, seeds: Sequence[int], budget: str) -> dict:
    b = EXPERIMENTS["mask_res"].budgets[budget]
    metrics: Dict[str, Dict[str, List[float]]] = {}
    start = time.perf_counter()
    for seed in seeds:
        ds = _heldout(b["images"], seed)
        ious: Dict[int, List[Tensor]] = {}
        areas = []
        for i in range(len(ds)):
            t = ds[i][1]
            if len(t["labels"]) == 0:
                continue
            masks = t["masks"]
            areas.append(masks.flatten(1).sum(1))
            for M in (14, 28, 56):
                ious.setdefault(M, []).append(mask_iou(change(masks, t["boxes"], M).bool(), masks.bool()))
        area = torch.cat(areas).double()
        for M, parts in ious.items():
            iou = torch.cat(parts)
            m = metrics.setdefault(f"{M}x{M}", {})
            for g, sel in (("all", area > 0), ("small", area < SMALL), ("medium", area >= SMALL)):
                m.setdefault(f"mean_iou_{g}", []).append(round(float(iou[sel].mean()), 4))
            m.setdefault("frac_iou_below_0.9", []).append(round(float((iou < 0.9).double().mean()), 4))
    return dict(metrics=metrics, seconds_compute=round(time.perf_counter() - start, 1),
                setup=f"every GT instance of ShapesDataset({b['images']}, seed=99 + data seed): its M x M target "
                      "in its own GT box, pasted back, >= 0.5, mask IoU with the GT; small: area < 32^2 px")


# --------------------------------------------------------------------------------------- misalign
def misalign_models(change: Callable) -> Dict[str, torch.nn.Module]:
    """condition -> the trained course model with that RoI kernel in both poolers."""
    def warp(model):
        align = model.roi_heads.box_roi_pool.roi_align

        def roi_warp(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
            return align(input, change(rois, spatial_scale), output_size=output_size,
                         spatial_scale=spatial_scale, sampling_ratio=sampling_ratio)
        return V.set_poolers(model, roi_warp)

    return {"RoIAlign (trained with)": load_course_model(),
            "RoIWarp (quantised box)": warp(load_course_model()),
            "RoIPool (quantised box and bins)": V.set_poolers(load_course_model(), V.roi_pool_kernel)}


def run_misalign(change: Callable, seeds: Sequence[int], budget: str) -> dict:
    b = EXPERIMENTS["misalign"].budgets[budget]
    metrics: Dict[str, Dict[str, List[float]]] = {}
    start = time.perf_counter()
    models = misalign_models(change)
    for seed in seeds:
        ds = _heldout(b["images"], seed)
        for cond, model in models.items():
            for k, v in _ap(evaluate(model, ds)).items():
                metrics.setdefault(cond, {}).setdefault(k, []).append(v)
    return dict(metrics=metrics, seconds_compute=round(time.perf_counter() - start, 1),
                setup=f"the shipped course model (trained with RoIAlign), kernel swapped at test time; held-out "
                      f"ShapesDataset({b['images']}, seed=99 + data seed)")


# --------------------------------------------------------------------------------------- running
RUNS = {"levels": (run_levels, reference_one_level), "anchors": (run_anchors, reference_octave_sizes),
        "mask_res": (run_mask_res, reference_round_trip), "misalign": (run_misalign, reference_quantise)}


def run(name: str, change: Optional[Callable] = None, seeds: Sequence[int] = (0,), budget: str = "quick") -> dict:
    """Run experiment ``name`` with the learner's ``change`` (None: the reference change) for each of ``seeds``.

    Returns ``{"experiment", "title", "conditions", "seeds", "seed_meaning", "budget", "budget_name", "metrics":
    {condition: {metric: [one value per seed]}}, "seconds", "setup", ...}``.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"name: unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    if budget not in ("quick", "full"):
        raise ValueError(f"budget must be 'quick' or 'full', got {budget!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    fn, reference = RUNS[name]
    start = time.perf_counter()
    with torch.no_grad() if name != "levels" else _nullcontext():
        out = fn(change if change is not None else reference, seeds, budget)
    result = {"experiment": name, "title": EXPERIMENTS[name].title, "conditions": list(out["metrics"]),
              "seeds": seeds, "seed_meaning": "training seed (fresh RoI heads, image order)" if name == "levels"
              else f"held-out data seed (ShapesDataset(n, seed={HELDOUT_SEED} + seed))",
              "budget_name": budget, "budget": EXPERIMENTS[name].budgets[budget],
              "change": "reference" if change is None else getattr(change, "__name__", "learner's")}
    result.update(out)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def summary(result: dict) -> Dict[str, Dict[str, Tuple[float, Optional[float]]]]:
    """condition -> metric -> (mean, sample std or None) over the seeds."""
    return {cond: {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None) for k, v in m.items()}
            for cond, m in result["metrics"].items()}


def format_table(result: dict, metrics: Optional[Sequence[str]] = None) -> str:
    """A plain-text table: one row per condition, mean (± std over seeds) of ``metrics`` (default: all)."""
    s = summary(result)
    cols = list(metrics or next(iter(s.values())))

    def cell(c, mean, std):
        text = f"{mean:.0f}" if c == "anchors_per_image" else f"{mean:.3f}"
        return text + (f"±{std:.3f}" if std is not None and c != "anchors_per_image" else "")

    rows = [[cond] + [cell(c, *m[c]) for c in cols] for cond, m in s.items()]
    head = ["condition"] + cols
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join(fmt(r) for r in [head] + rows)


def report(result: dict) -> None:
    """Print ``result``'s table beside the shipped full-budget reference results, and which choice each supports."""
    name = result["experiment"]
    print(f"this run: budget {result['budget_name']} {result['budget']}, seeds {result['seeds']} "
          f"({result['seed_meaning']}), {result['seconds']:.0f} s")
    print(format_table(result, TABLE_METRICS[name]))
    print(f"-> this run supports: {answer_of(name, result)!r}")
    shipped = reference_results(name)
    if shipped is None:
        print("(no shipped reference results in this installation: benchmarks/experiments/ is missing)")
        return
    print(f"\nshipped reference: budget {shipped['budget_name']} {shipped['budget']}, seeds {shipped['seeds']}, "
          f"mean ± std over seeds ({shipped['command']}; {shipped['machine']})")
    print(format_table(shipped, TABLE_METRICS[name]))
    print(f"-> the reference supports: {answer_of(name, shipped)!r}")


def markdown(result: dict, metrics: Optional[Sequence[str]] = None) -> str:
    s = summary(result)
    cols = list(metrics or next(iter(s.values())))
    lines = [f"### {result['title']}", "",
             f"{result['setup']}. Seeds {result['seeds']} ({result['seed_meaning']}); mean ± sample std; "
             f"budget {result['budget_name']} {result['budget']}; {result['seconds']:.0f} s in all.", "",
             "| condition | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for cond, m in s.items():
        lines.append(f"| {cond} | " + " | ".join(
            f"{m[c][0]:.0f}" if c == "anchors_per_image" else
            f"{m[c][0]:.3f}" + (f" ± {m[c][1]:.3f}" if m[c][1] is not None else "") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def reference_results(name: str) -> Optional[dict]:
    """The shipped full-budget results of experiment ``name`` (``benchmarks/experiments/<name>.json``), or None
    when this installation has no ``benchmarks/`` folder."""
    path = REFERENCE_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_reference(name: str, seeds: Sequence[int], budget: str, out_dir, command: Optional[str] = None) -> dict:
    """Run ``name`` with the reference change and write ``out_dir/<name>.json`` and ``.md`` (atomically)."""
    result = run(name, None, seeds, budget)
    result.pop("curves", None)        # the per-box points of the notebook's picture: not reference results
    result["command"] = command or " ".join(["python -m mrcnn_lite.course"] + sys.argv[1:])
    result["machine"] = _machine()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{name}.json", json.dumps(result, indent=1))
    write_markdown(result, out_dir)
    return result


def write_markdown(result: dict, out_dir) -> Path:
    """``out_dir/<experiment>.md``: the table of ``result`` (a ``write_reference`` result) and how it was made."""
    path = Path(out_dir) / f"{result['experiment']}.md"
    atomic_write_text(path, markdown(result, TABLE_METRICS[result["experiment"]]) +
                      f"\nMade by `{result['command']}` on {result['machine']}.\n")
    return path


TABLE_METRICS = {
    "levels": ("mask_AP", "mask_AP50", "mask_AP75", "mask_APs", "mask_APm", "box_AP"),
    "anchors": ("coverage_all", "coverage_small", "coverage_medium", "coverage_circle", "coverage_square",
                "coverage_triangle", "mean_best_iou", "anchors_per_image"),
    "mask_res": ("mean_iou_all", "mean_iou_small", "mean_iou_medium", "frac_iou_below_0.9"),
    "misalign": ("mask_AP", "mask_AP50", "mask_AP75", "box_AP50", "box_AP75"),
}


def answer_of(name: str, result: dict) -> str:
    """Which of the experiment's choices ``result`` supports (what the notebook prints after the run)."""
    s = summary(result)
    if name in ("levels", "misalign"):
        base, other = list(s)[0], list(s)[-1]
        d50 = s[base]["mask_AP50"][0] - s[other]["mask_AP50"][0]
        d75 = s[base]["mask_AP75"][0] - s[other]["mask_AP75"][0]
        return "they fall about equally" if abs(d75 - d50) < 0.03 else ("AP75 falls more" if d75 > d50 else "AP50 falls more")
    if name == "anchors":
        d = s["3 sizes/octave x ratio 1"]["coverage_all"][0] - s["1 size x 3 ratios (course)"]["coverage_all"][0]
        return "stays within 5 points" if abs(d) <= 0.05 else ("rises" if d > 0 else "falls")
    ds = s["28x28"]["mean_iou_small"][0] - s["14x14"]["mean_iou_small"][0]
    dm = s["28x28"]["mean_iou_medium"][0] - s["14x14"]["mean_iou_medium"][0]
    return "both about equally" if abs(ds - dm) < 0.01 else ("small objects" if ds > dm else "medium objects")
