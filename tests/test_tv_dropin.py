"""mrcnn_lite as a drop-in for torchvision's Mask R-CNN (issue 19): builder keywords, normalisation and
trainability, ``from_torchvision`` in training mode, building blocks with torchvision's signatures and
methods, and our clearer errors where torchvision asserts.

The ResNet-50 models run on small images with few proposals (``TV_SMALL``) to stay fast on a CPU; every
comparison with torchvision is in float64 with the tolerance ``TOL``.
"""
import inspect
import math
import os
import urllib.error

import pytest
import torch
import torchvision
from conftest import TV_SMALL, tv_r50_coco_layout
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN as TVMaskRCNN
from torchvision.models.detection import maskrcnn_resnet50_fpn as tv_maskrcnn_resnet50_fpn
from torchvision.models.detection import anchor_utils as tv_anchor_utils
from torchvision.models.detection import faster_rcnn as tv_faster_rcnn
from torchvision.models.detection import mask_rcnn as tv_mask_rcnn
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.ops import FrozenBatchNorm2d as TVFrozenBatchNorm2d

import mrcnn_lite as ml
from mrcnn_lite import detection
from mrcnn_lite.model.backbone import FrozenBatchNorm2d

TOL = 1e-6
COCO_V1_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"  # the file name of torchvision's COCO_V1 URL


def _norm_layers(model):
    """{kind: count} of the normalisation layers of the ResNet body (torchvision's or ours)."""
    counts = {}
    for m in model.backbone.body.modules():
        if isinstance(m, (FrozenBatchNorm2d, TVFrozenBatchNorm2d)):  # incl. the fast floor's subclass
            kind = "FrozenBatchNorm2d"
        elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            kind = type(m).__name__
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _sample(dtype=torch.float32):
    """One 200 x 300 image (seed 0) with two objects: a box-shaped mask and a smaller one."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 200, 300, generator=g, dtype=dtype)
    masks = torch.zeros(2, 200, 300, dtype=torch.uint8)
    masks[0, 40:160, 50:200] = 1
    masks[1, 20:90, 180:290] = 1
    target = {"boxes": torch.tensor([[50.0, 40.0, 200.0, 160.0], [180.0, 20.0, 290.0, 90.0]], dtype=dtype),
              "labels": torch.tensor([1, 1]), "masks": masks}
    return [image], [target]


def _train_losses(model, images, targets, seed=5):
    model.train()
    torch.manual_seed(seed)  # same seed: the samplers draw the same anchors and RoIs
    return {k: v.item() for k, v in model(images, targets).items()}


@pytest.fixture(scope="module")
def tv_coco_layout():
    """torchvision's COCO-v1 layout (FrozenBatchNorm2d eps 0, 3 trainable layers), random weights, float64."""
    return tv_r50_coco_layout()


@pytest.fixture(scope="module")
def tv_no_weights():
    """torchvision's builder without any weights: BatchNorm2d, every layer trainable; float64."""
    torch.manual_seed(0)
    return tv_maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **TV_SMALL).double()


# ----------------------------------------------------------------------------------------------------
# 1. builder keywords
# ----------------------------------------------------------------------------------------------------

