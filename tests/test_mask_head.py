"""Mask head: module names, mask targets from proposals, per-class sigmoid loss, pasting, vs torchvision."""
import torch
import pytest
import torchvision.ops
from torchvision.models.detection import roi_heads as tv_rh
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TVHeads, MaskRCNNPredictor as TVPredictor

from mrcnn_lite import fast, ops
from mrcnn_lite.fast import paste_masks_grid
from mrcnn_lite.model.transform import paste_masks_in_image
from mrcnn_lite.model import mask_head as mh


def _boxes(n, h, w, g, dtype=torch.float64, margin=5):
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) * 1.1 - margin
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 60 + 0.02
    b = torch.cat([xy, xy + wh], 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b


def test_module_names_match_torchvision():
    heads = mh.MaskRCNNHeads(16, (8, 8, 8, 8), 1)
    pred = mh.MaskRCNNPredictor(8, 8, 5)
    assert list(heads.state_dict()) == list(TVHeads(16, [8, 8, 8, 8], 1).state_dict())
    assert list(pred.state_dict()) == list(TVPredictor(8, 8, 5).state_dict())
    assert "0.0.weight" in heads.state_dict() and "conv5_mask.weight" in pred.state_dict()
    out = pred(heads(torch.rand(3, 16, 14, 14)))
    assert out.shape == (3, 5, 28, 28)


@pytest.mark.parametrize("paste", [paste_masks_in_image, paste_masks_grid], ids=["reference", "fast"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_paste_masks_matches_torchvision(dtype, tol, paste):
    g = torch.Generator().manual_seed(0)
    for h, w in ((97, 131), (64, 200), (150, 40)):
        masks = torch.rand(40, 1, 28, 28, generator=g, dtype=dtype)
        boxes = _boxes(40, h, w, g, dtype)
        a = paste(masks, boxes, (h, w))
        b = tv_rh.paste_masks_in_image(masks, boxes, (h, w))
        assert a.shape == b.shape == (40, 1, h, w) and a.dtype == dtype
        if dtype == torch.float64:  # the integer box rounding is reproduced exactly: same non-zero pixels
            assert torch.equal(a > 0, b > 0)
        assert (a - b).abs().max().item() < tol


def test_paste_masks_chunking_and_empty():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(9, 1, 28, 28, generator=g, dtype=torch.float64)
    boxes = _boxes(9, 70, 80, g)
    full = paste_masks_grid(masks, boxes, (70, 80))
    chunked = paste_masks_grid(masks, boxes, (70, 80), max_pixels_per_chunk=2 * 70 * 80)
    assert torch.equal(full, chunked)
    assert paste_masks_grid(masks[:0], boxes[:0], (70, 80)).shape == (0, 1, 70, 80)
    assert paste_masks_in_image(masks[:0], boxes[:0], (70, 80)).shape == (0, 1, 70, 80)


@pytest.mark.parametrize("kernel", [ops.roi_align, fast.roi_align, torchvision.ops.roi_align],
                         ids=["reference", "fast", "torchvision"])
def test_mask_targets_and_loss_match_torchvision(kernel):
    g = torch.Generator().manual_seed(2)
    gt_masks = [(torch.rand(3, 60, 70, generator=g) > 0.5).to(torch.uint8), (torch.rand(2, 50, 40, generator=g) > 0.5).to(torch.uint8)]
    gt_labels = [torch.tensor([1, 4, 2]), torch.tensor([3, 3])]
    props = [_boxes(7, 60, 70, g), _boxes(0, 50, 40, g)]
    matched = [torch.randint(0, 3, (7,), generator=g), torch.zeros(0, dtype=torch.int64)]
    logits = torch.randn(7, 5, 28, 28, generator=g, dtype=torch.float64, requires_grad=True)

    t = mh.project_masks_on_boxes(gt_masks[0], props[0], matched[0], 28, kernel)
    t_ref = tv_rh.project_masks_on_boxes(gt_masks[0], props[0], matched[0], 28)
    assert t.shape == (7, 28, 28)
    assert (t - t_ref).abs().max().item() < 1e-12

    a = mh.maskrcnn_loss(logits, props, gt_masks, gt_labels, matched, kernel)
    b = tv_rh.maskrcnn_loss(logits, props, gt_masks, gt_labels, matched)
    assert abs(a.item() - b.item()) < 1e-12
    (ga,) = torch.autograd.grad(a, logits)
    (gb,) = torch.autograd.grad(b, logits)
    assert (ga - gb).abs().max().item() < 1e-12
    # per-class sigmoid: only the GT class's channel gets a gradient
    labels = torch.cat([l[i] for l, i in zip(gt_labels, matched)])
    other = torch.ones_like(ga, dtype=torch.bool)
    other[torch.arange(7), labels] = False
    assert (ga[other] == 0).all()


def test_mask_loss_without_positives_is_zero_and_backprops():
    logits = torch.randn(0, 5, 28, 28, requires_grad=True)
    loss = mh.maskrcnn_loss(logits, [torch.zeros(0, 4)], [torch.zeros(0, 30, 30, dtype=torch.uint8)],
                            [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)])
    assert loss.item() == 0.0
    loss.backward()


def test_targets_come_from_the_proposal_not_the_gt_box():
    # a square object; a proposal shifted right by half its width sees only its left half filled
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:30, 10:30] = 1
    t = mh.project_masks_on_boxes(mask, torch.tensor([[20.0, 10.0, 40.0, 30.0]]), torch.tensor([0]), 28)
    assert t[0, :, :12].mean() > 0.95 and t[0, :, 16:].max() < 0.05


def test_maskrcnn_inference_matches_torchvision():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, 28, 28, generator=g)
    labels = [torch.tensor([1, 3]), torch.tensor([2, 2, 1])]
    for a, b in zip(mh.maskrcnn_inference(logits, labels), tv_rh.maskrcnn_inference(logits, labels)):
        assert torch.equal(a, b)
