"""The whole benchmark: agreement check, train step (fp32, AMP), inference, RoIAlign; and its table."""
from __future__ import annotations

import platform
from typing import Callable, Dict, Optional, Tuple

import torch

from .models import build_models, check_agreement, make_batch
from .roi_align import roi_align_benchmark
from .timing import interleaved_medians, result_row


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
            out[k] = result_row(med[k], med["tv"], {"mrcnn_lite": peak[k], "torchvision": peak["tv"]}, **extra)
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
