"""The fast floor computes the reference floor's numbers: each fast kernel against its reference, forward
and backward, and the whole model on both floors (float64). The torchvision-equality tests of each stage
(test_ops_*, test_rpn, test_mask_head, test_mask_rcnn) also run on both floors."""
import pytest
import torch

import mrcnn_lite as ml
from mrcnn_lite import fast, ops
from mrcnn_lite.config import MaskRCNNConfig
from mrcnn_lite.data.shapes import ShapesDataset
from mrcnn_lite.fast.nms import greedy_keep
from mrcnn_lite.fast.roi_align import _weighted_rows
from mrcnn_lite.model.frozen_bn import FrozenBatchNorm2d
from mrcnn_lite.model.matching import BalancedPositiveNegativeSampler
from mrcnn_lite.model.anchors import AnchorGenerator
from mrcnn_lite.model.transform import GeneralizedRCNNTransform, ImageList, paste_masks_in_image
from mrcnn_lite.ops.nms import iou_above


def _rois(g, n=40, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 90 - 5
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 60 - 1  # some boxes of negative size
    return torch.cat([torch.randint(0, 2, (n, 1), generator=g).to(dtype), xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
def test_roi_align_fast_equals_reference_forward_and_backward(sampling_ratio, aligned):
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    x = torch.randn(2, 6, 24, 28, generator=g, dtype=torch.float64)
    rois = _rois(g)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a = ops.roi_align(xa, rois, (5, 4), 0.25, sampling_ratio, aligned)
    b = fast.roi_align(xb, rois, (5, 4), 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    w = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_rows_is_the_written_out_weighted_gather(dtype):
    """fast.roi_align's one contact with the features (embedding_bag) equals gather-weight-sum, forward
    and backward."""
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(50, 6, generator=g, dtype=dtype, requires_grad=True)
    index = torch.randint(0, 50, (40, 16), generator=g)
    index[0] = 7  # one row reads the same cell 16 times: the weights must add up
    weight = torch.rand(40, 16, generator=g, dtype=dtype)
    weight[1] = 0  # and a row with no weight at all is exactly zero
    ours = _weighted_rows(feat, index, weight)
    ref = (feat[index] * weight[:, :, None]).sum(dim=1)
    assert ours.shape == (40, 6) and torch.equal(ours[1], torch.zeros(6, dtype=dtype))
    torch.testing.assert_close(ours, ref)
    go = torch.randn(40, 6, generator=g, dtype=dtype)
    torch.testing.assert_close(torch.autograd.grad(ours, feat, go)[0], torch.autograd.grad(ref, feat, go)[0])


@pytest.mark.parametrize("seed", range(6))
def test_nms_fast_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 300
    ctr = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = torch.randint(0, 50, (n,), generator=g).float() / 50  # many ties
    idxs = torch.randint(0, 4, (n,), generator=g)
    for thr in (0.3, 0.5, 0.7):
        assert torch.equal(fast.nms(boxes, scores, thr), ops.nms(boxes, scores, thr))
        assert torch.equal(fast.batched_nms(boxes, scores, idxs, thr), ops.batched_nms(boxes, scores, idxs, thr))
    # a tiny max_steps forces the host walk: same answer
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = ops.box_iou(boxes[order], boxes[order])
    suppresses = iou_above(iou, 0.5).triu(diagonal=1)
    assert torch.equal(greedy_keep(suppresses, max_steps=1), greedy_keep(suppresses))


def test_frozen_bn_cached_equals_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    ref, cached = FrozenBatchNorm2d(5, eps=0.0).double(), fast.CachedFrozenBatchNorm2d(5, eps=0.0).double()
    stats = {"weight": torch.rand(5, generator=g) + 0.5, "bias": torch.randn(5, generator=g),
             "running_mean": torch.randn(5, generator=g), "running_var": torch.rand(5, generator=g) + 0.1}
    ref.load_state_dict({k: v.double() for k, v in stats.items()})
    cached.load_state_dict({k: v.double() for k, v in stats.items()})
    x = torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ref(xa), cached(xb)
    torch.testing.assert_close(b, a, rtol=1e-14, atol=1e-14)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-14, atol=1e-14)


def test_cached_anchor_generator_equals_reference_and_hands_out_copies():
    sizes, ratios = ((16,), (32,)), ((0.5, 1.0, 2.0),) * 2
    ref, cached = AnchorGenerator(sizes, ratios), fast.CachedAnchorGenerator(sizes, ratios)
    for shape, grids in (((3, 3, 64, 64), [(16, 16), (8, 8)]), ((2, 3, 96, 64), [(24, 16), (12, 8)])):
        images = torch.zeros(shape)
        features = [torch.zeros(shape[0], 2, h, w) for h, w in grids]
        for _ in range(2):  # the second call is served from the cache
            a, b = ref(images, features), cached(ImageList(images, [shape[-2:]] * shape[0]), features)
            assert len(a) == len(b) == shape[0] and all(torch.equal(x, y) for x, y in zip(a, b))
        b[0].add_(1.0)  # callers get copies: the cache is untouched
        assert torch.equal(cached(images, features)[0], a[0])
    assert len(cached._cache) == 2  # one entry per (padded size, grid sizes, dtype, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_normalize_equals_reference(dtype):
    args = (64, 96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ref, cached = GeneralizedRCNNTransform(*args), fast.CachedNormalizeTransform(*args)
    g = torch.Generator().manual_seed(5)
    for _ in range(2):  # the second call is served from the cache
        image = torch.rand(3, 20, 30, generator=g, dtype=dtype)
        assert torch.equal(cached.normalize(image), ref.normalize(image))
    images = [torch.rand(3, 50, 70, generator=g, dtype=dtype), torch.rand(3, 64, 48, generator=g, dtype=dtype)]
    a, b = ref.eval()(images)[0], cached.eval()(images)[0]
    assert a.image_sizes == b.image_sizes and torch.equal(a.tensors, b.tensors)


def test_paste_grid_equals_reference():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(30, 1, 28, 28, generator=g, dtype=torch.float64)
    ctr = torch.rand(30, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat([ctr - 20, ctr + 25], dim=1)
    torch.testing.assert_close(fast.paste_masks_grid(masks, boxes, (90, 110)),
                               paste_masks_in_image(masks, boxes, (90, 110)), rtol=0, atol=1e-12)


def test_sync_free_sampler_draws_what_the_reference_draws():
    g = torch.Generator().manual_seed(2)
    labels = [torch.randint(-1, 2, (500,), generator=g).float() for _ in range(3)]
    torch.manual_seed(7)
    a = BalancedPositiveNegativeSampler(64, 0.25).sample_indices(labels)
    torch.manual_seed(7)
    b = fast.SyncFreeBalancedPositiveNegativeSampler(64, 0.25).sample_indices(labels)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)


def test_whole_model_fast_equals_reference_float64_forward_and_backward():
    ds = ShapesDataset(num_images=2, image_size=96, seed=4)
    images = [ds[i][0].double() for i in range(2)]
    targets = [{k: ds[i][1][k] for k in ("labels", "masks")} | {"boxes": ds[i][1]["boxes"].double()}
               for i in range(2)]
    torch.manual_seed(0)
    models = {k: ml.build_model(ml.config.tiny(num_classes=4, kernels=k)).double() for k in ("fast", "reference")}
    models["reference"].load_state_dict(models["fast"].state_dict())
    losses, grads = {}, {}
    for k, m in models.items():
        m.train()
        torch.manual_seed(3)  # the same sampler draws
        losses[k] = m(images, targets)
        sum(losses[k].values()).backward()
        grads[k] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    for name in losses["fast"]:
        torch.testing.assert_close(losses["reference"][name], losses["fast"][name], rtol=1e-10, atol=1e-12)
    assert grads["fast"].keys() == grads["reference"].keys()
    for name, gr in grads["fast"].items():
        torch.testing.assert_close(grads["reference"][name], gr, rtol=1e-8, atol=1e-10, msg=name)
    outs = {}
    for k, m in models.items():
        m.eval()
        with torch.no_grad():
            m.roi_heads.box_predictor.cls_score.weight.mul_(30)
            outs[k] = m(images)
    assert sum(len(o["boxes"]) for o in outs["fast"]) > 0
    for a, b in zip(outs["reference"], outs["fast"]):
        assert torch.equal(a["labels"], b["labels"])
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-9)


def test_config_kernels_field_and_old_checkpoints():
    assert MaskRCNNConfig().kernels == "fast" and ml.config.tiny().kernels == "fast"
    assert ml.config.r50_fpn().channels_last and ml.config.tiny().channels_last
    with pytest.raises(ValueError, match="kernels must be 'reference' or 'fast'"):
        ml.config.tiny(kernels="torchvision")
    old = ml.config.tiny().to_dict()
    del old["kernels"], old["channels_last"]
    for flag, floor in ((True, "fast"), (False, "reference")):
        cfg = MaskRCNNConfig.from_dict(dict(old, use_torchvision_ops=flag))
        assert cfg.kernels == floor and cfg.channels_last  # what the old model ran as
    assert MaskRCNNConfig.from_dict(ml.config.tiny(kernels="reference", channels_last=False).to_dict()) \
        == ml.config.tiny(kernels="reference", channels_last=False)
