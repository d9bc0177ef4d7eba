"""The fast floor's speed work must not change results: AMP with box math in float32, cached and folded
frozen BN, fewer host-device syncs, which kernel the fast floor dispatches to, and the opt-in torch.compile
of the backbone. (tests/test_fast.py proves each fast kernel equal to its reference.)

AMP is tested on the CPU with ``torch.autocast("cpu", dtype=torch.bfloat16)``: the same autocast
machinery as on a GPU, and bfloat16 is the coarser of the two low-precision types (8 significant bits).
"""
import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import mrcnn_lite as ml
from mrcnn_lite import fast, ops
from mrcnn_lite.data.shapes import ShapesDataset
from mrcnn_lite.fast import (CachedFrozenBatchNorm2d, HostSyncCounter, SyncFreeBalancedPositiveNegativeSampler,
                             compile_backbone, fold_frozen_bn)
from mrcnn_lite.model.backbone import resnet_fpn_backbone
from mrcnn_lite.model.frozen_bn import FrozenBatchNorm2d
from mrcnn_lite.build import kernels_for
from mrcnn_lite.model.matching import BalancedPositiveNegativeSampler, Matcher
from mrcnn_lite.model.transform import resize_boxes

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def shapes_batch():
    ds = ShapesDataset(num_images=2, image_size=128, seed=0)
    images, targets = zip(*[ds[i] for i in range(2)])
    return list(images), [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]


def _tiny(seed=0, **changes):
    torch.manual_seed(seed)
    return ml.build_model(ml.config.tiny(num_classes=4, **changes))


# ================================================================================================ AMP
def test_amp_eval_boxes_and_scores_are_float32(shapes_batch):
    images, _ = shapes_batch
    model = _tiny().eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)  # random weights: sharpen to get detections
        with torch.autocast(**BF16):
            out, inter = model(images, return_intermediates=True)
    assert inter["features"]["0"].dtype == torch.bfloat16  # autocast was really on
    assert all(a.dtype == torch.float32 for a in inter["anchors"])
    assert all(p.dtype == torch.float32 for p in inter["proposals"])
    assert inter["class_logits"].dtype == torch.float32 and inter["mask_logits"].dtype == torch.float32
    assert sum(len(o["boxes"]) for o in out) > 0
    for o in out:
        assert o["boxes"].dtype == o["scores"].dtype == o["masks"].dtype == torch.float32


