"""torchvision's method names on ``RoIHeads`` and ``RegionProposalNetwork`` are real hooks: the model calls
each one through ``self``, so a subclass that overrides it is called and changes what the model returns.

Each test swaps one part's class for a subclass with one overridden method (as ``experiments.variants``
does), runs the whole model, and checks both that the override ran and that its effect reached the output.
"""
import pytest
import torch

import mrcnn_lite as ml
from mrcnn_lite.data.shapes import ShapesDataset
from mrcnn_lite.model.roi_heads import RoIHeads
from mrcnn_lite.model.rpn import RegionProposalNetwork


@pytest.fixture(scope="module")
def batch():
    ds = ShapesDataset(num_images=2, image_size=96, seed=1)  # 3 objects in each image
    images, targets = zip(*[ds[i] for i in range(2)])
    return list(images), [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]


def _model(roi_heads_class=None, rpn_class=None):
    torch.manual_seed(0)
    model = ml.build_model(ml.config.tiny(num_classes=4))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)  # random weights: sharpen to get detections
    if roi_heads_class is not None:
        model.roi_heads.__class__ = roi_heads_class
    if rpn_class is not None:
        model.rpn.__class__ = rpn_class
    return model


def _train(model, batch):
    images, targets = batch
    model.train()
    torch.manual_seed(3)  # the same sampler draws in every run
    return model(images, targets, return_intermediates=True)


def _eval(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch[0], return_intermediates=True)


@pytest.fixture(scope="module")
def baseline(batch):
    return {"train": _train(_model(), batch), "eval": _eval(_model(), batch)}


# ------------------------------------------------------------------------------------------ RoIHeads
def test_check_targets_hook(batch):
    class Heads(RoIHeads):
        def check_targets(self, targets):
            raise RuntimeError("the subclass's check ran")

    with pytest.raises(RuntimeError, match="the subclass's check ran"):
        _train(_model(Heads), batch)


def test_add_gt_proposals_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def add_gt_proposals(self, proposals, gt_boxes):
            calls.append(len(proposals))
            return [g.clone() for g in gt_boxes]  # the GT boxes alone, no RPN proposal

    losses, inter = _train(_model(Heads), batch)
    assert calls == [2]
    for rois, labels, t in zip(inter["sampled_proposals"], inter["labels"], batch[1]):
        assert len(rois) == len(t["boxes"]) and (labels > 0).all()  # every RoI is a GT box: all positive
    assert any(len(r) != len(b) for r, b in zip(inter["sampled_proposals"], baseline["train"][1]["sampled_proposals"]))


def test_assign_targets_to_proposals_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
            calls.append(1)
            zeros = [torch.zeros(len(p), dtype=torch.int64) for p in proposals]
            return zeros, [z.clone() for z in zeros]  # everything background

    losses, inter = _train(_model(Heads), batch)
    assert calls == [1]
    assert all((lab == 0).all() for lab in inter["labels"])
    assert losses["loss_box_reg"].item() == 0 and losses["loss_mask"].item() == 0
    assert baseline["train"][0]["loss_box_reg"].item() > 0 and baseline["train"][0]["loss_mask"].item() > 0


def test_subsample_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def subsample(self, labels):
            calls.append(1)
            return [torch.where(lab > 0)[0] for lab in labels]  # the positives only

    _, inter = _train(_model(Heads), batch)
    assert calls == [1]
    assert all((lab > 0).all() and len(lab) > 0 for lab in inter["labels"])
    assert any((lab == 0).any() for lab in baseline["train"][1]["labels"])


def test_select_training_samples_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def select_training_samples(self, proposals, targets):
            calls.append(1)
            return tuple([x[:5] for x in out] for out in super().select_training_samples(proposals, targets))

    _, inter = _train(_model(Heads), batch)
    assert calls == [1]
    assert [len(p) for p in inter["sampled_proposals"]] == [5, 5]
    assert inter["class_logits"].shape[0] == 10 < baseline["train"][1]["class_logits"].shape[0]


def test_select_mask_rois_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def select_mask_rois(self, proposals, matched_idxs, labels):
            calls.append(1)
            mask_proposals, pos_matched_idxs = super().select_mask_rois(proposals, matched_idxs, labels)
            return [p[:1] for p in mask_proposals], [m[:1] for m in pos_matched_idxs]

    _, inter = _train(_model(Heads), batch)
    assert calls == [1]
    assert [len(p) for p in inter["mask_proposals"]] == [1, 1] and inter["mask_logits"].shape[0] == 2
    assert all(len(p) > 1 for p in baseline["train"][1]["mask_proposals"])


