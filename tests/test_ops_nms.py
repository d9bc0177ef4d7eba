"""mrcnn_lite.ops.nms / batched_nms against torchvision.ops, index for index.

NMS returns indices, so the comparison is exact: same kept boxes, same order. Random inputs are
built to be hard: clusters of heavily overlapping boxes, scores rounded so that ties are common,
exact duplicate boxes, integer coordinates (so IoU can land exactly on the threshold), and
thresholds from 0 to 1.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from mrcnn_lite import fast, ops

# Both floors: the greedy loop (mrcnn_lite.ops) and the vectorised fixed point (mrcnn_lite.fast).
FLOORS = pytest.mark.parametrize("floor", [ops, fast], ids=["reference", "fast"])

SEEDS = range(50)
DTYPES = (torch.float32, torch.float64)
THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)

# How many (seed, dtype, threshold) cases were compared, and how many boxes were suppressed in
# them: printed at the end so that a run shows the comparisons were not trivial.
STATS = {"cases": 0, "boxes": 0, "suppressed": 0, "tied_scores": 0}


# Tiny tensors: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if STATS["cases"]:
        print(f"\n[test_ops_nms] {STATS['cases']} cases, {STATS['boxes']} boxes, {STATS['suppressed']} "
              f"suppressed, {STATS['tied_scores']} boxes with a tied score; index mismatches vs torchvision: 0")


def hard_case(seed: int, dtype: torch.dtype, n_max: int = 120):
    """Boxes ``(N, 4)``, scores ``(N,)`` and class ids ``(N,)`` built to stress NMS."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(0, n_max, (1,), generator=g))
    n_clusters = int(torch.randint(1, 6, (1,), generator=g))
    centres = torch.rand(n_clusters, 2, generator=g, dtype=torch.float64) * 100
    which = torch.randint(0, n_clusters, (n,), generator=g)
    ctr = centres[which] + torch.randn(n, 2, generator=g, dtype=torch.float64) * 4
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 2
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    if seed % 3 == 0:
        boxes = boxes.round()  # integer corners: IoUs like exactly 0.5 happen
    if n >= 4:
        dup = torch.randint(0, n, (n // 4,), generator=g)
        boxes[torch.randint(0, n, (n // 4,), generator=g)] = boxes[dup]  # exact duplicates
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    if seed % 2 == 0:
        scores = (scores * 10).round() / 10  # only 11 distinct values: many ties
    idxs = torch.randint(0, 4, (n,), generator=g)
    return boxes.to(dtype), scores.to(dtype), idxs


def _count(scores: torch.Tensor, kept: torch.Tensor) -> None:
    STATS["cases"] += 1
    STATS["boxes"] += len(scores)
    STATS["suppressed"] += len(scores) - len(kept)
    STATS["tied_scores"] += len(scores) - len(torch.unique(scores))


@FLOORS
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["nms", "batched_nms"])
def test_nms_matches_torchvision(op, dtype, floor):
    """``nms(boxes, scores, thr)`` and ``batched_nms(boxes, scores, idxs, thr)`` keep torchvision's indices."""
    for seed in SEEDS:
        boxes, scores, idxs = hard_case(seed, dtype)
        args = (boxes, scores) if op == "nms" else (boxes, scores, idxs)
        for thr in THRESHOLDS:
            ours = getattr(floor, op)(*args, thr)
            ref = getattr(torchvision.ops, op)(*args, thr)
            assert ours.dtype == torch.int64
            assert torch.equal(ours, ref), f"{op} seed {seed} thr {thr}: {ours.tolist()} != {ref.tolist()}"
            _count(scores, ours)


@FLOORS
def test_batched_nms_matches_torchvision_large(floor):
    # Above 1000 boxes torchvision switches from the coordinate-offset trick to a per-class loop.
    g = torch.Generator().manual_seed(123)
    ctr = torch.rand(1500, 2, generator=g) * 300
    wh = torch.rand(1500, 2, generator=g) * 40 + 4
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    # Distinct scores: that path's final sort is not stable, so ties may come out in either order.
    scores = torch.randperm(1500, generator=g).float() / 1500
    idxs = torch.randint(0, 5, (1500,), generator=g)
    for thr in (0.3, 0.5, 0.7):
        ours = floor.batched_nms(boxes, scores, idxs, thr)
        assert torch.equal(ours, torchvision.ops.batched_nms(boxes, scores, idxs, thr))
        _count(scores, ours)


@FLOORS
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_is_nms_per_class(dtype, floor):
    # Definition check that does not rely on the offset trick: run nms class by class and merge.
    for seed in range(20):
        boxes, scores, idxs = hard_case(seed, dtype)
        ours = floor.batched_nms(boxes, scores, idxs, 0.5)
        keep = []
        for c in idxs.unique():
            where = torch.where(idxs == c)[0]
            keep.append(where[floor.nms(boxes[where], scores[where], 0.5)])
        merged = torch.cat(keep) if keep else torch.empty(0, dtype=torch.int64)
        assert sorted(ours.tolist()) == sorted(merged.tolist())
        assert (scores[ours][:-1] >= scores[ours][1:]).all()  # sorted by decreasing score


@FLOORS
def test_nms_empty_and_single(floor):
    for dtype in DTYPES:
        empty_b, empty_s = torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype)
        for fn_ours, fn_ref in ((floor.nms, torchvision.ops.nms),):
            out, ref = fn_ours(empty_b, empty_s, 0.5), fn_ref(empty_b, empty_s, 0.5)
            assert out.shape == ref.shape == (0,) and out.dtype == ref.dtype == torch.int64
        out = floor.batched_nms(empty_b, empty_s, torch.zeros(0, dtype=torch.int64), 0.5)
        ref = torchvision.ops.batched_nms(empty_b, empty_s, torch.zeros(0, dtype=torch.int64), 0.5)
        assert out.shape == ref.shape == (0,) and out.dtype == ref.dtype == torch.int64
        one_b = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype)
        one_s = torch.tensor([0.3], dtype=dtype)
        assert floor.nms(one_b, one_s, 0.5).tolist() == [0]
        assert floor.batched_nms(one_b, one_s, torch.tensor([7]), 0.5).tolist() == [0]


@FLOORS
def test_nms_known_cases(floor):
    boxes = torch.tensor([
        [0.0, 0.0, 4.0, 1.0],   # 0
        [0.0, 0.0, 2.0, 1.0],   # 1: IoU with 0 is exactly 0.5
        [0.0, 0.0, 4.0, 1.0],   # 2: identical to 0
        [10.0, 10.0, 12.0, 12.0],  # 3: far away
    ])
    scores = torch.tensor([0.9, 0.8, 0.9, 0.1])
    # Ties keep input order (0 before 2); 2 is a duplicate of 0; IoU == 0.5 is not > 0.5.
    assert floor.nms(boxes, scores, 0.5).tolist() == [0, 1, 3]
    assert floor.nms(boxes, scores, 0.49).tolist() == [0, 3]
    assert floor.nms(boxes, scores, 1.0).tolist() == [0, 2, 1, 3]  # IoU is never > 1
    for thr in (0.49, 0.5, 1.0):
        assert torch.equal(floor.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
    # Per class: putting box 2 in its own class saves it from box 0.
    idxs = torch.tensor([0, 0, 1, 0])
    assert floor.batched_nms(boxes, scores, idxs, 0.49).tolist() == [0, 2, 3]
    assert torch.equal(floor.batched_nms(boxes, scores, idxs, 0.49),
                       torchvision.ops.batched_nms(boxes, scores, idxs, 0.49))


@FLOORS
def test_nms_degenerate_boxes_match_torchvision(floor):
    # Zero-area boxes: IoU of two of them is 0/0 = NaN, which is never "> threshold", so both stay.
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 3.0, 3.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    for thr in (0.0, 0.5):
        assert torch.equal(floor.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
        assert floor.nms(boxes, scores, thr).tolist() == [0, 1, 2, 3]


@FLOORS
def test_nms_threshold_compared_like_torchvision(floor):
    # inter = 2 * 6 = 12, union = 24 + 108 - 12 = 120: IoU = 0.1. In float32 that is 0.100000001...,
    # which torchvision (comparing in double) counts as > 0.1, so box 1 goes; in float64 it is exactly
    # 0.1, not > 0.1, so box 1 stays.
    boxes = torch.tensor([[15.0, 76.0, 33.0, 82.0], [26.0, 70.0, 28.0, 82.0]])
    scores = torch.tensor([0.9, 0.2])
    assert floor.nms(boxes, scores, 0.1).tolist() == [0]
    assert floor.nms(boxes.double(), scores.double(), 0.1).tolist() == [0, 1]
    for dtype in DTYPES:
        b, s = boxes.to(dtype), scores.to(dtype)
        assert torch.equal(floor.nms(b, s, 0.1), torchvision.ops.nms(b, s, 0.1))
        idxs = torch.tensor([3, 3])
        assert torch.equal(floor.batched_nms(b, s, idxs, 0.1), torchvision.ops.batched_nms(b, s, idxs, 0.1))


@FLOORS
def test_nms_greedy_chain(floor):
    # A chain where each box overlaps only its neighbours: 0 suppresses 1, so 2 survives, and so on.
    # The greedy result depends on the order of decisions, which a one-shot "suppressed by any
    # higher box" rule would get wrong.
    boxes = torch.tensor([[float(i), 0.0, i + 2.0, 1.0] for i in range(9)])
    scores = torch.linspace(1.0, 0.1, 9)
    ours = floor.nms(boxes, scores, 0.3)
    assert ours.tolist() == [0, 2, 4, 6, 8]
    assert torch.equal(ours, torchvision.ops.nms(boxes, scores, 0.3))


def test_nms_long_chain_is_fast_and_exact():
    """2,000 chained boxes (each suppresses only the next): the greedy loop runs 1,000 times; the fixed
    point would need 1,000 sweeps of a 2000 x 2000 matrix, so the fast floor finishes it row by row."""
    n = 2000
    boxes = torch.stack([torch.arange(n) * 1.0, torch.zeros(n), torch.arange(n) + 2.0, torch.ones(n)], dim=1)
    scores = torch.linspace(1.0, 0.0, n)
    expected = torchvision.ops.nms(boxes, scores, 0.3)
    assert torch.equal(ops.nms(boxes, scores, 0.3), expected)
    assert torch.equal(fast.nms(boxes, scores, 0.3), expected)
    assert expected.tolist() == list(range(0, n, 2))


def test_nms_clear_errors():
    boxes = torch.rand(5, 4)
    with pytest.raises(ValueError, match=r"scores.*\(5,\).*\(4,\)"):
        ops.nms(boxes, torch.rand(4), 0.5)
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        ops.nms(torch.rand(5, 3), torch.rand(5), 0.5)
    with pytest.raises(ValueError, match="scores"):
        ops.batched_nms(boxes, torch.rand(6), torch.zeros(5, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        ops.batched_nms(boxes, torch.rand(5), torch.zeros(4, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="boxes must be a torch.Tensor"):
        ops.nms([[0, 0, 1, 1]], torch.rand(1), 0.5)


@FLOORS
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CPU-only machine")
@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_cuda_parity(dtype, floor):
    for seed in range(20):
        boxes, scores, idxs = hard_case(seed, dtype)
        # torchvision documents that tie-breaking may differ on CUDA: compare with distinct scores.
        scores = scores + torch.arange(len(scores), dtype=dtype) * 1e-4
        bc, sc, ic = boxes.cuda(), scores.cuda(), idxs.cuda()
        for thr in (0.3, 0.5, 0.7):
            ours = floor.nms(bc, sc, thr)
            assert ours.device.type == "cuda"
            assert torch.equal(ours.cpu(), floor.nms(boxes, scores, thr))
            assert torch.equal(ours.cpu(), torchvision.ops.nms(bc, sc, thr).cpu())
            ours_b = floor.batched_nms(bc, sc, ic, thr)
            assert torch.equal(ours_b.cpu(), torchvision.ops.batched_nms(bc, sc, ic, thr).cpu())
