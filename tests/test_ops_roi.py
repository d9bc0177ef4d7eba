"""roi_pool, roi_align and MultiScaleRoIAlign against torchvision.ops and against brute-force loops.

Relative error is normwise: ``max |ours - reference| / max |reference|`` over a tensor (element-wise
ratios are meaningless where an average of random numbers lands near zero). The worst values per
dtype are printed at the end of the parity tests (run with ``-s`` to see them).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from conftest import rel_err

torchvision = pytest.importorskip("torchvision")
import torchvision.ops as tvo  # noqa: E402
from torchvision.ops.poolers import LevelMapper  # noqa: E402

from mrcnn_lite import fast  # noqa: E402
from mrcnn_lite.ops.poolers import MultiScaleRoIAlign, infer_scale, map_levels, setup_scales  # noqa: E402
from mrcnn_lite.ops.roi_ops import roi_align, roi_pool  # noqa: E402

DTYPES = [torch.float32, torch.float64]
# RoIAlign on both floors: the reference (mrcnn_lite.ops) and the fast one (mrcnn_lite.fast).
ROI_ALIGNS = pytest.mark.parametrize("roi_align_fn", [roi_align, fast.roi_align], ids=["reference", "fast"])
TOL = 1e-5


def random_case(seed, dtype, scale):
    """Two images, 8 boxes in image coordinates: some partly outside the map, two smaller than a
    feature cell, one degenerate (x1 == x2)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 2, 3, 11, 14
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    k = 8
    # corners from 20% outside the map on the top/left to 40% beyond it on the right/bottom
    size = torch.tensor([w, h], dtype=dtype) / scale
    xy = (torch.rand(k, 2, generator=g, dtype=dtype) * 1.6 - 0.2) * size
    wh = torch.rand(k, 2, generator=g, dtype=dtype) * size * 0.7
    wh[:2] = torch.rand(2, 2, generator=g, dtype=dtype) / scale * 0.5  # under half a feature cell
    wh[2, 0] = 0.0
    batch = torch.randint(0, n, (k, 1), generator=g).to(dtype)
    rois = torch.cat([batch, xy, xy + wh], dim=1)
    return x, rois


def as_list(rois, n):
    return [rois[rois[:, 0] == i, 1:] for i in range(n)]


def grads(fn_out, x, go):
    (gx,) = torch.autograd.grad(fn_out, x, go)
    return gx


WORST = {}


@ROI_ALIGNS
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_roi_align_matches_torchvision_forward_and_backward(dtype, roi_align_fn):
    worst_f = worst_b = 0.0
    cases = 0
    for seed in range(12):
        scale = [1.0, 0.25, 0.125][seed % 3]
        x, rois = random_case(seed, dtype, scale)
        x.requires_grad_(True)
        # list format on odd seeds (torchvision gets the same boxes as a (K, 5) tensor)
        boxes = as_list(rois, x.shape[0]) if seed % 2 else rois
        tv_rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)]) \
            if seed % 2 else rois
        for aligned in (False, True):
            for sr in (-1, 1, 2):
                out_size = (3, 4) if seed % 2 else 5
                ours = roi_align_fn(x, boxes, out_size, scale, sr, aligned)
                ref = tvo.roi_align(x, tv_rois, out_size, scale, sr, aligned)
                go = torch.randn_like(ref)
                worst_f = max(worst_f, rel_err(ours, ref))
                worst_b = max(worst_b, rel_err(grads(ours, x, go), grads(ref, x, go)))
                cases += 1
    WORST[(roi_align_fn.__module__, str(dtype))] = (worst_f, worst_b)
    print(f"\n{roi_align_fn.__module__} {dtype}: {cases} cases, "
          f"worst rel err forward {worst_f:.2e}, input-grad {worst_b:.2e}")
    assert worst_f < TOL and worst_b < TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_roi_pool_matches_torchvision_forward_and_backward(dtype):
    worst_f = worst_b = 0.0
    for seed in range(12):
        scale = [1.0, 0.25, 0.125][seed % 3]
        x, rois = random_case(seed, dtype, scale)
        if seed >= 6:  # small integers: many ties, routed to the first max in row-major order
            x = torch.randint(0, 3, x.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
        x.requires_grad_(True)
        boxes = as_list(rois, x.shape[0]) if seed % 2 else rois
        tv_boxes = boxes
        for out_size in ((3, 4), 2, 6):
            ours = roi_pool(x, boxes, out_size, scale)
            ref = tvo.roi_pool(x, tv_boxes, out_size, scale)
            go = torch.randn_like(ref)
            worst_f = max(worst_f, rel_err(ours, ref))
            worst_b = max(worst_b, rel_err(grads(ours, x, go), grads(ref, x, go)))
    print(f"\nroi_pool {dtype}: worst rel err forward {worst_f:.2e}, input-grad {worst_b:.2e}")
    # Max pooling copies values and routes gradients: the match is exact, ties included.
    assert worst_f == 0.0 and worst_b == 0.0


def test_roi_pool_rounds_halves_away_from_zero_like_c():
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 1.5, 2.5, 4.5], [0, -0.5, -1.5, 3.5, 5.5]], dtype=torch.float64)
    assert torch.equal(roi_pool(x, rois, 2), tvo.roi_pool(x, rois, 2))


