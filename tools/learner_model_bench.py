"""The learner's model with the reference solutions, trained through the whole course recipe next to the package model.

Notebook 10 trains "your own Mask R-CNN": the course model with the functions a learner wrote in notebooks
01-09 (``mrcnn_lite/course/learner_model.py``). This bench trains it with the *reference solutions*, the course's
own solution code read from the solution notebooks (``learner_model.course_solutions()``: written code, which
passes the checkers as a learner's would), and the package model, with the same recipe (``TINY_SHAPES_RECIPE``), the same seed and the same data, one after the
other in this process, then reports for both the held-out AP on ``ShapesDataset(100, seed=99)`` and the
training time. With correct parts the two should reach the same AP (float32 and bf16 round-off make
the runs drift apart, so not to the last digit); the time says what the adapters cost (a learner's
function is called once per image, class or box where the package works on the whole batch).

    python tools/learner_model_bench.py [--seed 0] [--steps N] [--package roi_align] [--json FILE] [--txt FILE]

``--amp``: the recipe trains under bfloat16 autocast; where this CPU lacks bfloat16 instructions that is
several times slower, so the default is ``learner_model.amp_for_this_cpu()`` (both runs the same).
``--package``: parts taken from the package (default ``roi_align``: the exercise pools one box from one
map, so the adapter loops over every box and channel, several seconds per step on a CPU; the bench prints
its measured cost per step). ``--package ''`` trains every part; ``--package roi_align,nms`` also takes the package's vectorised NMS (the
reference solution's greedy loop costs about a second per step). ``--steps N`` trains N steps instead of the
whole recipe and evaluates on ``--num-heldout`` images: a check of the bench itself, not a result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import mrcnn_lite as ml
from mrcnn_lite.course import learner_model as lm
from mrcnn_lite.data import ShapesDataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and the training data (default 0)")
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead of the whole recipe")
    ap.add_argument("--num-heldout", type=int, default=lm.HELDOUT["num_images"], help="held-out images (100)")
    ap.add_argument("--package", default="roi_align",
                    help="comma-separated parts taken from the package (default roi_align; '' for none)")
    ap.add_argument("--amp", choices=("bf16", "off"), default=None,
                    help="autocast of both runs (default: the recipe's bf16 where this CPU runs bfloat16, else off)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (JSON)")
    ap.add_argument("--txt", type=Path, default=None, help="also write the printed report here")
    args = ap.parse_args(argv)
    package = tuple(p for p in args.package.split(",") if p)
    torch.set_num_threads(args.threads)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    steps = args.steps or lm.recipe_steps()
    cfg = lm.course_config(kernels="fast")  # the package's parts at the speed the course recipe trains them
    log(f"torch={torch.__version__} threads={args.threads} {platform.processor() or platform.machine()} "
        f"seed={args.seed}; course recipe, amp {args.amp or lm.amp_for_this_cpu()}, {steps} steps{' (SHORTENED: a check of the bench)' if args.steps else ''}")

    # Parts table with one measured step (the cost of each learner's part, before the runs).
    batch_set = ShapesDataset(4, seed=args.seed, min_shapes=5, max_shapes=12)
    images, targets = map(list, zip(*[batch_set[i] for i in range(4)]))
    targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]
    # The course's own solutions, read from the solution notebooks: written code, as a learner's is (the package's
    # functions themselves would be refused by the checkers and replaced by the package's parts).
    solutions = lm.course_solutions()
    everything = lm.learner_model(solutions, cfg)
    torch.manual_seed(args.seed)
    amp = args.amp or lm.amp_for_this_cpu()
    everything.measure(images, targets, package_model=ml.build_model(cfg), amp=amp)
    log("\nevery part the learner's (one measured step):\n" + everything.table())

    results = {}
    for name in ("learner", "package"):
        torch.manual_seed(args.seed)
        if name == "learner":
            built = lm.learner_model(solutions, cfg, package=package, why_package="--package")
            model = built.model
            log(f"\nlearner's model: yours = {', '.join(built.yours)}; package's = {', '.join(package) or 'none'}")
        else:
            model = ml.build_model(cfg)
        with tempfile.TemporaryDirectory() as out:
            trainer = lm.recipe_trainer(model, out, steps=args.steps, seed=args.seed, progress=False, amp=amp)
            start = time.perf_counter()
            history = trainer.fit()
            seconds = time.perf_counter() - start
        ap_ = lm.heldout_ap(trainer.model, args.num_heldout)
        results[name] = {"train_s": round(seconds, 1), "final_loss": round(history["train"][-1]["loss"], 4), **ap_}
        log(f"{name}: trained {steps} steps in {seconds:.1f} s; held-out " +
            ", ".join(f"{k} {v:.3f}" for k, v in ap_.items()))

    log(f"\nheld-out: ShapesDataset({args.num_heldout}, seed={lm.HELDOUT['seed']}); times: training only, "
        f"load {os.getloadavg()[0]:.1f}")
    log(f"{'model':<10}{'train s':>9}{'box AP':>8}{'mask AP':>9}{'AP50':>7}")
    for name, r in results.items():
        log(f"{name:<10}{r['train_s']:>9.1f}{r['box_AP']:>8.3f}{r['mask_AP']:>9.3f}{r['mask_AP50']:>7.3f}")
    report = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "steps": steps,
              "seed": args.seed, "amp": amp, "package_parts": list(package), "torch": torch.__version__,
              "threads": args.threads, "one_step_ms": {k: round(1000 * v, 1) for k, v in everything.step_seconds.items()},
              "part_ms_per_step": {r.part.name: round(1000 * r.timer.seconds, 1) for r in everything.rows if r.timer},
              "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.txt:
        args.txt.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
