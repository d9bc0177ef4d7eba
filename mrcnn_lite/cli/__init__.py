"""Command line: ``python -m mrcnn_lite <command> ...`` (``--help`` on each command).

Commands (one module each, in this package):
    train     train a model: the tiny course model on generated shapes (``--config tiny-shapes``),
              or a model on your own COCO-format data (``--config r50-fpn|tiny --images --annotations``)
    evaluate  COCO box and mask AP of a checkpoint on a COCO-format dataset
    predict   run a checkpoint on image files; write overlays (PNG) and detections (JSON)
    shapes    generate the synthetic shapes data, export it as COCO (train + val), draw a sample grid
    export    turn a training checkpoint into the small shipped inference file (float16 weights,
              config, held-out metrics, training history)
    bench     speed benchmarks against torchvision (see ``mrcnn_lite.bench``)
    ablate    the paper's Table 2 ablations on the shapes data (see ``mrcnn_lite.experiments.ablations``)

    python -m mrcnn_lite train --config tiny-shapes --out runs/demo
    python -m mrcnn_lite evaluate --checkpoint runs/demo/checkpoint.pt \\
        --images data/shapes-mini/val/images --annotations data/shapes-mini/val/annotations.json
    python -m mrcnn_lite predict --checkpoint runs/demo/checkpoint.pt img1.png img2.png --out runs/pred

Each command is one ``add_<name>_parser`` function that registers its sub-parser and points it at a
``cmd_<name>(args)`` function. The recipes the commands start from are data: ``mrcnn_lite.recipes``.
"""
from __future__ import annotations

import argparse

from .ablate import add_ablate_parser
from .bench import add_bench_parser
from .common import command_parser, run_command
from .evaluate import add_evaluate_parser
from .export import add_export_parser
from .predict import add_predict_parser
from .shapes import add_shapes_parser
from .train import add_train_parser


def build_parser() -> argparse.ArgumentParser:
    parser, subparsers = command_parser(
        "python -m mrcnn_lite", "mrcnn_lite: Mask R-CNN from scratch. Run a command with --help for its options.")
    for add in (add_train_parser, add_evaluate_parser, add_predict_parser, add_shapes_parser, add_export_parser,
                add_bench_parser, add_ablate_parser):
        add(subparsers)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser(), argv)
