"""Time from-scratch RoIAlign against torchvision's compiled kernel at Mask R-CNN sizes.

The setting of Mask R-CNN's box head: an ~800 x 1088 image, FPN features at strides 4/8/16/32
(keys '0'..'3', 256 channels), 512 proposals pooled to 7 x 7 with sampling_ratio 2 through
MultiScaleRoIAlign. We time forward and forward+backward (gradient to the features) of:

* ``mrcnn_lite``        -- mrcnn_lite.ops.MultiScaleRoIAlign with the from-scratch roi_align
* ``mrcnn_lite+tv``     -- the same module calling torchvision.ops.roi_align (the model's fast path)
* ``torchvision``       -- torchvision.ops.MultiScaleRoIAlign

Runs are interleaved (A, B, C, A, B, C, ...) after warm-up, and medians are reported.

    python benchmarks/roi_align_bench.py [--device cpu|cuda] [--reps 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mrcnn_lite.ops import MultiScaleRoIAlign, roi_align


def make_inputs(device, dtype, num_rois=512, channels=256, image_hw=(800, 1088), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    feats = {}
    for i, stride in enumerate((4, 8, 16, 32)):
        shape = (1, channels, -(-h // stride), -(-w // stride))
        feats[str(i)] = torch.randn(shape, generator=g, dtype=dtype).to(device)
    # Proposal-like boxes: log-uniform sizes 16..640 px, centres anywhere, clipped to the image.
    size = torch.exp(torch.empty(num_rois, 2, dtype=dtype).uniform_(0, 1, generator=g) * (6.4 - 2.77) + 2.77)
    ctr = torch.rand(num_rois, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    boxes = torch.cat([ctr - size / 2, ctr + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return feats, [boxes.to(device)], [image_hw]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    device = torch.device(args.device)

    import torchvision  # only the benchmark needs it

    feats, boxes, shapes = make_inputs(device, torch.float32, num_rois=args.rois)
    names = list(feats)
    variants = {
        "mrcnn_lite": MultiScaleRoIAlign(names, 7, 2, roi_align=roi_align),
        "mrcnn_lite+tv": MultiScaleRoIAlign(names, 7, 2, roi_align=torchvision.ops.roi_align),
        "torchvision": torchvision.ops.MultiScaleRoIAlign(names, 7, 2),
    }
    leaves = {k: v.detach().requires_grad_(True) for k, v in feats.items()}

    def run(pool, backward):
        for t in leaves.values():
            t.grad = None
        sync(device)
        t0 = time.perf_counter()
        if backward:
            out = pool(leaves, boxes, shapes)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                out = pool(feats, boxes, shapes)
        sync(device)
        return time.perf_counter() - t0

    # Agreement first: the timings compare equal computations.
    outs = {k: p(feats, boxes, shapes) for k, p in variants.items()}
    ref = outs["torchvision"]
    max_diff = {k: float((o - ref).abs().max()) for k, o in outs.items()}

    times = {k: {"forward": [], "forward+backward": []} for k in variants}
    for mode in ("forward", "forward+backward"):
        for _ in range(args.warmup):
            for pool in variants.values():
                run(pool, mode != "forward")
        for _ in range(args.reps):
            for k, pool in variants.items():  # interleaved: drift hits every variant alike
                times[k][mode].append(run(pool, mode != "forward"))
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}

    print(f"device={device} torch={torch.__version__} torchvision={torchvision.__version__} "
          f"threads={torch.get_num_threads()} rois={args.rois} C=256 out=7x7 sampling_ratio=2 "
          f"levels=4 image=800x1088 reps={args.reps}")
    print(f"{'variant':<16}{'forward ms':>12}{'fwd+bwd ms':>12}{'vs tv (f+b)':>13}{'max|diff|':>12}")
    tv = med["torchvision"]["forward+backward"]
    for k in variants:
        f, fb = med[k]["forward"] * 1e3, med[k]["forward+backward"] * 1e3
        print(f"{k:<16}{f:>12.1f}{fb:>12.1f}{med[k]['forward+backward'] / tv:>12.2f}x{max_diff[k]:>12.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
                       "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                       "rois": args.rois, "median_s": med, "all_s": times, "max_abs_diff_vs_tv": max_diff},
                      fh, indent=2)


if __name__ == "__main__":
    main()