# ------------------------------------------------------------------ brute-force references
def bilinear(img, y, x):
    """One sample, written like the paper: img (H, W) as nested Python lists."""
    h, w = len(img), len(img[0])
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * img[y0][x0] + (1 - ly) * lx * img[y0][x1]
            + ly * (1 - lx) * img[y1][x0] + ly * lx * img[y1][x1])


def roi_align_loops(x, rois, ph, pw, scale, sr, aligned):
    out = torch.zeros(len(rois), x.shape[1], ph, pw, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy, ex, ey = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = ex - sx, ey - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sr if sr > 0 else math.ceil(rh / ph)
        gw = sr if sr > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for c in range(x.shape[1]):
            img = x[int(b), c].tolist()
            for i in range(ph):
                for j in range(pw):
                    acc = 0.0
                    for iy in range(gh):
                        yy = sy + i * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = sx + j * bw + (ix + 0.5) * bw / gw
                            acc += bilinear(img, yy, xx)
                    out[r, c, i, j] = acc / count
    return out


def roi_pool_loops(x, rois, ph, pw, scale):
    out = torch.zeros(len(rois), x.shape[1], ph, pw, dtype=torch.float64)
    h, w = x.shape[-2:]
    for r, (b, *box) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (int(math.floor(v * scale + 0.5)) for v in box)  # boxes here are >= 0
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for i in range(ph):
            hs = min(max(math.floor(i * rh / ph) + y1, 0), h)
            he = min(max(math.ceil((i + 1) * rh / ph) + y1, 0), h)
            for j in range(pw):
                ws = min(max(math.floor(j * rw / pw) + x1, 0), w)
                we = min(max(math.ceil((j + 1) * rw / pw) + x1, 0), w)
                if he > hs and we > ws:
                    out[r, :, i, j] = x[int(b), :, hs:he, ws:we].amax(dim=(-1, -2))
    return out


# torchvision's own test inputs (test_ops.py, RoIOpTester): a 10x10 map, and these RoIs.
TV_ROIS = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]], dtype=torch.float64)


