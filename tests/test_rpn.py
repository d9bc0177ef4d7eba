"""Matcher, sampler, RPN head and RegionProposalNetwork against torchvision (float64, same weights)."""
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from mrcnn_lite.config import tiny
from mrcnn_lite.model.anchors import AnchorGenerator
from mrcnn_lite.build import kernels_for
from mrcnn_lite.model.matching import BalancedPositiveNegativeSampler, Matcher
from mrcnn_lite.model.rpn import RegionProposalNetwork, RPNHead, build_rpn
from mrcnn_lite.model.transform import ImageList as OurImageList

# The RPN on both floors: the reference NMS and sampler, or the fast floor's (same numbers).
FLOORS = pytest.mark.parametrize("floor", ["reference", "fast"])

RTOL = 1e-10

# ---------------------------------------------------------------------------------------------- Matcher


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matcher_equals_torchvision(allow_low_quality):
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        m, n = 1 + trial % 6, 50 + 7 * trial
        # Rounded values create many ties (between predictions and between GT boxes).
        quality = (torch.rand(m, n, generator=g) * 0.95).round(decimals=2)
        ours = Matcher(0.7, 0.3, allow_low_quality)(quality)
        theirs = tv_utils.Matcher(0.7, 0.3, allow_low_quality)(quality)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, theirs)


def test_matcher_low_quality_match_rescues_small_object():
    # One GT whose best IoU with any anchor is 0.4: without the rule it has no positive anchor.
    quality = torch.tensor([[0.1, 0.4, 0.4, 0.35, 0.0]])
    assert Matcher(0.7, 0.3, False)(quality).tolist() == [-1, -2, -2, -2, -1]
    assert Matcher(0.7, 0.3, True)(quality).tolist() == [-1, 0, 0, -2, -1]  # both tied anchors


def test_matcher_batched_with_padding_equals_per_image():
    g = torch.Generator().manual_seed(1)
    counts = [3, 1, 0, 2]
    n = 80
    padded = torch.full((4, 3, n), -1.0, dtype=torch.float64)
    per_image = []
    for i, m in enumerate(counts):
        q = (torch.rand(m, n, generator=g, dtype=torch.float64) * 0.9).round(decimals=2)
        padded[i, :m] = q
        per_image.append(q)
    batched = Matcher(0.7, 0.3, True)(padded)
    for i, q in enumerate(per_image):
        if len(q):
            assert torch.equal(batched[i], tv_utils.Matcher(0.7, 0.3, True)(q))
        else:
            assert (batched[i] == Matcher.BELOW_LOW_THRESHOLD).all()


