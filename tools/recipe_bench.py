"""The course recipe (``train --config tiny-shapes``) against the first one (``--recipe v1``), trained side by side.

``TINY_SHAPES_RECIPE`` / ``TINY_SHAPES_MODEL`` in ``mrcnn_lite/recipes.py`` are what ``make demo`` trains;
``V1_RECIPE`` / ``V1_MODEL`` next to them are the first recipe, the one the course recipe set out to halve
(float32, 3000 steps of 4 images with 1-6 shapes; held-out mask AP 0.74). Last result:
``benchmarks/recipe_bench_cpu.txt``.

What the bench does, in one run:

1. **Both full runs at once**, each through the command line as ``make demo`` runs it
   (``python -m mrcnn_lite train [--recipe v1] --out RUN --threads 1 --seed S``), one torch thread each, so
   on a 2-core machine each has a core of its own and both see the same machine at the same time. No
   evaluation inside the runs (``--num-val 0``): the times are training alone. Each run's wall time and
   CPU time (its process's, from the operating system) are recorded; with one thread, CPU time hardly
   depends on what else the machine does. ``--jobs 1`` trains them one after the other instead.
2. **Held-out AP** of both checkpoints on the course's held-out split, ``ShapesDataset(100, seed=99)`` (as
   in ``make demo`` and the shipped checkpoint's metrics: images no run trained on, with ShapesDataset's
   default 1-6 shapes, exported as PNG + COCO JSON by ``shapes --seed 98``), through ``evaluate`` (pycocotools).
3. The ratio of the training times (course / v1), wall and CPU, and whether the goal holds: at most half
   of v1's training time, held-out mask AP >= 0.75 and AP50 >= 0.92.

    python tools/recipe_bench.py [--seed 0] [--jobs 2] [--out runs/recipe_bench] [--json FILE] [--txt FILE]

``--num-train N`` and ``--num-heldout N`` shorten both runs and the held-out split: a check of the bench
itself (tests/test_recipe_bench.py), not of the recipes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from mrcnn_lite.recipes import RECIPES

GOAL_TIME_RATIO = 0.5   # the goal: at most half of v1's training time ...
GOAL_MASK_AP = 0.75     # ... for a held-out mask AP of at least 0.75 ...
GOAL_MASK_AP50 = 0.92   # ... and AP50 of at least 0.92
HELDOUT_SEED = 99


def train_command(recipe: str, out: Path, seed: int, num_train=None) -> list:
    cmd = [sys.executable, "-m", "mrcnn_lite", "train", "--recipe", recipe, "--out", out, "--threads", 1,
           "--seed", seed, "--no-progress", "--num-val", 0]
    if num_train:
        cmd += ["--num-train", num_train]
    return [str(c) for c in cmd]


def start(cmd: list, log_path: Path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.perf_counter()


def finish(proc, log, t0, log_path: Path) -> dict:
    """Wait for ``proc``; its wall seconds, CPU seconds (user + system, from wait4) and printed train time."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(proc.args)} failed ({proc.returncode}):\n{text[-3000:]}")
    m = re.search(r"trained in ([\d.]+) s", text)
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "trained_in_s": float(m.group(1)) if m else None}


