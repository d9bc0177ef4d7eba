"""The course recipe (``train --config tiny-shapes``) against a fixed baseline recipe (v1), on one machine.

``TINY_SHAPES_RECIPE`` / ``TINY_SHAPES_MODEL`` in ``mrcnn_lite/__main__.py`` are what ``make demo``
trains; ``RECIPE_V1`` / ``MODEL_V1`` below are the recipe issue 15 asks to beat (3000 steps of 4
images; held-out mask AP 0.743, AP50 0.916), kept here so that any later recipe is timed against it.
Last result (bf16 autocast, otherwise v1): ``benchmarks/recipe_bench_cpu.txt``. What the bench does, in one run:

1. **Step cost, interleaved.** One trainer per recipe (its model config, batch size, optimizer, clipping,
   schedule, fresh ShapesDataset images) takes one real training step in turn (v1, new, v1, new, ...),
   data generation included; medians after a warm-up. A busy machine slows both alike, so the
   *ratio* holds even where the absolute times do not. Measured twice: from the fresh initialisation
   and from the trained weights of step 2 (both recipes' models have the same parameters), because
   a trained RPN changes how many proposals and positive RoIs a step handles. Both wall time and the
   process's CPU time are reported: with one thread, CPU time hardly depends on what else runs.
2. **The new recipe's full run**, through the command line exactly as ``make demo`` runs it
   (``python -m mrcnn_lite train --config tiny-shapes --out RUN --threads T``), wall time recorded.
3. **Held-out AP** of that checkpoint on the demo's held-out split (``shapes --seed 99``: 100 images
   the run never saw, exported as PNG + COCO JSON), through ``evaluate``.

Estimated training time of a recipe = its median step (mean of the two phases) x its number of steps.
The speed-up is the ratio of the two estimates: a fixed share of each recipe's steps, timed side by
side, stands for the whole run.

    python benchmarks/recipe_bench.py [--threads 2] [--reps 30] [--out runs/recipe_bench]
                                      [--run-dir DIR] [--json FILE] [--txt FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mrcnn_lite import config as C
from mrcnn_lite.__main__ import TINY_SHAPES_MODEL, TINY_SHAPES_RECIPE
from mrcnn_lite.data import CLASSES, ShapesDataset
from mrcnn_lite.engine import TrainConfig, Trainer
from mrcnn_lite.engine.trainer import collate
from mrcnn_lite.model.mask_rcnn import build_model

CLIP_GRAD_NORM = 10.0  # the train command's default

# The baseline: the tiny-shapes recipe as issue 15 found it.
RECIPE_V1 = dict(num_train=12000, num_val=50, epochs=1, batch_size=4, optimizer="adamw", lr=2e-3,
                 weight_decay=0.05, warmup=50)
MODEL_V1 = dict(norm="bn", box_batch_size_per_image=64, min_size=192, max_size=192)


def recipe_steps(recipe: dict) -> int:
    return math.ceil(recipe["num_train"] / recipe["batch_size"]) * recipe["epochs"]


def make_stepper(recipe: dict, model_changes: dict, out_dir: Path, seed: int, state_dict=None):
    """A zero-argument function that takes one training step of ``recipe`` (next batch generated inside)."""
    torch.manual_seed(seed)
    model = build_model(C.tiny(num_classes=len(CLASSES), **model_changes))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    train_set = ShapesDataset(recipe["num_train"], seed=seed)
    tcfg = TrainConfig(epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                       optimizer=recipe["optimizer"], weight_decay=recipe["weight_decay"],
                       warmup_iters=recipe["warmup"], clip_grad_norm=CLIP_GRAD_NORM, amp=recipe.get("amp", "off"),
                       seed=seed, progress=False)
    trainer = Trainer(model, train_set, tcfg, out_dir)
    trainer.model.train()
    batches = iter(DataLoader(train_set, batch_size=recipe["batch_size"], shuffle=False, collate_fn=collate))
    return lambda: trainer.train_step(*next(batches))


def time_steps(reps: int, warmup: int, seed: int, out: Path, state_dict=None):
    """Median wall and CPU (this process, all threads) seconds per step of each recipe, interleaved."""
    fns = {"v1": make_stepper(RECIPE_V1, MODEL_V1, out / "v1", seed, state_dict),
           "new": make_stepper(TINY_SHAPES_RECIPE, TINY_SHAPES_MODEL, out / "new", seed, state_dict)}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}
    return med(wall), med(cpu)


def run(cmd, log) -> str:
    log("$ " + " ".join(str(c) for c in cmd))
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: command failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads, for the timing and the run (default 2)")
    ap.add_argument("--reps", type=int, default=30, help="interleaved timed steps per recipe and phase (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per recipe first (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    ap.add_argument("--out", type=Path, default=Path("runs/recipe_bench"), help="work folder")
    ap.add_argument("--run-dir", type=Path, default=None, help="the new recipe's run folder (default OUT/train)")
    ap.add_argument("--reuse-run", action="store_true",
                    help="skip the full run: time and evaluate the checkpoint already in --run-dir "
                         "(made by an earlier bench or by the train command with the current recipe)")
    ap.add_argument("--num-train", type=int, default=None,
                    help="shorten the full run to this many images (a check of the bench itself, not of the recipe)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (JSON)")
    ap.add_argument("--txt", type=Path, default=None, help="also write the printed report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = args.run_dir or args.out / "train"
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    recipes = {"v1": (RECIPE_V1, MODEL_V1), "new": (TINY_SHAPES_RECIPE, TINY_SHAPES_MODEL)}
    log(f"torch={torch.__version__} threads={args.threads} cpus={os.cpu_count()} seed={args.seed} "
        f"reps={args.reps} (interleaved medians)")
    for name, (r, m) in recipes.items():
        log(f"{name:>4}: {recipe_steps(r)} steps x {r['batch_size']} images, {r['optimizer']} lr {r['lr']} "
            f"wd {r['weight_decay']} warmup {r['warmup']}; model {m}")

    # 1. step cost from the fresh initialisation
    t0 = time.perf_counter()
    fresh, fresh_cpu = time_steps(args.reps, args.warmup, args.seed, args.out / "timing", None)
    log(f"step cost, fresh weights: v1 {fresh['v1'] * 1e3:.1f} ms, new {fresh['new'] * 1e3:.1f} ms "
        f"(load {os.getloadavg()[0]:.1f}, {time.perf_counter() - t0:.0f} s)")

    # 2. the new recipe's full run, exactly as `make demo` trains it
    if args.reuse_run:
        trained_s = None
        log(f"new recipe full run: reusing {run_dir / 'checkpoint.pt'} (not timed here)")
    else:
        t0 = time.perf_counter()
        out = run([sys.executable, "-m", "mrcnn_lite", "train", "--config", "tiny-shapes", "--out", run_dir,
                   "--threads", args.threads, "--seed", args.seed, "--no-progress", "--eval-every-steps", 0]
                  + (["--num-train", args.num_train] if args.num_train else []), log)
        wall = time.perf_counter() - t0
        m = re.search(r"trained in ([\d.]+) s", out)
        trained_s = float(m.group(1)) if m else None
        log(f"new recipe full run: trained in {trained_s} s ({wall:.0f} s with start-up; "
            f"load {os.getloadavg()[0]:.1f})")

    # 3. step cost again, from the trained weights (same parameters in both recipes' models)
    from mrcnn_lite.engine.checkpoint import read_checkpoint
    state = read_checkpoint(run_dir / "checkpoint.pt")["model"]
    t0 = time.perf_counter()
    trained, trained_cpu = time_steps(args.reps, args.warmup, args.seed + 1, args.out / "timing", state)
    log(f"step cost, trained weights: v1 {trained['v1'] * 1e3:.1f} ms, new {trained['new'] * 1e3:.1f} ms "
        f"(load {os.getloadavg()[0]:.1f}, {time.perf_counter() - t0:.0f} s)")

    # 4. held-out AP, through the COCO path of `make demo`
    heldout = args.out / "heldout"
    run([sys.executable, "-m", "mrcnn_lite", "shapes", "--out", heldout, "--num-train", "0", "--num-val", "100",
         "--seed", "99"], log)
    run([sys.executable, "-m", "mrcnn_lite", "evaluate", "--checkpoint", run_dir / "checkpoint.pt",
         "--threads", args.threads, "--images", heldout / "val" / "images",
         "--annotations", heldout / "val" / "annotations.json", "--out", args.out / "heldout_metrics.json"], log)
    metrics = json.loads((args.out / "heldout_metrics.json").read_text())

    est, est_cpu = {}, {}
    log("")
    log("median seconds per step, interleaved (wall | CPU time of the process), and the estimated training time")
    log(f"{'recipe':<7}{'steps':>6}{'images':>8}{'fresh wall':>12}{'trained wall':>14}{'est. train s':>14}"
        f"{'fresh cpu':>11}{'trained cpu':>13}{'est. cpu s':>12}")
    for name, (r, _) in recipes.items():
        est[name] = (fresh[name] + trained[name]) / 2 * recipe_steps(r)
        est_cpu[name] = (fresh_cpu[name] + trained_cpu[name]) / 2 * recipe_steps(r)
        log(f"{name:<7}{recipe_steps(r):>6}{r['batch_size']:>8}{fresh[name]:>12.3f}{trained[name]:>14.3f}"
            f"{est[name]:>14.1f}{fresh_cpu[name]:>11.3f}{trained_cpu[name]:>13.3f}{est_cpu[name]:>12.1f}")
    ratio = est["new"] / est["v1"]
    ratio_cpu = est_cpu["new"] / est_cpu["v1"]
    log(f"training time new / v1: {ratio:.3f} wall ({1 / ratio:.2f}x faster), {ratio_cpu:.3f} CPU time "
        f"({1 / ratio_cpu:.2f}x)")
    log(f"new recipe, measured full run: trained in {trained_s} s"
        + (f" (SHORTENED to {args.num_train} images by --num-train)" if args.num_train else ""))
    b, s = metrics["bbox"], metrics["segm"]
    log(f"held-out (shapes seed 99, 100 images): box AP {b['AP']:.3f} AP50 {b['AP50']:.3f} AP75 {b['AP75']:.3f} | "
        f"mask AP {s['AP']:.3f} AP50 {s['AP50']:.3f} AP75 {s['AP75']:.3f}")

    result = {
        "torch": torch.__version__, "threads": args.threads, "seed": args.seed, "reps": args.reps,
        "recipes": {k: {"recipe": r, "model": mc, "steps": recipe_steps(r)} for k, (r, mc) in recipes.items()},
        "step_wall_s": {"fresh": fresh, "trained": trained},
        "step_cpu_s": {"fresh": fresh_cpu, "trained": trained_cpu},
        "estimated_training_s": est, "estimated_training_cpu_s": est_cpu,
        "ratio_new_over_v1": ratio, "ratio_new_over_v1_cpu": ratio_cpu,
        "new_full_run_trained_s": trained_s, "new_full_run_num_train": args.num_train, "heldout": metrics,
        "run_dir": str(run_dir),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.txt:
        args.txt.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
