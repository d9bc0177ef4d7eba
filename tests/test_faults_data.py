"""Bad and unusual data files: every case gives a clear error naming the record, before any work,
or the correct result."""
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import COCO_H as H
from conftest import COCO_W as W
from conftest import ann, rect_rle, write_coco
from mrcnn_lite.data import CocoInstances, PennFudan


# ------------------------------------------------------------------ polygons and RLE, before decoding

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e9, -1e9])
def test_polygon_with_nan_inf_or_huge_coordinate_is_refused_fast(tmp_path, bad):
    # pycocotools would allocate without bound (21 GB for 1e9) or crash; we refuse before decoding
    poly = [[2, 3, 6, 3, bad, 8, 2, 8]]
    img_dir, path = write_coco(tmp_path, [ann(7, poly)])
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"annotation id 7 \(image id 1\): a polygon (has a non-finite|reaches)"):
        CocoInstances(img_dir, path)
    assert time.perf_counter() - start < 30  # a regression would allocate for minutes, not hang a test run


def test_polygon_slightly_outside_the_image_is_fine(tmp_path):
    poly = [[-2, -1, 31, -1, 31, 21, -2, 21]]  # real annotations often overshoot by a pixel or two
    img_dir, path = write_coco(tmp_path, [ann(7, poly, bbox=(0, 0, 30, 20))])
    _, t = CocoInstances(img_dir, path)[0]
    assert t["masks"][0].sum().item() == H * W


def compressed_counts(runs):
    """Encode run lengths as pycocotools' compact string (the inverse of rleFrString), any runs."""
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0  # pycocotools' rleToString
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_compressed_counts_helper_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = (rng.random((H, W)) < 0.3).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        flat = m.reshape(-1, order="F")
        ends = np.flatnonzero(np.diff(flat)) + 1
        counts = np.diff(np.concatenate([[0], ends, [flat.size]])).tolist()
        counts = ([0] + counts) if flat[0] else counts
        assert compressed_counts(counts) == rle["counts"].decode()


@pytest.mark.parametrize("runs, message", [
    ([100, 20], "compressed RLE counts sum to 120"),              # too short: pycocotools reads garbage
    ([100, 20, 600], "compressed RLE counts sum to 720"),
    ([300, 400, -100], "compressed RLE has a negative run length"),                      # sums to H*W = 600 but has a negative run
])
def test_compressed_rle_with_wrong_or_negative_runs_is_refused(tmp_path, runs, message):
    seg = {"size": [H, W], "counts": compressed_counts(runs)}
    img_dir, path = write_coco(tmp_path, [ann(9, seg)])
    with pytest.raises(ValueError, match=rf"annotation id 9 \(image id 1\): {message}"):
        CocoInstances(img_dir, path)


@pytest.mark.parametrize("counts, message", [
    ("0é1", "must be ASCII"),
    ("0~", "cannot appear in compressed RLE"),
    ("0" * 5 + "o", "end in the middle of a number"),
])
def test_compressed_rle_with_bad_characters_is_refused(tmp_path, counts, message):
    img_dir, path = write_coco(tmp_path, [ann(9, {"size": [H, W], "counts": counts})])
    with pytest.raises(ValueError, match=rf"annotation id 9 \(image id 1\): .*{message}"):
        CocoInstances(img_dir, path)


def test_uncompressed_rle_with_negative_run_is_refused(tmp_path):
    seg = {"size": [H, W], "counts": [700, -100]}  # sums to 600 = H*W
    img_dir, path = write_coco(tmp_path, [ann(9, seg)])
    with pytest.raises(ValueError, match=r"annotation id 9 \(image id 1\): uncompressed RLE has a negative"):
        CocoInstances(img_dir, path)


def test_valid_compressed_rle_decodes_the_same_every_time(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(9)])
    ds = CocoInstances(img_dir, path)
    expected = np.zeros((H, W), np.uint8)
    expected[3:8, 2:6] = 1
    for _ in range(3):
        assert np.array_equal(ds[0][1]["masks"][0].numpy(), expected)


# ------------------------------------------------------------------ image files

