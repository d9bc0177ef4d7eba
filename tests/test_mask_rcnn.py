"""The assembled Mask R-CNN: torchvision equality (ResNet-50, float64) on both floors (``kernels="reference"``
and ``"fast"``), losses, empty targets, bad inputs, intermediates.

The R-50 comparisons run at a small image size with fewer proposals/detections to stay fast on a CPU;
the architecture and every code path are the full model's.
"""
import pytest
import torch
from conftest import TV_SMALL, tv_r50_coco_layout

import mrcnn_lite as ml
from mrcnn_lite.fast import fold_frozen_bn
from mrcnn_lite.torchvision_compat import config_from_torchvision
from mrcnn_lite.model.mask_rcnn import MaskRCNN

TOL = 1e-6


def _target(h, w, boxes, labels, dtype=torch.float64):
    boxes = torch.tensor(boxes, dtype=dtype).reshape(-1, 4)
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for k, b in enumerate(boxes.round().long()):
        masks[k, b[1]:b[3], b[0]:b[2]] = 1
        masks[k, b[1]:b[1] + 3, b[0]:b[0] + 3] = 0  # not quite a box
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1), "masks": masks}


@pytest.fixture(scope="module")
def r50():
    """torchvision's COCO-v1 layout (``tv_r50_coco_layout``), two images and its detections on them."""
    tv = tv_r50_coco_layout()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 120, 160, generator=g, dtype=torch.float64),
              torch.rand(3, 150, 100, generator=g, dtype=torch.float64)]
    with torch.no_grad():
        expected = tv(images)
    return tv, images, expected


def _assert_same_detections(out, expected):
    total = 0
    for a, b in zip(out, expected):
        assert len(a["boxes"]) == len(b["boxes"])
        assert torch.equal(a["labels"], b["labels"])
        assert a["masks"].shape == b["masks"].shape
        for k in ("boxes", "scores", "masks"):
            assert (a[k] - b[k]).abs().max().item() < TOL, k
        total += len(a["boxes"])
    assert total > 0


@pytest.fixture(scope="module", params=["reference", "fast"])
def converted(r50, request):
    """``ml.from_torchvision`` of the torchvision model, on each floor."""
    return ml.from_torchvision(r50[0], kernels=request.param)


def test_from_torchvision_same_detections(r50, converted):
    tv, images, expected = r50
    model = converted
    assert not model.training and next(model.parameters()).dtype == torch.float64
    assert model.cfg.min_size == 128 and model.cfg.rpn_post_nms_top_n_test == 100
    assert model.kernels.name == model.cfg.kernels
    with torch.no_grad():
        out = model(images)
    _assert_same_detections(out, expected)
    assert all(o["masks"].shape[1:] == (1,) + tuple(img.shape[-2:]) for o, img in zip(out, images))


@pytest.mark.parametrize("floor", ["reference", "fast"])
def test_load_state_dict_same_detections(r50, floor):
    tv, images, expected = r50
    model = ml.build_model(ml.config.r50_fpn(91, kernels=floor, **TV_SMALL))  # COCO v1 layout: FrozenBN, eps 0
    # the 307 keys of torchvision's COCO v1 checkpoint (FrozenBatchNorm2d: no num_batches_tracked)
    assert len(model.state_dict()) == 307 and set(model.state_dict()) == set(tv.state_dict())
    model.load_state_dict(tv.state_dict(), strict=True)
    model = model.double().eval()
    with torch.no_grad():
        out = model(images)
    _assert_same_detections(out, expected)


def test_folded_frozen_bn_same_detections(r50, randomise_norm_stats):
    """Frozen BN folded into the convs for inference: still torchvision's detections (float64, TOL)."""
    import copy

    tv, images, _ = r50
    tv = copy.deepcopy(tv)
    randomise_norm_stats(tv.backbone.body, seed=3)  # statistics that make folding do something
    with torch.no_grad():
        expected = tv(images)
        out = fold_frozen_bn(ml.from_torchvision(tv))(images)
    _assert_same_detections(out, expected)


