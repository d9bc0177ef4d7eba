"""The paper's Table 2 on the shapes data: train every variant with the same budget, seeds and data.

    python -m mrcnn_lite ablate [--rows b,c,d,e,targets,gt] [--seeds 2] [--steps N] --out DIR

Every run trains the course model's architecture with the paper's training choices (``V1_MODEL``: the mask
loss on every positive RoI, which the course recipe caps for speed) and the course recipe's optimizer, on the
same generated training images (ShapesDataset's default 1-6 shapes), for the same number of steps, changed
in one part (``variants.py``); a seed sets the weight initialisation and the order of the images. Each run is evaluated with COCO AP (pycocotools) on the
same held-out split (``ShapesDataset(num_heldout, seed=99)``, images no run trained on). Results go to
``DIR/ablations.json`` after every run (atomically; a rerun skips the runs already there, so an interrupted
grid loses at most one run) and ``DIR/ablations.md`` (mean ± sample standard deviation over the seeds).
"""
from __future__ import annotations

import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..build import build_model
from .. import config as C
from ..data import CLASSES, ShapesDataset
from ..engine.checkpoint import atomic_write_text
from ..engine.coco_eval import evaluate
from ..engine.trainer import TrainConfig, Trainer
from ..recipes import V1_MODEL
from . import variants as V

HELDOUT_SEED = 99    # the held-out split of `make demo` and the shipped course model
DATA_SEED = 0        # the training images: the same for every run


def _baseline(model: nn.Module) -> nn.Module:
    return model


def _roi_warp(model: nn.Module, levels=None) -> nn.Module:
    return V.set_poolers(model, V.make_roi_warp_kernel(model.kernels.roi_align), levels)


# variant name -> (what it is, how to build it from the paper model)
VARIANTS: Dict[str, Tuple[str, Callable[[nn.Module], nn.Module]]] = {
    "paper": ("the paper's model: per-class sigmoid, RoIAlign on FPN levels, FCN mask head, targets "
              "cropped with the RoI, GT boxes among the proposals", _baseline),
    "softmax": ("per-pixel softmax over the classes (multinomial)",
                lambda m: V.use_heads(m, V.SoftmaxMaskRoIHeads)),
    "agnostic": ("class-agnostic sigmoid (one mask channel)", V.class_agnostic_masks),
    "roipool": ("RoIPool (quantised box and bins, max)", lambda m: V.set_poolers(m, V.roi_pool_kernel)),
    "roiwarp": ("RoIWarp (quantised box, bilinear bins)", _roi_warp),
    "p4_roipool": ("RoIPool, every RoI from P4 (stride 16)",
                   lambda m: V.set_poolers(m, V.roi_pool_kernel, V.COARSE_LEVELS)),
    "p4_roiwarp": ("RoIWarp, every RoI from P4 (stride 16)", lambda m: _roi_warp(m, V.COARSE_LEVELS)),
    "p4_roialign": ("RoIAlign, every RoI from P4 (stride 16)", lambda m: V.set_poolers(m, None, V.COARSE_LEVELS)),
    "mlp": ("MLP mask head (fc 256, fc 256, fc K x 28 x 28)", lambda m: V.mlp_mask_head(m, 256)),
    "gt_box_targets": ("mask targets cropped with the GT box", lambda m: V.use_heads(m, V.GTBoxMaskTargetsRoIHeads)),
    "no_gt_proposals": ("GT boxes not added to the proposals", lambda m: V.use_heads(m, V.NoGTProposalsRoIHeads)),
}

