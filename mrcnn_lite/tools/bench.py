"""Side-by-side benchmark: mrcnn_lite's Mask R-CNN against torchvision's, in one process.

    python -m mrcnn_lite bench [--device cpu|cuda] [--kernels fast|reference|both] [--reps 5]
                               [--json FILE] [--quick] [--compile [MODE]] [--fold-bn]
    python -m mrcnn_lite.tools.bench ...                    (the same, standalone)

Both models are ResNet-50-FPN Mask R-CNNs with the *same weights*: torchvision's is built as for the
COCO checkpoint (``FrozenBatchNorm2d``), ours is ``ml.from_torchvision(tv, kernels=...)``, once per
floor asked for (``--kernels``: ``fast``, the default; ``reference``; or ``both``). They see the same
random inputs on the same device. Every measurement is a median over repetitions that are
*interleaved* (ours, torchvision's, ours, ...) after a warm-up, so slow drifts of the machine (other
processes, clock changes) hit all alike.

What is measured:

* ``train_step``      forward + backward + SGD step, batch 2 (800x1333 on CUDA, 320x480 on CPU)
* ``train_step_amp``  the same under ``torch.autocast`` float16 with a GradScaler (CUDA only)
* ``inference``       batch 1, eval mode, including pasting the masks into the image
* ``roi_align``       ``MultiScaleRoIAlign`` with the reference ``mrcnn_lite.ops.roi_align`` and with
                      ``mrcnn_lite.fast.roi_align``, against torchvision's, forward + backward, at the box
                      head's sizes

``speedup = torchvision time / mrcnn_lite time`` (> 1: ours is faster). Before timing, the bench
checks that the models give the same losses and the same detections: speed must never buy a
different answer. The table also lists the kernels each mrcnn_lite model actually called.

Opt-in speed-ups of mrcnn_lite (off by default, so that the default table compares the plain models):

* ``--compile [MODE]``  ``mrcnn_lite.fast.compile_backbone``: ``torch.compile`` of the backbone and the RPN
                        head (MODE: ``default``, ``reduce-overhead`` = CUDA graphs, ``max-autotune``).
                        Compilation happens during the agreement check and the (at least one) warm-up
                        round, before any timing.
* ``--fold-bn``         ``mrcnn_lite.fast.fold_frozen_bn`` for the inference measurement: frozen BN folded
                        into the convolutions (the agreement check covers the folded model).

This module lives in the package (not in ``benchmarks/``) so that the ``bench`` command works from an
installed package; ``benchmarks/`` holds recorded results and the GPU check script.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device``."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved_medians(
    fns: Dict[str, Callable[[], object]], device: torch.device, reps: int, warmup: int
) -> Tuple[Dict[str, float], Dict[str, Optional[float]]]:
    """Median seconds of each function, runs interleaved (a, b, a, b, ...) after ``warmup`` rounds.

    Also returns the peak GPU memory (MiB) each one reached during its timed runs (None on CPU).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    peak: Dict[str, Optional[float]] = {k: None for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[k].append(timed(fn, device))
            if device.type == "cuda":
                mib = torch.cuda.max_memory_allocated(device) / 2**20
                peak[k] = max(peak[k] or 0.0, mib)
    return {k: statistics.median(v) for k, v in times.items()}, peak


def _entry(ours: float, theirs: float, peak: Dict[str, Optional[float]], **extra) -> dict:
    """One result row: both times, the speedup and the peak memory of both."""
    row = {"mrcnn_lite_s": ours, "torchvision_s": theirs, "speedup": theirs / ours}
    row["peak_mem_mib"] = {k: (round(v, 1) if v is not None else "n/a") for k, v in peak.items()}
    row.update(extra)
    return row


# ----------------------------------------------------------------------------------------------------
# the two models and their inputs
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def calibrate_frozen_bn(backbone: torch.nn.Module, image: torch.Tensor) -> None:
    """Give every FrozenBatchNorm2d the mean and variance of its input on ``image`` ``(B, 3, H, W)``.

    Randomly initialised frozen BN layers are identities, and 50 layers of un-normalised random convs
    make activations explode. Setting the statistics from one batch (layer by layer, in forward order)
    keeps the random network in a realistic numeric range, so the losses stay finite while we time it.
    """
    from torchvision.ops import FrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        backbone(image)
    finally:
        for h in hooks:
            h.remove()


def build_models(
    device: torch.device, min_size: int, max_size: int, cls_scale: float = 0.335, seed: int = 0,
    kernels: Tuple[str, ...] = ("fast",), **kwargs
):
    """torchvision's Mask R-CNN R50-FPN (COCO layout, random weights) and ``ml.from_torchvision`` of it,
    one per floor in ``kernels`` (a dict ``{"fast": model, ...}``).

    ``cls_scale`` multiplies the class-score weights, to set how many detections pass the 0.05 score
    threshold (0.335 gives ~50 of at most 100 on the CPU inference image; the count is reported).
    Both models get the same change because ours copies torchvision's weights afterwards.
    """
    from torchvision.models.detection import MaskRCNN as TVMaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    import mrcnn_lite as ml

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    tv = TVMaskRCNN(backbone, num_classes=91, min_size=min_size, max_size=max_size, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    calibrate_frozen_bn(tv.backbone.body, torch.randn(2, 3, min_size, max_size, generator=g))
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.weight.mul_(cls_scale)
    tv.to(device)
    ours = {name: ml.from_torchvision(tv, kernels=name) for name in kernels}
    return tv, ours


def make_batch(n: int, h: int, w: int, device: torch.device, seed: int = 0, objects: int = 4):
    """``n`` random images ``(3, h, w)`` in [0, 1] and targets with ``objects`` boxes each (ellipse masks)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        wh = torch.rand(objects, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
        x0 = torch.rand(objects, generator=g) * (w - wh[:, 0])
        y0 = torch.rand(objects, generator=g) * (h - wh[:, 1])
        boxes = torch.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], dim=1)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx, ry = wh[:, 0] / 2, wh[:, 1] / 2
        masks = (((xs - cx[:, None, None]) / rx[:, None, None]) ** 2
                 + ((ys - cy[:, None, None]) / ry[:, None, None]) ** 2 <= 1).to(torch.uint8)
        labels = torch.randint(1, 91, (objects,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return [im.to(device) for im in images], targets


# ----------------------------------------------------------------------------------------------------
# agreement: the timings compare equal computations
# ----------------------------------------------------------------------------------------------------


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check_agreement(tv, ours, train_images, train_targets, eval_images, ours_eval=None) -> dict:
    """Losses (same seed for the samplers) and detections of both models; max |difference| of each.

    ``ours_eval``: the model whose detections are compared (default ``ours``; e.g. its BN-folded copy).

    Float32 on a CPU or GPU: differences of ~1e-4 come from a different order of floating-point
    sums (the float64 equality tests in ``tests/`` are exact to 1e-6).
    """
    tv.train(), ours.train()
    torch.manual_seed(0)
    tv_losses = tv(train_images, train_targets)
    torch.manual_seed(0)
    our_losses = ours(train_images, train_targets)
    loss_diff = max(abs(float(tv_losses[k].detach()) - float(our_losses[k].detach())) for k in tv_losses)

    ours_eval = ours if ours_eval is None else ours_eval
    tv.eval(), ours.eval(), ours_eval.eval()
    with torch.no_grad():
        tv_out = tv(eval_images)
        our_out = ours_eval(eval_images)
    same_count = all(len(a["boxes"]) == len(b["boxes"]) for a, b in zip(tv_out, our_out))
    det_diff = {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    labels_equal = True
    if same_count:
        for a, b in zip(our_out, tv_out):
            labels_equal &= bool(torch.equal(a["labels"], b["labels"]))
            for k in det_diff:
                det_diff[k] = max(det_diff[k], _max_abs_diff(a[k], b[k]))
    detections = [len(o["boxes"]) for o in tv_out]
    ok = (same_count and labels_equal and loss_diff < 1e-2 and det_diff["scores"] < 1e-3
          and det_diff["boxes"] < 1e-1 and det_diff["masks"] < 1e-2)
    return {
        "ok": bool(ok),
        "losses_max_abs_diff": loss_diff,
        "same_number_of_detections": bool(same_count),
        "labels_equal": bool(labels_equal),
        "detections_max_abs_diff": det_diff,
        "detections": detections,
        "losses": {k: float(v.detach()) for k, v in tv_losses.items()},
    }


# ----------------------------------------------------------------------------------------------------
# RoIAlign: from-scratch vs torchvision's kernel
# ----------------------------------------------------------------------------------------------------


def roi_align_inputs(device, dtype=torch.float32, num_rois=512, channels=256, image_hw=(800, 1088), seed=0):
    """FPN features at strides 4..32 (keys '0'..'3'), ``num_rois`` proposal-like boxes, the image size.

    Boxes have log-uniform sizes 16..640 px and centres anywhere, clipped to the image.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    feats = {}
    for i, stride in enumerate((4, 8, 16, 32)):
        shape = (1, channels, -(-h // stride), -(-w // stride))
        feats[str(i)] = torch.randn(shape, generator=g, dtype=dtype).to(device)
    size = torch.exp(torch.empty(num_rois, 2, dtype=dtype).uniform_(0, 1, generator=g) * (6.4 - 2.77) + 2.77)
    ctr = torch.rand(num_rois, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    boxes = torch.cat([ctr - size / 2, ctr + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return feats, [boxes.to(device)], [image_hw]


def roi_align_benchmark(device, reps=10, warmup=2, num_rois=512, channels=256, image_hw=(800, 1088)) -> dict:
    """Time MultiScaleRoIAlign (7x7, sampling_ratio 2) with three kernels; forward and forward+backward.

    Variants: ``reference`` (``mrcnn_lite.ops.roi_align``), ``fast`` (``mrcnn_lite.fast.roi_align``),
    ``torchvision`` (torchvision's module and kernel).
    Returns ``{"median_s": {variant: {mode: s}}, "max_abs_diff_vs_tv": {variant: x}, ...}``.
    """
    import torchvision

    from mrcnn_lite import fast, ops

    device = torch.device(device)
    feats, boxes, shapes = roi_align_inputs(device, num_rois=num_rois, channels=channels, image_hw=image_hw)
    names = list(feats)
    variants = {
        "reference": ops.MultiScaleRoIAlign(names, 7, 2, roi_align=ops.roi_align),
        "fast": ops.MultiScaleRoIAlign(names, 7, 2, roi_align=fast.roi_align),
        "torchvision": torchvision.ops.MultiScaleRoIAlign(names, 7, 2),
    }
    leaves = {k: v.detach().requires_grad_(True) for k, v in feats.items()}

    def run(pool, backward):
        if backward:
            for t in leaves.values():
                t.grad = None
            out = pool(leaves, boxes, shapes)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                pool(feats, boxes, shapes)

    with torch.no_grad():
        outs = {k: p(feats, boxes, shapes) for k, p in variants.items()}
    max_diff = {k: _max_abs_diff(o, outs["torchvision"]) for k, o in outs.items()}

    median: Dict[str, Dict[str, float]] = {k: {} for k in variants}
    for mode in ("forward", "forward+backward"):
        fns = {k: (lambda p=p, b=(mode != "forward"): run(p, b)) for k, p in variants.items()}
        med, _ = interleaved_medians(fns, device, reps, warmup)
        for k, v in med.items():
            median[k][mode] = v
    return {"median_s": median, "max_abs_diff_vs_tv": max_diff, "rois": num_rois, "channels": channels,
            "image": list(image_hw), "output_size": 7, "sampling_ratio": 2}


# ----------------------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------------------


def sizes_for(device: torch.device, quick: bool) -> dict:
    """Image sizes and batch sizes of every measurement (stated in the output)."""
    if quick:  # a few seconds on a CPU: for tests, not for conclusions
        return dict(train_batch=2, train_hw=(128, 192), infer_hw=(128, 192), min_size=128, max_size=192,
                    roi_rois=64, roi_channels=32, roi_image=(128, 192), objects=3,
                    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
                    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)
    if device.type == "cuda":
        return dict(train_batch=2, train_hw=(800, 1333), infer_hw=(800, 1333), min_size=800, max_size=1333,
                    roi_rois=1024, roi_channels=256, roi_image=(800, 1088), objects=6)
    return dict(train_batch=2, train_hw=(320, 480), infer_hw=(320, 480), min_size=320, max_size=480,
                roi_rois=512, roi_channels=256, roi_image=(800, 1088), objects=4)


def _model_kwargs(cfg: dict) -> dict:
    """The torchvision MaskRCNN keyword arguments among the sizes (the quick run uses fewer proposals)."""
    keys = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test", "box_batch_size_per_image")
    return {k: cfg[k] for k in keys if k in cfg}


def run_benchmark(device="cpu", reps=5, warmup=1, quick=False, log=print, compile_mode: Optional[str] = None,
                  fold_bn: bool = False, kernels: Tuple[str, ...] = ("fast",)) -> dict:
    """Everything: agreement check, train step (fp32, AMP), inference, roi_align. Returns the JSON dict.

    ``kernels``: the floors of mrcnn_lite to time (``"fast"``, ``"reference"``); each gets its own rows in
    ``result["floors"][name]``, and the first one's rows are also ``result["train_step"]`` etc.
    ``compile_mode``: ``None`` (no compilation) or a ``torch.compile`` mode (``"default"``, ``"reduce-overhead"``,
    ``"max-autotune"``) for ``compile_backbone``; ``fold_bn``: time inference with frozen BN folded into the convs.
    """
    import torchvision

    from mrcnn_lite.fast import compile_backbone, fold_frozen_bn

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda asked for, but CUDA is not available")
    cfg = sizes_for(device, quick)
    tv, ours = build_models(device, cfg["min_size"], cfg["max_size"], kernels=tuple(kernels), **_model_kwargs(cfg))
    b, (h, w) = cfg["train_batch"], cfg["train_hw"]
    train_images, train_targets = make_batch(b, h, w, device, seed=1, objects=cfg["objects"])
    eval_images, _ = make_batch(1, *cfg["infer_hw"], device, seed=2)

    # inference only: training keeps the BN layers
    ours_eval = {k: (fold_frozen_bn(m) if fold_bn else m) for k, m in ours.items()}
    if compile_mode is not None:
        mode = None if compile_mode == "default" else compile_mode
        for k in ours:
            compile_backbone(ours[k], mode=mode)
            if ours_eval[k] is not ours[k]:
                compile_backbone(ours_eval[k], mode=mode)
        log(f"bench: torch.compile (mode={compile_mode}) of mrcnn_lite's backbone and RPN head; "
            "the agreement check below compiles ...")
        warmup = max(warmup, 1)  # the first backward pass compiles the backward graph: never time it

    agreement = {}
    for k in ours:
        log(f"bench: checking that mrcnn_lite ({k}) and torchvision agree ({device}) ...")
        agreement[k] = check_agreement(tv, ours[k], train_images, train_targets, eval_images, ours_eval[k])

    # ---- train step ----
    def make_step(model, amp: bool):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cuda") if amp else None

        def step():
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                losses = model(train_images, train_targets)
                loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        return step

    def rows(fns: Dict[str, Callable[[], object]], per_image: Optional[int] = None) -> Dict[str, dict]:
        """Time ours (each floor) and torchvision's, interleaved; one row per floor."""
        med, peak = interleaved_medians(fns, device, reps, warmup)
        out = {}
        for k in ours:
            extra = {"images_per_s": {"mrcnn_lite": per_image / med[k], "torchvision": per_image / med["tv"]}} \
                if per_image else {"detections": agreement[k]["detections"][0]}
            out[k] = _entry(med[k], med["tv"], {"mrcnn_lite": peak[k], "torchvision": peak["tv"]}, **extra)
        return out

    tv.train()
    for m in ours.values():
        m.train()
    log(f"bench: train step, batch {b} x {h}x{w}, fp32 ...")
    train = rows({**{k: make_step(m, False) for k, m in ours.items()}, "tv": make_step(tv, False)}, b)
    if device.type == "cuda":
        log("bench: train step, AMP (float16 autocast + GradScaler) ...")
        train_amp = rows({**{k: make_step(m, True) for k, m in ours.items()}, "tv": make_step(tv, True)}, b)
    else:
        train_amp = {k: {"skipped": "AMP (float16 autocast) is measured on CUDA only"} for k in ours}

    # ---- inference ----
    tv.eval()
    for m in ours_eval.values():
        m.eval()

    def make_infer(model):
        def infer():
            with torch.no_grad():
                return model(eval_images)
        return infer

    log(f"bench: inference, batch 1 x {cfg['infer_hw'][0]}x{cfg['infer_hw'][1]}, masks pasted ...")
    inference = rows({**{k: make_infer(m) for k, m in ours_eval.items()}, "tv": make_infer(tv)})

    # ---- roi_align ----
    log("bench: roi_align, reference and fast vs torchvision's kernel ...")
    roi = roi_align_benchmark(device, reps=reps, warmup=warmup, num_rois=cfg["roi_rois"],
                              channels=cfg["roi_channels"], image_hw=cfg["roi_image"])
    m = roi["median_s"]
    roi_align = {
        k: {"mrcnn_lite_s": m[k]["forward+backward"], "torchvision_s": m["torchvision"]["forward+backward"],
            "speedup": m["torchvision"]["forward+backward"] / m[k]["forward+backward"], "mode": "forward+backward",
            "forward": {"mrcnn_lite_s": m[k]["forward"], "torchvision_s": m["torchvision"]["forward"]},
            "max_abs_diff_vs_tv": roi["max_abs_diff_vs_tv"][k]}
        for k in ("fast", "reference")
    }

    floors = {k: {"train_step": train[k], "train_step_amp": train_amp[k], "inference": inference[k],
                  "roi_align": roi_align[k], "agreement": agreement[k],
                  # what the model called, recorded as it ran (the agreement check and timed runs)
                  "kernels_used": ours[k].kernels_used()}
              for k in ours}
    first = floors[kernels[0]]
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average": list(_loadavg()),
        "config": {
            "train": f"batch {b} x {h}x{w}", "inference": f"batch 1 x {cfg['infer_hw'][0]}x{cfg['infer_hw'][1]}",
            "min_size": cfg["min_size"], "max_size": cfg["max_size"], "reps": reps, "warmup": warmup,
            "quick": quick, "roi_align": f"{cfg['roi_rois']} RoIs, C={cfg['roi_channels']}, 7x7, "
                                         f"sampling_ratio 2, 4 levels, image {cfg['roi_image'][0]}x{cfg['roi_image'][1]}",
            "kernels": list(kernels),
            "mrcnn_lite_options": {"compile": compile_mode, "fold_bn": bool(fold_bn)},
        },
        "floors": floors,
        "agreement": first["agreement"],
        "train_step": first["train_step"],
        "train_step_amp": first["train_step_amp"],
        "inference": first["inference"],
        "roi_align": first["roi_align"],
    }


def _loadavg() -> Tuple[float, ...]:
    try:
        import os

        return tuple(round(x, 2) for x in os.getloadavg())
    except (OSError, AttributeError):
        return ()


def format_table(result: dict) -> str:
    """The results as a plain-text table: one block per floor of mrcnn_lite."""
    c = result["config"]
    lines = [
        f"device={result['device']} torch={result['torch']} torchvision={result['torchvision']} "
        f"threads={result['threads']} load={result['load_average']} reps={c['reps']} (medians, interleaved)",
        f"train: {c['train']}   inference: {c['inference']}   roi_align: {c['roi_align']}",
    ]
    opts = c.get("mrcnn_lite_options", {})
    if opts.get("compile") or opts.get("fold_bn"):
        lines.append(f"mrcnn_lite options: compile={opts.get('compile')} (backbone + RPN head), "
                     f"fold_bn={opts.get('fold_bn')} (inference)")
    for name, floor in result["floors"].items():
        lines.append(f"-- mrcnn_lite kernels={name!r}; called: "
                     + "; ".join(f"{op} {impl}" for op, impl in floor["kernels_used"].items()))
        lines.append(f"{'measurement':<18}{'mrcnn_lite':>12}{'torchvision':>13}{'speedup':>9}{'peak MiB (ours/tv)':>22}")
        for key in ("train_step", "train_step_amp", "inference", "roi_align"):
            row = floor[key]
            if "skipped" in row:
                lines.append(f"{key:<18}{'skipped: ' + row['skipped']}")
                continue
            peak = row.get("peak_mem_mib", {})
            mem = f"{peak.get('mrcnn_lite', 'n/a')}/{peak.get('torchvision', 'n/a')}" if peak else "n/a"
            lines.append(f"{key:<18}{row['mrcnn_lite_s'] * 1e3:>10.1f}ms{row['torchvision_s'] * 1e3:>11.1f}ms"
                         f"{row['speedup']:>8.2f}x{mem:>22}")
        a = floor["agreement"]
        d = a["detections_max_abs_diff"]
        lines.append(
            f"agreement: {'OK' if a['ok'] else 'FAILED'}  losses max|diff|={a['losses_max_abs_diff']:.2e}  "
            f"detections {a['detections']} same count={a['same_number_of_detections']} "
            f"labels equal={a['labels_equal']}  "
            f"max|diff| boxes={d['boxes']:.2e} scores={d['scores']:.2e} masks={d['masks']:.2e}"
        )
    lines.append("speedup = torchvision time / mrcnn_lite time (> 1: mrcnn_lite is faster)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` command's options (``python -m mrcnn_lite bench --help``)."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both models run")
    parser.add_argument("--kernels", default="fast", choices=["fast", "reference", "both"],
                        help="which floor of mrcnn_lite to time (both: fast and reference, in one run)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per model (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (numbers mean little)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"], metavar="MODE",
                        help="torch.compile mrcnn_lite's backbone + RPN head (MODE: default, reduce-overhead = "
                             "CUDA graphs, max-autotune); off by default")
    parser.add_argument("--fold-bn", action="store_true",
                        help="time mrcnn_lite's inference with frozen BN folded into the convs; off by default")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON. Returns 0, or 1 if the models disagree."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    choice = getattr(args, "kernels", "fast")
    kernels = ("fast", "reference") if choice == "both" else (choice,)
    result = run_benchmark(args.device, reps=args.reps, warmup=args.warmup, quick=args.quick, log=log,
                           compile_mode=getattr(args, "compile", None), fold_bn=getattr(args, "fold_bn", False),
                           kernels=kernels)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if all(f["agreement"]["ok"] for f in result["floors"].values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrcnn_lite.tools.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