def test_training_losses_equal_torchvision(r50, converted):
    tv, images, _ = r50
    model = converted
    targets = [_target(120, 160, [[10, 20, 80, 90], [90, 30, 150, 110]], [3, 17]),
               _target(150, 100, [[5, 5, 60, 100]], [1])]
    tv.train(), model.train()
    try:
        torch.manual_seed(5)  # same seed: the samplers draw the same RoIs in both models
        ref = tv(images, targets)
        torch.manual_seed(5)
        losses = model(images, targets)
    finally:
        tv.eval(), model.eval()
    assert set(losses) == set(ref) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    for k in ref:
        assert abs(losses[k].item() - ref[k].item()) < TOL, (k, losses[k].item(), ref[k].item())


def test_config_from_torchvision_reads_hyperparameters(r50):
    cfg = config_from_torchvision(r50[0])
    assert cfg.kernels == "fast" and config_from_torchvision(r50[0], kernels="reference").kernels == "reference"
    assert (cfg.depth, cfg.frozen_bn_eps, cfg.num_classes, cfg.max_size) == (50, 0.0, 91, 192)
    assert cfg.box_detections_per_img == 8 and cfg.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert cfg.mask_layers == (256, 256, 256, 256) and cfg.mask_dim_reduced == 256


# ----------------------------------------------------------------------------------------------------
# the tiny preset: training step, empty targets, inputs, intermediates
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ml.build_model(ml.config.tiny(num_classes=4))


def _tiny_batch():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 112, 80, generator=g)]
    targets = [_target(96, 128, [[10, 10, 50, 60], [60, 20, 120, 90]], [1, 3], torch.float32),
               _target(112, 80, [[5, 30, 70, 100]], [2], torch.float32)]
    return images, targets


def test_tiny_training_step_and_inference(tiny):
    images, targets = _tiny_batch()
    before = {k: v.clone() for k, v in targets[0].items()}
    tiny.train()
    losses = tiny(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    opt = torch.optim.SGD([p for p in tiny.parameters() if p.requires_grad], lr=1e-3)
    opt.zero_grad()
    sum(losses.values()).backward()
    assert tiny.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    opt.step()
    assert all(torch.equal(before[k], targets[0][k]) for k in before)  # targets untouched

    tiny.eval()
    with torch.no_grad():
        out = tiny(images)
    for o, img in zip(out, images):
        m = len(o["boxes"])
        assert o["boxes"].shape == (m, 4) and o["labels"].shape == (m,) and o["scores"].shape == (m,)
        assert o["labels"].dtype == torch.int64
        assert o["masks"].shape == (m, 1) + tuple(img.shape[-2:])
        assert ((o["masks"] >= 0) & (o["masks"] <= 1)).all()


def test_empty_targets_give_zero_losses_and_backward(tiny):
    images, targets = _tiny_batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros((0,) + tuple(img.shape[-2:]), dtype=torch.uint8)} for img in images]
    tiny.train()
    losses = tiny(images, empty)
    for k in ("loss_box_reg", "loss_mask", "loss_rpn_box_reg"):
        assert losses[k].item() == 0.0, k
    assert losses["loss_classifier"] > 0 and losses["loss_objectness"] > 0
    sum(losses.values()).backward()
    # a batch mixing an empty image with a non-empty one
    losses = tiny(images, [targets[0], empty[1]])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0
    sum(losses.values()).backward()


