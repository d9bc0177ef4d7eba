"""The side-by-side benchmark runs and its outputs agree (no speed assertions: targets live in the bench).

Also covers the exact-same-result rewrites made for speed: both mask-pasting paths and the
level-grouped MultiScaleRoIAlign against torchvision, and channels-last against NCHW.
"""
import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torchvision.models.detection import roi_heads as tv_rh

import mrcnn_lite as ml
from mrcnn_lite import bench
from mrcnn_lite.model import mask_head as mh


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mrcnn_lite.bench", "--quick", "--reps", "1", "--warmup", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("device", "torch", "torchvision", "threads", "config", "train_step", "train_step_amp",
                "inference", "roi_align", "agreement"):
        assert key in result, key
    assert result["device"] == "cpu" and result["config"]["quick"]
    assert result["config"]["mrcnn_lite_options"] == {"compile": None, "fold_bn": False}
    # on a CPU the model pools with the from-scratch roi_align (kernels.roi_align_fastest), and says so
    assert result["config"]["mrcnn_lite_kernels"] == {
        "roi_align": "mrcnn_lite (pooling), torchvision (mask targets)", "nms": "torchvision"}
    assert "mrcnn_lite kernels: roi_align mrcnn_lite (pooling)" in proc.stdout
    for key in ("train_step", "inference", "roi_align"):
        row = result[key]
        assert row["mrcnn_lite_s"] > 0 and row["torchvision_s"] > 0
        assert row["speedup"] == pytest.approx(row["torchvision_s"] / row["mrcnn_lite_s"])
    assert "skipped" in result["train_step_amp"]  # AMP is timed on CUDA only
    assert result["inference"]["peak_mem_mib"]["mrcnn_lite"] == "n/a"
    agreement = result["agreement"]
    assert agreement["ok"] and agreement["same_number_of_detections"] and agreement["labels_equal"]
    assert sum(agreement["detections"]) > 0
    assert "train_step" in proc.stdout and "speedup" in proc.stdout  # the table


def test_add_arguments_and_cli_help():
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--json", "x.json", "--reps", "3", "--quick"])
    assert (args.device, args.json, args.reps, args.quick) == ("cpu", "x.json", 3, True)
    assert args.compile is None and not args.fold_bn  # the opt-in speed-ups are off by default
    args = parser.parse_args(["--compile", "--fold-bn"])
    assert args.compile == "default" and args.fold_bn
    assert parser.parse_args(["--compile", "reduce-overhead"]).compile == "reduce-overhead"


def _boxes(n, h, w, g, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) * 0.9 - 2
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) * 0.5 + 0.5
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("method", ["loop", "grid", "auto"])
def test_paste_methods_match_torchvision(method):
    g = torch.Generator().manual_seed(3)
    for h, w in ((61, 90), (120, 45)):
        masks = torch.rand(25, 1, 28, 28, generator=g, dtype=torch.float64)
        boxes = _boxes(25, h, w, g, torch.float64)
        a = mh.paste_masks_in_image(masks, boxes, (h, w), method=method)
        b = tv_rh.paste_masks_in_image(masks, boxes, (h, w))
        assert torch.equal(a > 0, b > 0)
        assert (a - b).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="method"):
        mh.paste_masks_in_image(masks, boxes, (h, w), method="fast")


def test_multiscale_roi_align_grouped_by_level_matches_torchvision_with_grad():
    g = torch.Generator().manual_seed(4)
    feats = {str(i): torch.randn(2, 8, 64 // 2 ** i, 96 // 2 ** i, generator=g, dtype=torch.float64)
             for i in range(4)}
    boxes = [_boxes(40, 256, 384, g, torch.float64).clamp(0, 256), _boxes(0, 256, 384, g, torch.float64)]
    shapes = [(256, 384), (256, 384)]
    ours = ml.ops.MultiScaleRoIAlign(list(feats), 7, 2, roi_align=torchvision.ops.roi_align)
    theirs = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 2)
    leaves_a = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    leaves_b = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    a, b = ours(leaves_a, boxes, shapes), theirs(leaves_b, boxes, shapes)
    assert torch.equal(a, b)
    w = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (a * w).sum().backward()
    (b * w).sum().backward()
    for k in feats:
        assert (leaves_a[k].grad - leaves_b[k].grad).abs().max().item() < 1e-12


def test_channels_last_same_detections_as_nchw():
    torch.manual_seed(0)
    cfg = ml.config.tiny(num_classes=4)
    model_cl = ml.build_model(cfg).double().eval()
    model_nchw = ml.model.mask_rcnn.MaskRCNN(cfg, channels_last=False).double().eval()
    model_nchw.load_state_dict(model_cl.state_dict())
    assert model_cl.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = [torch.rand(3, 96, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(5))]
    with torch.no_grad():
        feats_cl = model_cl.backbone(images[0][None].contiguous(memory_format=torch.channels_last))
        feats_nchw = model_nchw.backbone(images[0][None])
        a, b = model_cl(images), model_nchw(images)
    for k in feats_cl:
        assert (feats_cl[k] - feats_nchw[k]).abs().max().item() < 1e-10
    assert len(a[0]["boxes"]) == len(b[0]["boxes"])
    for k in ("boxes", "scores", "masks"):
        assert a[0][k].shape == b[0][k].shape
        if a[0][k].numel():
            assert (a[0][k] - b[0][k]).abs().max().item() < 1e-8