@pytest.mark.parametrize("content", [b"", b"this is not a png", "truncated"])
def test_unreadable_image_names_the_file_and_image_id(tmp_path, content):
    img_dir, path = write_coco(tmp_path, [])
    target = img_dir / "b.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(target)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(content)
    ds = CocoInstances(img_dir, path)
    ds[0]  # image 1 is fine
    with pytest.raises(ValueError, match=r"cannot read image id 2 \(.*b\.png\)"):
        ds[1]


def test_16_bit_png_is_scaled_not_white(tmp_path):
    img_dir, path = write_coco(tmp_path, [])
    gray16 = (np.arange(H * W).reshape(H, W) * 100).astype(np.uint16)  # 0 .. 59900
    Image.fromarray(gray16).save(img_dir / "a.png")
    assert Image.open(img_dir / "a.png").mode == "I;16"
    image, _ = CocoInstances(img_dir, path)[0]
    expected = np.rint(gray16 / 257.0) / 255.0
    assert image.shape == (3, H, W)
    for c in range(3):
        np.testing.assert_allclose(image[c].numpy(), expected, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    # stored 30 wide x 20 high with "rotate 90 clockwise to view" (orientation 6): shown 20 x 30
    raw = np.zeros((H, W, 3), np.uint8)
    raw[0, 0] = (255, 0, 0)  # red at the stored top-left corner
    img_dir, path = write_coco(tmp_path, [], images=[{"id": 1, "file_name": "a.jpg", "height": W, "width": H}])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(raw).save(img_dir / "a.png", exif=exif)
    (img_dir / "a.png").rename(img_dir / "a.jpg")  # PIL reads by content, not by name
    image, _ = CocoInstances(img_dir, path)[0]
    assert image.shape == (3, W, H)  # upright: 30 high, 20 wide
    # rotating 90 degrees clockwise moves the stored top-left corner to the top-right
    assert image[:, 0, H - 1].tolist() == [1.0, 0.0, 0.0]


def test_check_files_lists_missing_images_up_front(tmp_path):
    img_dir, path = write_coco(tmp_path, [])
    (img_dir / "b.png").unlink()
    ds = CocoInstances(img_dir, path)
    with pytest.raises(FileNotFoundError, match=r"1 of 2 image files .* missing \(image id 2: .*b\.png\)"):
        ds.check_files()


def test_penn_fudan_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    (tmp_path / "PNGImages" / "FudanPed00001.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "PedMasks" / "FudanPed00001_mask.png")
    with pytest.raises(ValueError, match=r"cannot read image id 0 \(.*FudanPed00001\.png\)"):
        PennFudan(tmp_path)[0]


# ------------------------------------------------------------------ records

@pytest.mark.parametrize("images, message", [
    ([{"id": 1, "file_name": "a.png", "height": H, "width": W},
      {"id": 1, "file_name": "b.png", "height": H, "width": W}], "image id 1 appears twice"),
    ([{"file_name": "a.png", "height": H, "width": W}], r"images\[0\] .* needs a non-negative integer 'id'"),
    ([{"id": "1", "file_name": "a.png"}], r"images\[0\] .*got '1'"),
    ([{"id": -3, "file_name": "a.png"}], r"images\[0\] .*got -3"),
    ([{"id": 1, "height": H, "width": W}], "image id 1: needs a 'file_name'"),
    ([{"id": 1, "file_name": "../../etc/passwd"}], r"image id 1: file_name '../../etc/passwd' must be a path inside"),
    ([{"id": 1, "file_name": "/etc/passwd"}], r"image id 1: file_name '/etc/passwd' must be a path inside"),
    ([{"id": 1, "file_name": "a.png", "height": 0, "width": W}], "image id 1: height must be a positive"),
])
def test_bad_image_records_are_refused_at_load_time(tmp_path, images, message):
    img_dir, path = write_coco(tmp_path, [], images=images)
    with pytest.raises(ValueError, match=message):
        CocoInstances(img_dir, path)


@pytest.mark.parametrize("record, message", [
    (ann(3, image_id=1), "annotation id 3 appears twice"),                      # duplicates ann(3) below
    ({k: v for k, v in ann(4).items() if k != "id"}, r"annotations\[1\] needs an integer 'id'"),
    (ann("4"), r"annotations\[1\] needs an integer 'id' >= 1, got '4'"),
    (ann(-4), r"annotations\[1\] needs an integer 'id' >= 1, got -4"),
    (ann(0), r"annotations\[1\] needs an integer 'id' >= 1, got 0"),
    (ann(4, image_id="1"), "annotation id 4 points to image_id '1'"),
    ({k: v for k, v in ann(4).items() if k != "category_id"}, r"annotation id 4 \(image id 1\): category_id must be"),
    (ann(4, category_id="1"), r"annotation id 4 \(image id 1\): category_id must be an integer, got '1'"),
    (ann(4, category_id=0), r"annotation id 4 \(image id 1\): category_id 0 is not allowed"),
    (ann(4, category_id=-2), r"annotation id 4 \(image id 1\): category_id -2 is not allowed"),
    (ann(4, category_id=7), r"annotation id 4 \(image id 1\): category_id 7 is not declared"),
    (ann(4, bbox=("2", 3, 4, 5)), r"annotation id 4 \(image id 1\): bbox must be \[x, y, w, h\]"),
    (ann(4, bbox=(2, float("nan"), 4, 5)), r"annotation id 4 \(image id 1\): bbox .* non-finite"),
    (ann(4, bbox=(40, 3, 4, 5)), r"annotation id 4 \(image id 1\): bbox .* entirely outside"),
    ({k: v for k, v in ann(4).items() if k != "segmentation"}, "annotation id 4 has no segmentation"),
])
def test_bad_annotation_records_are_refused_at_load_time(tmp_path, record, message):
    img_dir, path = write_coco(tmp_path, [ann(3), record])
    with pytest.raises(ValueError, match=message):
        CocoInstances(img_dir, path)


def test_category_zero_declared_is_refused(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(3)], categories=[{"id": 0, "name": "bg"}, {"id": 1, "name": "x"}])
    with pytest.raises(ValueError, match="category id 0 .* is declared, but label 0 is the background"):
        CocoInstances(img_dir, path)


def test_large_sparse_category_ids_map_to_contiguous_labels(tmp_path):
    cats = [{"id": 10**7, "name": "big"}, {"id": 42, "name": "small"}, {"id": 5000, "name": "mid"}]
    img_dir, path = write_coco(tmp_path, [ann(3, category_id=10**7), ann(4, category_id=42, image_id=2)],
                               categories=cats)
    ds = CocoInstances(img_dir, path)
    assert ds.label_to_category == [0, 42, 5000, 10**7]
    assert ds.class_names == ["__background__", "small", "mid", "big"]
    assert ds[0][1]["labels"].tolist() == [3] and ds[1][1]["labels"].tolist() == [1]


def test_small_category_ids_are_the_labels(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(3, category_id=5)])
    ds = CocoInstances(img_dir, path)
    assert ds.label_to_category == [0, 1, 2, 3, 4, 5] and ds[0][1]["labels"].tolist() == [5]


