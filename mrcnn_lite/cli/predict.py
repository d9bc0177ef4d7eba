"""``python -m mrcnn_lite predict``: run a checkpoint on image files; write overlays (PNG) and detections (JSON).

Streams: one image is in memory at a time, whatever the folder's size, and the model returns its masks
compact (``model.transform.mask_format = "compact"``: each mask thresholded and cropped to its box), so
a 6000x4000 photo with 50 detections needs a few MB of masks, not 4.8 GB. The JSON files are written
entry by entry into temporary files that replace the final names only when the run ends.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from .common import (PROBABILITY, add_checkpoint_command, check_out_dir, class_names, device_arg, float_in,
                     label_to_category, load_model, one_line, use_agg)


def add_predict_parser(subparsers) -> None:
    p = add_checkpoint_command(subparsers, "predict", cmd_predict,
                               help="run a checkpoint on images; write overlay PNGs and detections JSON")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files (PNG, JPEG, ...) or folders (every image file in them)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--score-thresh", type=PROBABILITY, default=0.5, help="keep detections with score >= this (default 0.5)")
    p.add_argument("--mask-threshold", type=float_in(0.0, 1.0, low_open=True), default=0.5,
                   help="a pixel is in a mask when its probability is >= this (in (0, 1], default 0.5)")
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
    """For each IMAGE writes OUT/<name>.png (the image with masks, boxes, labels and scores drawn);
    for all images OUT/detections.json: per image its path, image_id, size and a list of {box [x1, y1,
    x2, y2], label, category_id, label_name, score, mask (COCO RLE or polygons)}; and
    OUT/coco_results.json, the same detections in COCO's results format ({image_id, category_id, bbox
    [x, y, w, h], score, segmentation (RLE)}, what pycocotools' loadRes reads). image_id is the file
    name's number when every input is named by a distinct number (COCO's 000000397133.jpg), else the
    image's position in the input order. Images are read and predicted one at a time. Files that
    cannot be read, or that the model refuses, are reported in one line each and skipped; the others
    are still predicted, and the exit status is then 1.
    """
    from ..data import image_to_tensor, read_rgb

    use_agg()
    files = _image_files(args.images)
    check_out_dir(args.out)
    device = device_arg(args.device)
    model = load_model(args.checkpoint, device)
    model.transform.mask_format, model.transform.mask_threshold = "compact", args.mask_threshold
    names = class_names(args.checkpoint, model.cfg.num_classes)
    mapping = label_to_category(args.checkpoint, model.cfg.num_classes)
    image_ids = _image_ids(files)
    used, failed, refused, done = set(), [], [], 0
    with _json_list(args.out / "detections.json") as per_image, _json_list(args.out / "coco_results.json") as coco:
        for path, image_id in zip(files, image_ids):
            try:
                # EXIF orientation applied, 16-bit scaled: the same reader as the COCO loader
                image = image_to_tensor(read_rgb(path))
            except (FileNotFoundError, ValueError) as e:
                failed.append(path)
                print(f"error: {one_line(e)}", file=sys.stderr)
                continue
            try:
                out = predict_image(model, image.to(device), args.score_thresh)
            except ValueError as e:  # the model's entrance refuses it (e.g. a 1x5000 strip)
                refused.append(path)
                print(f"error: {path}: {one_line(e)}", file=sys.stderr)
                continue
            dets = _detections(out, args.mask_format, names, mapping)
            stem = path.stem
            while stem in used:  # two inputs with the same name from different folders
                stem += "_"
            used.add(stem)
            overlay = args.out / f"{stem}.png"
            _write_overlay(overlay, image, out, names)
            per_image.append({"image": str(path), "image_id": image_id, "overlay": str(overlay),
                              "height": int(image.shape[1]), "width": int(image.shape[2]), "detections": dets})
            for det, rle in zip(dets, out["rles"]):
                x1, y1, x2, y2 = det["box"]
                coco.append({"image_id": image_id, "category_id": det["category_id"],
                             "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": det["score"],
                             "segmentation": rle})
            done += 1
            print(f"{path}: {len(dets)} detections -> {overlay}")
    print(f"wrote {args.out / 'detections.json'} and {args.out / 'coco_results.json'} ({done} of {len(files)} images)")
    for bad, what in ((failed, "could not be read"), (refused, "were refused by the model")):
        if bad:
            print(f"error: {len(bad)} of {len(files)} images {what}: " + ", ".join(str(p) for p in bad),
                  file=sys.stderr)
    return 1 if failed or refused else 0


def predict_image(model, image, score_thresh: float) -> dict:
    """One image's detections with score >= ``score_thresh``, on the CPU, masks compact and as COCO RLE.

    image: (3, H, W) float in [0, 1] on the model's device; the model's ``transform.mask_format`` must be
    ``"compact"``. Returns {"boxes" (m, 4), "labels" (m,), "scores" (m,), "mask_crops" (list of m bool
    (h_i, w_i)), "mask_origins" (m, 2) x0, y0, "rles" (list of m COCO RLE dicts of the full image)}.
    """
    import torch

    from ..data import crop_to_rle

    with torch.no_grad():
        out = model([image])[0]
    keep = torch.where(out["scores"].cpu() >= score_thresh)[0].tolist()
    H, W = image.shape[1:]
    result = {k: out[k].cpu()[keep] for k in ("boxes", "labels", "scores", "mask_origins")}
    result["mask_crops"] = [out["mask_crops"][i].cpu() for i in keep]
    result["rles"] = [crop_to_rle(c.numpy(), int(x0), int(y0), H, W)
                      for c, (x0, y0) in zip(result["mask_crops"], result["mask_origins"].tolist())]
    return result


def _image_ids(files) -> list:
    """The number in each file name when they are all distinct numbers, else 0, 1, 2, ..."""
    stems = [p.stem for p in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(files)))


class _JsonListWriter:
    def __init__(self, f):
        self.f, self.count = f, 0

    def append(self, item) -> None:
        self.f.write(("[\n" if self.count == 0 else ",\n") + json.dumps(item))
        self.count += 1


@contextlib.contextmanager
def _json_list(path: Path):
    """A JSON list written one entry at a time into a temporary file beside ``path``, renamed over it at
    the end (so a reader sees the old file or the complete new one); removed if the run fails."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            writer = _JsonListWriter(f)
            yield writer
            f.write("]\n" if writer.count else "[]\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _detections(out: dict, mask_format: str, names: list, mapping: list) -> list:
    """One image's detections (``predict_image``'s output) as JSON-ready dicts: box, label, category id,
    label name, score, mask (``mask_format``: ``"rle"`` or ``"polygon"``)."""
    import numpy as np

    from ..data import mask_to_polygons

    dets = []
    for i in range(len(out["scores"])):
        label = int(out["labels"][i])
        if mask_format == "rle":
            mask = out["rles"][i]
        else:  # polygons of the crop, moved to its place in the image (vertices on pixel corners)
            x0, y0 = out["mask_origins"][i].tolist()
            mask = [(np.asarray(p).reshape(-1, 2) + (x0, y0)).reshape(-1).tolist()
                    for p in mask_to_polygons(out["mask_crops"][i].numpy())]
        dets.append({"box": [round(float(v), 2) for v in out["boxes"][i]], "label": label,
                     "category_id": mapping[label] if label < len(mapping) else label,
                     "label_name": names[label] if label < len(names) else str(label),
                     "score": round(float(out["scores"][i]), 4), "mask": mask})
    return dets


OVERLAY_MAX_SIDE = 1000
"""Overlays are drawn at most this many pixels a side (a 500-px-wide figure shows no more)."""


def _write_overlay(path: Path, image, out: dict, names: list) -> None:
    """The image with the detections' masks, boxes, labels and scores drawn, saved as a PNG.

    A large image is drawn shrunk to ``OVERLAY_MAX_SIDE`` (nearest pixels, masks sampled from their
    crops), so drawing never makes full-size masks.
    """
    import numpy as np
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..viz import draw_instances

    H, W = image.shape[1:]
    scale = min(1.0, OVERLAY_MAX_SIDE / max(H, W))
    rows = np.minimum((np.arange(max(1, round(H * scale))) + 0.5) / scale, H - 1).astype(np.int64)
    cols = np.minimum((np.arange(max(1, round(W * scale))) + 0.5) / scale, W - 1).astype(np.int64)
    small = image[:, torch.from_numpy(rows)][:, :, torch.from_numpy(cols)]
    masks = np.zeros((len(out["mask_crops"]), len(rows), len(cols)), dtype=bool)
    for i, (crop, (x0, y0)) in enumerate(zip(out["mask_crops"], out["mask_origins"].tolist())):
        crop = crop.numpy()
        r = (rows >= y0) & (rows < y0 + crop.shape[0])
        c = (cols >= x0) & (cols < x0 + crop.shape[1])
        masks[i][np.ix_(r, c)] = crop[np.ix_(rows[r] - y0, cols[c] - x0)]
    sy, sx = len(rows) / H, len(cols) / W
    boxes = out["boxes"] * torch.tensor([sx, sy, sx, sy])

    fig = Figure(figsize=(5, 5 * H / W), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_instances(small, boxes, out["labels"], out["scores"], masks, class_names=names, ax=ax, score_thresh=0.0)
    fig.savefig(path)