# table key -> (title, [(variant, label in the table)])
TABLES: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {
    "b": ("(b) mask loss", [("softmax", "softmax (multinomial)"), ("agnostic", "sigmoid, class-agnostic"),
                            ("paper", "sigmoid, per class (paper)")]),
    "c": ("(c) RoI features, FPN levels (every shape on P2, stride 4)", [("roipool", "RoIPool"), ("roiwarp", "RoIWarp"),
                                           ("paper", "RoIAlign (paper)")]),
    "d": ("(d) RoI features, P4 only (stride 16)", [("p4_roipool", "RoIPool"), ("p4_roiwarp", "RoIWarp"),
                                               ("p4_roialign", "RoIAlign")]),
    "e": ("(e) mask head", [("mlp", "MLP"), ("paper", "FCN (paper)")]),
    "targets": ("mask targets", [("gt_box_targets", "cropped with the GT box"),
                                 ("paper", "cropped with the RoI (paper)")]),
    "gt": ("GT boxes in the training RoIs", [("no_gt_proposals", "not added"), ("paper", "added (paper)")]),
}
METRICS = ("box_AP", "mask_AP", "mask_AP50", "mask_AP75", "train_seconds")


def build_variant(name: str, seed: int) -> nn.Module:
    """The course model (``V1_MODEL``) with ``seed``'s initialisation, changed by variant ``name``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    model = build_model(C.tiny(num_classes=len(CLASSES), **V1_MODEL))
    # The new parts draw their initialisation after the paper model's, from the same seed.
    return VARIANTS[name][1](model)


def run_one(name: str, seed: int, steps: int, recipe: dict, num_heldout: int, out_dir: Path,
            threads: Optional[int] = None) -> dict:
    """Train variant ``name`` for ``steps`` steps of the recipe; evaluate it on the held-out split."""
    if threads:
        torch.set_num_threads(threads)
    heldout = ShapesDataset(num_heldout, seed=HELDOUT_SEED)
    model = build_variant(name, seed)
    batch = recipe["batch_size"]
    train_set = ShapesDataset(steps * batch, seed=DATA_SEED)
    tcfg = TrainConfig(epochs=1, batch_size=batch, lr=recipe["lr"], optimizer=recipe["optimizer"],
                       weight_decay=recipe["weight_decay"], warmup_iters=recipe["warmup"],
                       clip_grad_norm=recipe.get("clip_grad_norm", 10.0), amp=recipe.get("amp", "off"),
                       eval_every=0, seed=seed, progress=False)
    trainer = Trainer(model, train_set, tcfg, out_dir / f"{name}_seed{seed}")
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    metrics = evaluate(trainer.model, heldout)
    return {"variant": name, "seed": seed, "steps": steps, "box_AP": metrics["bbox"]["AP"],
            "mask_AP": metrics["segm"]["AP"], "mask_AP50": metrics["segm"]["AP50"],
            "mask_AP75": metrics["segm"]["AP75"], "train_seconds": round(seconds, 1),
            "params": sum(p.numel() for p in model.parameters())}


def summarise(runs: Sequence[dict]) -> Dict[str, dict]:
    """variant -> {metric: (mean, sample std or None), "seeds": [...]} over its runs."""
    out: Dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == name]
        out[name] = {"seeds": [r["seed"] for r in rows], "params": rows[0]["params"]}
        for m in METRICS:
            values = [r[m] for r in rows]
            out[name][m] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None)
    return out


def markdown(result: dict) -> str:
    """The tables of ``result`` (``ablations.json``'s content) in markdown, AP in percent."""
    summary = summarise(result["runs"])
    # A row's seeds are its own: a later grid may have given the noisiest rows more seeds than the rest.
    lines = [f"Shapes ablations: {result['steps']} steps of {result['recipe']['batch_size']} images per run, "
             f"held-out {result['heldout']}, mean ± sample std over each row's seeds (n: how many).", ""]
    for key in result["tables"]:
        title, rows = TABLES[key]
        lines += [f"### {title}", "", "| variant | n | box AP | mask AP | AP50 | AP75 | train s |",
                  "|---|---|---|---|---|---|---|"]
        for name, label in rows:
            if name not in summary:
                continue
            s = summary[name]
            cell = lambda m, k=100.0: (f"{s[m][0] * k:.1f}" + (f" ± {s[m][1] * k:.1f}" if s[m][1] is not None else ""))
            lines.append(f"| {label} | {len(s['seeds'])} | {cell('box_AP')} | {cell('mask_AP')} | {cell('mask_AP50')} | "
                         f"{cell('mask_AP75')} | {cell('train_seconds', 1.0)} |")
        lines.append("")
    return "\n".join(lines)


def _run_one_star(args) -> dict:
    return run_one(*args)


def run_grid(tables: Sequence[str], seeds: Sequence[int], steps: int, out_dir, recipe: dict,
             num_heldout: int = 100, log=print, jobs: int = 1, command: Optional[str] = None) -> dict:
    """Every variant of ``tables`` x ``seeds``; returns (and writes) the result dict.

    ``jobs`` > 1 trains that many runs at once, each in its own process with one thread
    (on a small CPU, two one-thread runs finish sooner than two two-thread runs in turn).
    ``command``: how the grid was started, recorded in the JSON (default: this process's command line).
    """
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {', '.join(TABLES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "ablations.json"
    result = {"command": command or " ".join(sys.argv), "tables": list(tables), "seeds": list(seeds), "steps": steps,
              "recipe": recipe, "heldout": f"ShapesDataset({num_heldout}, seed={HELDOUT_SEED})",
              "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs, torch {torch.__version__}, "
                         + (f"{jobs} one-thread runs at once" if jobs > 1 else f"{torch.get_num_threads()} threads"),
              "runs": []}
    if json_path.exists():  # resume: keep the runs already done with the same settings
        old = json.loads(json_path.read_text())
        if (old.get("steps"), old.get("recipe"), old.get("heldout")) == (steps, recipe, result["heldout"]):
            result["runs"], result["wall_seconds"] = old["runs"], old.get("wall_seconds", 0.0)
            # A resumed grid may add rows or seeds: the file then holds both grids' tables and seeds.
            result["tables"] = [t for t in TABLES if t in set(old["tables"]) | set(tables)]
            result["seeds"] = sorted(set(old["seeds"]) | set(seeds))
            if old.get("command") and old["command"] != result["command"]:
                result["command"] = f"{old['command']} ; then {result['command']}"
        else:
            raise ValueError(f"{json_path} holds runs with other settings (steps, recipe or held-out split); "
                             "use another --out")
    names = list(dict.fromkeys(name for t in tables for name, _ in TABLES[t][1]))
    todo = [(n, s) for n in names for s in seeds
            if not any(r["variant"] == n and r["seed"] == s for r in result["runs"])]
    log(f"{len(names)} variants x {len(seeds)} seeds: {len(todo)} runs to do of {steps} steps each")
    start, earlier = time.perf_counter(), result.get("wall_seconds", 0.0)
    work = [(name, seed, steps, recipe, num_heldout, out_dir / "runs", 1 if jobs > 1 else None)
            for name, seed in todo]
    if jobs > 1:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        finished = pool.imap_unordered(_run_one_star, work)
    else:
        pool, finished = None, map(_run_one_star, work)
    for i, run in enumerate(finished, 1):
        name, seed = run["variant"], run["seed"]
        result["runs"].append(run)
        result["wall_seconds"] = round(earlier + time.perf_counter() - start, 1)
        atomic_write_text(json_path, json.dumps(result, indent=1))
        log(f"[{i}/{len(todo)}] {name} seed {seed}: mask AP {run['mask_AP']:.3f}, box AP {run['box_AP']:.3f} "
            f"({run['train_seconds']:.0f} s training, {time.perf_counter() - start:.0f} s so far)")
    if pool is not None:
        pool.close()
        pool.join()
    order = {n: i for i, n in enumerate(VARIANTS)}
    result["runs"].sort(key=lambda r: (order[r["variant"]], r["seed"]))
    result["wall_seconds"] = round(earlier + time.perf_counter() - start, 1)
    atomic_write_text(json_path, json.dumps(result, indent=1))
    atomic_write_text(out_dir / "ablations.md", markdown(result))
    return result
