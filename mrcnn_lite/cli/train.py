"""``python -m mrcnn_lite train``: the tiny course model on generated shapes, or a model on your own
COCO-format data; one process or several under ``torchrun``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..recipes import RECIPES, TINY_SHAPES_RECIPE
from .common import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, check_out_dir,
                     coco_dataset, device_arg, one_line, print_ap, use_agg)


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

    from ..build import build_model
    from .. import config as C
    from ..data import CLASSES, Compose, RandomHorizontalFlip, ShapesDataset
    from ..engine import NonFiniteLossError, TrainConfig, Trainer
    from ..engine.coco_eval import evaluate
    from ..torchvision_compat import load_torchvision_weights

    use_agg()
    check_out_dir(args.out)  # before any data is made or read: a bad --out must not cost a run
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_arg(args.device)
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
        train_set = coco_dataset(args.images, args.annotations, f"--config {args.config}", flip)
        val_set = None
        if args.val_images or args.val_annotations:
            val_set = coco_dataset(args.val_images, args.val_annotations, "validation")
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
    if args.amp == "fp16" and torch.device(device).type != "cuda":
        raise SystemExit(f"error: argument --amp: fp16 needs a CUDA device, this run is on {device}; "
                         "use --amp bf16")
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    if args.weights is not None:
        if args.config != "r50-fpn":
            raise SystemExit("error: --weights needs --config r50-fpn (torchvision's architecture)")
        try:
            fresh = load_torchvision_weights(model, args.weights)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {one_line(e)}")
        except Exception as e:  # e.g. pickle.UnpicklingError: weights_only=True refused what is inside
            raise SystemExit(f"error: could not load --weights {args.weights} as a state dict of tensors "
                             f"({type(e).__name__}: {one_line(e)})")
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
        raise SystemExit(f"error: training stopped: {one_line(e)}; {saved}")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {one_line(e)}")
    if rank == 0:
        print(f"trained in {time.perf_counter() - start:.1f} s; wrote {trainer.checkpoint_path}, "
              f"{args.out / 'metrics.json'}, {args.out / 'metrics.csv'}, {args.out / 'losses.png'}")
        if history["eval"]:
            print_ap(history["eval"][-1], f"held-out (epoch {history['eval'][-1]['epoch']})")
    if trainer.world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return 0
