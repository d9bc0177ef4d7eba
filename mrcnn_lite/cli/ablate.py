"""``python -m mrcnn_lite ablate``: the paper's Table 2 ablations on the shapes data
(the experiments are ``mrcnn_lite.experiments.ablations``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes import ABLATION_STEPS, TINY_SHAPES_RECIPE
from .common import POSITIVE_INT, check_out_dir, one_line


def _table_keys(text: str) -> list:
    from ..experiments.ablations import TABLES
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TABLES]
    if not keys or unknown:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(TABLES)}; got {text!r}")
    return keys


_table_keys.__name__ = "rows"


def add_ablate_parser(subparsers) -> None:
    from ..experiments.ablations import TABLES
    p = subparsers.add_parser(
        "ablate", help="the paper's Table 2 ablations on the shapes data",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train every variant of the chosen rows with the course recipe, the same steps, seeds and "
                    "training images; evaluate each on the same held-out shapes split with COCO AP; write "
                    "OUT/ablations.json (after every run; a rerun continues) and OUT/ablations.md (mean and "
                    "spread over the seeds). Rows: " + "; ".join(f"{k}: {t}" for k, (t, _) in TABLES.items()))
    p.add_argument("--rows", type=_table_keys, default=list(TABLES), help="comma-separated table keys")
    p.add_argument("--seeds", type=POSITIVE_INT, default=2, help="seeds per variant (0, 1, ...)")
    p.add_argument("--steps", type=POSITIVE_INT, default=ABLATION_STEPS, help="training steps per run")
    p.add_argument("--num-heldout", type=POSITIVE_INT, default=100, help="held-out images (seed 99)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="CPU threads for torch (with --jobs 1)")
    p.add_argument("--jobs", type=POSITIVE_INT, default=1,
                   help="runs trained at once, each in its own one-thread process (e.g. the number of cores)")
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    import torch
    from ..experiments.ablations import run_grid

    check_out_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = {k: v for k, v in TINY_SHAPES_RECIPE.items()
              if k not in ("num_train", "num_val", "epochs", "eval_every_steps", "min_shapes", "max_shapes")}
    try:
        command = (f"python -m mrcnn_lite ablate --rows {','.join(args.rows)} --seeds {args.seeds} "
                   f"--steps {args.steps} --num-heldout {args.num_heldout} --jobs {args.jobs} --out {args.out}")
        result = run_grid(args.rows, list(range(args.seeds)), args.steps, args.out, recipe, args.num_heldout,
                          jobs=args.jobs, command=command)
    except ValueError as e:
        raise SystemExit(f"error: {one_line(e)}")
    print((args.out / "ablations.md").read_text())
    print(f"wrote {args.out / 'ablations.json'} and {args.out / 'ablations.md'} ({result['wall_seconds']:.0f} s)")
    return 0