@ROI_ALIGNS
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr,scale,pool", [(-1, 1.0, (5, 5)), (2, 0.5, (5, 2)), (1, 1.0, (3, 4)), (-1, 0.3, (4, 3))])
def test_roi_align_equals_brute_force_loops(aligned, sr, scale, pool, roi_align_fn):
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rois = torch.cat([TV_ROIS, torch.tensor([[1, -2.0, 3.3, 1.2, 3.4], [0, 7.5, 6.25, 13.0, 11.0]],
                                             dtype=torch.float64)])
    expected = roi_align_loops(x, rois, *pool, scale, sr, aligned)
    got = roi_align_fn(x, rois, pool, scale, sr, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale,pool", [(1.0, (5, 5)), (0.5, (5, 2)), (1.0, (3, 4))])
def test_roi_pool_equals_brute_force_loops(scale, pool):
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(roi_pool(x, TV_ROIS, pool, scale), roi_pool_loops(x, TV_ROIS, *pool, scale))


@ROI_ALIGNS
def test_roi_align_on_a_linear_ramp_returns_bin_centres(roi_align_fn):
    """Bilinear interpolation is exact on f(y, x) = x, so each aligned bin averages to its centre."""
    h, w = 12, 16
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, h, w)
    box = torch.tensor([[0, 2.0, 3.0, 10.0, 9.0]], dtype=torch.float64)  # x from 2 to 10, 4 bins of 2
    out = roi_align_fn(ramp, box, (3, 4), sampling_ratio=2, aligned=True)
    # aligned: pixel i covers [i, i+1) in box coordinates, so its value sits at i + 0.5
    expected = torch.tensor([3.0, 5.0, 7.0, 9.0], dtype=torch.float64) - 0.5
    torch.testing.assert_close(out[0, 0], expected.expand(3, 4), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ gradients
@ROI_ALIGNS
@pytest.mark.parametrize("aligned,sr", [(False, -1), (True, 2), (True, -1)])
def test_roi_align_gradcheck(aligned, sr, roi_align_fn):
    x = torch.rand(2, 1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 5.2, 4.9], [1, -1.5, 2.0, 3.0, 7.5], [1, 4.2, 1.1, 4.6, 1.3]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align_fn(t, rois, (2, 3), 1.0, sr, aligned), (x,))