def test_crowd_annotations_are_left_out_of_training_targets_by_default(tmp_path):
    crowd = {**ann(4, bbox=(10, 4, 3, 5), seg=rect_rle(10, 4, 13, 9)), "iscrowd": 1}
    img_dir, path = write_coco(tmp_path, [ann(3), crowd])
    _, t = CocoInstances(img_dir, path)[0]
    assert t["iscrowd"].tolist() == [0] and len(t["boxes"]) == 1
    _, t = CocoInstances(img_dir, path, skip_crowd=False)[0]
    assert t["iscrowd"].tolist() == [0, 1]


# ------------------------------------------------------------------ boxes that disagree with the data

def test_bbox_sticking_out_is_clipped_with_a_warning(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(3, bbox=(25, 15, 10, 10), seg=rect_rle(25, 15, 30, 20))])
    with pytest.warns(UserWarning, match=r"1 bboxes stick out .* clipped .*annotation ids \[3\]"):
        ds = CocoInstances(img_dir, path)
    assert ds[0][1]["boxes"].tolist() == [[25, 15, 30, 20]]


def test_bbox_disagreeing_with_its_mask_is_recomputed_from_the_mask_with_a_warning(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(3, bbox=(20, 10, 5, 5))])  # mask at x 2..6, y 3..8
    ds = CocoInstances(img_dir, path)
    with pytest.warns(UserWarning, match=r"annotation id 3 \(image id 1\): bbox .* IoU 0.00 < 0.5; the box "
                                         r"is recomputed from the mask"):
        _, t = ds[0]
    assert t["boxes"].tolist() == [[2, 3, 6, 8]]  # the mask's tight box


