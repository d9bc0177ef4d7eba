"""``predict`` on a 12-megapixel photo beside torchvision's Mask R-CNN, in one run: time and peak memory.

Both models are torchvision's ``maskrcnn_resnet50_fpn`` layout with the same weights: torchvision's model
is built with ``torch.manual_seed(SEED)`` (random weights: nothing is downloaded) and ours is
``ml.from_torchvision`` of it. Both keep every detection (``box_score_thresh=0``) up to
``--detections`` (50), so both paste the same number of masks. The image is a shapes image scaled
bilinearly to ``--size`` (4000x3000, 12 MP, a phone photo's size).

What each side does, timed from the image tensor to the COCO results (RLE per detection):

* torchvision: ``model([image])``, which pastes every mask on its own full-size canvas and stacks them,
  then ``masks > 0.5`` and ``pycocotools.mask.encode`` per mask (what torchvision's
  ``references/detection/coco_eval.py`` does);
* mrcnn_lite: ``mrcnn_lite.cli.predict.predict_image``, the ``predict`` command's own step: the model with
  ``transform.mask_format = "compact"`` (masks thresholded and cropped to their boxes) and
  ``crop_to_rle`` per detection.

Every measurement runs in a fresh Python process (one torch thread unless ``--threads``), so its peak
resident size (``VmHWM`` of ``/proc/self/status``) is its own: the process builds its model, predicts
once on a small image (lazy buffers, allocator warm), makes the large image, resets the peak to what is
resident then (``/proc/self/clear_refs``), and predicts once on the large image, timed. ``peak`` is the
largest resident size during that prediction (torch's libraries, one model and the image included);
``growth`` is ``peak`` minus what was resident before it: the memory the prediction itself needed. Sides alternate, ``--repeats`` times; the table shows medians.
The goal (issue 27): mrcnn_lite at most half of torchvision's time and a quarter of its peak memory.

    python tools/large_image_bench.py [--repeats 3] [--threads 1] [--json FILE] [--txt FILE]
    python tools/large_image_bench.py --quick     # a check of the bench itself: 2000x1500, min_size 320, once

Run it on a quiet machine: torchvision's side needs about 2 x 50 x 12 MP x 4 bytes = 4.8 GB at its peak.
Last result: ``benchmarks/large_image_cpu.txt``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 0

WORKER = """
import gc, json, sys, time
import numpy as np
import torch, torch.nn.functional as F
import torchvision
from pycocotools import mask as mask_utils
import mrcnn_lite as ml
from mrcnn_lite.cli.predict import predict_image
from mrcnn_lite.data import ShapesDataset

side, height, width, detections, min_size, max_size, threads, seed = sys.argv[1:]
height, width, detections, min_size, max_size, threads, seed = map(int, (height, width, detections, min_size,
                                                                         max_size, threads, seed))
torch.set_num_threads(threads)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

torch.manual_seed(seed)
tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
    weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
    box_detections_per_img=detections, min_size=min_size, max_size=max_size).eval()
if side == "mrcnn_lite":
    model = ml.from_torchvision(tv).eval()
    model.transform.mask_format = "compact"
    del tv  # its weights were copied; they must not count in our peak

    def predict(image):
        out = predict_image(model, image, 0.0)
        return len(out["scores"]), out["rles"]
else:
    model = tv

    def predict(image):
        with torch.no_grad():
            out = model([image])[0]
        masks = (out["masks"][:, 0] > 0.5).numpy()
        rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
        return len(out["scores"]), rles

image, _ = ShapesDataset(1, seed=seed)[0]
predict(image)  # warm-up on the small image
image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0].clamp(0, 1)
gc.collect()
# Reset the peak to what is resident now (torch, one model, the image): writing 5 to clear_refs does that
# (Linux >= 4.0), so the peak is the prediction's, whatever building the model needed before.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
assert status("VmHWM") <= before + 2**20, "clear_refs did not reset the peak"
start = time.perf_counter()
n, rles = predict(image)
seconds = time.perf_counter() - start
pixels = int(sum(mask_utils.area(r) for r in rles))
print(json.dumps({"side": side, "seconds": seconds, "peak": status("VmHWM"), "growth": status("VmHWM") - before,
                  "detections": n, "mask_pixels": pixels}))
