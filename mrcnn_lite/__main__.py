"""Command line: ``python -m mrcnn_lite <command> ...`` (``--help`` on each command).

Commands so far:
    shapes   generate the synthetic shapes data, export it as COCO (train + val), draw a sample grid

Each command is one ``add_<name>_parser`` function that registers its sub-parser and points it at a
``cmd_<name>(args)`` function, so later commands (train, evaluate, predict, bench) slot in the same way.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path


# ----------------------------------------------------------------------------------- shapes


def add_shapes_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "shapes", help="generate the shapes dataset and export it in COCO format",
        description="Generate ShapesDataset train/val splits, write them as COCO "
                    "(DIR/<split>/images/*.png + DIR/<split>/annotations.json) and save a sample "
                    "grid to DIR/shapes_grid.png.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--num-train", type=int, default=64, help="training images (default 64)")
    p.add_argument("--num-val", type=int, default=32, help="validation images (default 32)")
    p.add_argument("--seed", type=int, default=0,
                   help="train uses this seed, val uses seed + 1 (default 0)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--noise", type=float, default=0.02, help="pixel noise std (default 0.02)")
    p.add_argument("--mask-format", choices=("rle", "polygon"), default="rle",
                   help="how masks are stored in the JSON (default rle)")
    p.set_defaults(func=cmd_shapes)


def cmd_shapes(args) -> int:
    from .data import CLASSES, ShapesDataset, export_coco

    start = time.perf_counter()
    splits = {
        "train": ShapesDataset(args.num_train, image_size=args.image_size, seed=args.seed,
                               noise_std=args.noise),
        "val": ShapesDataset(args.num_val, image_size=args.image_size, seed=args.seed + 1,
                             noise_std=args.noise),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        ann_path = export_coco(ds, args.out, split, mask_format=args.mask_format)
        counts = Counter()
        empty = 0
        for i in range(len(ds)):
            labels = ds.render(i)[1]
            counts.update(labels.tolist())
            empty += len(labels) == 0
        per_class = ", ".join(f"{CLASSES[c]} {counts[c]}" for c in (1, 2, 3))
        print(f"{split}: {len(ds)} images ({empty} empty), {sum(counts.values())} instances "
              f"({per_class})")
        print(f"  wrote {ann_path.parent / 'images'}/ and {ann_path}")

    # a picture of the first training images
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # a file is all we need; works without a display
    import matplotlib.pyplot as plt

    from .viz import draw_grid

    fig = draw_grid(splits["train"], n=min(8, len(splits["train"])), cols=4,
                    title=f"ShapesDataset (seed {args.seed})")
    grid_path = args.out / "shapes_grid.png"
    fig.savefig(grid_path, dpi=100)
    plt.close(fig)
    print(f"  wrote {grid_path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_lite",
        description="mrcnn_lite: Mask R-CNN from scratch. Run a command with --help for its options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_shapes_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