def test_amp_training_losses_are_float32_finite_and_close_to_fp32(shapes_batch):
    """bfloat16 convs and fc layers change the losses by < 1 % on these inputs (measured: at most 0.7 % over
    three seeds of a fresh model; 3.3 % for the classifier loss of such a model after two SGD steps).
    The test allows 5 % relative (+ 1e-3 absolute for the small box losses): bfloat16 kernels round
    differently on other CPUs, and the box head samples from slightly different proposals."""
    images, targets = shapes_batch
    model = _tiny(seed=1).train()
    torch.manual_seed(5)
    fp32 = model(images, targets)
    torch.manual_seed(5)
    with torch.autocast(**BF16):
        amp = model(images, targets)
    assert set(amp) == set(fp32)
    for k in fp32:
        assert amp[k].dtype == torch.float32 and torch.isfinite(amp[k]), k
        assert abs(amp[k].item() - fp32[k].item()) <= 0.05 * abs(fp32[k].item()) + 1e-3, (k, amp[k], fp32[k])
    sum(amp.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _features_and_boxes(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(1, 8, 256 // 2 ** i, 352 // 2 ** i, generator=g).to(dtype) for i in range(4)}
    boxes = [torch.tensor([[1000.3, 500.7, 1200.6, 700.2], [12.3, 40.6, 30.9, 61.2], [300.2, 100.1, 700.9, 600.4]])]
    return feats, boxes, [(1024, 1408)]


@pytest.mark.parametrize("kernel", ["reference", "fast", "torchvision"])
def test_multiscale_roi_align_samples_in_float32_under_autocast(kernel):
    """The kernel sees float32 features and float32 boxes; the result comes back in the features' dtype."""
    roi_align = {"reference": ops.roi_align, "fast": fast.roi_align, "torchvision": torchvision.ops.roi_align}[kernel]
    seen = []

    def recording_roi_align(input, rois, **kwargs):
        seen.append((input.dtype, rois.dtype))
        return roi_align(input, rois, **kwargs)

    feats, boxes, shapes = _features_and_boxes()
    pool = ops.MultiScaleRoIAlign(list(feats), 7, 2, roi_align=recording_roi_align)
    low = {k: v.bfloat16() for k, v in feats.items()}
    with torch.autocast(**BF16):
        out = pool(low, boxes, shapes)
    assert seen and all(s == (torch.float32, torch.float32) for s in seen)
    assert out.dtype == torch.bfloat16
    # exactly the float32 result for the (bfloat16-rounded) features, rounded once at the end
    reference = ops.MultiScaleRoIAlign(list(feats), 7, 2, roi_align=roi_align)(
        {k: v.float() for k, v in low.items()}, boxes, shapes)
    assert torch.equal(out, reference.bfloat16())


def test_box_coordinate_1000_3_survives_roi_align_under_autocast():
    """A feature map that is a ramp in x, so the pooled value *is* the sampled x position: rounding the box
    to bfloat16 (1000.3 -> 1000) would shift it by 0.3 px, far more than the output's own rounding."""
    x = torch.arange(352, dtype=torch.float32)
    ramp = (x - 250.0).expand(1, 1, 256, 352).contiguous()  # feature value at column c is c - 250, stride 4
    boxes = [torch.tensor([[1000.3, 500.0, 1008.3, 508.0]])]
    pool = ops.MultiScaleRoIAlign(["0"], (1, 1), 2)
    with torch.autocast(**BF16):
        out = pool({"0": ramp.bfloat16()}, boxes, [(1024, 1408)])
    exact = (1000.3 + 1008.3) / 2 / 4 - 250.0  # the box centre's column at stride 4 (aligned=False), minus 250
    assert out.item() == pytest.approx(exact, abs=4e-3)  # 4e-3: half a bfloat16 step at 1.0, the output's rounding
    rounded_box = boxes[0].bfloat16().float()  # what casting the boxes to the features' dtype would do
    assert rounded_box[0].tolist()[::2] == [1000.0, 1008.0]
    assert abs(out.item() - ((rounded_box[0, 0] + rounded_box[0, 2]).item() / 8 - 250.0)) > 0.05


@pytest.mark.parametrize("roi_align", [ops.roi_align, fast.roi_align], ids=["reference", "fast"])
def test_from_scratch_roi_align_under_autocast_equals_float32(roi_align):
    feats, boxes, _ = _features_and_boxes()
    rois = torch.cat([torch.zeros(3, 1), boxes[0] / 4], 1)
    x = feats["0"][:, :, :, :]
    with torch.autocast(**BF16):
        out = roi_align(x, rois, 7, 1.0, -1)  # float32 input under autocast: stays float32, no bf16 matmul
    assert out.dtype == torch.float32
    assert torch.equal(out, roi_align(x, rois, 7, 1.0, -1))


def test_box_coder_decodes_low_precision_deltas_in_float32():
    coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = torch.tensor([[1000.3, 500.7, 1100.6, 620.2]])
    deltas = torch.tensor([[0.1, -0.2, 0.05, 0.3]]).bfloat16()
    out = coder.decode_single(deltas, boxes)
    assert out.dtype == torch.float32
    assert torch.equal(out, coder.decode_single(deltas.float(), boxes))


# ================================================================================================ frozen BN
def test_frozen_bn_state_dict_keys_unchanged_and_cache_follows_the_buffers():
    bn = CachedFrozenBatchNorm2d(4, eps=1e-5)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(bn(x), x / (1 + 1e-5) ** 0.5)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]  # the cache is not state
    with torch.no_grad():  # an in-place write (version counter) ...
        bn.running_var.copy_(torch.full((4,), 4.0))
    torch.testing.assert_close(bn(x), x / (4 + 1e-5) ** 0.5)
    bn.load_state_dict({"weight": torch.full((4,), 2.0), "bias": torch.ones(4), "running_mean": torch.ones(4),
                        "running_var": torch.ones(4) - 1e-5})  # ... and a load are both seen
    torch.testing.assert_close(bn(x), (x - 1) * 2 + 1)
    bn.double()  # new buffers
    assert bn(x.double()).dtype == torch.float64
    torch.testing.assert_close(bn(x.double()), (x.double() - 1) * 2 + 1)
    clone = copy.deepcopy(bn)
    with torch.no_grad():
        clone.bias.zero_()
    torch.testing.assert_close(clone(x.double()), (x.double() - 1) * 2)
    torch.testing.assert_close(bn(x.double()), (x.double() - 1) * 2 + 1)  # the original is untouched


def test_frozen_bn_after_inference_mode_still_trains():
    bn = CachedFrozenBatchNorm2d(3)
    with torch.inference_mode():
        bn(torch.randn(1, 3, 2, 2))
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    bn(x).sum().backward()  # cached tensors from inference mode would refuse to be saved for backward
    assert x.grad is not None


def test_frozen_bn_under_autocast_float16_overflow_falls_back_to_float32():
    """eps = 0 and a near-zero running_var: the scale (1 / sqrt(1e-12) = 1e6) does not fit float16 (max 65504).
    The fast layer, which casts scale and shift to the activations' dtype, warns and stays in float32."""
    bn = CachedFrozenBatchNorm2d(2, eps=0.0)
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([1e-12, 1.0]))
    x = torch.full((1, 2, 2, 2), 2.0 ** -20).half()  # exactly representable (a float16 subnormal)
    with pytest.warns(UserWarning, match="overflows torch.float16"):
        y = bn(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.testing.assert_close(y[0, 0], torch.full((2, 2), 2.0 ** -20 * 1e6), rtol=1e-5, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bn(x.bfloat16()).dtype == torch.bfloat16  # bfloat16 has float32's range: no overflow
        assert bn(torch.ones(1, 2, 1, 1).half() * 0).dtype == torch.float32  # cached decision: no new warning
    normal = CachedFrozenBatchNorm2d(2, eps=0.0)
    assert normal(x).dtype == torch.float16  # ordinary statistics: the layer stays in float16


def test_reference_frozen_bn_computes_in_float32_and_returns_the_activations_dtype():
    """The reference layer never rounds scale or shift to float16: the same statistics give the exact
    product (0.95, well inside float16's range), rounded once to the input's dtype, without a warning."""
    bn = FrozenBatchNorm2d(2, eps=0.0)
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([1e-12, 1.0]))
    x = torch.full((1, 2, 2, 2), 2.0 ** -20).half()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = bn(x)
    assert y.dtype == torch.float16
    assert torch.equal(y[0, 0], torch.full((2, 2), 2.0 ** -20 * 1e6).half())
    assert torch.equal(y[0, 1], x[0, 1])


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fold_frozen_bn_backbone(dtype, rtol, randomise_norm_stats):
    """float64: folding is exact to rounding (measured 6e-15 relative on ResNet-50). float32: the conv sums
    differently rounded products; measured 1.4e-6 relative to the largest output, allowed 2e-5."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(ml.config.r50_fpn(trainable_layers=0)).to(dtype).eval()
    randomise_norm_stats(backbone, seed=1)
    keys = list(backbone.state_dict())
    folded = fold_frozen_bn(backbone)
    assert list(backbone.state_dict()) == keys  # the original keeps torchvision's keys and its BN layers
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) == 53
    assert folded.body.layer1[0].downsample[1].__class__ is nn.Identity
    x = torch.rand(1, 3, 96, 128, dtype=dtype)
    with torch.no_grad():
        a, b = backbone(x), folded(x)
    for k in a:
        assert ((a[k] - b[k]).abs().max() / a[k].abs().max()).item() < rtol, k


def test_fold_frozen_bn_tiny_model_same_detections_and_channels_last(shapes_batch, randomise_norm_stats):
    images, _ = shapes_batch
    model = _tiny().double().eval()
    randomise_norm_stats(model, seed=2)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)
        folded = fold_frozen_bn(model)
        assert folded.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert folded.backbone.body.conv1.bias is not None
        a, b = model([im.double() for im in images]), folded([im.double() for im in images])
    assert sum(len(o["boxes"]) for o in a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"])
        for k in ("boxes", "scores", "masks"):
            assert (x[k] - y[k]).abs().max().item() < 1e-9, k
    assert fold_frozen_bn(model, inplace=True) is model


# ================================================================================================ host syncs
def test_matcher_and_box_coder_read_nothing_back():
    g = torch.Generator().manual_seed(0)
    quality = torch.rand(2, 3, 50, generator=g)
    quality[1, 2] = -1  # a padded GT row
    with HostSyncCounter() as counter:
        Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
        coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
        boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
        coder.decode_single(coder.encode_single(boxes + 1, boxes), boxes)
        resize_boxes(boxes, (100, 100), (200, 150))
    assert counter.total == 0, counter.counts


def test_sampler_reads_the_counts_of_all_images_once():
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 0.0]), torch.zeros(4), torch.tensor([-1.0, 1.0])]
    sampler = SyncFreeBalancedPositiveNegativeSampler(4, 0.5)
    with HostSyncCounter() as counter:
        torch.manual_seed(0)
        pos, neg = sampler.sample_indices(labels)
    assert dict(counter.counts) == {"tolist": 1}
    with HostSyncCounter() as reference_counter:  # the reference: two torch.where per image
        torch.manual_seed(0)
        ref_pos, ref_neg = BalancedPositiveNegativeSampler(4, 0.5).sample_indices(labels)
    assert dict(reference_counter.counts) == {"where(mask)": 6}
    assert all(torch.equal(a, b) for a, b in zip(pos + neg, ref_pos + ref_neg))  # the same draw
    torch.manual_seed(0)
    pos_masks, neg_masks = sampler(labels)  # the masks are the same draw
    for p, n, pm, nm in zip(pos, neg, pos_masks, neg_masks):
        assert torch.equal(p, torch.where(pm)[0]) and torch.equal(n, torch.where(nm)[0])
    assert [len(p) for p in pos] == [2, 0, 1] and [len(n) for n in neg] == [2, 4, 0]


def _count_model_reads(model, images, targets=None):
    """Host reads of one forward pass, leaving out the NMS calls (a data-dependent result size: inherent)."""
    counter = HostSyncCounter()
    rpn_nms, box_nms = model.rpn.nms_fn, model.roi_heads.batched_nms

    def quiet(nms):
        def call(*args):
            with counter.paused():
                return nms(*args)
        return call

    model.rpn.nms_fn, model.roi_heads.batched_nms = quiet(rpn_nms), quiet(box_nms)
    try:
        with counter:
            model(images, targets)
    finally:
        model.rpn.nms_fn, model.roi_heads.batched_nms = rpn_nms, box_nms
    return counter


# The host reads of the fast floor, B = 2 images, NMS left out (its result size depends on the data: inherent).
# Each is a sync on a GPU; every entry is "reads per call x calls".
TRAINING_READS = {
    "check_inputs: pixel, box, label and mask values of the whole batch": 1,
    "transform.torch_choice: the random min_size, one per image (a CPU tensor: no sync on a GPU)": 2,
    "RPN filter_proposals: one torch.where per image": 2,
    "RPN sampler: the counts of all images": 1,
    "RoI heads sampler: the counts of all images": 1,
    "fastrcnn_loss: torch.where(labels > 0)": 1,
    "mask branch: the positive RoIs, one torch.where per image": 2,
    "MultiScaleRoIAlign: the RoIs per level, box and mask branch": 2,
}
INFERENCE_READS = {
    "check_inputs: pixel values of the whole batch": 1,
    "RPN filter_proposals: one torch.where per image": 2,
    "postprocess_detections: one torch.where per image": 2,
    "MultiScaleRoIAlign: the RoIs per level, box and mask branch": 2,
    "mask pasting: the boxes of each image (the CPU loop; the GPU's grid_sample reads nothing)": 2,
}


def test_host_reads_per_training_step_and_inference(shapes_batch):
    images, targets = shapes_batch
    model = _tiny().train()
    # Count what a GPU would run: torchvision's roi_align kernel (on a CPU the fast floor pools with
    # fast.roi_align, which reads nothing either).
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        pool.roi_align = torchvision.ops.roi_align
    model(images, targets)  # the first call makes the cached constants (normalisation mean and std)
    counter = _count_model_reads(model, images, targets)
    assert counter.total == sum(TRAINING_READS.values()), dict(counter.counts)
    model.eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)
        counter = _count_model_reads(model, images)
    assert counter.total == sum(INFERENCE_READS.values()), dict(counter.counts)


# ================================================================================================ torch.compile
def test_compile_backbone_traces_as_one_graph_and_keeps_results(shapes_batch):
    """The ``eager`` backend runs TorchDynamo's tracing (``fullgraph=True``: no graph break allowed) without the
    C++ compiler of the default backend, which needs about a minute for this model on 2 CPU cores."""
    images, _ = shapes_batch
    model = _tiny().eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)
        expected = model(images)
    keys = list(model.state_dict())
    torch._dynamo.reset()
    compile_backbone(model, backend="eager", fullgraph=True)
    assert list(model.state_dict()) == keys  # nn.Module.compile: no "_orig_mod." prefix
    with torch.no_grad():
        out = model(images)
    for a, b in zip(out, expected):
        for k in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# Which kernel the fast floor calls, and that the model reports it
# ------------------------------------------------------------------------------------------------
def test_fast_roi_align_dispatch_on_cpu_and_its_record():
    """On a CPU with a fixed sampling ratio the fast floor calls fast.roi_align; adaptive sampling (the
    full-resolution mask targets) goes to torchvision's kernel. Each call is recorded as it happens."""
    k = kernels_for("fast")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 20, 24, generator=g)
    xy = torch.rand(30, 2, generator=g) * 70
    boxes = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), xy,
                       xy + 2 + torch.rand(30, 2, generator=g) * 30], dim=1)
    assert k.log.calls == {}
    assert torch.equal(k.roi_align(x, boxes, (7, 7), 0.25, 2, False), fast.roi_align(x, boxes, (7, 7), 0.25, 2))
    assert k.log.calls == {"roi_align": {"mrcnn_lite.fast.roi_align"}}
    adaptive = ((7, 7), 0.25, -1, False)
    assert torch.equal(k.roi_align(x, boxes, *adaptive), torchvision.ops.roi_align(x, boxes, *adaptive))
    assert k.log.calls == {"roi_align": {"mrcnn_lite.fast.roi_align", "torchvision.ops.roi_align"}}
    ref = kernels_for("reference")
    torch.testing.assert_close(ref.roi_align(x, boxes, *adaptive), k.roi_align(x, boxes, *adaptive),
                               rtol=1e-5, atol=1e-6)
    assert ref.log.calls == {"roi_align": {"mrcnn_lite.ops.roi_align"}}