def _bad(case):
    images, targets = _tiny_batch()
    t = targets[1]
    if case == "images_tensor":
        return torch.stack([images[0], images[0]]), None, TypeError, "list"
    if case == "int_image":
        images[1] = (images[1] * 255).to(torch.uint8)
        return images, targets, TypeError, "image 1"
    if case == "gray_image":
        images[0] = images[0][:1]
        return images, targets, ValueError, "image 0"
    if case == "no_targets":
        return images, None, ValueError, "targets"
    if case == "degenerate_box":
        t["boxes"] = torch.tensor([[5.0, 30.0, 5.0, 100.0]])
        return images, targets, ValueError, r"target 1: box 0 \[5.0, 30.0, 5.0, 100.0\]"
    if case == "boxes_shape":
        t["boxes"] = torch.tensor([5.0, 30.0, 70.0, 100.0])
        return images, targets, ValueError, "target 1: 'boxes'"
    if case == "label_range":
        t["labels"] = torch.tensor([4])
        return images, targets, ValueError, "target 1: label 4 of box 0"
    if case == "label_zero":
        t["labels"] = torch.tensor([0])
        return images, targets, ValueError, "target 1: label 0"
    if case == "label_dtype":
        t["labels"] = torch.tensor([2], dtype=torch.int32)
        return images, targets, TypeError, "target 1: 'labels' must be int64"
    if case == "mask_size":
        t["masks"] = torch.zeros(1, 100, 80, dtype=torch.uint8)
        return images, targets, ValueError, "target 1: 'masks'"
    if case == "missing_masks":
        del t["masks"]
        return images, targets, ValueError, "target 1: missing 'masks'"
    if case == "mask_255":
        t["masks"] = t["masks"] * 255
        return images, targets, ValueError, r"target 1: mask 0 holds the value 255.*mask > 0"
    if case == "mask_nan":
        t["masks"] = t["masks"].float()
        t["masks"][0, 0, 0] = float("nan")
        return images, targets, ValueError, "target 1: mask 0 holds the value nan"
    if case == "nan_pixels":
        images[0][1, 2, 3] = float("nan")
        return images, targets, ValueError, "image 0 has NaN or infinite pixel values"
    if case == "inf_pixels":
        images[1][0, 0, 0] = float("inf")
        return images, targets, ValueError, "image 1 has NaN or infinite pixel values"
    if case == "pixels_0_255":
        images[1] = images[1] * 255
        return images, targets, ValueError, r"image 1: pixel values must lie in \[0, 1\].*divide 8-bit images by 255"
    if case == "float64_image":
        images[0] = images[0].double()
        return images, targets, TypeError, r"image 0: dtype torch.float64 differs from the model's torch.float32"
    if case == "thin_image":
        images[0] = torch.rand(3, 1, 2000)
        targets[0] = _target(1, 2000, [], [], torch.float32)
        return images, targets, ValueError, r"image 0: a 1x2000 image would be resized to 0x"
    raise AssertionError(case)


