"""Side-by-side benchmark: mrcnn_lite's Mask R-CNN against torchvision's, in one process.

    python -m mrcnn_lite bench [--device cpu|cuda] [--kernels fast|reference|both] [--reps 5]
                               [--json FILE] [--quick] [--compile [MODE]] [--fold-bn]
    python -m mrcnn_lite.bench ...                          (the same, standalone)

Both models are ResNet-50-FPN Mask R-CNNs with the *same weights*: torchvision's is built as for the
COCO checkpoint (``FrozenBatchNorm2d``), ours is ``ml.from_torchvision(tv, kernels=...)``, once per
floor asked for (``--kernels``: ``fast``, the default; ``reference``; or ``both``). They see the same
random inputs on the same device. Every measurement is a median over repetitions that are
*interleaved* (ours, torchvision's, ours, ...) after a warm-up, so slow drifts of the machine (other
processes, clock changes) hit all alike.

What is measured:

* ``train_step``      forward + backward + SGD step, batch 2 (800x1333 on CUDA, 320x480 on CPU)
* ``train_step_amp``  the same under ``torch.autocast`` float16 with a GradScaler (CUDA only)
* ``inference``       batch 1, eval mode, including pasting the masks into the image
* ``roi_align``       ``MultiScaleRoIAlign`` with the reference ``mrcnn_lite.ops.roi_align`` and with
                      ``mrcnn_lite.fast.roi_align``, against torchvision's, forward + backward, at the box
                      head's sizes

``speedup = torchvision time / mrcnn_lite time`` (> 1: ours is faster). Before timing, the bench
checks that the models give the same losses and the same detections: speed must never buy a
different answer. The table also lists the kernels each mrcnn_lite model actually called.

Opt-in speed-ups of mrcnn_lite (off by default, so that the default table compares the plain models):

* ``--compile [MODE]``  ``mrcnn_lite.fast.compile_backbone``: ``torch.compile`` of the backbone and the RPN
                        head (MODE: ``default``, ``reduce-overhead`` = CUDA graphs, ``max-autotune``).
                        Compilation happens during the agreement check and the (at least one) warm-up
                        round, before any timing.
* ``--fold-bn``         ``mrcnn_lite.fast.fold_frozen_bn`` for the inference measurement: frozen BN folded
                        into the convolutions (the agreement check covers the folded model).

Modules: ``timing`` (interleaved medians), ``models`` (the two models, their inputs, the agreement
check), ``roi_align`` (the three RoIAligns), ``run`` (the whole benchmark and its table). The harness
lives in the package so that the ``bench`` command works from an installed package; ``benchmarks/``
holds recorded results, ``tools/`` the scripts that make them.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .models import build_models, check_agreement, make_batch
from .roi_align import roi_align_benchmark
from .run import format_table, run_benchmark, sizes_for
from .timing import interleaved_medians

__all__ = ["run_benchmark", "format_table", "roi_align_benchmark", "check_agreement", "build_models", "make_batch",
           "sizes_for", "interleaved_medians", "add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` command's options (``python -m mrcnn_lite bench --help``)."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both models run")
    parser.add_argument("--kernels", default="fast", choices=["fast", "reference", "both"],
                        help="which floor of mrcnn_lite to time (both: fast and reference, in one run)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per model (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (numbers mean little)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"], metavar="MODE",
                        help="torch.compile mrcnn_lite's backbone + RPN head (MODE: default, reduce-overhead = "
                             "CUDA graphs, max-autotune); off by default")
    parser.add_argument("--fold-bn", action="store_true",
                        help="time mrcnn_lite's inference with frozen BN folded into the convs; off by default")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON. Returns 0, or 1 if the models disagree."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    choice = getattr(args, "kernels", "fast")
    kernels = ("fast", "reference") if choice == "both" else (choice,)
    result = run_benchmark(args.device, reps=args.reps, warmup=args.warmup, quick=args.quick, log=log,
                           compile_mode=getattr(args, "compile", None), fold_bn=getattr(args, "fold_bn", False),
                           kernels=kernels)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if all(f["agreement"]["ok"] for f in result["floors"].values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrcnn_lite.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
