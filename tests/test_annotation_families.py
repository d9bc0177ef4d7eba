"""Issue 27's last silent paths, each a family of bad annotations: what the loader or the model's entrance
now does with it (a clear error naming the record, or a documented repair with a warning naming it).

(a) a bbox with positive width/height that is 0 in float32 (or once clipped to the image);
(b) an annotation file without usable ``categories``;
(c) target boxes far outside the image, given straight to the model;
(d) a bbox that contradicts its own mask.
"""
import json
import warnings

import numpy as np
import pytest
import torch

import mrcnn_lite as ml
from conftest import COCO_H, COCO_W, ann, rect_rle, write_coco
from mrcnn_lite.data import CocoInstances

# ------------------------------------------------------------------ (a) zero width in float32

FLOAT32_ZERO = [
    (1e6, 3, 0.01, 5),        # x + w rounds back to x in float32 (spacing 0.0625 at 1e6)
    (0.5, 3, 1e-9, 5),        # a width far below float32's resolution at 0.5
    (2, 1e6, 4, 0.01),        # the same for the height
    (29.999999999, 3, 4, 5),  # x rounds to 30 = W: clipped to the image, nothing is left
]


@pytest.mark.parametrize("bbox", FLOAT32_ZERO)
def test_a_box_that_vanishes_in_float32_is_degenerate(tmp_path, bbox):
    assert bbox[2] > 0 and bbox[3] > 0  # positive in the file (float64)
    img_dir, path = write_coco(tmp_path, [ann(3), ann(8, bbox=bbox)])
    with pytest.raises(ValueError, match=r"annotation id 8: bbox .* vanish in float32"):
        CocoInstances(img_dir, path)
    with pytest.warns(UserWarning, match=r"dropped 1 annotations .*annotation ids \[8\]"):
        ds = CocoInstances(img_dir, path, drop_degenerate=True)
    assert ds.num_dropped == 1 and ds.dropped_ids == {8}
    _, t = ds[0]
    assert t["boxes"].tolist() == [[2, 3, 6, 8]]  # annotation 3 alone
    assert [a["id"] for a in ds.coco.dataset["annotations"]] == [3]  # left out of evaluation too


def test_a_small_box_that_survives_float32_is_kept(tmp_path):
    assert np.float32(2 + 1e-3) > np.float32(2)  # float32's spacing at 2 is 2.4e-7
    img_dir, path = write_coco(tmp_path, [ann(3, bbox=(2, 3, 1e-3, 5))])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ds = CocoInstances(img_dir, path)
    assert ds.num_dropped == 0


# ------------------------------------------------------------------ (b) categories

@pytest.mark.parametrize("categories, found", [
    (None, "has no 'categories'"),
    ([], r"has 'categories' = \[\]"),
    ({"1": "thing"}, r"has 'categories' = \{'1': 'thing'\}"),
    ("thing", "has 'categories' = thing"),
])
def test_a_file_without_categories_is_refused_naming_the_file(tmp_path, categories, found):
    img_dir, path = write_coco(tmp_path, [ann(3)])
    data = json.loads(path.read_text())
    if categories is None:
        del data["categories"]
    else:
        data["categories"] = categories
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{path.name} {found}; a COCO instances file needs a non-empty list"):
        CocoInstances(img_dir, path)


@pytest.mark.parametrize("categories, message", [
    ([{"id": 1, "name": "thing"}, "dog"], r"category dog needs an integer 'id'"),
    ([{"id": "1", "name": "thing"}], r"category .* needs an integer 'id'"),
    ([{"id": 1}], r"category id 1 needs a 'name' \(a non-empty string\), got None"),
    ([{"id": 1, "name": ""}], r"category id 1 needs a 'name'"),
    ([{"id": 1, "name": 7}], r"category id 1 needs a 'name' .* got 7"),
    ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "category id 1 is declared twice"),
])
def test_malformed_categories_are_refused_naming_the_file_and_entry(tmp_path, categories, message):
    img_dir, path = write_coco(tmp_path, [ann(3)], categories=categories)
    with pytest.raises(ValueError, match=f"{path.name}: {message}"):
        CocoInstances(img_dir, path)


# ------------------------------------------------------------------ (c) boxes outside the image, at the model

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ml.build_model(ml.config.tiny(num_classes=4, kernels="reference")).train()


