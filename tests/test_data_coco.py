"""COCO export and CocoInstances: exact round trip, all segmentation kinds, clear errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ann, write_coco
from mrcnn_lite.data import CocoInstances, ShapesDataset, export_coco, mask_to_polygons

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(24, image_size=80, seed=7)


@pytest.fixture(scope="module")
def exported(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco")
    return {fmt: export_coco(shapes, out, fmt, mask_format=fmt) for fmt in ("rle", "polygon")}


def test_layout_and_json(exported, shapes):
    ann = exported["rle"]
    assert ann.name == "annotations.json" and (ann.parent / "images" / "000000.png").is_file()
    data = json.loads(ann.read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle"]
    assert len(data["images"]) == len(shapes)
    a = data["annotations"][0]
    assert a["id"] == 1 and isinstance(a["segmentation"]["counts"], str)
    assert len(a["bbox"]) == 4 and a["iscrowd"] == 0


def test_rle_round_trip_is_exact(exported, shapes):
    ann = exported["rle"]
    back = CocoInstances(ann.parent / "images", ann)
    assert len(back) == len(shapes)
    for i in range(len(shapes)):
        (ia, ta), (ib, tb) = shapes[i], back[i]
        assert torch.equal(ia, ib)  # 8-bit images in lossless PNG: identical pixels
        for k in ("boxes", "labels", "masks", "area", "iscrowd"):
            assert torch.equal(ta[k], tb[k]), (i, k)
            assert ta[k].dtype == tb[k].dtype
        assert ta["image_id"] == tb["image_id"]


def test_polygon_round_trip(exported, shapes):
    """Polygons follow pixel edges: boxes, labels and areas are exact, and masks are exact
    for these shapes (IoU = 1); only a region with a hole would come back filled."""
    ann = exported["polygon"]
    back = CocoInstances(ann.parent / "images", ann)
    for i in range(len(shapes)):
        (ia, ta), (ib, tb) = shapes[i], back[i]
        assert torch.equal(ia, ib)
        for k in ("boxes", "labels", "area"):
            assert torch.equal(ta[k], tb[k])
        inter = (ta["masks"] & tb["masks"]).sum((1, 2)).float()
        union = (ta["masks"] | tb["masks"]).sum((1, 2)).float()
        assert (inter / union).min() >= 0.95 if len(union) else True
        assert torch.equal(ta["masks"], tb["masks"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools with numpy 2
def test_mask_to_polygons_fills_holes_and_splits_regions():
    m = np.zeros((10, 12), dtype=np.uint8)
    m[1:6, 1:6] = 1
    m[3, 3] = 0        # a hole: polygons cannot carry it
    m[7:9, 8:11] = 1   # a second region
    polys = mask_to_polygons(m)
    assert len(polys) == 2
    from pycocotools import mask as mu
    back = mu.decode(mu.merge(mu.frPyObjects(polys, 10, 12)))
    filled = m.copy()
    filled[3, 3] = 1
    assert np.array_equal(back, filled)


def test_shipped_shapes_mini_matches_generator():
    base = ROOT / "data" / "shapes-mini"
    for split, n, seed in (("train", 64, 0), ("val", 32, 1)):
        ds = CocoInstances(base / split / "images", base / split / "annotations.json")
        assert len(ds) == n
        gen = ShapesDataset(n, seed=seed, noise_std=0.0)
        for i in (0, n // 2, n - 1):
            (ia, ta), (ib, tb) = gen[i], ds[i]
            assert torch.equal(ia, ib)
            for k in ("boxes", "labels", "masks"):
                assert torch.equal(ta[k], tb[k])


# ---------------------------------------------------------------- hand-written annotation files


def test_polygon_file(tmp_path):
    # rectangle covering columns 2..5 and rows 3..7 (pixel-corner coordinates)
    poly = [[2, 3, 6, 3, 6, 8, 2, 8]]
    img_dir, path = write_coco(tmp_path, [ann(7, poly, bbox=(2, 3, 4, 5), category_id=5)])
    ds = CocoInstances(img_dir, path)
    image, t = ds[0]
    assert image.shape == (3, 20, 30) and torch.allclose(image, torch.full_like(image, 100 / 255))
    assert t["labels"].tolist() == [5] and t["image_id"] == 1
    assert t["boxes"].tolist() == [[2, 3, 6, 8]]
    expected = np.zeros((20, 30), np.uint8)
    expected[3:8, 2:6] = 1
    assert np.array_equal(t["masks"][0].numpy(), expected)
    # image 2 has no annotations: a valid, empty sample
    _, t2 = ds[1]
    assert t2["boxes"].shape == (0, 4) and t2["masks"].shape == (0, 20, 30)
    assert t2["labels"].dtype == torch.int64
    assert ds.class_names[5] == "other" and ds.class_names[1] == "thing"


def test_uncompressed_rle_file(tmp_path):
    H, W = 20, 30
    m = np.zeros((H, W), np.uint8)
    m[4:9, 10:13] = 1
    flat = m.flatten(order="F")  # COCO RLE runs go down the columns
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    seg = {"size": [H, W], "counts": counts}
    crowd = {**ann(3, seg, bbox=(10, 4, 3, 5)), "iscrowd": 1}  # crowds use uncompressed RLE
    img_dir, path = write_coco(tmp_path, [crowd])
    ds = CocoInstances(img_dir, path, skip_crowd=False)
    _, t = ds[0]
    assert np.array_equal(t["masks"][0].numpy(), m)
    assert t["iscrowd"].tolist() == [1]
    # by default crowds are left out of the targets (as torchvision's references do)
    assert len(CocoInstances(img_dir, path)[0][1]["labels"]) == 0


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoInstances(tmp_path, tmp_path / "nope.json")


def test_empty_and_corrupt_json(tmp_path):
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(ValueError, match="empty.*empty.json"):
        CocoInstances(tmp_path, tmp_path / "empty.json")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON.*bad.json"):
        CocoInstances(tmp_path, tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoInstances(tmp_path, tmp_path / "list.json")


def test_annotation_points_to_missing_image(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(42, [[0, 0, 4, 0, 4, 4]], image_id=99)])
    with pytest.raises(ValueError, match="annotation id 42.*image_id 99"):
        CocoInstances(img_dir, path)


def test_missing_image_file(tmp_path):
    img_dir, path = write_coco(tmp_path, [], image_files=False)
    ds = CocoInstances(img_dir, path)
    with pytest.raises(FileNotFoundError, match="image id 1.*a.png"):
        ds[0]


def test_image_size_mismatch(tmp_path):
    img_dir, path = write_coco(tmp_path, [], images=[
        {"id": 4, "file_name": "a.png", "height": 21, "width": 30}])
    with pytest.raises(ValueError, match="image id 4"):
        CocoInstances(img_dir, path)[0]


@pytest.mark.parametrize("seg, message", [
    ("not a segmentation", r"annotation id 11 \(image id 1\): segmentation must be"),
    ([[1, 2, 3, 4]], r"annotation id 11 \(image id 1\): a polygon needs"),
    ([[1, 2, 3, 4, 5]], r"annotation id 11 \(image id 1\): a polygon needs"),
    ([["a", 2, 3, 4, 5, 6]], r"annotation id 11 \(image id 1\): a polygon must be"),
    ([], r"annotation id 11 \(image id 1\): empty polygon"),
    ({"size": [10, 10], "counts": "abc"}, r"annotation id 11 \(image id 1\): RLE size \[10, 10\]"),
    ({"size": [20, 30], "counts": [5, 5]}, r"annotation id 11 \(image id 1\): uncompressed RLE counts"),
    ({"size": [20, 30]}, r"annotation id 11 \(image id 1\): an RLE segmentation needs"),
    ({"size": [20, 30], "counts": 3}, r"annotation id 11 \(image id 1\): RLE counts must be"),
])
def test_bad_segmentation(tmp_path, seg, message):
    img_dir, path = write_coco(tmp_path, [ann(11, seg)])
    with pytest.raises(ValueError, match=message):  # found when the file is loaded
        CocoInstances(img_dir, path)


@pytest.mark.parametrize("bbox", [(1, 1, 0, 5), (1, 1, 4, -2)])
def test_bad_bbox(tmp_path, bbox):
    img_dir, path = write_coco(tmp_path, [ann(8, [[0, 0, 4, 0, 4, 4]], bbox=bbox)])
    with pytest.raises(ValueError, match="annotation id 8: bbox .* non-positive"):
        CocoInstances(img_dir, path)
    ds = CocoInstances(img_dir, path, drop_degenerate=True)
    assert ds.num_dropped == 1 and len(ds[0][1]["labels"]) == 0


def test_coco_object_and_repr(exported):
    ann_path = exported["rle"]
    ds = CocoInstances(ann_path.parent / "images", ann_path)
    assert len(ds.coco.getImgIds()) == len(ds)
    assert sorted(ds.coco.getCatIds()) == [1, 2, 3]
    assert "CocoInstances" in repr(ds)


def test_penn_fudan_layout(tmp_path):
    """PennFudan reads instance-id masks (0 = background, k = person k) from the official layout."""
    from mrcnn_lite.data import PennFudan
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "PNGImages" / "FudanPed00001.png")
    ids = np.zeros((12, 16), np.uint8)
    ids[1:5, 2:4] = 1
    ids[6:11, 9:15] = 2
    Image.fromarray(ids).save(tmp_path / "PedMasks" / "FudanPed00001_mask.png")
    ds = PennFudan(tmp_path)
    image, t = ds[0]
    assert len(ds) == 1 and image.shape == (3, 12, 16)
    assert t["labels"].tolist() == [1, 1]
    assert t["boxes"].tolist() == [[2, 1, 4, 5], [9, 6, 15, 11]]
    assert t["area"].tolist() == [8, 30]
    with pytest.raises(FileNotFoundError, match="PNGImages"):
        PennFudan(tmp_path / "nowhere")