BAD_CASES = ["images_tensor", "int_image", "gray_image", "no_targets", "degenerate_box", "boxes_shape",
             "label_range", "label_zero", "label_dtype", "mask_size", "missing_masks", "mask_255", "mask_nan",
             "nan_pixels", "inf_pixels", "pixels_0_255", "float64_image", "thin_image"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_raise_clear_errors(tiny, case):
    images, targets, exc, msg = _bad(case)
    tiny.train()
    with pytest.raises(exc, match=msg):
        tiny(images, targets)


@pytest.mark.parametrize("case", ["images_tensor", "int_image", "gray_image", "nan_pixels", "inf_pixels",
                                  "pixels_0_255", "float64_image", "thin_image"])
def test_bad_images_are_refused_at_inference_too(tiny, case):
    images, _, exc, msg = _bad(case)
    tiny.eval()
    with torch.no_grad(), pytest.raises(exc, match=msg):
        tiny(images)


def test_bool_and_float_masks_of_0_and_1_are_accepted(tiny):
    images, targets = _tiny_batch()
    torch.manual_seed(0)
    tiny.train()
    expected = tiny(images, targets)
    for dtype in (torch.bool, torch.float32):
        converted = [dict(t, masks=t["masks"].to(dtype)) for t in targets]
        torch.manual_seed(0)
        losses = tiny(images, converted)
        for k in expected:
            torch.testing.assert_close(losses[k], expected[k], rtol=0, atol=0)


def test_intermediates(tiny):
    images, targets = _tiny_batch()
    tiny.eval()
    with torch.no_grad():
        out, inter = tiny(images, return_intermediates=True)
    for key in ("images", "image_sizes", "features", "anchors", "proposals", "class_logits", "box_regression",
                "mask_logits", "detections"):
        assert key in inter, key
    assert inter["images"].shape[0] == 2 and inter["images"].shape[-1] % 32 == 0
    assert list(inter["features"]) == ["0", "1", "2", "3", "pool"]
    assert len(inter["anchors"]) == 2 and inter["anchors"][0].shape[1] == 4
    assert [len(d["boxes"]) for d in inter["detections"]] == [len(o["boxes"]) for o in out]
    assert inter["detections"][0]["masks"].shape[-2:] == (28, 28)
    assert [len(p) for p in inter["proposal_scores"]] == [len(p) for p in inter["proposals"]]
    tiny.train()
    losses, inter = tiny(images, targets, return_intermediates=True)
    assert {"sampled_proposals", "labels", "regression_targets", "matched_idxs", "mask_logits",
            "anchors", "proposals", "proposal_scores"} <= set(inter)
    assert len(losses) == 5


def test_double_and_both_floors_agree():
    """model.double() works end to end; the reference floor gives the fast floor's numbers."""
    torch.manual_seed(0)
    a = ml.build_model(ml.config.tiny(num_classes=4, kernels="fast", box_score_thresh=0.0))
    b = ml.build_model(ml.config.tiny(num_classes=4, kernels="reference", box_score_thresh=0.0))
    b.load_state_dict(a.state_dict())
    a, b = a.double().eval(), b.double().eval()
    images = [img.double() for img in _tiny_batch()[0]]
    with torch.no_grad():
        oa, ob = a(images), b(images)
    assert sum(len(o["boxes"]) for o in oa) > 0
    _assert_same_detections(ob, oa)


def test_maskrcnn_resnet50_fpn_kwargs():
    model = ml.maskrcnn_resnet50_fpn(num_classes=3, min_size=200, box_score_thresh=0.3)
    assert isinstance(model, MaskRCNN)
    assert model.transform.min_size == (200,) and model.roi_heads.score_thresh == 0.3
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    with pytest.raises(TypeError, match="unknown config field"):
        ml.maskrcnn_resnet50_fpn(num_classes=3, not_a_field=1)


def test_mask_batch_size_per_image_caps_the_mask_loss_rois():
    """Training only: the mask loss sees at most mask_batch_size_per_image of an image's positive RoIs, a
    subset of the box branch's positives; None (the default, the paper's) keeps every positive."""
    images, targets = _tiny_batch()
    counts = {}
    for cap in (None, 1):
        torch.manual_seed(0)
        model = ml.build_model(ml.config.tiny(num_classes=4, mask_batch_size_per_image=cap)).train()
        torch.manual_seed(1)
        losses, inter = model(images, targets, return_intermediates=True)
        assert torch.isfinite(losses["loss_mask"])
        positives = [p[lab > 0] for p, lab in zip(inter["sampled_proposals"], inter["labels"])]
        masked = inter["mask_proposals"]
        counts[cap] = [len(m) for m in masked]
        for pos, m in zip(positives, masked):
            assert len(m) == (len(pos) if cap is None else min(cap, len(pos)))
            # each mask RoI is one of the image's positive RoIs
            assert all((pos == box).all(dim=1).any() for box in m)
        assert inter["mask_logits"].shape[0] == sum(counts[cap])
    assert counts[None][0] > 1 and counts[1] == [1, 1]  # the cap was reached, so it did something
    with pytest.raises(ValueError, match="mask_batch_size_per_image must be None or an integer >= 1, got 0"):
        ml.config.tiny(mask_batch_size_per_image=0)
