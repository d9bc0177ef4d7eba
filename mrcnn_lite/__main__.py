"""Command line: ``python -m mrcnn_lite <command> ...`` (``--help`` on each command).

Commands:
    train     train a model: the tiny course model on generated shapes (``--config tiny-shapes``),
              or a model on your own COCO-format data (``--config r50-fpn|tiny --images --annotations``)
    evaluate  COCO box and mask AP of a checkpoint on a COCO-format dataset
    predict   run a checkpoint on image files; write overlays (PNG) and detections (JSON)
    shapes    generate the synthetic shapes data, export it as COCO (train + val), draw a sample grid
    export    turn a training checkpoint into the small shipped inference file (float16 weights,
              config, held-out metrics, training history)
    bench     speed benchmarks against torchvision (see ``mrcnn_lite.tools.bench``)
    ablate    the paper's Table 2 ablations on the shapes data (see ``mrcnn_lite.experiments.ablations``)

    python -m mrcnn_lite train --config tiny-shapes --out runs/demo
    python -m mrcnn_lite evaluate --checkpoint runs/demo/checkpoint.pt \
        --images data/shapes-mini/val/images --annotations data/shapes-mini/val/annotations.json
    python -m mrcnn_lite predict --checkpoint runs/demo/checkpoint.pt img1.png img2.png --out runs/pred

Each command is one ``add_<name>_parser`` function that registers its sub-parser and points it at a
``cmd_<name>(args)`` function.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The default course run (``train --config tiny-shapes``), tuned to finish `make demo` in a few minutes
# on 2 CPU cores. Every value can be overridden on the command line. How each choice was measured:
# benchmarks/recipe_bench_cpu.txt (this recipe against v1 below) and the README's "The course recipe".
# - AdamW, not SGD: from scratch and in a few thousand steps it learned several times faster (held-out
#   mask AP 0.15 vs 0.03 after 300 steps).
# - Fresh images every step (one epoch of 2200 steps), each with 5-12 shapes where the held-out images
#   have 1-6: a step then shows the heads twice as many objects (and their occlusions) for little more
#   work, since the anchors and RoIs sampled per image are fixed in number. That taught more than extra
#   steps of sparse images did.
# - bf16 autocast: on a CPU with bfloat16 instructions the convolutions and matrix products run at
#   bfloat16 speed for the same held-out AP as float32; where the CPU lacks them, --amp off is faster.
# - The held-out AP every 500 steps, for notebook 10's curve.
TINY_SHAPES_RECIPE = dict(num_train=8800, num_val=50, epochs=1, batch_size=4, optimizer="adamw", lr=2e-3,
                          weight_decay=0.05, warmup=50, amp="bf16", eval_every_steps=500, min_shapes=5,
                          max_shapes=12)
# Model changes for the course run:
# - trainable BatchNorm (training from scratch);
# - the 128-px images enlarged to 192 px inside the model (min_size = max_size = 192): a shape of 12 px
#   then covers 4-5 cells of the stride-4 map P2 instead of 3, enough to tell a small rotated square from
#   a circle (held-out mask AP 0.66 -> 0.75, AP50 0.87 -> 0.92 after the same 3000 steps of v1). The
#   step's time goes mostly to the RoI heads, whose inputs are 7x7 and 14x14 whatever the image size.
#   Predictions come back at the input images' own size;
# - training only, the architecture is unchanged: 64 sampled RoIs per image instead of 128; the mask
#   loss on 8 of them at most (the mask branch, on every positive, took over a third of a step, and an
#   image's positives crowd on the same few objects); and fewer RPN proposals (the top 300 per level
#   before NMS instead of 600, 150 after it instead of 300), which saves NMS time.
TINY_SHAPES_MODEL = dict(norm="bn", box_batch_size_per_image=64, min_size=192, max_size=192,
                         mask_batch_size_per_image=8, rpn_pre_nms_top_n_train=300,
                         rpn_post_nms_top_n_train=150)
# The first course recipe (before issue 15), kept as the baseline benchmarks/recipe_bench.py times the
# course recipe against (`train --recipe v1` trains it): float32, 3000 steps of images with 1-6 shapes,
# the paper's mask loss on every positive RoI, the tiny config's 600 / 300 RPN proposals. Held-out mask AP 0.74.
V1_RECIPE = dict(num_train=12000, num_val=50, epochs=1, batch_size=4, optimizer="adamw", lr=2e-3,
                 weight_decay=0.05, warmup=50, amp="off", eval_every_steps=0, min_shapes=1, max_shapes=6)
V1_MODEL = dict(norm="bn", box_batch_size_per_image=64, min_size=192, max_size=192)
RECIPES = {"course": (TINY_SHAPES_RECIPE, TINY_SHAPES_MODEL), "v1": (V1_RECIPE, V1_MODEL)}
# Steps per run of `ablate`: each variant trains this long (mrcnn_lite/experiments/ablations.py).
ABLATION_STEPS = 1000


# ----------------------------------------------------------------------------------- argument types
# Each checks one command-line value in the parser, so a bad value is a usage error naming the
# argument ("argument --lr: must be a finite number > 0, got nan") before anything runs.


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"  # what argparse calls the type in its messages
    return parse


def _float_in(low: float, high: float = float("inf"), low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


POSITIVE_INT, NON_NEGATIVE_INT = _int_at_least(1), _int_at_least(0)
POSITIVE_FLOAT, NON_NEGATIVE_FLOAT = _float_in(0.0, low_open=True), _float_in(0.0)
PROBABILITY = _float_in(0.0, 1.0)


def _check_out_dir(path: Path, arg: str = "--out") -> None:
    """Make sure the output folder exists (or can be made) and is writable, before any work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise SystemExit(f"error: {arg} {path}: cannot write there ({e.strerror or e})")


