"""The anchor explorer's logic (``anchor_view``) and its widget, headless."""
import pytest
import torch

from mrcnn_lite.model.anchors import AnchorGenerator
from mrcnn_lite.ops import box_iou
from mrcnn_lite.viz.widgets import AnchorExplorer
from mrcnn_lite.viz.widgets.anchor_explorer import anchor_view

GT = torch.tensor([[10.0, 12.0, 50.0, 40.0], [70.0, 60.0, 120.0, 124.0], [90.0, 8.0, 99.0, 15.0]])


def test_counts_add_up_and_labels_follow_iou():
    v = anchor_view((128, 128), GT, size=32, aspect_ratios=(0.5, 1.0, 2.0), stride=8,
                    fg_iou_thresh=0.7, bg_iou_thresh=0.3, allow_low_quality_matches=False)
    c = v["counts"]
    assert c["positive"] + c["negative"] + c["neutral"] == c["total"] == 16 * 16 * 3
    # The same anchors as the package's AnchorGenerator, and labels from a direct IoU computation.
    anchors = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).anchors_for((128, 128), [(16, 16)])
    assert torch.equal(v["anchors"], anchors)
    best = box_iou(GT, anchors).max(dim=0).values
    assert torch.equal(v["labels"] == 1, best >= 0.7)
    assert torch.equal(v["labels"] == 0, best < 0.3)
    assert c["positive"] == int((best >= 0.7).sum()) > 0


def test_low_quality_matches_give_every_gt_a_positive():
    # The 9x7 box at (90, 8) is far smaller than any 32-px anchor: no anchor reaches IoU 0.7.
    strict = anchor_view((128, 128), GT, size=32, stride=8, allow_low_quality_matches=False)
    assert strict["gt_positive_counts"][2] == 0
    v = anchor_view((128, 128), GT, size=32, stride=8)
    assert (v["gt_positive_counts"] >= 1).all()
    assert v["counts"]["positive"] > strict["counts"]["positive"]


def test_thresholds_move_counts_monotonically():
    pos, neg = [], []
    for fg in (0.5, 0.6, 0.7, 0.8):
        c = anchor_view((128, 128), GT, size=32, stride=8, fg_iou_thresh=fg, bg_iou_thresh=0.3,
                        allow_low_quality_matches=False)["counts"]
        pos.append(c["positive"])
    for bg in (0.1, 0.2, 0.3, 0.4):
        c = anchor_view((128, 128), GT, size=32, stride=8, fg_iou_thresh=0.7, bg_iou_thresh=bg)["counts"]
        neg.append(c["negative"])
    assert pos == sorted(pos, reverse=True) and pos[0] > pos[-1]
    assert neg == sorted(neg) and neg[0] < neg[-1]


def test_location_picks_the_nearest_cell():
    v = anchor_view((128, 128), GT, size=16, aspect_ratios=(1.0, 2.0), stride=16, location=(37, 70))
    assert v["cell"] == (4, 2)  # y 70 / 16 -> 4, x 37 / 16 -> 2
    assert v["anchors_at_location"].shape == (2, 4)
    centres = (v["anchors_at_location"][:, :2] + v["anchors_at_location"][:, 2:]) / 2
    assert centres.tolist() == [[32.0, 64.0], [32.0, 64.0]]
    assert torch.equal(v["anchors"][v["indices_at_location"]], v["anchors_at_location"])


def test_no_gt_boxes_all_negative():
    v = anchor_view((64, 96), torch.zeros(0, 4), size=16, stride=8)
    assert v["counts"]["negative"] == v["counts"]["total"] == 8 * 12 * 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="aspect_ratios"):
        anchor_view((64, 64), GT, aspect_ratios=())
    with pytest.raises(ValueError, match="bg_iou_thresh"):
        anchor_view((64, 64), GT, fg_iou_thresh=0.3, bg_iou_thresh=0.7)


def test_widget_update_changes_the_picture_and_counts():
    torch.manual_seed(0)
    image = torch.rand(3, 128, 128)
    ex = AnchorExplorer(image, GT, size=32, stride=8)
    png0, counts0 = ex.image_widget.value, dict(ex.view["counts"])
    assert png0[:8] == b"\x89PNG\r\n\x1a\n"
    assert "positive" in ex.info.value
    view = ex.update(fg_iou_thresh=0.5, bg_iou_thresh=0.2)
    assert view is ex.view and ex.image_widget.value != png0
    assert view["counts"]["positive"] > counts0["positive"]
    png1 = ex.image_widget.value
    ex.update(location=(20, 100), aspect_ratios=(1.0, 3.0))  # a ratio not in the list is added
    assert ex.view["cell"] == (12, 2) and ex.view["aspect_ratios"] == (1.0, 3.0)
    assert ex.image_widget.value != png1
    # Moving a control (as a browser would) redraws; picking a level also picks its anchor size.
    png2 = ex.image_widget.value
    ex.controls["stride"].value = 32
    assert ex.controls["size"].value == 64 and ex.view["stride"] == 32 and ex.image_widget.value != png2
    png3 = ex.image_widget.value
    ex.controls["x"].value = 90
    assert ex.image_widget.value != png3
    with pytest.raises(TypeError, match="unknown control"):
        ex.update(colour="red")