def test_matcher_errors():
    with pytest.raises(ValueError, match="ground-truth"):
        Matcher(0.7, 0.3)(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


# ---------------------------------------------------------------------------------------------- sampler


def test_sampler_counts_pools_and_same_draw_as_torchvision():
    g = torch.Generator().manual_seed(2)
    labels = [
        torch.randint(-1, 2, (500,), generator=g).float(),   # plenty of both
        (torch.rand(400, generator=g) < 0.02).float(),        # few positives -> filled with negatives
        torch.full((300,), -1.0),                              # nothing to sample
        torch.ones(50),                                        # only positives, fewer than the batch
    ]
    labels[1][:3] = -1
    for batch, frac in [(256, 0.5), (64, 0.25), (10**6, 1.0)]:
        torch.manual_seed(7)
        pos, neg = BalancedPositiveNegativeSampler(batch, frac)(labels)
        torch.manual_seed(7)
        tv_pos, tv_neg = tv_utils.BalancedPositiveNegativeSampler(batch, frac)(labels)
        for lab, p, n, tp, tn in zip(labels, pos, neg, tv_pos, tv_neg):
            num_pos_pool, num_neg_pool = int((lab >= 1).sum()), int((lab == 0).sum())
            want_pos = min(num_pos_pool, int(batch * frac))
            want_neg = min(num_neg_pool, batch - want_pos)
            assert p.dtype == n.dtype == torch.bool
            assert int(p.sum()) == want_pos == int(tp.sum())
            assert int(n.sum()) == want_neg == int(tn.sum())
            assert (lab[p] >= 1).all() and (lab[n] == 0).all()   # each from the right pool
            assert not (p & n).any()
            # Same random calls in the same order: the very same anchors.
            assert torch.equal(p, tp.bool()) and torch.equal(n, tn.bool())


# ---------------------------------------------------------------------------------------------- head


def test_head_keys_shapes_and_init():
    torch.manual_seed(0)
    head = RPNHead(32, 3)
    tv_head = tv_rpn.RPNHead(32, 3)
    assert list(head.state_dict().keys()) == list(tv_head.state_dict().keys())
    assert list(head.state_dict().keys()) == [
        "conv.0.0.weight", "conv.0.0.bias", "cls_logits.weight", "cls_logits.bias",
        "bbox_pred.weight", "bbox_pred.bias",
    ]
    for name, p in head.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all()
        else:
            assert abs(p.std().item() - 0.01) < 0.002
    feats = [torch.randn(2, 32, 16, 20), torch.randn(2, 32, 8, 10)]
    obj, deltas = head(feats)
    assert [o.shape for o in obj] == [(2, 3, 16, 20), (2, 3, 8, 10)]
    assert [d.shape for d in deltas] == [(2, 12, 16, 20), (2, 12, 8, 10)]
    deep = RPNHead(8, 3, conv_depth=2)
    assert "conv.1.0.weight" in deep.state_dict()
    assert list(deep.state_dict()) == list(tv_rpn.RPNHead(8, 3, conv_depth=2).state_dict())


# ---------------------------------------------------------------------------------------------- RPN vs torchvision

SIZES = ((16,), (32,), (64,), (128,), (256,))
RATIOS = ((0.5, 1.0, 2.0),) * 5
STRIDES = (4, 8, 16, 32, 64)
H, W = 128, 160
IMAGE_SIZES = [(128, 150), (117, 160), (128, 160)]


def _setup(seed=0, channels=8, floor="reference", **overrides):
    """Our RPN (with ``floor``'s NMS and sampler) and torchvision's with the same (random, non-trivial)
    head weights, float64 inputs."""
    torch.manual_seed(seed)
    head = RPNHead(channels, 3).double()
    for p in head.parameters():  # larger than the 0.01 init so proposals move and scores spread
        torch.nn.init.normal_(p, std=0.3)
    tv_head = tv_rpn.RPNHead(channels, 3).double()
    tv_head.load_state_dict(head.state_dict())
    kw = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
              pre_nms_top_n=dict(training=300, testing=150), post_nms_top_n=dict(training=200, testing=100),
              nms_thresh=0.7, score_thresh=0.0)
    kw.update(overrides)
    k = kernels_for(floor)
    ours = RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), head, nms_fn=k.batched_nms, sampler=k.sampler, **kw)
    assert type(ours.fg_bg_sampler) is k.sampler
    theirs = tv_rpn.RegionProposalNetwork(TVAnchorGenerator(SIZES, RATIOS), tv_head, **kw)
    B = len(IMAGE_SIZES)
    images = torch.rand(B, 3, H, W, dtype=torch.float64)
    features = OrderedDict(
        (str(i), torch.randn(B, channels, H // s, W // s, dtype=torch.float64)) for i, s in enumerate(STRIDES)
    )
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [70.0, 10.0, 140.0, 50.0], [5.0, 5.0, 14.0, 12.0]],
                               dtype=torch.float64)},
        {"boxes": torch.zeros(0, 4, dtype=torch.float64)},      # an image with no objects
        {"boxes": torch.tensor([[30.0, 30.0, 100.0, 110.0]], dtype=torch.float64)},
    ]
    return ours, theirs, images, features, targets


def _float64_labels(tv_model):
    """torchvision builds its RPN labels in float32 whatever the input dtype, which rounds its float64
    BCE loss to float32. Cast them to the anchors' dtype (a dtype change only) to compare in float64."""
    assign = tv_model.assign_targets_to_anchors

    def wrapped(anchors, targets):
        labels, matched = assign(anchors, targets)
        return [l.to(a.dtype) for l, a in zip(labels, anchors)], matched

    tv_model.assign_targets_to_anchors = wrapped


def _assert_same_proposals(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"image {i}: {a.shape} vs {b.shape}"
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=RTOL, atol=0)


@FLOORS
@pytest.mark.parametrize("score_thresh", [0.0, 0.6])
def test_state_dict_and_eval_proposals_equal_torchvision(score_thresh, floor):
    ours, theirs, images, features, _ = _setup(score_thresh=score_thresh, floor=floor)
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys())
    ours.eval(), theirs.eval()
    with torch.no_grad():
        a, la = ours(OurImageList(images, IMAGE_SIZES), features)
        b, _ = theirs(ImageList(images, IMAGE_SIZES), features)
    assert la == {}
    _assert_same_proposals(a, b)
    assert all(len(p) <= 100 for p in a)
    if score_thresh == 0.0:
        assert all(len(p) == 100 for p in a)
    for p, (h, w) in zip(a, IMAGE_SIZES):  # clipped to each image's own size
        assert (p[:, 0::2] <= w).all() and (p[:, 1::2] <= h).all() and (p >= 0).all()


