"""Box head: matching, sampling, Fast R-CNN loss and post-processing equal torchvision's."""
import torch
import pytest
from torchvision.models.detection import roi_heads as tv_rh
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor, TwoMLPHead as TVTwoMLPHead

from mrcnn_lite import ops
from mrcnn_lite.model import box_head as bh
from mrcnn_lite.model.matching import BalancedPositiveNegativeSampler, Matcher


def _tv_roi_heads(**kw):
    args = dict(fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=32, positive_fraction=0.25,
                bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5, detections_per_img=20)
    args.update(kw)
    return tv_rh.RoIHeads(None, None, None, **args)


def _random_boxes(n, size, g, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * (size * 0.7)
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * (size * 0.3) + 1
    return torch.cat([xy, xy + wh], 1)


def test_module_names_and_shapes():
    head, pred = bh.TwoMLPHead(8 * 7 * 7, 32), bh.FastRCNNPredictor(32, 5)
    assert set(head.state_dict()) == set(TVTwoMLPHead(8 * 7 * 7, 32).state_dict())
    assert set(pred.state_dict()) == set(TVPredictor(32, 5).state_dict())
    logits, deltas = pred(head(torch.rand(6, 8, 7, 7)))
    assert logits.shape == (6, 5) and deltas.shape == (6, 20)


def test_fastrcnn_loss_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 4, (30,), generator=g), torch.zeros(12, dtype=torch.int64)]
    targets = [torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(12, 4, generator=g, dtype=torch.float64)]
    logits = torch.randn(42, 4, generator=g, dtype=torch.float64, requires_grad=True)
    deltas = torch.randn(42, 16, generator=g, dtype=torch.float64, requires_grad=True)
    a = bh.fastrcnn_loss(logits, deltas, labels, targets)
    b = tv_rh.fastrcnn_loss(logits, deltas, labels, targets)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    ga = torch.autograd.grad(sum(a), (logits, deltas))
    gb = torch.autograd.grad(sum(b), (logits, deltas))
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)


def test_fastrcnn_loss_by_hand():
    # One positive RoI of class 1 whose prediction is off by 0.5 in dx, one background RoI.
    logits = torch.zeros(2, 2, dtype=torch.float64)
    deltas = torch.zeros(2, 8, dtype=torch.float64)
    deltas[0, 4] = 0.5
    cls, box = bh.fastrcnn_loss(logits, deltas, [torch.tensor([1, 0])], [torch.zeros(2, 4, dtype=torch.float64)])
    assert cls.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # smooth-L1 with beta 1/9 at |x| = 0.5 > beta: |x| - beta / 2; divided by the 2 sampled RoIs
    assert box.item() == pytest.approx((0.5 - 1 / 18) / 2)


def test_select_training_samples_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    gt = [_random_boxes(3, 100, g), torch.zeros(0, 4, dtype=torch.float64)]
    gt_labels = [torch.tensor([1, 3, 2]), torch.zeros(0, dtype=torch.int64)]
    # proposals: jittered GT boxes (positives) plus random boxes
    props = [torch.cat([gt[0].repeat(8, 1) + torch.randn(24, 4, generator=g, dtype=torch.float64) * 3,
                        _random_boxes(60, 100, g)]).clamp(min=0),
             _random_boxes(40, 100, g)]
    props = [torch.cat([p[:, :2], torch.maximum(p[:, 2:], p[:, :2] + 1)], 1) for p in props]
    ref = _tv_roi_heads()
    targets = [{"boxes": b, "labels": l} for b, l in zip(gt, gt_labels)]
    torch.manual_seed(7)
    p_ref, m_ref, l_ref, r_ref = ref.select_training_samples([p.clone() for p in props], targets)
    torch.manual_seed(7)
    p, m, l, r = bh.select_training_samples(
        [p.clone() for p in props], gt, gt_labels, Matcher(0.5, 0.5, False), BalancedPositiveNegativeSampler(32, 0.25),
        ops.BoxCoder((10.0, 10.0, 5.0, 5.0)),
    )
    for xs, ys in ((p, p_ref), (m, m_ref), (l, l_ref), (r, r_ref)):
        for x, y in zip(xs, ys):
            assert torch.equal(x, y)
    assert (l[0] > 0).sum() <= 8 and len(l[0]) == 32
    assert (l[1] == 0).all()  # an image without objects: all background


def test_gt_boxes_are_appended_and_positive():
    gt = [torch.tensor([[10.0, 10.0, 50.0, 50.0]])]
    props = [torch.tensor([[100.0, 100.0, 120.0, 120.0]])]
    p = bh.add_gt_proposals(props, gt)
    m, l = bh.assign_targets_to_proposals(p, gt, [torch.tensor([2])], Matcher(0.5, 0.5, False))
    assert p[0].shape == (2, 4) and l[0].tolist() == [0, 2] and m[0].tolist() == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_postprocess_detections_matches_torchvision(dtype):
    g = torch.Generator().manual_seed(2)
    props = [_random_boxes(80, 120, g, dtype), _random_boxes(50, 90, g, dtype), _random_boxes(0, 90, g, dtype)]
    R, C = 130, 5
    logits = (torch.randn(R, C, generator=g) * 3).to(dtype)
    deltas = (torch.randn(R, C * 4, generator=g) * 0.5).to(dtype)
    shapes = [(120, 130), (90, 100), (90, 100)]
    ref = _tv_roi_heads(detections_per_img=20)
    b_ref, s_ref, l_ref = ref.postprocess_detections(logits, deltas, props, shapes)
    b, s, l = bh.postprocess_detections(logits, deltas, props, shapes, ops.BoxCoder((10.0, 10.0, 5.0, 5.0)),
                                        0.05, 0.5, 20, ops.batched_nms)
    assert sum(len(x) for x in b) > 10
    for xs, ys in ((b, b_ref), (s, s_ref), (l, l_ref)):
        for x, y in zip(xs, ys):
            assert torch.equal(x, y)
    assert all((lab > 0).all() for lab in l)  # background never returned
    assert all(len(x) <= 20 for x in b)
