"""mrcnn_lite.ops box arithmetic against torchvision, plus property fuzzing and autograd.

torchvision is the reference: every op is compared with its torchvision twin on random inputs
(seeds in a loop, float32 and float64). Float outputs must agree within the tolerances below;
the worst error actually seen per op is recorded and printed at the end of the module
(run with ``-s`` to see it). Tolerances are relative to the size of the numbers involved.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from mrcnn_lite import ops

SEEDS = range(50)
DTYPES = (torch.float32, torch.float64)
# Worst allowed error |ours - torchvision| / max(1, |torchvision|), per dtype.
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
FORMATS = ("xyxy", "xywh", "cxcywh")
HYP = settings(max_examples=100, deadline=None, database=None)

# op name -> worst (relative) error seen, filled by _compare and printed by the module fixture.
WORST: dict[str, float] = {}


# Tiny tensors: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def _report_worst_errors():
    yield
    if WORST:
        print("\n[test_ops_boxes] worst error vs torchvision, |a-b| / max(1, |b|):")
        for name in sorted(WORST):
            print(f"  {name:40s} {WORST[name]:.3e}")


def _compare(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """Assert same shape/dtype, no NaN disagreement, and scaled error <= tol; record the worst error."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{name}: dtype {ours.dtype} != {ref.dtype}"
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), f"{name}: NaN pattern differs"
    if ours.numel() == 0:
        err = 0.0
    else:
        o, r = ours.double(), ref.double()
        ok = ~torch.isnan(r)
        err = ((o - r).abs() / r.abs().clamp(min=1.0))[ok].max().item() if ok.any() else 0.0
    WORST[name] = max(WORST.get(name, 0.0), err)
    assert err <= tol, f"{name}: worst scaled error {err:.3e} > {tol:.1e}"
    return err


def rand_boxes(n: int, gen: torch.Generator, dtype=torch.float64, scale: float = 100.0,
               min_size: float = 0.5, max_size: float = 60.0) -> torch.Tensor:
    """``(n, 4)`` xyxy boxes with positive width and height, top-left in [-10, scale)."""
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * (scale + 10) - 10
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * (max_size - min_size) + min_size
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def rand_boxes_with_degenerate(n: int, gen: torch.Generator, dtype=torch.float64,
                               scale: float = 100.0) -> torch.Tensor:
    """Positive boxes, with about a fifth made zero-width or zero-height (a line or a point)."""
    b = rand_boxes(n, gen, torch.float64, scale=scale)
    flat = torch.rand(n, generator=gen) < 0.2
    b[flat, 2] = b[flat, 0]
    flat = torch.rand(n, generator=gen) < 0.1
    b[flat, 3] = b[flat, 1]
    return b.to(dtype)