def run(cmd: list, log) -> str:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"))
    if proc.returncode != 0:
        raise SystemExit(f"error: command failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="training seed of both runs (default 0)")
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                    help="2: both runs at once, one core each (default); 1: one after the other")
    ap.add_argument("--out", type=Path, default=Path("runs/recipe_bench"), help="work folder")
    ap.add_argument("--num-train", type=int, default=None, help="shorten both runs to this many images (bench check)")
    ap.add_argument("--num-heldout", type=int, default=100, help="held-out images (default 100)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (JSON)")
    ap.add_argument("--txt", type=Path, default=None, help="also write the printed report here")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    import torch
    log(f"torch={torch.__version__} cpus={os.cpu_count()} {platform.processor() or platform.machine()} "
        f"seed={args.seed} jobs={args.jobs}, one torch thread per run")
    for name, (r, m) in RECIPES.items():
        steps = -(-r["num_train"] // r["batch_size"]) * r["epochs"]
        log(f"{name:>6}: {steps} steps x {r['batch_size']} images of {r['min_shapes']}-{r['max_shapes']} shapes, "
            f"amp {r['amp']}, {r['optimizer']} lr {r['lr']} wd {r['weight_decay']} warmup {r['warmup']}; "
            f"model {m}")

    # 1. both full runs
    results = {}
    cmds = {name: train_command(name, args.out / name, args.seed, args.num_train) for name in RECIPES}
    for cmd in cmds.values():
        log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    if args.jobs == 2:
        started = {name: start(cmd, args.out / f"{name}.log") for name, cmd in cmds.items()}
        for name, (proc, f, t) in started.items():
            results[name] = finish(proc, f, t, args.out / f"{name}.log")
    else:
        for name, cmd in cmds.items():
            results[name] = finish(*start(cmd, args.out / f"{name}.log"), args.out / f"{name}.log")
    log(f"trained both in {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.1f})")

    # 2. held-out AP, through the COCO path of `make demo`
    heldout = args.out / "heldout"
    # `shapes --seed S` writes its val split with seed S + 1
    run([sys.executable, "-m", "mrcnn_lite", "shapes", "--out", str(heldout), "--num-train", "0",
         "--num-val", str(args.num_heldout), "--seed", str(HELDOUT_SEED - 1)], log)
    for name in RECIPES:
        metrics_path = args.out / f"{name}_heldout_metrics.json"
        run([sys.executable, "-m", "mrcnn_lite", "evaluate", "--checkpoint", str(args.out / name / "checkpoint.pt"),
             "--threads", "1", "--images", str(heldout / "val" / "images"),
             "--annotations", str(heldout / "val" / "annotations.json"), "--out", str(metrics_path)], log)
        metrics = json.loads(metrics_path.read_text())
        results[name].update({"box_AP": metrics["bbox"]["AP"], "mask_AP": metrics["segm"]["AP"],
                              "mask_AP50": metrics["segm"]["AP50"], "mask_AP75": metrics["segm"]["AP75"]})

    # 3. the report
    log("")
    log(f"held-out: ShapesDataset({args.num_heldout}, seed={HELDOUT_SEED}); times: training only")
    log(f"{'recipe':<8}{'wall s':>8}{'CPU s':>8}{'box AP':>8}{'mask AP':>9}{'AP50':>7}{'AP75':>7}")
    for name, r in results.items():
        log(f"{name:<8}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['box_AP']:>8.3f}{r['mask_AP']:>9.3f}"
            f"{r['mask_AP50']:>7.3f}{r['mask_AP75']:>7.3f}")
    ratio_wall = results["course"]["wall_s"] / results["v1"]["wall_s"]
    ratio_cpu = results["course"]["cpu_s"] / results["v1"]["cpu_s"]
    log(f"training time course / v1: {ratio_wall:.3f} wall ({1 / ratio_wall:.2f}x faster), "
        f"{ratio_cpu:.3f} CPU ({1 / ratio_cpu:.2f}x)")
    c = results["course"]
    met = {"time": max(ratio_wall, ratio_cpu) <= GOAL_TIME_RATIO, "mask_AP": c["mask_AP"] >= GOAL_MASK_AP,
           "mask_AP50": c["mask_AP50"] >= GOAL_MASK_AP50}
    log(f"goal: time <= {GOAL_TIME_RATIO} of v1 (wall and CPU): {'met' if met['time'] else 'NOT met'}; "
        f"mask AP >= {GOAL_MASK_AP}: {'met' if met['mask_AP'] else 'NOT met'}; "
        f"AP50 >= {GOAL_MASK_AP50}: {'met' if met['mask_AP50'] else 'NOT met'}"
        + (f"  (SHORTENED runs of {args.num_train} images: a check of the bench, not of the recipes)"
           if args.num_train else ""))

    result = {"torch": torch.__version__, "cpus": os.cpu_count(), "seed": args.seed, "jobs": args.jobs,
              "num_train": args.num_train, "heldout": f"ShapesDataset({args.num_heldout}, seed={HELDOUT_SEED})",
              "recipes": {name: {"recipe": r, "model": m} for name, (r, m) in RECIPES.items()},
              "commands": cmds, "results": results, "ratio_wall": ratio_wall, "ratio_cpu": ratio_cpu,
              "goal_met": met}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.txt:
        args.txt.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