def test_postprocess_detections_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
            calls.append(1)
            boxes, scores, labels = super().postprocess_detections(class_logits, box_regression, proposals,
                                                                   image_shapes)
            return [b[:1] for b in boxes], [s[:1] for s in scores], [lab[:1] for lab in labels]  # the best one

    out, inter = _eval(_model(Heads), batch)
    assert calls == [1]
    assert [len(o["boxes"]) for o in out] == [1, 1] and [len(o["masks"]) for o in out] == [1, 1]
    base = baseline["eval"][0]
    assert all(len(o["boxes"]) > 1 for o in base)
    for o, b in zip(out, base):
        assert torch.equal(o["boxes"][0], b["boxes"][0])  # the override's choice, mapped back like any detection


def test_mask_loss_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def mask_loss(self, mask_logits, mask_proposals, targets, pos_matched_idxs):
            calls.append(mask_logits.shape[0])
            return mask_logits.sum() * 0 + 7.0

    losses, _ = _train(_model(Heads), batch)
    assert len(calls) == 1 and calls[0] > 0
    assert losses["loss_mask"].item() == 7.0 != baseline["train"][0]["loss_mask"].item()
    assert losses["loss_classifier"].item() == baseline["train"][0]["loss_classifier"].item()  # nothing else moved


def test_mask_probabilities_hook(batch, baseline):
    calls = []

    class Heads(RoIHeads):
        def mask_probabilities(self, mask_logits, labels):
            calls.append(1)
            return [torch.ones(len(lab), 1, *mask_logits.shape[-2:]) for lab in labels]

    out, _ = _eval(_model(Heads), batch)
    assert calls == [1]
    for o, b in zip(out, baseline["eval"][0]):
        assert torch.equal(o["boxes"], b["boxes"])  # the box branch is untouched
        assert o["masks"].max() == 1.0 and not torch.equal(o["masks"], b["masks"])


# ------------------------------------------------------------------------------------------ RPN
def test_pre_nms_top_n_hook(batch, baseline):
    class RPN(RegionProposalNetwork):
        def pre_nms_top_n(self):
            return 5

    _, inter = _eval(_model(rpn_class=RPN), batch)
    levels = len(inter["num_anchors_per_level"])
    assert inter["pre_nms_top_n_idx"].shape == (2, 5 * levels)
    assert all(len(p) <= 5 * levels for p in inter["proposals"])
    assert baseline["eval"][1]["pre_nms_top_n_idx"].shape[1] > 5 * levels


def test_post_nms_top_n_hook(batch, baseline):
    class RPN(RegionProposalNetwork):
        def post_nms_top_n(self):
            return 3

    _, inter = _eval(_model(rpn_class=RPN), batch)
    assert [len(p) for p in inter["proposals"]] == [3, 3]
    for p, b in zip(inter["proposals"], baseline["eval"][1]["proposals"]):
        assert len(b) > 3 and torch.equal(p, b[:3])  # the same ranking, cut earlier


def test_get_top_n_idx_hook(batch, baseline):
    calls = []

    class RPN(RegionProposalNetwork):
        def _get_top_n_idx(self, objectness, num_anchors_per_level):
            calls.append(1)
            return objectness[:, : num_anchors_per_level[0]].topk(4, dim=1).indices  # level 0 only, 4 each

    _, inter = _eval(_model(rpn_class=RPN), batch)
    assert calls  # filter_proposals called it
    assert inter["pre_nms_top_n_idx"].shape == (2, 4)
    assert all(len(p) <= 4 for p in inter["proposals"]) and all(len(p) > 4 for p in baseline["eval"][1]["proposals"])


def test_filter_proposals_hook(batch):
    calls = []

    class RPN(RegionProposalNetwork):
        def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
            calls.append(1)
            box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
            return [box.clone() for _ in image_shapes], [torch.ones(1) for _ in image_shapes]

    _, inter = _eval(_model(rpn_class=RPN), batch)
    assert calls == [1]
    assert all(torch.equal(p, torch.tensor([[10.0, 10.0, 60.0, 60.0]])) for p in inter["proposals"])
    assert inter["class_logits"].shape[0] == 2  # the box head scored exactly the override's proposals


def test_assign_targets_to_anchors_hook(batch, baseline):
    calls = []

    class RPN(RegionProposalNetwork):
        def assign_targets_to_anchors(self, anchors, targets):
            calls.append(1)
            labels, matched = super().assign_targets_to_anchors(anchors, targets)
            return [torch.zeros_like(lab) for lab in labels], matched  # every anchor background

    losses, _ = _train(_model(rpn_class=RPN), batch)
    assert calls == [1]
    assert losses["loss_rpn_box_reg"].item() == 0 < baseline["train"][0]["loss_rpn_box_reg"].item()


def test_compute_loss_hook(batch, baseline):
    calls = []

    class RPN(RegionProposalNetwork):
        def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
            calls.append(objectness.shape)
            return objectness.sum() * 0 + 2.0, pred_bbox_deltas.sum() * 0 + 3.0

    losses, _ = _train(_model(rpn_class=RPN), batch)
    assert len(calls) == 1
    assert (losses["loss_objectness"].item(), losses["loss_rpn_box_reg"].item()) == (2.0, 3.0)
    assert baseline["train"][0]["loss_objectness"].item() != 2.0