# ----------------------------------------------------------------------------------------------
# box_convert, box_area, box_iou, clip, remove_small_boxes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_fmt", FORMATS)
@pytest.mark.parametrize("out_fmt", FORMATS)
def test_box_convert_matches_torchvision(in_fmt, out_fmt, dtype):
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        boxes = (torch.rand(int(torch.randint(0, 40, (1,), generator=g)), 4, generator=g) * 200 - 50).to(dtype)
        ours = ops.box_convert(boxes, in_fmt, out_fmt)
        ref = torchvision.ops.box_convert(boxes, in_fmt, out_fmt)
        _compare(f"box_convert {in_fmt}->{out_fmt}", ours, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_convert_round_trips(dtype):
    g = torch.Generator().manual_seed(0)
    boxes = rand_boxes(100, g, dtype)
    for fmt in ("xywh", "cxcywh"):
        back = ops.box_convert(ops.box_convert(boxes, "xyxy", fmt), fmt, "xyxy")
        torch.testing.assert_close(back, boxes, rtol=0, atol=200 * TOL[dtype])


def test_box_convert_known_values_and_bad_format():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert ops.box_convert(b, "xyxy", "xywh").tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert ops.box_convert(b, "xyxy", "cxcywh").tolist() == [[20.0, 40.0, 20.0, 40.0]]
    with pytest.raises(ValueError, match="xyxy"):
        ops.box_convert(b, "xyxy", "yxyx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_area_matches_torchvision(dtype):
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        boxes = rand_boxes_with_degenerate(int(torch.randint(0, 60, (1,), generator=g)), g, dtype)
        _compare("box_area", ops.box_area(boxes), torchvision.ops.box_area(boxes), TOL[dtype])


@pytest.mark.parametrize("dtype", (torch.float16, torch.int32, torch.int64, torch.uint8))
def test_box_area_upcasts_like_torchvision(dtype):
    # float16 is computed in float32 and small ints in int32, so products do not overflow.
    g = torch.Generator().manual_seed(1)
    boxes = rand_boxes(30, g, torch.float64, scale=150, max_size=100).round().clamp(min=0).to(dtype)
    ours, ref = ops.box_area(boxes), torchvision.ops.box_area(boxes)
    assert ours.dtype == ref.dtype
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_matches_torchvision(dtype):
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        n, m = (int(v) for v in torch.randint(0, 50, (2,), generator=g))
        a = rand_boxes_with_degenerate(n, g, dtype, scale=40)
        b = rand_boxes_with_degenerate(m, g, dtype, scale=40)
        ours, ref = ops.box_iou(a, b), torchvision.ops.box_iou(a, b)
        _compare("box_iou", ours, ref, TOL[dtype])
        # Our boxes overlap often: make sure the comparison is not just zeros against zeros.
        if n * m > 100:
            assert (ref > 0.1).any()


def test_box_iou_integer_boxes_and_known_values():
    a = torch.tensor([[0, 0, 10, 10], [0, 0, 4, 1]], dtype=torch.int64)
    b = torch.tensor([[5, 5, 15, 15], [0, 0, 2, 1], [20, 20, 30, 30]], dtype=torch.int64)
    ours, ref = ops.box_iou(a, b), torchvision.ops.box_iou(a, b)
    assert ours.dtype == ref.dtype == torch.float32
    assert torch.equal(ours, ref)
    # 5x5 overlap of two 10x10 boxes: 25 / (100 + 100 - 25); a 2x1 box inside a 4x1 box: 2 / 4.
    assert ours[0, 0].item() == pytest.approx(25 / 175, abs=1e-7)
    assert ours[1, 1].item() == 0.5
    assert ours[0, 2].item() == 0.0 and ours[1, 2].item() == 0.0


def test_box_iou_empty():
    a = torch.zeros(0, 4)
    b = torch.rand(3, 4)
    assert ops.box_iou(a, b).shape == (0, 3)
    assert ops.box_iou(b, a).shape == (3, 0)
    assert ops.box_iou(a, a).shape == (0, 0)


def test_box_iou_clear_errors():
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        ops.box_iou(torch.zeros(5, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"boxes2.*\(4,\)"):
        ops.box_iou(torch.zeros(2, 4), torch.zeros(4))
    with pytest.raises(TypeError):
        ops.box_iou([[0, 0, 1, 1]], torch.zeros(2, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_boxes_to_image_matches_torchvision(dtype):
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        h, w = (int(v) for v in torch.randint(1, 200, (2,), generator=g))
        boxes = (torch.rand(int(torch.randint(0, 40, (1,), generator=g)), 4, generator=g) * 400 - 100).to(dtype)
        ours = ops.clip_boxes_to_image(boxes, (h, w))
        ref = torchvision.ops.clip_boxes_to_image(boxes, (h, w))
        _compare("clip_boxes_to_image", ours, ref, 0.0)
        assert (ours[:, 0::2] >= 0).all() and (ours[:, 0::2] <= w).all()
        assert (ours[:, 1::2] >= 0).all() and (ours[:, 1::2] <= h).all()


def test_clip_boxes_to_image_batched_shape():
    # (..., 4) inputs, as the RPN uses per image (N, A, 4).
    boxes = torch.tensor([[[-5.0, -5.0, 50.0, 80.0]], [[10.0, 10.0, 20.0, 20.0]]])
    out = ops.clip_boxes_to_image(boxes, (60, 40))
    assert out.shape == (2, 1, 4)
    assert out.tolist() == [[[0.0, 0.0, 40.0, 60.0]], [[10.0, 10.0, 20.0, 20.0]]]
    assert torch.equal(out, torchvision.ops.clip_boxes_to_image(boxes, (60, 40)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_remove_small_boxes_matches_torchvision(dtype):
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        boxes = rand_boxes_with_degenerate(int(torch.randint(0, 60, (1,), generator=g)), g, dtype)
        for min_size in (0.0, 1e-3, 1.0, 10.0, 30.0):
            ours = ops.remove_small_boxes(boxes, min_size)
            ref = torchvision.ops.remove_small_boxes(boxes, min_size)
            assert ours.dtype == torch.int64
            assert torch.equal(ours, ref), f"seed {seed} min_size {min_size}"


def test_remove_small_boxes_boundary_is_inclusive():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.999, 5.0], [0.0, 0.0, 5.0, 2.0]])
    assert ops.remove_small_boxes(boxes, 2.0).tolist() == [0, 2]


# ----------------------------------------------------------------------------------------------
# BoxCoder
# ----------------------------------------------------------------------------------------------

WEIGHTS = ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_box_coder_encode_matches_torchvision(weights, dtype):
    ours, ref = ops.BoxCoder(weights), TVBoxCoder(weights)
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        sizes = [int(v) for v in torch.randint(0, 20, (3,), generator=g)]
        gt = [rand_boxes(s, g, dtype) for s in sizes]
        anchors = [rand_boxes(s, g, dtype) for s in sizes]
        got, want = ours.encode(gt, anchors), ref.encode(gt, anchors)
        assert len(got) == len(want) == 3
        for o, r in zip(got, want):
            _compare(f"BoxCoder{weights}.encode", o, r, TOL[dtype])
        _compare(f"BoxCoder{weights}.encode_single", ours.encode_single(gt[0], anchors[0]),
                 ref.encode_single(gt[0], anchors[0]), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_box_coder_decode_matches_torchvision(weights, dtype):
    ours, ref = ops.BoxCoder(weights), TVBoxCoder(weights)
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        sizes = [int(v) for v in torch.randint(0, 20, (2,), generator=g)]
        n = sum(sizes)
        num_classes = 1 + seed % 3
        anchors = [rand_boxes(s, g, dtype) for s in sizes]
        codes = (torch.randn(n, 4 * num_classes, generator=g, dtype=torch.float64) * 2).to(dtype)
        # A quarter of the size deltas are huge, so that the log(1000/16) clamp is exercised.
        huge = torch.rand(n, 4 * num_classes, generator=g) < 0.25
        huge[:, 0::4] = False
        huge[:, 1::4] = False
        codes[huge] = 50.0 * max(weights)
        got, want = ours.decode(codes, anchors), ref.decode(codes, anchors)
        _compare(f"BoxCoder{weights}.decode", got, want, TOL[dtype])
        assert torch.isfinite(got).all()
        if n:
            assert got.shape == (n, num_classes, 4)
            flat = torch.cat(anchors)
            _compare(f"BoxCoder{weights}.decode_single", ours.decode_single(codes, flat),
                     ref.decode_single(codes, flat), TOL[dtype])


@pytest.mark.parametrize("weights", WEIGHTS)
def test_box_coder_clamp_limits_growth(weights):
    # dw, dh are clamped at log(1000/16): a box can grow at most 62.5x in width and height.
    coder = ops.BoxCoder(weights)
    anchor = torch.tensor([[0.0, 0.0, 16.0, 8.0]], dtype=torch.float64)
    codes = torch.tensor([[0.0, 0.0, 1e4, 1e4]], dtype=torch.float64)
    out = coder.decode_single(codes, anchor)[0]
    w, h = (out[2] - out[0]).item(), (out[3] - out[1]).item()
    assert w == pytest.approx(16 * 1000 / 16, rel=1e-12)
    assert h == pytest.approx(8 * 1000 / 16, rel=1e-12)
    assert coder.bbox_xform_clip == pytest.approx(math.log(1000 / 16))
    # Shrinking is not clamped: a very negative dw gives a (nearly) zero-width box.
    tiny = coder.decode_single(torch.tensor([[0.0, 0.0, -1e4, -1e4]], dtype=torch.float64), anchor)[0]
    assert (tiny[2] - tiny[0]).item() == 0.0


def test_box_coder_known_values():
    # Anchor centred at (10, 10), 20x20; target centred at (15, 10), 40x10.
    anchor = torch.tensor([[0.0, 0.0, 20.0, 20.0]], dtype=torch.float64)
    target = torch.tensor([[-5.0, 5.0, 35.0, 15.0]], dtype=torch.float64)
    d = ops.BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(target, anchor)[0]
    torch.testing.assert_close(d, torch.tensor([0.25, 0.0, math.log(2), math.log(0.5)], dtype=torch.float64))
    d10 = ops.BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(target, anchor)[0]
    torch.testing.assert_close(d10, d * torch.tensor([10.0, 10.0, 5.0, 5.0], dtype=torch.float64))


def test_box_coder_decode_empty_matches_torchvision():
    for weights in WEIGHTS:
        codes = torch.zeros(0, 8)
        got = ops.BoxCoder(weights).decode(codes, [torch.zeros(0, 4)])
        want = TVBoxCoder(weights).decode(codes, [torch.zeros(0, 4)])
        assert got.shape == want.shape


# ----------------------------------------------------------------------------------------------
# Property fuzzing (hypothesis), float64
# ----------------------------------------------------------------------------------------------

_coord = st.floats(-200.0, 200.0, allow_nan=False, allow_infinity=False)
_size = st.floats(1e-3, 150.0, allow_nan=False, allow_infinity=False)
_box = st.tuples(_coord, _coord, _size, _size).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
_boxes = st.lists(_box, min_size=1, max_size=12).map(lambda b: torch.tensor(b, dtype=torch.float64))


def _positive(b: torch.Tensor) -> torch.Tensor:
    # x + w can round back to x when w is tiny next to x; keep only boxes that really have area.
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]


@HYP
@given(_boxes, _boxes)
def test_fuzz_iou_bounds_and_symmetry(a, b):
    a, b = _positive(a), _positive(b)
    iou = ops.box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert not torch.isnan(iou).any()
    assert (iou >= 0).all() and (iou <= 1).all()
    # Symmetric bit for bit: max/min and sums commute.
    assert torch.equal(iou, ops.box_iou(b, a).T)


@HYP
@given(_boxes)
def test_fuzz_iou_with_itself_is_one(a):
    a = _positive(a)
    iou = ops.box_iou(a, a)
    # inter == area exactly, and union == area + area - area == area exactly.
    assert torch.equal(iou.diagonal(), torch.ones(len(a), dtype=torch.float64))


# Ratios of sizes stay below 1000/16 = 62.5 so that decoding is not clamped.
_size_rt = st.floats(1.0, 60.0, allow_nan=False, allow_infinity=False)
_box_rt = st.tuples(_coord, _coord, _size_rt, _size_rt).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
_pairs = st.lists(st.tuples(_box_rt, _box_rt), min_size=1, max_size=10)
ROUND_TRIP_ATOL = 1e-9  # pixels, float64, coordinates up to ~260 in magnitude


@HYP
@given(_pairs, st.sampled_from(WEIGHTS))
def test_fuzz_encode_decode_round_trip(pairs, weights):
    gt = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    anchors = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    coder = ops.BoxCoder(weights)
    back = coder.decode_single(coder.encode_single(gt, anchors), anchors)
    err = (back - gt).abs().max().item()
    WORST["BoxCoder round trip (abs, px)"] = max(WORST.get("BoxCoder round trip (abs, px)", 0.0), err)
    assert err <= ROUND_TRIP_ATOL


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------

def test_box_iou_gradcheck():
    g = torch.Generator().manual_seed(3)
    a = rand_boxes(4, g, torch.float64, scale=30).requires_grad_()
    b = rand_boxes(3, g, torch.float64, scale=30).requires_grad_()
    assert (ops.box_iou(a, b) > 0).sum() >= 3  # overlapping pairs, so gradients are not all zero
    assert torch.autograd.gradcheck(ops.box_iou, (a, b))


def test_box_coder_decode_gradcheck():
    g = torch.Generator().manual_seed(4)
    anchors = rand_boxes(5, g, torch.float64).requires_grad_()
    codes = (torch.randn(5, 8, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert torch.autograd.gradcheck(lambda c, b: coder.decode(c, [b]), (codes, anchors))


def test_box_coder_encode_gradcheck():
    g = torch.Generator().manual_seed(5)
    gt = rand_boxes(5, g, torch.float64).requires_grad_()
    anchors = rand_boxes(5, g, torch.float64).requires_grad_()
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    assert torch.autograd.gradcheck(coder.encode_single, (gt, anchors))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_match_torchvision(dtype):
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        a, b = rand_boxes(8, g, dtype, scale=40), rand_boxes(6, g, dtype, scale=40)
        w = torch.randn(8, 6, generator=g, dtype=torch.float64).to(dtype)
        grads = []
        for fn in (ops.box_iou, torchvision.ops.box_iou):
            x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
            (fn(x, y) * w).sum().backward()
            grads.append((x.grad, y.grad))
        _compare("box_iou backward", grads[0][0], grads[1][0], TOL[dtype])
        _compare("box_iou backward", grads[0][1], grads[1][1], TOL[dtype])

        anchors = rand_boxes(7, g, dtype)
        codes = torch.randn(7, 8, generator=g, dtype=torch.float64).to(dtype)
        grads = []
        for coder in (ops.BoxCoder((10.0, 10.0, 5.0, 5.0)), TVBoxCoder((10.0, 10.0, 5.0, 5.0))):
            c, an = codes.clone().requires_grad_(), anchors.clone().requires_grad_()
            (coder.decode(c, [an]) ** 2).sum().backward()
            grads.append((c.grad, an.grad))
        _compare("BoxCoder.decode backward", grads[0][0], grads[1][0], TOL[dtype])
        _compare("BoxCoder.decode backward", grads[0][1], grads[1][1], TOL[dtype])


# ----------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CPU-only machine")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_parity(dtype):
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        a, b = rand_boxes(40, g, dtype), rand_boxes(30, g, dtype)
        ac, bc = a.cuda(), b.cuda()
        _compare("box_iou cuda vs cpu", ops.box_iou(ac, bc).cpu(), ops.box_iou(a, b), TOL[dtype])
        _compare("box_iou cuda vs torchvision cuda", ops.box_iou(ac, bc).cpu(),
                 torchvision.ops.box_iou(ac, bc).cpu(), TOL[dtype])
        codes = torch.randn(40, 4, generator=g, dtype=torch.float64).to(dtype)
        coder, ref = ops.BoxCoder((10.0, 10.0, 5.0, 5.0)), TVBoxCoder((10.0, 10.0, 5.0, 5.0))
        _compare("BoxCoder.decode cuda", coder.decode_single(codes.cuda(), ac).cpu(),
                 ref.decode_single(codes.cuda(), ac).cpu(), TOL[dtype])
        _compare("BoxCoder.encode cuda", coder.encode_single(ac, bc[:1].expand(40, 4)).cpu(),
                 ref.encode_single(ac, bc[:1].expand(40, 4)).cpu(), TOL[dtype])
        assert ops.remove_small_boxes(ac, 10.0).device.type == "cuda"
        assert torch.equal(ops.remove_small_boxes(ac, 10.0).cpu(), torchvision.ops.remove_small_boxes(a, 10.0))