def test_builder_takes_torchvision_keywords():
    sig = inspect.signature(ml.maskrcnn_resnet50_fpn)
    for name in ("weights", "progress", "num_classes", "weights_backbone", "trainable_backbone_layers"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    model = ml.maskrcnn_resnet50_fpn(weights=None, progress=False, num_classes=3, weights_backbone=None,
                                     trainable_backbone_layers=None, min_size=200, box_score_thresh=0.3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.transform.min_size == (200,) and model.roi_heads.score_thresh == 0.3
    assert ml.maskrcnn_resnet50_fpn().roi_heads.box_predictor.cls_score.out_features == 91  # torchvision's default
    with pytest.raises(TypeError, match="not_a_field"):
        ml.maskrcnn_resnet50_fpn(num_classes=3, not_a_field=1)


def test_builder_takes_torchvision_module_keywords():
    """torchvision's MaskRCNN keywords that are modules replace the model's parts; the model trains with them."""
    sizes = ((16,), (32,), (64,), (128,), (256,))
    anchors = detection.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    mask_predictor = tv_mask_rcnn.MaskRCNNPredictor(256, 128, 2)
    box_predictor = tv_faster_rcnn.FastRCNNPredictor(1024, 2)
    model = ml.maskrcnn_resnet50_fpn(rpn_anchor_generator=anchors, box_predictor=box_predictor,
                                     mask_predictor=mask_predictor, min_size=200, max_size=300)
    assert model.rpn.anchor_generator is anchors and model.roi_heads.mask_predictor is mask_predictor
    assert model.roi_heads.box_predictor is box_predictor and model.num_classes == 2  # from the box predictor
    losses = _train_losses(model, *_sample())
    assert all(math.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="box_predictor"):
        ml.maskrcnn_resnet50_fpn(num_classes=5, box_predictor=box_predictor)


def test_trainable_backbone_layers_follow_torchvision():
    # without weights torchvision warns and trains everything; so do we
    with pytest.warns(UserWarning, match="trainable_backbone_layers"):
        model = ml.maskrcnn_resnet50_fpn(num_classes=2, trainable_backbone_layers=2)
    assert all(p.requires_grad for p in model.parameters())
    # out of range: torchvision's ValueError
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        ml.maskrcnn_resnet50_fpn(num_classes=2, weights_backbone=resnet50().state_dict(), trainable_backbone_layers=6)


@pytest.mark.parametrize("layers", [0, 3, 5])
def test_weights_backbone_state_dict(layers):
    """An ImageNet ResNet-50 state dict as ``weights_backbone``: loaded into the body, FrozenBN (eps 1e-5, as
    torchvision's pretrained backbone), and torchvision's frozen/trainable split for each layer count."""
    torch.manual_seed(1)
    r50 = resnet50()
    ours = ml.maskrcnn_resnet50_fpn(num_classes=2, weights_backbone=r50.state_dict(), trainable_backbone_layers=layers)
    body = resnet50(norm_layer=TVFrozenBatchNorm2d)
    body.load_state_dict(r50.state_dict())
    tv = TVMaskRCNN(_resnet_fpn_extractor(body, layers), num_classes=2)
    assert _norm_layers(ours) == _norm_layers(tv) == {"FrozenBatchNorm2d": 53}
    assert all(m.eps == 1e-5 for m in ours.modules() if isinstance(m, FrozenBatchNorm2d))
    assert _trainable(ours) == _trainable(tv)
    tv_grad = {n: p.requires_grad for n, p in tv.named_parameters()}
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == tv_grad
    assert torch.equal(ours.backbone.body.layer3[2].conv2.weight, r50.layer3[2].conv2.weight)
    assert torch.equal(ours.backbone.body.layer1[0].bn1.running_var, r50.layer1[0].bn1.running_var)


def test_weights_state_dict_and_path_give_torchvision_detections(tv_coco_layout, tmp_path):
    """``weights=`` a COCO-v1-layout state dict (or its file): FrozenBN eps 0, 3 trainable layers,
    torchvision's detections in float64."""
    tv = tv_coco_layout
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 120, 160, generator=g, dtype=torch.float64)]
    with torch.no_grad():
        expected = tv(images)
    model = ml.maskrcnn_resnet50_fpn(weights=tv.state_dict(), **TV_SMALL)
    assert _norm_layers(model) == {"FrozenBatchNorm2d": 53}
    assert all(m.eps == 0.0 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert _trainable(model) == _trainable(tv)
    with torch.no_grad():
        out = model.double().eval()(images)
    assert len(out[0]["boxes"]) == len(expected[0]["boxes"]) > 0
    for k in ("boxes", "scores", "masks"):
        assert (out[0][k] - expected[0][k]).abs().max().item() < TOL, k
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": tv.state_dict(), "epoch": 3}, path)  # a references/detection-style checkpoint
    for weights in (path, str(path)):
        from_file = ml.maskrcnn_resnet50_fpn(weights=weights, **TV_SMALL).double()
        assert all(torch.equal(v, from_file.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="num_classes"):  # torchvision refuses a mismatch too
        ml.maskrcnn_resnet50_fpn(weights=tv.state_dict(), num_classes=3)


def test_weights_enum_reads_the_torch_hub_cache(tv_coco_layout, tmp_path, monkeypatch):
    """torchvision's weights enum (or its name) is read from the torch hub cache; a file not there is
    downloaded, and offline that fails naming it (tests/test_weights_download.py covers the download)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    coco_v1 = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    for weights in (coco_v1, "DEFAULT", "COCO_V1"):
        with pytest.raises(ml.DownloadError, match=COCO_V1_FILE):
            ml.maskrcnn_resnet50_fpn(weights=weights)
    cached = tmp_path / "hub" / "checkpoints" / COCO_V1_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)  # torch.hub made it before downloading
    torch.save(tv_coco_layout.state_dict(), cached)
    model = ml.maskrcnn_resnet50_fpn(weights=coco_v1, progress=False)
    assert model.roi_heads.box_predictor.cls_score.out_features == 91
    assert all(m.eps == 0.0 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert torch.equal(model.rpn.head.cls_logits.weight, tv_coco_layout.rpn.head.cls_logits.weight.float())
    with pytest.raises(FileNotFoundError, match="NOT_A_FILE"):  # neither a file nor a weights name
        ml.maskrcnn_resnet50_fpn(weights="NOT_A_FILE")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ml.maskrcnn_resnet50_fpn(weights=tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="weights"):
        ml.maskrcnn_resnet50_fpn(weights=3)


# ----------------------------------------------------------------------------------------------------
# 2. no weights: torchvision's trainable BatchNorm2d, every layer trained
# ----------------------------------------------------------------------------------------------------

def test_no_weights_same_norm_layers_and_trainable_count_as_torchvision(tv_no_weights):
    ours = ml.maskrcnn_resnet50_fpn(num_classes=2, **TV_SMALL)
    assert _norm_layers(ours) == _norm_layers(tv_no_weights) == {"BatchNorm2d": 53}
    assert _trainable(ours) == _trainable(tv_no_weights) == 43_975_515
    assert set(ours.state_dict()) == set(tv_no_weights.state_dict())  # num_batches_tracked included


def test_no_weights_training_losses_equal_torchvision(tv_no_weights):
    """Same weights (torchvision's state dict, strict), train mode: BatchNorm2d uses the batch statistics
    in both; the five losses and the updated running statistics agree in float64."""
    tv = tv_no_weights
    ours = ml.maskrcnn_resnet50_fpn(num_classes=2, **TV_SMALL).double()
    ours.load_state_dict(tv.state_dict(), strict=True)
    images, targets = _sample(torch.float64)
    ref = _train_losses(tv, images, targets)
    got = _train_losses(ours, images, targets)
    assert set(got) == set(ref)
    for k in ref:
        assert abs(got[k] - ref[k]) < TOL, (k, got[k], ref[k])
    for a, b in ((ours.backbone.body.bn1, tv.backbone.body.bn1), (ours.backbone.body.layer4[2].bn3,
                                                                  tv.backbone.body.layer4[2].bn3)):
        assert (a.running_mean - b.running_mean).abs().max().item() < TOL
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1
    tv.eval(), ours.eval()


def test_no_weights_first_step_losses_are_sane():
    """A fresh model's first objectness loss is that of a random binary classifier (ln 2 = 0.693): its
    activations are normalised. (FrozenBN over random weights gave 1.13 here.)"""
    torch.manual_seed(0)
    model = ml.maskrcnn_resnet50_fpn(num_classes=2, min_size=200, max_size=300)
    losses = _train_losses(model, *_sample(), seed=0)
    assert abs(losses["loss_objectness"] - math.log(2)) < 0.05, losses
    assert all(math.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------------------------------
# 3. from_torchvision keeps the source's normalisation and trainability
# ----------------------------------------------------------------------------------------------------

def test_from_torchvision_keeps_batchnorm_and_training_losses(tv_no_weights):
    tv = tv_no_weights
    ours = ml.from_torchvision(tv)
    assert _norm_layers(ours) == _norm_layers(tv) == {"BatchNorm2d": 53}
    assert _trainable(ours) == _trainable(tv)
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == {n: p.requires_grad for n, p in tv.named_parameters()}
    images, targets = _sample(torch.float64)
    ref = _train_losses(tv, images, targets)
    got = _train_losses(ours, images, targets)
    worst = max(abs(got[k] - ref[k]) for k in ref)
    assert set(got) == set(ref) and worst < TOL, (got, ref)
    tv.eval(), ours.eval()


def test_from_torchvision_keeps_frozen_parameters():
    """Parameters the source froze by hand stay frozen (and trainable ones stay trainable)."""
    torch.manual_seed(0)
    tv = tv_maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **TV_SMALL)
    for p in list(tv.backbone.body.layer1.parameters()) + list(tv.backbone.fpn.inner_blocks.parameters()):
        p.requires_grad_(False)
    ours = ml.from_torchvision(tv)
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == {n: p.requires_grad for n, p in tv.named_parameters()}
    assert _trainable(ours) == _trainable(tv)


# ----------------------------------------------------------------------------------------------------
# 4. building blocks with torchvision's signatures and methods
# ----------------------------------------------------------------------------------------------------

def _rpn_parts(lib):
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ag = lib.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return ag, lib.RPNHead(4, ag.num_anchors_per_location()[0])


def test_rpn_takes_top_n_as_dicts_or_ints():
    ag, head = _rpn_parts(detection)
    rpn = detection.RegionProposalNetwork(ag, head, 0.5, 0.3, 256, 0.5, 2000, 1500, 0.7, 0.05)  # torchvision's test
    for training in (True, False):
        rpn.train(training)
        assert (rpn.pre_nms_top_n(), rpn.post_nms_top_n()) == (2000, 1500)
    rpn = detection.RegionProposalNetwork(ag, head, 0.5, 0.3, 256, 0.5, dict(training=2000, testing=1000),
                                          dict(training=1500, testing=500), 0.7)
    assert (rpn.train().pre_nms_top_n(), rpn.post_nms_top_n()) == (2000, 1500)
    assert (rpn.eval().pre_nms_top_n(), rpn.post_nms_top_n()) == (1000, 500)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        detection.RegionProposalNetwork(ag, head, 0.5, 0.3, 256, 0.5, dict(training=2000), 1000, 0.7)


def test_rpn_assign_targets_to_anchors_empty_targets_like_torchvision():
    ag, head = _rpn_parts(detection)
    rpn = detection.RegionProposalNetwork(ag, head, 0.5, 0.3, 256, 0.5, 2000, 2000, 0.7, 0.05)
    anchors = [torch.randint(-50, 50, (3, 4), dtype=torch.float32)]
    targets = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 4}]
    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
    assert labels[0].dtype == torch.float32 and labels[0].shape == (3,) and labels[0].sum() == 0
    assert matched_gt_boxes[0].dtype == torch.float32 and matched_gt_boxes[0].shape == (3, 4)
    assert matched_gt_boxes[0].sum() == 0


def _roi_heads(lib, ops_lib, with_mask):
    box_roi_pool = ops_lib.MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    box_head = lib.TwoMLPHead(4 * 7 ** 2, 32)
    box_predictor = lib.FastRCNNPredictor(32, 3)
    mask = {}
    if with_mask:
        mask = dict(mask_roi_pool=ops_lib.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2),
                    mask_head=lib.MaskRCNNHeads(4, (8, 8), 1), mask_predictor=lib.MaskRCNNPredictor(8, 8, 3))
    return lib.RoIHeads(box_roi_pool, box_head, box_predictor, 0.5, 0.5, 16, 0.25, None, 0.05, 0.5, 100, **mask)


class _TV:  # torchvision's building blocks under the names of mrcnn_lite.detection
    RoIHeads = tv_roi_heads.RoIHeads
    TwoMLPHead = tv_faster_rcnn.TwoMLPHead
    FastRCNNPredictor = tv_faster_rcnn.FastRCNNPredictor
    MaskRCNNHeads = tv_mask_rcnn.MaskRCNNHeads
    MaskRCNNPredictor = tv_mask_rcnn.MaskRCNNPredictor


def _proposals_and_targets():
    g = torch.Generator().manual_seed(3)
    proposals, targets = [], []
    for n_prop, n_gt in ((40, 3), (30, 0), (25, 1)):
        xy = torch.rand(n_prop, 2, generator=g) * 60
        proposals.append(torch.cat([xy, xy + 5 + torch.rand(n_prop, 2, generator=g) * 30], 1))
        gxy = torch.rand(n_gt, 2, generator=g) * 60
        boxes = torch.cat([gxy, gxy + 10 + torch.rand(n_gt, 2, generator=g) * 20], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 3, (n_gt,), generator=g),
                        "masks": torch.zeros(n_gt, 100, 100, dtype=torch.uint8)})
    return proposals, targets


def test_roi_heads_methods_match_torchvision():
    ours, tv = _roi_heads(detection, ml.ops, True), _roi_heads(_TV, torchvision.ops, True)
    assert ours.has_mask() and tv.has_mask() and not ours.has_keypoint()
    assert not _roi_heads(detection, ml.ops, False).has_mask()
    proposals, targets = _proposals_and_targets()
    gt_boxes, gt_labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]

    for a, b in zip(ours.add_gt_proposals(proposals, gt_boxes), tv.add_gt_proposals(proposals, gt_boxes)):
        assert torch.equal(a, b)
    pool = ours.add_gt_proposals(proposals, gt_boxes)
    (mi_a, lab_a), (mi_b, lab_b) = (h.assign_targets_to_proposals(pool, gt_boxes, gt_labels) for h in (ours, tv))
    for x, y in zip(mi_a + lab_a, mi_b + lab_b):
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y)
    torch.manual_seed(7)
    sub_a = ours.subsample(lab_a)
    torch.manual_seed(7)
    sub_b = tv.subsample(lab_b)
    assert all(torch.equal(x, y) for x, y in zip(sub_a, sub_b))

    torch.manual_seed(8)
    out_a = ours.select_training_samples([p.clone() for p in proposals], targets)
    torch.manual_seed(8)
    out_b = tv.select_training_samples([p.clone() for p in proposals], targets)
    for xs, ys in zip(out_a, out_b):
        for x, y in zip(xs, ys):
            assert x.shape == y.shape and torch.allclose(x.double(), y.double(), atol=1e-6)

    g = torch.Generator().manual_seed(4)
    n = sum(len(p) for p in proposals)
    logits, deltas = torch.randn(n, 3, generator=g) * 3, torch.randn(n, 12, generator=g)
    shapes = [(100, 110), (90, 100), (100, 100)]
    for xs, ys in zip(ours.postprocess_detections(logits, deltas, proposals, shapes),
                      tv.postprocess_detections(logits, deltas, proposals, shapes)):
        for x, y in zip(xs, ys):
            assert x.shape == y.shape and torch.allclose(x, y, atol=1e-5)


def test_roi_heads_check_targets():
    heads = _roi_heads(detection, ml.ops, True)
    proposals, targets = _proposals_and_targets()
    heads.check_targets(targets)
    with pytest.raises(ValueError, match="targets"):
        heads.check_targets(None)
    with pytest.raises(ValueError, match="masks"):
        heads.check_targets([{k: v for k, v in t.items() if k != "masks"} for t in targets])
    with pytest.raises(ValueError, match="labels"):
        heads.check_targets([{"boxes": t["boxes"]} for t in targets])
    _roi_heads(detection, ml.ops, False).check_targets([{k: v for k, v in t.items() if k != "masks"} for t in targets])


def test_assign_targets_to_proposals_background_image_like_torchvision():
    heads = _roi_heads(detection, ml.ops, False)
    proposals = [torch.randint(-50, 50, (20, 4), dtype=torch.float32)]
    matched_idxs, labels = heads.assign_targets_to_proposals(proposals, [torch.zeros((0, 4))],
                                                             [torch.tensor([[0]], dtype=torch.int64)])
    for t in (matched_idxs[0], labels[0]):
        assert t.dtype == torch.int64 and t.shape == (20,) and t.sum() == 0


@pytest.mark.parametrize("image_list", ["torchvision", "mrcnn_lite", "tensor"])
def test_anchor_generator_takes_torchvision_image_list(image_list):
    images = torch.randn(2, 3, 15, 15)
    sizes = [tuple(i.shape[-2:]) for i in images]
    features = [torch.rand(2, 8, 3, 3)]
    wrapped = {"torchvision": TVImageList(images, sizes), "mrcnn_lite": detection.ImageList(images, sizes),
               "tensor": images}[image_list]
    ours = detection.AnchorGenerator(((10,),), ((1,),))(wrapped, features)
    ref = tv_anchor_utils.AnchorGenerator(((10,),), ((1,),))(TVImageList(images, sizes), features)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, ref))
    assert ours[0][4].tolist() == [0.0, 0.0, 10.0, 10.0]


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int16, torch.int64])
def test_box_area_and_iou_take_fmt(fmt, dtype):
    g = torch.Generator().manual_seed(0)
    b1 = torch.rand(2, 5, 4, generator=g) * 50
    b2 = torch.rand(2, 7, 4, generator=g) * 50
    b1[..., 2:] += b1[..., :2] + 1
    b2[..., 2:] += b2[..., :2] + 1
    b1, b2 = b1.to(dtype), b2.to(dtype)
    assert torch.equal(ml.ops.box_area(b1, fmt=fmt), torchvision.ops.box_area(b1, fmt=fmt))
    assert torch.equal(ml.ops.box_iou(b1, b2, fmt=fmt), torchvision.ops.box_iou(b1, b2, fmt=fmt))  # batched
    assert torch.equal(ml.ops.box_iou(b1[1], b2[1], fmt), torchvision.ops.box_iou(b1[1], b2[1], fmt))


def test_box_iou_rejects_unknown_fmt():
    with pytest.raises(ValueError, match="fmt"):
        ml.ops.box_iou(torch.zeros(1, 4), torch.zeros(1, 4), fmt="xywhr")
    with pytest.raises(ValueError, match="fmt"):
        ml.ops.box_area(torch.zeros(1, 4), fmt="yxyx")


def test_nms_on_empty_boxes_returns_empty_indices_whatever_the_other_arguments():
    empty = torch.empty((0,), dtype=torch.int64)
    for boxes in (torch.empty((0,)), torch.empty((0, 4)), torch.empty((0, 4), dtype=torch.float64)):
        for keep in (ml.ops.batched_nms(boxes, None, None, None), ml.ops.nms(boxes, None, None),
                     ml.ops.batched_nms(boxes, torch.empty(0), torch.empty(0, dtype=torch.int64), 0.5)):
            torch.testing.assert_close(keep, empty)
    torch.testing.assert_close(torchvision.ops.batched_nms(torch.empty((0,)), None, None, None), empty)


@pytest.mark.parametrize("name", ["FastRCNNPredictor", "MaskRCNNPredictor", "TwoMLPHead", "RPNHead",
                                  "RegionProposalNetwork", "RoIHeads", "AnchorGenerator", "MaskRCNNHeads"])
def test_building_blocks_have_torchvision_signatures(name):
    tv_cls = {"FastRCNNPredictor": tv_faster_rcnn.FastRCNNPredictor, "TwoMLPHead": tv_faster_rcnn.TwoMLPHead,
              "MaskRCNNPredictor": tv_mask_rcnn.MaskRCNNPredictor, "MaskRCNNHeads": tv_mask_rcnn.MaskRCNNHeads,
              "RPNHead": tv_rpn.RPNHead, "RegionProposalNetwork": tv_rpn.RegionProposalNetwork,
              "RoIHeads": tv_roi_heads.RoIHeads, "AnchorGenerator": tv_anchor_utils.AnchorGenerator}[name]
    tv_params = list(inspect.signature(tv_cls.__init__).parameters)
    ours = list(inspect.signature(getattr(detection, name).__init__).parameters)
    assert ours[: len(tv_params)] == tv_params  # ours may add keyword arguments after torchvision's


def test_predictors_interchangeable_with_torchvision():
    torch.manual_seed(0)
    for ours, tv, x in ((detection.FastRCNNPredictor(64, 3), tv_faster_rcnn.FastRCNNPredictor(64, 3),
                         torch.randn(5, 64)),
                        (detection.MaskRCNNPredictor(16, 8, 3), tv_mask_rcnn.MaskRCNNPredictor(16, 8, 3),
                         torch.randn(2, 16, 14, 14))):
        ours.load_state_dict(tv.state_dict(), strict=True)
        a, b = ours(x), tv(x)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(u, v)


# ----------------------------------------------------------------------------------------------------
# 6. our errors: ValueError / TypeError naming the argument, where torchvision asserts
# ----------------------------------------------------------------------------------------------------

def _bad_anchor_call(lib_anchor, lib_image_list):
    anc = lib_anchor(((2, 4, 8), (32, 8)), (0.5, 1.0))
    return anc(lib_image_list(torch.randn(3, 800, 800), [(800, 800)]), [torch.randn(1, 50)])


def test_errors_are_value_or_type_errors_where_torchvision_asserts():
    with pytest.raises(AssertionError):
        _bad_anchor_call(tv_anchor_utils.AnchorGenerator, TVImageList)
    with pytest.raises((ValueError, TypeError), match="images|feature_maps"):
        _bad_anchor_call(detection.AnchorGenerator, TVImageList)

    x = torch.linspace(1, 64, 64).reshape(1, 1, 8, 8)
    bad_boxes = torch.tensor([[0, 0, 3, 3]], dtype=x.dtype)
    with pytest.raises(AssertionError):
        torchvision.ops.roi_pool(x, bad_boxes, output_size=(2, 2))
    with pytest.raises(ValueError, match="boxes"):
        ml.ops.roi_pool(x, bad_boxes, output_size=(2, 2))


@pytest.fixture(scope="module")
def tiny_pair():
    """A tiny torchvision Mask R-CNN and ours from it, for the input-error comparison (fast)."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    torch.manual_seed(0)
    bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    tv = TVMaskRCNN(bb, num_classes=3, min_size=64, max_size=64)
    return tv, ml.from_torchvision(tv)


@pytest.mark.parametrize("case", ["no_targets", "boxes_shape", "degenerate_box"])
def test_model_input_errors_vs_torchvision(tiny_pair, case):
    image = [torch.rand(3, 64, 64)]
    good = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
            "masks": torch.ones(1, 64, 64, dtype=torch.uint8)}
    targets = {"no_targets": None,
               "boxes_shape": [dict(good, boxes=torch.tensor([5.0, 5.0, 30.0, 30.0]))],
               "degenerate_box": [dict(good, boxes=torch.tensor([[5.0, 5.0, 5.0, 30.0]]))]}[case]
    tv, ours = tiny_pair
    tv.train(), ours.train()
    with pytest.raises((AssertionError, RuntimeError)):
        tv(image, targets)
    with pytest.raises(ValueError, match="target|boxes|training"):
        ours(image, targets)
