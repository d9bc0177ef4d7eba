"""``python -m mrcnn_lite shapes``: generate the shapes data, export it as COCO, draw a sample grid."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from .common import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, check_out_dir, int_at_least, use_agg


def add_shapes_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "shapes", help="generate the shapes dataset and export it in COCO format",
        description="Generate ShapesDataset train/val splits, write them as COCO "
                    "(DIR/<split>/images/*.png + DIR/<split>/annotations.json) and save a sample "
                    "grid to DIR/shapes_grid.png.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--num-train", type=NON_NEGATIVE_INT, default=64,
                   help="training images (default 64; 0: write only the val split)")
    p.add_argument("--num-val", type=NON_NEGATIVE_INT, default=32,
                   help="validation images (default 32; 0: write only the train split)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0,
                   help="train uses this seed, val uses seed + 1 (default 0)")
    p.add_argument("--image-size", type=int_at_least(16), default=128, help="image side in pixels (default 128)")
    p.add_argument("--noise", type=NON_NEGATIVE_FLOAT, default=0.02, help="pixel noise std (default 0.02)")
    p.add_argument("--mask-format", choices=("rle", "polygon"), default="rle",
                   help="how masks are stored in the JSON (default rle)")
    p.set_defaults(func=cmd_shapes)


def cmd_shapes(args) -> int:
    from ..data import CLASSES, ShapesDataset, export_coco

    if args.num_train == 0 and args.num_val == 0:
        raise SystemExit("error: --num-train and --num-val are both 0: nothing to write")
    check_out_dir(args.out)
    start = time.perf_counter()
    sizes = {"train": (args.num_train, args.seed), "val": (args.num_val, args.seed + 1)}
    splits = {split: ShapesDataset(n, image_size=args.image_size, seed=seed, noise_std=args.noise)
              for split, (n, seed) in sizes.items() if n > 0}
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

    # a picture of the first images
    use_agg()
    import matplotlib.pyplot as plt

    from ..viz import draw_grid

    split, ds = next(iter(splits.items()))  # the training images, or the val ones if there are none
    fig = draw_grid(ds, n=min(8, len(ds)), cols=4, title=f"ShapesDataset (seed {sizes[split][1]})")
    grid_path = args.out / "shapes_grid.png"
    fig.savefig(grid_path, dpi=100)
    plt.close(fig)
    print(f"  wrote {grid_path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