def _check_out_file(path: Path, arg: str = "--out") -> None:
    """Make sure ``path`` can be written as a file (its folder exists or can be made), before any work."""
    if path.is_dir():
        raise SystemExit(f"error: {arg} {path} is a folder; give a file name (e.g. {path / 'metrics.json'})")
    _check_out_dir(path.parent, f"{arg} {path}: its folder")


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message: the CLI prints one clear line, not a traceback."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Caught ") and len(lines) > 1:
        # re-raised from a DataLoader worker: the original message is the traceback's last line
        return lines[-1].split(": ", 1)[-1]
    return lines[0]


# ----------------------------------------------------------------------------------- shapes


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
    p.add_argument("--image-size", type=_int_at_least(16), default=128, help="image side in pixels (default 128)")
    p.add_argument("--noise", type=NON_NEGATIVE_FLOAT, default=0.02, help="pixel noise std (default 0.02)")
    p.add_argument("--mask-format", choices=("rle", "polygon"), default="rle",
                   help="how masks are stored in the JSON (default rle)")
    p.set_defaults(func=cmd_shapes)


def cmd_shapes(args) -> int:
    from .data import CLASSES, ShapesDataset, export_coco

    if args.num_train == 0 and args.num_val == 0:
        raise SystemExit("error: --num-train and --num-val are both 0: nothing to write")
    _check_out_dir(args.out)
    start = time.perf_counter()
    sizes = {"train": (args.num_train, args.seed), "val": (args.num_val, args.seed + 1)}
    splits = {split: ShapesDataset(n, image_size=args.image_size, seed=seed, noise_std=args.noise)
              for split, (n, seed) in sizes.items() if n > 0}
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

    # a picture of the first images
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # a file is all we need; works without a display
    import matplotlib.pyplot as plt

    from .viz import draw_grid

    split, ds = next(iter(splits.items()))  # the training images, or the val ones if there are none
    fig = draw_grid(ds, n=min(8, len(ds)), cols=4, title=f"ShapesDataset (seed {sizes[split][1]})")
    grid_path = args.out / "shapes_grid.png"
    fig.savefig(grid_path, dpi=100)
    plt.close(fig)
    print(f"  wrote {grid_path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


# ----------------------------------------------------------------------------------- helpers


def _use_agg() -> None:
    """Files are all the CLI draws: use the Agg backend unless pyplot is already set up."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def _device(name: str):
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    return name


def _coco_dataset(images, annotations, what: str, transforms=None):
    """Load and check a COCO-format dataset (every record, and that every image file exists)."""
    from .data import CocoInstances
    if images is None or annotations is None:
        raise SystemExit(f"error: {what} needs both --images DIR and --annotations FILE.json")
    try:
        dataset = CocoInstances(images, annotations, transforms=transforms)
        dataset.check_files()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {_one_line(e)}")
    if len(dataset) == 0:
        raise SystemExit(f"error: {annotations} lists no images")
    return dataset


def _load_model(path, device):
    from .engine.checkpoint import load_checkpoint
    try:
        return load_checkpoint(path, map_location=device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {_one_line(e)}")


def _class_names(checkpoint_path, num_classes: int) -> list:
    """Class names saved with a checkpoint (``meta["class_names"]``), else the label numbers."""
    from .engine.checkpoint import read_checkpoint
    names = read_checkpoint(checkpoint_path).get("meta", {}).get("class_names")
    if not names or len(names) != num_classes:
        names = ["__background__"] + [str(i) for i in range(1, num_classes)]
    return list(names)


def _label_to_category(checkpoint_path, num_classes: int) -> list:
    """The category id of each label, saved with a checkpoint by ``train`` (``meta["label_to_category"]``);
    label = category id when the checkpoint has none (or the dataset's ids were small)."""
    from .engine.checkpoint import read_checkpoint
    mapping = read_checkpoint(checkpoint_path).get("meta", {}).get("label_to_category")
    if not mapping or len(mapping) != num_classes:
        mapping = list(range(num_classes))
    return [int(c) for c in mapping]


def _print_ap(metrics: dict, header: str) -> None:
    for kind, name in (("bbox", "box"), ("segm", "mask")):
        m = metrics[kind]
        print(f"{header} {name:4s} AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
              f"APs {m['APs']:.3f}  APm {m['APm']:.3f}  APl {m['APl']:.3f}")


def _init_distributed(device: str):
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group. Returns (rank, device)."""
    import torch
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return dist.get_rank(), f"cuda:{local}"
    dist.init_process_group("gloo")
    return dist.get_rank(), device


# ----------------------------------------------------------------------------------- train


def add_train_parser(subparsers) -> None:
    r = TINY_SHAPES_RECIPE
    p = subparsers.add_parser(
        "train", help="train a model (default: the tiny course model on generated shapes)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train Mask R-CNN. --config tiny-shapes: the tiny model on generated ShapesDataset "
                    "images, evaluated on a held-out split (seed + 1) at the end. --config r50-fpn or "
                    "tiny with --images/--annotations: your own COCO-format data (num_classes = max "
                    "category id + 1). Writes OUT/checkpoint.pt (load it with "
                    "mrcnn_lite.load_checkpoint), metrics.json, metrics.csv and losses.png. "
                    "Several GPUs: torchrun --nproc_per_node N -m mrcnn_lite train ...")
    p.add_argument("--config", choices=("tiny-shapes", "tiny", "r50-fpn"), default="tiny-shapes",
                   help="model + data preset")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="course",
                   help="tiny-shapes: the course recipe, or v1, the first one (float32, 3000 steps of sparser "
                        "images; the baseline of benchmarks/recipe_bench.py). Options given here override it")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--epochs", type=POSITIVE_INT, default=None, help=f"epochs (tiny-shapes: {r['epochs']}, else 12)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=None,
                   help=f"images per step, all processes together (tiny-shapes: {r['batch_size']}, else 4)")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=None, help=f"peak learning rate (tiny-shapes: {r['lr']}, else 0.01)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help=f"sgd (momentum 0.9) or adamw (tiny-shapes: {r['optimizer']}, else sgd)")
    p.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=None,
                   help=f"weight decay (tiny-shapes: {r['weight_decay']}, else 1e-4)")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=None, help=f"warmup iterations (tiny-shapes: {r['warmup']}, else 100)")
    p.add_argument("--clip-grad-norm", type=NON_NEGATIVE_FLOAT, default=10.0, help="gradient clipping (0: off)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                   help=f"mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA only) (tiny-shapes: {r.get('amp', 'off')}, else off)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="data loader worker processes")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from OUT/checkpoint.pt (mid-epoch if it stopped there); "
                        "another model or optimizer is refused, other changed settings are applied and listed")
    p.add_argument("--save-every", type=NON_NEGATIVE_INT, default=200,
                   help="steps between checkpoints (0: only at the end of each epoch); a checkpoint is "
                        "written only once its weights gave a finite loss and finite gradients")
    p.add_argument("--eval-every", type=NON_NEGATIVE_INT, default=0, help="epochs between evaluations (0: only at the end)")
    p.add_argument("--eval-every-steps", type=NON_NEGATIVE_INT, default=None,
                   help="also evaluate every this many steps, for held-out AP over training "
                        f"(tiny-shapes: {r.get('eval_every_steps', 0)}, else 0: never mid-epoch)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="training seed (and shapes train seed; val uses seed + 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("tiny-shapes data")
    g.add_argument("--num-train", type=POSITIVE_INT, default=None,
                   help=f"generated training images (course recipe: {r['num_train']})")
    g.add_argument("--num-val", type=NON_NEGATIVE_INT, default=None,
                   help=f"generated held-out images (0: no evaluation) (course recipe: {r['num_val']})")
    g.add_argument("--min-shapes", type=NON_NEGATIVE_INT, default=None,
                   help=f"fewest shapes in a training image (course recipe: {r['min_shapes']}; the held-out "
                        "images keep ShapesDataset's 1-6)")
    g.add_argument("--max-shapes", type=POSITIVE_INT, default=None,
                   help=f"most shapes in a training image (course recipe: {r['max_shapes']})")
    g = p.add_argument_group("your own COCO-format data (--config r50-fpn or tiny)")
    g.add_argument("--images", type=Path, help="training images folder")
    g.add_argument("--annotations", type=Path, help="training COCO annotations JSON")
    g.add_argument("--val-images", type=Path, help="validation images folder")
    g.add_argument("--val-annotations", type=Path, help="validation COCO annotations JSON")
    g.add_argument("--weights", type=Path,
                   help="r50-fpn: torchvision maskrcnn_resnet50_fpn COCO state dict to start from "
                        "(predictor layers re-initialised when the class count differs)")
    g.add_argument("--min-size", type=POSITIVE_INT, default=None, help="r50-fpn: shorter image side (default 800)")
    g.add_argument("--max-size", type=POSITIVE_INT, default=None, help="r50-fpn: longer image side cap (default 1333)")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import torch

    from . import config as C
    from .data import CLASSES, Compose, RandomHorizontalFlip, ShapesDataset
    from .engine import NonFiniteLossError, TrainConfig, Trainer
    from .engine.coco_eval import evaluate
    from .model.interop import load_torchvision_weights
    from .model.mask_rcnn import build_model

    _use_agg()
    _check_out_dir(args.out)  # before any data is made or read: a bad --out must not cost a run
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    rank, device = _init_distributed(device)
    shapes = args.config == "tiny-shapes"
    if args.recipe != "course" and not shapes:
        raise SystemExit(f"error: argument --recipe: {args.recipe} is a recipe of --config tiny-shapes")
    r, shapes_model = RECIPES[args.recipe]
    pick = lambda value, shapes_default, default: value if value is not None else (
        shapes_default if shapes else default)

    if shapes:
        if args.images or args.annotations:
            raise SystemExit("error: --config tiny-shapes generates its data; use --config tiny or "
                             "r50-fpn with --images/--annotations")
        for name in ("num_train", "num_val", "min_shapes", "max_shapes"):  # the recipe's, unless given
            if getattr(args, name) is None:
                setattr(args, name, r[name])
        if args.min_shapes > args.max_shapes:
            raise SystemExit(f"error: argument --min-shapes: must be <= --max-shapes ({args.max_shapes}), "
                             f"got {args.min_shapes}")
        train_set = ShapesDataset(args.num_train, seed=args.seed, min_shapes=args.min_shapes,
                                  max_shapes=args.max_shapes)
        val_set = ShapesDataset(args.num_val, seed=args.seed + 1) if args.num_val > 0 else None
        class_names = list(CLASSES)
        label_to_category = list(range(len(CLASSES)))
        # kept in the checkpoint, so that a notebook can train more of the same (notebook 10's live run)
        data_meta = {"recipe": args.recipe, "train_data": {
            "dataset": "ShapesDataset", "num_images": args.num_train, "seed": args.seed,
            "min_shapes": args.min_shapes, "max_shapes": args.max_shapes}}
        cfg = C.tiny(num_classes=len(CLASSES), **shapes_model)
        print(f"data: {len(train_set)} generated shapes images for training ({args.min_shapes}-{args.max_shapes} "
              f"shapes each), {args.num_val} held out (seed {args.seed + 1}, 1-6 shapes each); "
              f"{args.recipe} recipe")
    else:
        flip = None if args.no_flip else Compose([RandomHorizontalFlip(0.5)])
        # crowd regions are left out of the training targets (CocoInstances' default)
        train_set = _coco_dataset(args.images, args.annotations, f"--config {args.config}", flip)
        val_set = None
        if args.val_images or args.val_annotations:
            val_set = _coco_dataset(args.val_images, args.val_annotations, "validation")
        class_names = train_set.class_names
        label_to_category = train_set.label_to_category
        data_meta = {}
        num_classes = len(class_names)  # max category id + 1 (or K + 1 when large ids were relabelled)
        if num_classes < 2:
            raise SystemExit(f"error: {args.annotations} declares no categories")
        print(f"data: {train_set!r}" + (f"\nval:  {val_set!r}" if val_set is not None else ""))
        if args.config == "tiny":
            cfg = C.tiny(num_classes=num_classes)
        else:
            sizes = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
            cfg = C.r50_fpn(num_classes=num_classes, **sizes)
            if args.weights is None:
                # From scratch: every layer trains, with trainable BatchNorm (frozen statistics are
                # only meaningful for pretrained weights).
                cfg = cfg.replace(trainable_layers=5, norm="bn")
                print("note: no --weights, so ResNet-50 trains from scratch (norm=bn, all layers)")

    args.amp = pick(args.amp, r.get("amp", "off"), "off")
    if args.amp == "fp16" and device.type != "cuda":
        raise SystemExit(f"error: argument --amp: fp16 needs a CUDA device, this run is on {device.type}; "
                         "use --amp bf16")
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    if args.weights is not None:
        if args.config != "r50-fpn":
            raise SystemExit("error: --weights needs --config r50-fpn (torchvision's architecture)")
        try:
            fresh = load_torchvision_weights(model, args.weights)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {_one_line(e)}")
        except Exception as e:  # e.g. pickle.UnpicklingError: weights_only=True refused what is inside
            raise SystemExit(f"error: could not load --weights {args.weights} as a state dict of tensors "
                             f"({type(e).__name__}: {_one_line(e)})")
        print(f"loaded {args.weights}; re-initialised {len(fresh)} tensors"
              + (f" ({', '.join(fresh)})" if fresh else ""))

    tcfg = TrainConfig(
        epochs=pick(args.epochs, r["epochs"], 12), batch_size=pick(args.batch_size, r["batch_size"], 4),
        lr=pick(args.lr, r["lr"], 0.01), optimizer=pick(args.optimizer, r["optimizer"], "sgd"),
        weight_decay=pick(args.weight_decay, r["weight_decay"], 1e-4), schedule=args.schedule,
        warmup_iters=pick(args.warmup, r["warmup"], 100), clip_grad_norm=args.clip_grad_norm or None,
        amp=args.amp, eval_every=args.eval_every or max(1, pick(args.epochs, r["epochs"], 12)),
        eval_every_steps=pick(args.eval_every_steps, r.get("eval_every_steps", 0), 0),
        seed=args.seed, num_workers=args.workers, progress=not args.no_progress, save_every=args.save_every)
    trainer = Trainer(model, train_set, tcfg, args.out, val_set=val_set, device=device,
                      evaluate_fn=(lambda m, ds: evaluate(m, ds, device=device)) if val_set is not None else None,
                      meta={"class_names": class_names, "label_to_category": label_to_category,
                            "command": " ".join(sys.argv), **data_meta})
    if args.resume and not trainer.checkpoint_path.exists():
        print(f"note: --resume but {trainer.checkpoint_path} does not exist; starting a new run")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {args.config}, {cfg.num_classes} classes, {n_params / 1e6:.2f} M trainable parameters, "
          f"norm={cfg.norm}; {tcfg.epochs} epochs x {trainer.iters_per_epoch} steps of {tcfg.batch_size} "
          f"images, lr {tcfg.lr}, on {device}" + (f" x {trainer.world} processes" if trainer.world > 1 else ""))
    start = time.perf_counter()
    try:
        history = trainer.fit(resume=args.resume)
    except NonFiniteLossError as e:
        saved = (f"the last good checkpoint (step {trainer.saved_step}) is kept: {trainer.checkpoint_path}"
                 if trainer.saved_step is not None else "no checkpoint was written")
        raise SystemExit(f"error: training stopped: {_one_line(e)}; {saved}")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {_one_line(e)}")
    if rank == 0:
        print(f"trained in {time.perf_counter() - start:.1f} s; wrote {trainer.checkpoint_path}, "
              f"{args.out / 'metrics.json'}, {args.out / 'metrics.csv'}, {args.out / 'losses.png'}")
        if history["eval"]:
            _print_ap(history["eval"][-1], f"held-out (epoch {history['eval'][-1]['epoch']})")
    if trainer.world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------- evaluate


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="COCO box and mask AP of a checkpoint on a COCO-format dataset",
        description="Run a checkpoint over a COCO-format dataset and print pycocotools' summary for boxes "
                    "and masks. The model's labels are turned into the file's category ids with the mapping "
                    "saved by train (label = category id for ids up to 1000). "
                    'With --out, writes {"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}} as JSON.')
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt written by train")
    p.add_argument("--images", required=True, type=Path, help="images folder")
    p.add_argument("--annotations", required=True, type=Path, help="COCO annotations JSON")
    p.add_argument("--out", type=Path, help="write the metrics dict here (JSON)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images per forward pass (default 4)")
    p.add_argument("--mask-threshold", type=PROBABILITY, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="CPU threads for torch")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import torch

    from .engine.coco_eval import evaluate

    if args.out is not None:
        _check_out_file(args.out)  # before the evaluation, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = _load_model(args.checkpoint, device)
    mapping = _label_to_category(args.checkpoint, model.cfg.num_classes)
    dataset = _coco_dataset(args.images, args.annotations, "evaluate")
    unknown = sorted(set(dataset.categories) - set(mapping[1:]))
    if unknown:
        raise SystemExit(f"error: {args.annotations} has category ids {unknown[:10]} that the model does not "
                         f"know (it predicts category ids {mapping[1:][:20]})")
    print(f"evaluating {args.checkpoint} on {dataset!r}")
    start = time.perf_counter()
    try:
        metrics = evaluate(model, dataset, device=device, batch_size=args.batch_size,
                           mask_threshold=args.mask_threshold, verbose=True, label_to_category=mapping)
    except (FileNotFoundError, ValueError) as e:  # e.g. an image file that cannot be decoded
        raise SystemExit(f"error: {_one_line(e)}")
    print(f"evaluated {len(dataset)} images in {time.perf_counter() - start:.1f} s")
    _print_ap(metrics, "")
    if args.out is not None:
        from .engine.checkpoint import atomic_write_text
        atomic_write_text(args.out, json.dumps(metrics, indent=1))
        print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------------- predict


def add_predict_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="run a checkpoint on images; write overlay PNGs and detections JSON",
        description="For each IMAGE writes OUT/<name>.png (the image with masks, boxes, labels and scores "
                    "drawn) and, for all images, OUT/detections.json: per image its path, size and a "
                    "list of {box [x1, y1, x2, y2], label, category_id, label_name, score, mask (COCO RLE or "
                    "polygons)}. Files that cannot be read are reported and skipped; the others are still "
                    "predicted, and the exit status is then 1.")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt written by train")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files (PNG, JPEG, ...) or folders (every image file in them)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--score-thresh", type=PROBABILITY, default=0.5, help="keep detections with score >= this (default 0.5)")
    p.add_argument("--mask-threshold", type=PROBABILITY, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--mask-format", choices=("rle", "polygon"), default="rle", help="mask encoding in the JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.set_defaults(func=cmd_predict)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def _image_files(paths) -> list:
    """The IMAGE arguments as files: a folder stands for the image files in it (by suffix, sorted)."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SystemExit(f"error: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files += found
        else:
            files.append(path)
    return files


def cmd_predict(args) -> int:
    import numpy as np
    import torch

    from .data import image_to_tensor, mask_to_polygons, mask_to_rle, read_rgb

    _use_agg()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .engine.checkpoint import atomic_write_text
    from .viz import draw_instances

    files = _image_files(args.images)
    _check_out_dir(args.out)
    device = _device(args.device)
    model = _load_model(args.checkpoint, device)
    names = _class_names(args.checkpoint, model.cfg.num_classes)
    mapping = _label_to_category(args.checkpoint, model.cfg.num_classes)
    results, used, failed = [], set(), []
    for path in files:
        try:
            # EXIF orientation applied, 16-bit scaled: the same reader as the COCO loader
            image = image_to_tensor(read_rgb(path))
        except (FileNotFoundError, ValueError) as e:
            failed.append(path)
            print(f"error: {_one_line(e)}", file=sys.stderr)
            continue
        with torch.no_grad():
            out = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        keep = out["scores"] >= args.score_thresh
        out = {k: v[keep] for k, v in out.items()}
        masks = (out["masks"][:, 0] >= args.mask_threshold).numpy().astype(np.uint8)
        dets = []
        for i in range(len(out["scores"])):
            label = int(out["labels"][i])
            mask = mask_to_rle(masks[i]) if args.mask_format == "rle" else mask_to_polygons(masks[i])
            dets.append({"box": [round(float(v), 2) for v in out["boxes"][i]], "label": label,
                         "category_id": mapping[label] if label < len(mapping) else label,
                         "label_name": names[label] if label < len(names) else str(label),
                         "score": round(float(out["scores"][i]), 4), "mask": mask})
        stem = path.stem
        while stem in used:  # two inputs with the same name from different folders
            stem += "_"
        used.add(stem)
        fig = Figure(figsize=(5, 5 * image.shape[1] / image.shape[2]), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
        draw_instances(image, out["boxes"], out["labels"], out["scores"], out["masks"], class_names=names,
                       ax=ax, score_thresh=args.score_thresh, mask_thresh=args.mask_threshold)
        overlay = args.out / f"{stem}.png"
        fig.savefig(overlay)
        results.append({"image": str(path), "overlay": str(overlay), "height": int(image.shape[1]),
                        "width": int(image.shape[2]), "detections": dets})
        print(f"{path}: {len(dets)} detections -> {overlay}")
    atomic_write_text(args.out / "detections.json", json.dumps(results, indent=1))
    print(f"wrote {args.out / 'detections.json'} ({len(results)} of {len(files)} images)")
    if failed:
        print(f"error: {len(failed)} of {len(files)} images could not be read: "
              + ", ".join(str(p) for p in failed), file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------- export


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="make the small shipped inference file from a training checkpoint",
        description="Keep a training checkpoint's weights (as float16), config, meta and training history, "
                    "drop the optimizer and random states, measure COCO AP of the float16 weights on a "
                    "fresh shapes split (ShapesDataset(--num-eval, seed=--eval-seed)), and write it all "
                    "atomically to --out. Load the result with mrcnn_lite.load_course_model(path).")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt written by train")
    p.add_argument("--out", required=True, type=Path, help="file to write (e.g. data/checkpoints/tiny_shapes.pt)")
    p.add_argument("--eval-seed", type=int, default=99,
                   help="seed of the held-out shapes split (default 99); -1: do not evaluate")
    p.add_argument("--num-eval", type=int, default=100, help="held-out images (default 100)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from .pretrained import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out, eval_seed=None if args.eval_seed < 0 else args.eval_seed,
                                num_eval=args.num_eval, threads=args.threads, verbose=False)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    held = out["metrics"]["heldout"]
    if held is not None:
        _print_ap(held, f"held-out {held['dataset']}:")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


# ----------------------------------------------------------------------------------- bench


def add_bench_parser(subparsers) -> None:
    from .tools import bench
    p = subparsers.add_parser("bench", help="speed benchmarks against torchvision (mrcnn_lite.tools.bench)",
                              description=bench.__doc__.splitlines()[0])
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .tools import bench
    return int(bench.run(args) or 0)


# ----------------------------------------------------------------------------------- ablate


def _table_keys(text: str) -> list:
    from .experiments.ablations import TABLES
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TABLES]
    if not keys or unknown:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(TABLES)}; got {text!r}")
    return keys


_table_keys.__name__ = "rows"


def add_ablate_parser(subparsers) -> None:
    from .experiments.ablations import TABLES
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
    from .experiments.ablations import run_grid

    _check_out_dir(args.out)
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
        raise SystemExit(f"error: {_one_line(e)}")
    print((args.out / "ablations.md").read_text())
    print(f"wrote {args.out / 'ablations.json'} and {args.out / 'ablations.md'} ({result['wall_seconds']:.0f} s)")
    return 0


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_lite",
        description="mrcnn_lite: Mask R-CNN from scratch. Run a command with --help for its options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_predict_parser(subparsers)
    add_shapes_parser(subparsers)
    add_export_parser(subparsers)
    add_bench_parser(subparsers)
    add_ablate_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
