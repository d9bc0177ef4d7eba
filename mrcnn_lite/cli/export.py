"""``python -m mrcnn_lite export``: a training checkpoint -> the small shipped inference file."""
from __future__ import annotations

from pathlib import Path

from .common import add_checkpoint_command, print_ap


def add_export_parser(subparsers) -> None:
    p = add_checkpoint_command(subparsers, "export", cmd_export,
                               help="make the small shipped inference file from a training checkpoint")
    p.add_argument("--out", required=True, type=Path, help="file to write (e.g. data/checkpoints/tiny_shapes.pt)")
    p.add_argument("--eval-seed", type=int, default=99,
                   help="seed of the held-out shapes split (default 99); -1: do not evaluate")
    p.add_argument("--num-eval", type=int, default=100, help="held-out images (default 100)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def cmd_export(args) -> int:
    """Keep a training checkpoint's weights (as float16), config, meta and training history, drop the
    optimizer and random states, measure COCO AP of the float16 weights on a fresh shapes split
    (ShapesDataset(--num-eval, seed=--eval-seed)), and write it all atomically to --out. Load the
    result with mrcnn_lite.load_course_model(path).
    """
    from ..pretrained import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out, eval_seed=None if args.eval_seed < 0 else args.eval_seed,
                                num_eval=args.num_eval, threads=args.threads, verbose=False)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    held = out["metrics"]["heldout"]
    if held is not None:
        print_ap(held, f"held-out {held['dataset']}:")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0
