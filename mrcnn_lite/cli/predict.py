"""``python -m mrcnn_lite predict``: run a checkpoint on image files; write overlays (PNG) and detections (JSON)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import (PROBABILITY, add_checkpoint_command, check_out_dir, class_names, device_arg,
                     label_to_category, load_model, one_line, use_agg)


def add_predict_parser(subparsers) -> None:
    p = add_checkpoint_command(subparsers, "predict", cmd_predict,
                               help="run a checkpoint on images; write overlay PNGs and detections JSON")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files (PNG, JPEG, ...) or folders (every image file in them)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--score-thresh", type=PROBABILITY, default=0.5, help="keep detections with score >= this (default 0.5)")
    p.add_argument("--mask-threshold", type=PROBABILITY, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--mask-format", choices=("rle", "polygon"), default="rle", help="mask encoding in the JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


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
    """For each IMAGE writes OUT/<name>.png (the image with masks, boxes, labels and scores drawn) and,
    for all images, OUT/detections.json: per image its path, size and a list of {box [x1, y1, x2,
    y2], label, category_id, label_name, score, mask (COCO RLE or polygons)}. Files that cannot be
    read are reported and skipped; the others are still predicted, and the exit status is then 1.
    """
    import torch

    from ..data import image_to_tensor, read_rgb
    from ..engine.checkpoint import atomic_write_text

    use_agg()
    files = _image_files(args.images)
    check_out_dir(args.out)
    device = device_arg(args.device)
    model = load_model(args.checkpoint, device)
    names = class_names(args.checkpoint, model.cfg.num_classes)
    mapping = label_to_category(args.checkpoint, model.cfg.num_classes)
    results, used, failed = [], set(), []
    for path in files:
        try:
            # EXIF orientation applied, 16-bit scaled: the same reader as the COCO loader
            image = image_to_tensor(read_rgb(path))
        except (FileNotFoundError, ValueError) as e:
            failed.append(path)
            print(f"error: {one_line(e)}", file=sys.stderr)
            continue
        with torch.no_grad():
            out = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        keep = out["scores"] >= args.score_thresh
        out = {k: v[keep] for k, v in out.items()}
        dets = _detections(out, args.mask_threshold, args.mask_format, names, mapping)
        stem = path.stem
        while stem in used:  # two inputs with the same name from different folders
            stem += "_"
        used.add(stem)
        overlay = args.out / f"{stem}.png"
        _write_overlay(overlay, image, out, names, args.score_thresh, args.mask_threshold)
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


def _detections(out: dict, mask_threshold: float, mask_format: str, names: list, mapping: list) -> list:
    """One image's detections as JSON-ready dicts: box, label, category id, label name, score, mask
    (``mask_format``: ``"rle"`` or ``"polygon"``) thresholded at ``mask_threshold``."""
    import numpy as np

    from ..data import mask_to_polygons, mask_to_rle

    masks = (out["masks"][:, 0] >= mask_threshold).numpy().astype(np.uint8)
    dets = []
    for i in range(len(out["scores"])):
        label = int(out["labels"][i])
        mask = mask_to_rle(masks[i]) if mask_format == "rle" else mask_to_polygons(masks[i])
        dets.append({"box": [round(float(v), 2) for v in out["boxes"][i]], "label": label,
                     "category_id": mapping[label] if label < len(mapping) else label,
                     "label_name": names[label] if label < len(names) else str(label),
                     "score": round(float(out["scores"][i]), 4), "mask": mask})
    return dets


def _write_overlay(path: Path, image, out: dict, names: list, score_thresh: float, mask_threshold: float) -> None:
    """The image with the detections' masks, boxes, labels and scores drawn, saved as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..viz import draw_instances

    fig = Figure(figsize=(5, 5 * image.shape[1] / image.shape[2]), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_instances(image, out["boxes"], out["labels"], out["scores"], out["masks"], class_names=names,
                   ax=ax, score_thresh=score_thresh, mask_thresh=mask_threshold)
    fig.savefig(path)