def _target(box, H=64, W=96):
    masks = torch.zeros(1, H, W, dtype=torch.uint8)
    masks[0, 5:10, 5:10] = 1
    return {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([1]), "masks": masks}


@pytest.mark.parametrize("box", [
    [100.0, 10.0, 120.0, 20.0],     # right of the 96-px-wide image
    [10.0, 64.0, 20.0, 70.0],       # starts on the bottom edge: no pixel inside
    [-50.0, 10.0, -1.0, 20.0],      # left of it
    [10.0, -30.0, 20.0, 0.0],       # ends on the top edge
    [-200.0, 10.0, 20.0, 20.0],     # overlaps, but reaches two image widths to the left
    [10.0, 10.0, 20.0, 1e6],        # overlaps, but reaches a million pixels down
    [0.0, 0.0, 500.0, 500.0],       # boxes of another (larger) image
])
def test_target_boxes_outside_the_image_are_refused_at_the_entrance(tiny, box):
    image = torch.rand(3, 64, 96)
    good = _target([5.0, 5.0, 10.0, 10.0])
    with pytest.raises(ValueError, match=rf"target 1: box 0 \[.*\] \(x1y1x2y2\) does not fit image 1 of 96x64 "
                                         r"\(WxH\): a box must overlap its image"):
        tiny([image, image], [good, _target(box)])


@pytest.mark.parametrize("box", [
    [-3.0, -2.0, 99.0, 66.0],       # sticks out a few pixels (rounding, augmentation): fine
    [-96.0, -64.0, 192.0, 128.0],   # exactly one image size beyond on every side
    [95.0, 63.0, 96.0, 64.0],       # the last pixel
])
def test_boxes_that_overlap_and_stay_near_the_image_train(tiny, box):
    losses = tiny([torch.rand(3, 64, 96)], [_target(box)])
    assert all(torch.isfinite(v) for v in losses.values())


# ------------------------------------------------------------------ (d) a box that contradicts its mask

@pytest.mark.parametrize("bbox, seg", [
    ((20, 10, 5, 5), rect_rle(2, 3, 6, 8)),          # every mask pixel outside the box
    ((2, 3, 28, 17), rect_rle(2, 3, 6, 8)),          # box far larger than the mask (IoU 20/476)
    ((2, 3, 4, 5), [[20, 10, 26, 10, 26, 15, 20, 15]]),  # polygon mask elsewhere than the box
])
def test_a_box_beside_its_mask_is_recomputed_from_the_mask(tmp_path, bbox, seg):
    img_dir, path = write_coco(tmp_path, [ann(3, bbox=bbox, seg=seg), ann(4)])
    ds = CocoInstances(img_dir, path)
    with pytest.warns(UserWarning, match=r"annotation id 3 \(image id 1\): bbox .* overlap with IoU 0\.\d\d < 0.5; "
                                         r"the box is recomputed from the mask") as record:
        _, t = ds[0]
    assert len(record) == 1  # annotation 4 agrees with its mask
    mask = t["masks"][0].numpy()
    ys, xs = np.nonzero(mask)
    assert t["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert t["boxes"][1].tolist() == [2, 3, 6, 8]


@pytest.mark.parametrize("seg", [
    {"size": [COCO_H, COCO_W], "counts": [COCO_H * COCO_W]},   # an all-zero uncompressed RLE
    rect_rle(0, 0, 0, 0),                                      # an all-zero compressed RLE
    [[2.1, 3.1, 2.4, 3.1, 2.4, 3.4]],                           # a polygon covering no pixel centre
])
def test_an_empty_mask_under_a_box_drops_the_annotation(tmp_path, seg):
    img_dir, path = write_coco(tmp_path, [ann(3, bbox=(2, 3, 10, 10), seg=seg), ann(4, category_id=5)])
    ds = CocoInstances(img_dir, path)
    with pytest.warns(UserWarning, match=r"annotation id 3 \(image id 1\): its mask is empty while its bbox "
                                         r"\[2.0, 3.0, 12.0, 13.0\] .* the annotation is dropped"):
        _, t = ds[0]
    assert t["labels"].tolist() == [5] and t["masks"].shape == (1, COCO_H, COCO_W)
    assert t["boxes"].tolist() == [[2, 3, 6, 8]] and t["iscrowd"].tolist() == [0] and len(t["area"]) == 1
