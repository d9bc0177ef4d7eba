"""``python -m mrcnn_lite evaluate``: COCO box and mask AP of a checkpoint on a COCO-format dataset."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .common import (POSITIVE_INT, PROBABILITY, add_checkpoint_command, check_out_file, coco_dataset, device_arg,
                     label_to_category, load_model, one_line, print_ap)


def add_evaluate_parser(subparsers) -> None:
    p = add_checkpoint_command(subparsers, "evaluate", cmd_evaluate,
                               help="COCO box and mask AP of a checkpoint on a COCO-format dataset")
    p.add_argument("--images", required=True, type=Path, help="images folder")
    p.add_argument("--annotations", required=True, type=Path, help="COCO annotations JSON")
    p.add_argument("--out", type=Path, help="write the metrics dict here (JSON)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images per forward pass (default 4)")
    p.add_argument("--mask-threshold", type=PROBABILITY, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="CPU threads for torch")


def cmd_evaluate(args) -> int:
    """Run a checkpoint over a COCO-format dataset and print pycocotools' summary for boxes and masks.
    The model's labels are turned into the file's category ids with the mapping saved by train
    (label = category id for ids up to 1000). With --out, writes {"bbox": {AP, AP50, AP75, APs, APm,
    APl}, "segm": {...}} as JSON.
    """
    import torch

    from ..engine.checkpoint import atomic_write_text
    from ..engine.coco_eval import evaluate

    if args.out is not None:
        check_out_file(args.out)  # before the evaluation, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_arg(args.device)
    model = load_model(args.checkpoint, device)
    mapping = label_to_category(args.checkpoint, model.cfg.num_classes)
    dataset = coco_dataset(args.images, args.annotations, "evaluate")
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
        raise SystemExit(f"error: {one_line(e)}")
    print(f"evaluated {len(dataset)} images in {time.perf_counter() - start:.1f} s")
    print_ap(metrics, "")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(metrics, indent=1))
        print(f"wrote {args.out}")
    return 0