@FLOORS
def test_training_proposals_and_losses_equal_torchvision_same_seed(floor):
    # Our sampler makes the same random calls as torchvision's, so one seed gives the same sample.
    ours, theirs, images, features, targets = _setup(seed=1, floor=floor)
    _float64_labels(theirs)
    ours.train(), theirs.train()
    torch.manual_seed(123)
    a, la = ours(OurImageList(images, IMAGE_SIZES), features, targets)
    torch.manual_seed(123)
    b, lb = theirs(ImageList(images, IMAGE_SIZES), features, targets)
    _assert_same_proposals(a, b)
    assert set(la) == {"loss_objectness", "loss_rpn_box_reg"}
    for k in la:
        assert la[k].dtype == torch.float64
        torch.testing.assert_close(la[k], lb[k], rtol=RTOL, atol=0)
    assert la["loss_rpn_box_reg"] > 0
    # Gradients of the head agree too.
    sum(la.values()).backward()
    sum(lb.values()).backward()
    for (name, p), q in zip(ours.head.named_parameters(), theirs.head.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-15, msg=name)


@FLOORS
def test_losses_equal_torchvision_when_every_anchor_is_sampled(floor):
    # No randomness at all: a batch larger than the number of anchors samples every labelled anchor.
    ours, theirs, images, features, targets = _setup(seed=2, floor=floor, batch_size_per_image=10**9,
                                                     positive_fraction=0.5)
    _float64_labels(theirs)
    ours.train(), theirs.train()
    torch.manual_seed(0)
    _, la = ours(OurImageList(images, IMAGE_SIZES), features, targets)
    torch.manual_seed(99)  # a different seed: the result must not depend on it
    _, lb = theirs(ImageList(images, IMAGE_SIZES), features, targets)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=RTOL, atol=0)


def test_targets_labels_and_regression_targets_equal_torchvision():
    ours, theirs, images, features, targets = _setup(seed=3)
    anchors = ours.anchor_generator(images, list(features.values()))
    labels, matched = ours.assign_targets_to_anchors(anchors, targets)
    tv_labels, tv_matched = theirs.assign_targets_to_anchors(anchors, targets)
    for i, (l, m, tl, tm) in enumerate(zip(labels, matched, tv_labels, tv_matched)):
        assert torch.equal(l, tl.to(l.dtype)), f"image {i}"
        pos = l == 1
        assert torch.equal(m[pos], tm[pos])
    assert (labels[1] == 0).all()                  # the empty image: every anchor is background
    assert int((labels[0] == 1).sum()) >= 3        # every GT box has at least one positive anchor
    assert set(labels[0].unique().tolist()) == {-1.0, 0.0, 1.0}


@FLOORS
def test_empty_targets_zero_box_loss_and_backward(floor):
    ours, *_ , images, features, _ = _setup(seed=4, floor=floor)
    ours.train()
    targets = [{"boxes": torch.zeros(0, 4, dtype=torch.float64)} for _ in IMAGE_SIZES]
    for f in features.values():
        f.requires_grad_(True)
    proposals, losses = ours(OurImageList(images, IMAGE_SIZES), features, targets)
    assert losses["loss_rpn_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_objectness"]) and losses["loss_objectness"] > 0
    sum(losses.values()).backward()
    for p in ours.head.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(len(p) > 0 for p in proposals)


def test_build_rpn_from_tiny_config():
    cfg = tiny()
    rpn = build_rpn(cfg, in_channels=cfg.fpn_out_channels)
    assert rpn.anchor_generator.sizes == cfg.anchor_sizes
    assert rpn.proposal_matcher.high_threshold == 0.7 and rpn.proposal_matcher.low_threshold == 0.3
    assert rpn.fg_bg_sampler.batch_size_per_image == cfg.rpn_batch_size_per_image
    assert list(rpn.state_dict()) == ["head.conv.0.0.weight", "head.conv.0.0.bias", "head.cls_logits.weight",
                                      "head.cls_logits.bias", "head.bbox_pred.weight", "head.bbox_pred.bias"]
    rpn.eval()
    feats = [torch.randn(1, 64, 128 // s, 128 // s) for s in STRIDES]
    with torch.no_grad():
        proposals, losses = rpn(OurImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]),
                                OrderedDict(enumerate(feats)))
    assert losses == {} and proposals[0].shape[1] == 4 and len(proposals[0]) <= cfg.rpn_post_nms_top_n_test


def test_bad_inputs_name_the_problem():
    """The RPN trusts its inputs (the model checks them at its entrance); what is left: no targets in
    training, and a constructor argument of the wrong form."""
    ours, _, images, features, targets = _setup(seed=6)
    ours.train()
    with pytest.raises(ValueError, match="targets must be given"):
        ours(OurImageList(images, IMAGE_SIZES), features)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), RPNHead(8, 3), 0.7, 0.3, 256, 0.5,
                              dict(train=1), dict(training=1, testing=1), 0.7)