"""


def measure(side: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    h, w = args.size
    cmd = [sys.executable, "-c", WORKER, side, str(h), str(w), str(args.detections), str(args.min_size),
           str(args.max_size), str(args.threads), str(SEED)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: the {side} measurement failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def size_arg(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT, e.g. 4000x3000, got {text!r}") from None
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"must be at least 64x64, got {text}")
    return h, w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=size_arg, default=(3000, 4000), help="WIDTHxHEIGHT of the image (4000x3000)")
    p.add_argument("--detections", type=int, default=50, help="detections per image, both models (50)")
    p.add_argument("--min-size", type=int, default=800, help="the models' resize short side (800, torchvision's)")
    p.add_argument("--max-size", type=int, default=1333, help="the models' resize long side (1333)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per side, alternating (3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement (1)")
    p.add_argument("--quick", action="store_true",
                   help="check the bench: 2000x1500, min_size 320 / max_size 533, one repeat, nothing recorded")
    p.add_argument("--json", type=Path, help="write the results here (default, full run: "
                                             "benchmarks/large_image_cpu.json)")
    p.add_argument("--txt", type=Path, help="write the table here (default, full run: benchmarks/large_image_cpu.txt)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.min_size, args.max_size, args.repeats = (1500, 2000), 320, 533, 1
    elif args.json is None and args.txt is None:
        args.json, args.txt = ROOT / "benchmarks" / "large_image_cpu.json", ROOT / "benchmarks" / "large_image_cpu.txt"

    runs = {"torchvision": [], "mrcnn_lite": []}
    for r in range(args.repeats):
        for side in ("torchvision", "mrcnn_lite") if r % 2 == 0 else ("mrcnn_lite", "torchvision"):
            runs[side].append(measure(side, args))
            m = runs[side][-1]
            print(f"  {side:12s} {m['seconds']:8.2f} s  peak {m['peak'] / 2**20:8.0f} MiB  "
                  f"growth {m['growth'] / 2**20:8.0f} MiB  {m['detections']} detections", flush=True)

    med = {side: {k: statistics.median(m[k] for m in ms) for k in ("seconds", "peak", "growth")}
           for side, ms in runs.items()}
    same = {side: {(m["detections"], m["mask_pixels"]) for m in ms} for side, ms in runs.items()}
    time_ratio = med["mrcnn_lite"]["seconds"] / med["torchvision"]["seconds"]
    peak_ratio = med["mrcnn_lite"]["peak"] / med["torchvision"]["peak"]
    growth_ratio = med["mrcnn_lite"]["growth"] / med["torchvision"]["growth"]
    import torch
    import torchvision
    h, w = args.size
    lines = [
        f"device=cpu ({platform.processor() or platform.machine()}) torch={torch.__version__} "
        f"torchvision={torchvision.__version__} threads={args.threads} load={[round(v, 2) for v in os.getloadavg()]} "
        f"repeats={args.repeats} (medians, alternating, a fresh process each)",
        f"image {w}x{h} ({w * h / 1e6:.1f} MP), maskrcnn_resnet50_fpn layout, random weights (seed {SEED}), "
        f"min_size {args.min_size} max_size {args.max_size}, {args.detections} detections, COCO RLE per detection",
        f"{'':12s} {'time':>10s} {'peak RSS':>12s} {'growth':>12s}",
    ]
    for side in ("mrcnn_lite", "torchvision"):
        m = med[side]
        lines.append(f"{side:12s} {m['seconds']:9.2f}s {m['peak'] / 2**20:8.0f} MiB {m['growth'] / 2**20:8.0f} MiB")
    lines.append(f"mrcnn_lite / torchvision: time {time_ratio:.2f} (goal <= 0.50: "
                 f"{'met' if time_ratio <= 0.5 else 'NOT met'}), peak RSS {peak_ratio:.2f} "
                 f"(goal <= 0.25: {'met' if peak_ratio <= 0.25 else 'NOT met'}), growth {growth_ratio:.3f}")
    lines.append("peak: the largest resident size while predicting (torch, one model, the image included); "
                 "growth: what the prediction added to it")
    lines.append(f"detections, mask pixels (masks of random weights sit near 0.5, so float rounding and "
                 f"torchvision's > 0.5 against predict's >= 0.5 move a few): mrcnn_lite {sorted(same['mrcnn_lite'])} "
                 f"torchvision {sorted(same['torchvision'])}")
    text = "\n".join(lines)
    print(text)
    result = {"size": [h, w], "detections": args.detections, "min_size": args.min_size, "max_size": args.max_size,
              "threads": args.threads, "repeats": args.repeats, "runs": runs, "median": med,
              "time_ratio": time_ratio, "peak_ratio": peak_ratio,
              "growth_ratio": growth_ratio, "quick": args.quick}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.txt:
        args.txt.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
