"""The model on a GPU, both floors: CUDA against CPU, fast against reference, what the fast floor calls there,
AMP, and the stages written without host-device syncs. Skipped without CUDA; ``tools/gpu_check.sh``
runs this file (it imports nothing that needs pycocotools or ipywidgets).

The op-level CUDA tests live with their ops: ``test_ops_roi.py`` and ``test_ops_nms.py`` (``-k cuda``).
"""
import pytest
import torch

import mrcnn_lite as ml
from mrcnn_lite import ops
from mrcnn_lite.fast import CachedFrozenBatchNorm2d
from mrcnn_lite.model.matching import Matcher
from mrcnn_lite.model.transform import resize_boxes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _batch(dtype=torch.float64, seed=0):
    """Two random images and targets with rectangular masks (no dataset import: keeps this file light)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 96, 128, generator=g, dtype=dtype), torch.rand(3, 112, 80, generator=g, dtype=dtype)]
    targets = []
    for img, n in zip(images, (3, 2)):
        h, w = img.shape[-2:]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 8
        boxes = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(dtype), "labels": torch.randint(1, 4, (n,), generator=g), "masks": masks})
    return images, targets


def _to(images, targets, dev):
    return [i.to(dev) for i in images], [{k: v.to(dev) for k, v in t.items()} for t in targets]


def _models(dtype=torch.float64):
    torch.manual_seed(0)
    fast = ml.build_model(ml.config.tiny(num_classes=4, kernels="fast", box_score_thresh=0.0)).to(dtype)
    ref = ml.build_model(ml.config.tiny(num_classes=4, kernels="reference", box_score_thresh=0.0)).to(dtype)
    ref.load_state_dict(fast.state_dict())
    return {"fast": fast, "reference": ref}


def _assert_same(a_out, b_out, tol):
    assert sum(len(o["boxes"]) for o in a_out) > 0
    for a, b in zip(a_out, b_out):
        assert torch.equal(a["labels"].cpu(), b["labels"].cpu())
        for k in ("boxes", "scores", "masks"):
            torch.testing.assert_close(a[k].cpu(), b[k].cpu(), rtol=tol, atol=tol)


def test_inference_on_cuda_equals_cpu_on_both_floors():
    images, _ = _batch()
    for name, model in _models().items():
        model.eval()
        with torch.no_grad():
            cpu_out = model(images)
            cuda_out = model.cuda()(_to(images, [], "cuda")[0])
        _assert_same(cuda_out, cpu_out, 1e-9)


def test_training_on_cuda_fast_equals_reference():
    images, targets = _to(*_batch(), "cuda")
    losses, grads = {}, {}
    for name, model in _models().items():
        model.cuda().train()
        torch.manual_seed(3)  # both samplers make the same random calls on the GPU
        losses[name] = model(images, targets)
        sum(losses[name].values()).backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for k in losses["fast"]:
        torch.testing.assert_close(losses["reference"][k], losses["fast"][k], rtol=1e-10, atol=1e-12)
    for n, g in grads["fast"].items():
        torch.testing.assert_close(grads["reference"][n], g, rtol=1e-8, atol=1e-10, msg=n)


def test_fast_floor_calls_torchvision_and_grid_pasting_on_cuda():
    images, targets = _to(*_batch(torch.float32), "cuda")
    model = _models(torch.float32)["fast"].cuda().train()
    model(images, targets)
    model.eval()
    with torch.no_grad():
        model(images)
    used = model.kernels_used()
    assert used["roi_align"] == "torchvision.ops.roi_align"
    assert used["batched_nms"] == "torchvision.ops.batched_nms"
    assert used["paste_masks_in_image"] == "mrcnn_lite.fast.paste_masks_grid"


def test_amp_training_step_on_cuda():
    images, targets = _to(*_batch(torch.float32), "cuda")
    model = _models(torch.float32)["fast"].cuda().train()
    torch.manual_seed(1)
    fp32 = model(images, targets)
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=torch.float16):
        amp = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in amp.values())
    sum(amp.values()).backward()
    assert set(amp) == set(fp32)


def test_no_sync_in_sync_free_stages_on_cuda():
    dev = torch.device("cuda")
    quality = torch.rand(2, 3, 500, device=dev)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0]], device=dev)
    bn = CachedFrozenBatchNorm2d(8).to(dev)
    x = torch.randn(1, 8, 4, 4, device=dev)
    bn(x)  # the first call computes (and checks) scale and shift
    transform = ml.build_model(ml.config.tiny(num_classes=4)).transform.to(dev)
    transform.normalize(torch.rand(3, 8, 8, device=dev))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
        coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
        coder.decode_single(coder.encode_single(boxes + 1, boxes), boxes)
        resize_boxes(boxes, (100, 100), (200, 150))
        bn(x)
        transform.normalize(torch.rand(3, 8, 8, device=dev))
    finally:
        torch.cuda.set_sync_debug_mode("default")