def test_agreeing_bbox_and_mask_do_not_warn(tmp_path):
    img_dir, path = write_coco(tmp_path, [ann(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoInstances(img_dir, path)[0]


# ------------------------------------------------------------------ evaluation against the file

class Oracle(torch.nn.Module):
    """A stand-in model: returns the given detections for each image (matched by image size order)."""

    def __init__(self, outputs, num_classes):
        super().__init__()
        self.outputs, self.calls = outputs, 0
        self.cfg = type("Cfg", (), {"num_classes": num_classes})()

    def forward(self, images):
        out = self.outputs[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return out


def _det(boxes, labels, H=H, W=W):
    masks = torch.zeros(len(boxes), 1, H, W)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, 0, y1:y2, x1:x2] = 1.0
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.linspace(0.9, 0.5, len(boxes)), "masks": masks}


def test_evaluate_uses_the_file_crowds_ignored_and_category_ids_mapped(tmp_path):
    from mrcnn_lite.engine import evaluate
    cats = [{"id": 10**7, "name": "big"}, {"id": 42, "name": "small"}]
    crowd = {**ann(5, bbox=(10, 4, 10, 10), seg=rect_rle(10, 4, 20, 14), category_id=42), "iscrowd": 1}
    img_dir, path = write_coco(tmp_path, [ann(3, category_id=10**7), crowd, ann(4, image_id=2, category_id=42)],
                               categories=cats)
    ds = CocoInstances(img_dir, path)  # crowds left out of the targets...
    assert ds.label_to_category == [0, 42, 10**7] and len(ds[0][1]["labels"]) == 1
    # ... yet a detection on the crowd region is no false positive: evaluation reads the file
    outputs = [_det([[2, 3, 6, 8], [10, 4, 20, 14]], [2, 1]), _det([[2, 3, 6, 8]], [1])]
    metrics = evaluate(Oracle(outputs, 3), ds)
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0) and metrics["segm"]["AP50"] == pytest.approx(1.0)
    # the same detections with the labels swapped are all wrong: the mapping is really used
    wrong = [_det([[2, 3, 6, 8]], [1]), _det([[2, 3, 6, 8]], [2])]
    assert evaluate(Oracle(wrong, 3), ds)["bbox"]["AP50"] == pytest.approx(0.0)


def test_evaluate_of_an_empty_dataset_is_a_clear_error(tmp_path):
    from mrcnn_lite.engine import evaluate
    img_dir, path = write_coco(tmp_path, [], images=[])
    with pytest.raises(ValueError, match="no images"):
        evaluate(Oracle([], 2), CocoInstances(img_dir, path))


def test_evaluate_keeps_rle_not_decoded_ground_truth_masks(tmp_path):
    """40 images of 400x400 with 4 masks each: 25.6 MB of decoded masks if they were kept to the end.
    Only one batch's worth may be alive at a time (numpy allocations, traced by tracemalloc)."""
    import tracemalloc

    from mrcnn_lite.engine import evaluate

    class Big(torch.utils.data.Dataset):  # not a CocoInstances: the targets' masks are the ground truth
        def __len__(self):
            return 40

        def __getitem__(self, i):
            masks = np.zeros((4, 400, 400), np.uint8)
            for k in range(4):
                masks[k, 50 * k:50 * k + 40, 10 + i:60 + i] = 1
            return torch.zeros(3, 400, 400), {"image_id": i, "boxes": torch.tensor(
                [[10 + i, 50 * k, 60 + i, 50 * k + 40] for k in range(4)], dtype=torch.float32),
                "labels": torch.ones(4, dtype=torch.int64), "masks": torch.from_numpy(masks)}

    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 400, 400)}
    tracemalloc.start()
    try:
        evaluate(Oracle([empty] * 40, 2), Big(), batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10e6, f"peak {peak / 1e6:.1f} MB"
