"""Time from-scratch RoIAlign against torchvision's compiled kernel at Mask R-CNN sizes.

The setting of Mask R-CNN's box head: an ~800 x 1088 image, FPN features at strides 4/8/16/32
(keys '0'..'3', 256 channels), 512 proposals pooled to 7 x 7 with sampling_ratio 2 through
MultiScaleRoIAlign. Forward and forward+backward (gradient to the features) of:

* ``mrcnn_lite``        -- mrcnn_lite.ops.MultiScaleRoIAlign with the from-scratch roi_align
* ``mrcnn_lite+tv``     -- the same module calling torchvision.ops.roi_align (the model's fast path)
* ``torchvision``       -- torchvision.ops.MultiScaleRoIAlign

Interleaved runs after warm-up, medians. The code lives in ``mrcnn_lite.bench.roi_align_benchmark``
(``python -m mrcnn_lite bench`` runs it too, next to the whole-model comparison).

    python benchmarks/roi_align_bench.py [--device cpu|cuda] [--reps 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import json

import torch

from mrcnn_lite.bench import roi_align_benchmark


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rois", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchvision

    res = roi_align_benchmark(args.device, reps=args.reps, warmup=args.warmup, num_rois=args.rois)
    med, diff = res["median_s"], res["max_abs_diff_vs_tv"]
    print(f"device={args.device} torch={torch.__version__} torchvision={torchvision.__version__} "
          f"threads={torch.get_num_threads()} rois={args.rois} C=256 out=7x7 sampling_ratio=2 "
          f"levels=4 image=800x1088 reps={args.reps}")
    print(f"{'variant':<16}{'forward ms':>12}{'fwd+bwd ms':>12}{'vs tv (f+b)':>13}{'max|diff|':>12}")
    tv = med["torchvision"]["forward+backward"]
    for k, m in med.items():
        print(f"{k:<16}{m['forward'] * 1e3:>12.1f}{m['forward+backward'] * 1e3:>12.1f}"
              f"{m['forward+backward'] / tv:>12.2f}x{diff[k]:>12.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