@pytest.mark.parametrize("floor", ["reference", "fast"])
def test_model_reports_the_kernels_it_called(shapes_batch, floor):
    images, targets = shapes_batch
    model = _tiny(kernels=floor)
    assert set(model.kernels_used()) == {"frozen_bn", "sampler"}  # nothing called yet: only the held classes
    model.train()
    model(images, targets)
    model.eval()
    with torch.no_grad():
        model(images)
    used = model.kernels_used()
    if floor == "reference":
        assert used == {
            "batched_nms": "mrcnn_lite.ops.batched_nms",
            "paste_masks_in_image": "mrcnn_lite.model.transform.paste_masks_in_image",
            "roi_align": "mrcnn_lite.ops.roi_align",
            "frozen_bn": "mrcnn_lite.model.frozen_bn.FrozenBatchNorm2d",
            "sampler": "mrcnn_lite.model.matching.BalancedPositiveNegativeSampler",
        }
    else:
        assert used == {
            "batched_nms": "torchvision.ops.batched_nms",
            "paste_masks_in_image": "mrcnn_lite.model.transform.paste_masks_in_image",  # the CPU loop
            "roi_align": "mrcnn_lite.fast.roi_align, torchvision.ops.roi_align",  # pooling; mask targets
            "frozen_bn": "mrcnn_lite.fast.frozen_bn.CachedFrozenBatchNorm2d",
            "sampler": "mrcnn_lite.fast.sampler.SyncFreeBalancedPositiveNegativeSampler",
        }
    assert fold_frozen_bn(model).kernels_used()["frozen_bn"] == "none (folded, or another norm layer)"