def test_roi_pool_gradcheck_away_from_ties():
    # distinct values with gaps far larger than gradcheck's eps: no argmax can flip
    x = torch.randperm(2 * 2 * 8 * 8, generator=torch.Generator().manual_seed(1)).double().view(2, 2, 8, 8)
    x.requires_grad_(True)
    rois = torch.tensor([[0, 0, 0, 7, 7], [1, 1.4, 2.2, 5.6, 6.1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (3, 2)), (x,))


@ROI_ALIGNS
def test_boxes_get_no_gradient_like_torchvision(roi_align_fn):
    x = torch.rand(1, 1, 5, 5)
    rois = torch.tensor([[0, 0.5, 0.5, 3.5, 3.5]], requires_grad=True)
    out = roi_align_fn(x, rois, 2)
    assert not out.requires_grad


# ------------------------------------------------------------------ shapes and errors
@pytest.mark.parametrize("op", [roi_align, roi_pool])
def test_empty_boxes(op):
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert op(x, torch.zeros(0, 5), (2, 3)).shape == (0, 3, 2, 3)
    out = op(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 4)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()  # still part of the graph, with a zero gradient
    assert float(x.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("op", [roi_align, roi_pool], ids=["roi_align", "roi_pool"])
def test_bad_input_errors(op):
    x = torch.rand(2, 3, 8, 8)
    name = op.__name__
    with pytest.raises(ValueError, match=rf"{name}: boxes must be a Tensor\[K, 5\].*shape \(3, 4\)"):
        op(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a Tensor\[L, 4\].*shape \(2, 5\)"):
        op(x, [torch.zeros(1, 4), torch.zeros(2, 5)], 2)
    with pytest.raises(TypeError, match=r"boxes\[0\] must be a Tensor"):
        op(x, [[0, 0, 1, 1]], 2)
    with pytest.raises(TypeError, match="boxes must be a Tensor"):
        op(x, "boxes", 2)
    with pytest.raises(ValueError, match=r"boxes row 1 has batch index 2, but input has batch size 2"):
        op(x, torch.tensor([[0, 0, 0, 1, 1], [2, 0, 0, 1, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"boxes row 0 has batch index -1"):
        op(x, torch.tensor([[-1, 0, 0, 1, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"boxes row 0 has batch index 0.5, which is not an integer"):
        op(x, torch.tensor([[0.5, 0, 0, 1, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"boxes row 0 is not finite"):
        op(x, torch.tensor([[0, 0, float("nan"), 1, 1.0]]), 2)
    with pytest.raises(ValueError, match="list for 3 images but input holds only 2"):
        op(x, [torch.zeros(1, 4)] * 3, 2)
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        op(torch.ones(2, 3, 8, 8, dtype=torch.int64), torch.zeros(0, 5), 2)
    with pytest.raises(ValueError, match=r"4-D tensor \(N, C, H, W\), got shape \(3, 8, 8\)"):
        op(torch.rand(3, 8, 8), torch.zeros(0, 5), 2)
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        op(x, torch.zeros(0, 5), (2, 0))


def test_box_dtype_is_converted_to_the_input_dtype():
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    r32 = torch.tensor([[0, 0.5, 1.0, 4.5, 5.0]], dtype=torch.float32)
    torch.testing.assert_close(roi_align(x, r32, 2), roi_align(x, r32.double(), 2), rtol=0, atol=0)
    torch.testing.assert_close(roi_pool(x, [torch.tensor([[1, 1, 4, 4]])], 2),
                               roi_pool(x, [torch.tensor([[1.0, 1, 4, 4]], dtype=torch.float64)], 2))


# ------------------------------------------------------------------ FPN pooling
def fpn_case(dtype=torch.float32, image_hw=(96, 128), n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    feats = OrderedDict((str(i), torch.randn(n, 4, h // s, w // s, generator=g, dtype=dtype))
                        for i, s in enumerate((4, 8, 16, 32)))
    boxes = []
    for _ in range(n):
        ctr = torch.rand(20, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
        side = torch.exp(torch.rand(20, 1, generator=g, dtype=dtype) * 5.5 + 1.0)  # 3..660 px: all levels
        aspect = torch.exp((torch.rand(20, 1, generator=g, dtype=dtype) - 0.5) * 0.6)
        size = torch.cat([side * aspect, side / aspect], 1)
        boxes.append(torch.cat([ctr - size / 2, ctr + size / 2], 1))
    return feats, boxes, [image_hw] * n


@pytest.mark.parametrize("kernel", [roi_align, fast.roi_align, tvo.roi_align], ids=["reference", "fast", "tv-kernel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_multiscale_roi_align_matches_torchvision(dtype, kernel):
    feats, boxes, shapes = fpn_case(dtype)
    feats = OrderedDict((k, v.requires_grad_(True)) for k, v in feats.items())
    names = ["0", "1", "2", "3"]
    ours = MultiScaleRoIAlign(names, 7, 2, roi_align=kernel)
    ref = tvo.MultiScaleRoIAlign(names, 7, 2)
    a, b = ours(feats, boxes, shapes), ref(feats, boxes, shapes)
    assert a.shape == (40, 4, 7, 7)
    assert rel_err(a, b) < TOL
    go = torch.randn_like(b)
    ga = torch.autograd.grad(a, list(feats.values()), go)
    gb = torch.autograd.grad(b, list(feats.values()), go)
    assert max(rel_err(x, y) for x, y in zip(ga, gb)) < TOL
    # all four levels were used
    assert set(map_levels(boxes, 2, 5).tolist()) == {0, 1, 2, 3}


def test_multiscale_single_level_and_subset_of_names():
    feats, boxes, shapes = fpn_case()
    for names in (["2"], ["0", "2"], ["3", "1"]):
        a = MultiScaleRoIAlign(names, (3, 5), -1)(feats, boxes, shapes)
        b = tvo.MultiScaleRoIAlign(names, (3, 5), -1)(feats, boxes, shapes)
        assert rel_err(a, b) < TOL, names


def test_level_mapper_matches_torchvision():
    g = torch.Generator().manual_seed(5)
    ctr = torch.rand(300, 2, generator=g) * 800
    size = torch.exp(torch.rand(300, 2, generator=g) * 7)
    boxes = [torch.cat([ctr - size / 2, ctr + size / 2], 1)]
    # exact powers of two of the canonical size: the eps decides them
    boxes.append(torch.tensor([[0, 0, 224.0, 224.0], [0, 0, 112.0, 112.0], [10, 10, 458.0, 458.0],
                               [0, 0, 56.0, 56.0], [0, 0, 1.0, 1.0]]))
    for k_min, k_max in ((2, 5), (3, 4), (2, 6)):
        expected = LevelMapper(k_min, k_max)(boxes)
        assert torch.equal(map_levels(boxes, k_min, k_max), expected)
    assert map_levels([boxes[1]], 2, 5).tolist() == [2, 1, 3, 0, 0]


def test_scales_are_inferred_like_torchvision():
    feats, _, shapes = fpn_case(image_hw=(800, 1088), n=1)
    scales, k_min, k_max = setup_scales([f.shape for f in feats.values()], shapes)
    assert scales == [0.25, 0.125, 0.0625, 0.03125] and (k_min, k_max) == (2, 5)
    assert infer_scale(25, 800) == 2 ** -5 and infer_scale(13, 400) == 2 ** -5


def test_scales_are_not_cached_from_a_first_oblong_batch():
    """torchvision issue 3747: its module keeps the scales of its first call. A first batch with a
    short, wide image (padded to 32 rows) makes level '0' look like stride 2; later batches pool
    from the wrong place. Ours recomputes the scales on every call."""
    names = ["0", "1", "2", "3"]
    ours, tv_reused = MultiScaleRoIAlign(names, 7, 2), tvo.MultiScaleRoIAlign(names, 7, 2)
    oblong = OrderedDict((str(i), torch.rand(1, 2, 32 // s, 320 // s)) for i, s in enumerate((4, 8, 16, 32)))
    oblong_boxes, oblong_shapes = [torch.tensor([[10.0, 2.0, 90.0, 18.0]])], [(20, 300)]
    torch.testing.assert_close(ours(oblong, oblong_boxes, oblong_shapes),
                               tv_reused(oblong, oblong_boxes, oblong_shapes))
    assert tv_reused.scales[0] == 0.5  # 8 rows / 20 -> rounds to 1/2 instead of 1/4

    feats, boxes, shapes = fpn_case()
    fresh = tvo.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, shapes)
    assert rel_err(ours(feats, boxes, shapes), fresh) < TOL
    assert rel_err(tv_reused(feats, boxes, shapes), fresh) > 0.1  # the cached scales are wrong


def test_multiscale_errors_and_repr():
    feats, boxes, shapes = fpn_case()
    with pytest.raises(KeyError, match=r"feature maps \['pool'\] not in the input"):
        MultiScaleRoIAlign(["0", "pool"], 7, 2)(feats, boxes, shapes)
    with pytest.raises(ValueError, match="image_shapes must not be empty"):
        MultiScaleRoIAlign(["0", "1"], 7, 2)(feats, boxes, [])
    assert "MultiScaleRoIAlign(featmap_names=['0']" in repr(MultiScaleRoIAlign(["0"], 7, 2))
    empty = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(feats, [torch.zeros(0, 4)] * 2, shapes)
    assert empty.shape == (0, 4, 7, 7)


# ------------------------------------------------------------------ CUDA
@ROI_ALIGNS
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cuda_matches_torchvision_and_cpu(dtype, roi_align_fn):
    for seed in range(4):
        scale = [1.0, 0.25][seed % 2]
        x, rois = random_case(seed, dtype, scale)
        xc = x.cuda().requires_grad_(True)
        rc = rois.cuda()
        for aligned in (False, True):
            for sr in (-1, 2):
                ours = roi_align_fn(xc, rc, 5, scale, sr, aligned)
                ref = tvo.roi_align(xc, rc, 5, scale, sr, aligned)
                go = torch.randn_like(ref)
                assert rel_err(ours, ref) < TOL
                assert rel_err(grads(ours, xc, go), grads(ref, xc, go)) < TOL
                assert rel_err(ours.cpu(), roi_align_fn(x, rois, 5, scale, sr, aligned)) < TOL
        ours = roi_pool(xc, rc, 3, scale)
        ref = tvo.roi_pool(xc, rc, 3, scale)
        go = torch.randn_like(ref)
        assert torch.equal(ours, ref) and torch.equal(grads(ours, xc, go), grads(ref, xc, go))
    feats, boxes, shapes = fpn_case(dtype)
    feats = OrderedDict((k, v.cuda()) for k, v in feats.items())
    boxes = [b.cuda() for b in boxes]
    a = MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes)
    b = tvo.MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes)
    assert rel_err(a, b) < TOL


def test_cuda_boxes_on_another_device_error():
    x = torch.rand(1, 1, 4, 4)
    rois = torch.zeros(1, 5, device="meta")
    with pytest.raises(ValueError, match="boxes are on meta but input is on cpu"):
        roi_align(x, rois, 2)
