"""The shipped real data set (data/dsb2018-nuclei): it loads, its splits and ids are consistent, and
the build script reproduces it from the stardist package's files."""
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn_lite.data import CocoInstances, masks_to_boxes
from mrcnn_lite.data import real
from mrcnn_lite.data import segmentation_to_mask

ROOT = real.NUCLEI_ROOT


def _json(split):
    return json.loads((ROOT / split / "annotations.json").read_text())


def test_both_splits_load_with_the_coco_loader():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no clipped box, no box-mask disagreement warning
        train, val = real.nuclei("train"), real.nuclei("val")
        assert isinstance(train, CocoInstances)
        assert (len(train), len(val)) == (12, 4)
        counts = {}
        for name, ds in (("train", train), ("val", val)):
            ds.check_files()
            n = 0
            for i in range(len(ds)):
                image, t = ds[i]
                assert tuple(image.shape) == (3, 128, 128)
                assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
                assert (image[0] == image[1]).all() and (image[1] == image[2]).all()  # grayscale
                assert t["labels"].tolist() == [1] * len(t["labels"])
                masks = t["masks"].numpy()
                assert (masks.sum(axis=(1, 2)) >= real.MIN_AREA).all()
                assert masks.sum(axis=0).max() <= 1  # from a label map: nuclei never overlap
                np.testing.assert_array_equal(t["boxes"].numpy(), masks_to_boxes(masks))
                np.testing.assert_array_equal(t["area"].numpy(), masks.sum(axis=(1, 2)))
                n += len(t["labels"])
            counts[name] = n
    assert counts == {"train": 123, "val": 30}
    assert train.class_names[1] == "nucleus" and train.label_to_category == [0, 1]


def test_ids_and_split_are_the_documented_grid():
    train, val = _json("train"), _json("val")
    ids = {s: sorted(im["id"] for im in d["images"]) for s, d in (("train", train), ("val", val))}
    assert ids["val"] == [r * 4 + c for r, c in sorted(real.HELD_OUT)] == [10, 11, 14, 15]
    assert sorted(ids["train"] + ids["val"]) == list(range(16))
    for d in (train, val):
        for im in d["images"]:
            r, c = divmod(im["id"], 4)
            assert im["file_name"] == real.tile_file_name(r, c)
            assert (im["width"], im["height"], im["license"]) == (128, 128, 1)
        ann_ids = [a["id"] for a in d["annotations"]]
        assert ann_ids == list(range(1, len(ann_ids) + 1))
        assert d["licenses"][0]["name"].startswith("CC0 1.0")
        assert d["info"]["source"]["sha256"] == real.SOURCE["sha256"]
    # a nucleus cut by the border between the training and the held-out block has a part in each
    # (5 of them); every one of the 125 nuclei of mask2d.tif is in the set
    train_labels = {a["source_label"] for a in train["annotations"]}
    val_labels = {a["source_label"] for a in val["annotations"]}
    assert len(train_labels & val_labels) == 5
    assert len(train_labels | val_labels) == 125


def test_files_are_small():
    files = [p for p in ROOT.rglob("*") if p.is_file()]
    assert len(files) == 16 + 2
    assert all(p.stat().st_size < 2**20 for p in files)
    assert sum(p.stat().st_size for p in files) < 1_500_000


def _stitch():
    """The 512x512 image and label map put back together from the committed tiles."""
    image = np.zeros((512, 512), dtype=np.uint8)
    ids_map = np.zeros((512, 512), dtype=np.int64)
    for split in ("train", "val"):
        d = _json(split)
        for im in d["images"]:
            r, c = divmod(im["id"], 4)
            win = (slice(r * 128, (r + 1) * 128), slice(c * 128, (c + 1) * 128))
            with Image.open(ROOT / split / "images" / im["file_name"]) as pil:
                assert pil.mode == "L"
                image[win] = np.array(pil)
            for a in d["annotations"]:
                if a["image_id"] == im["id"]:
                    m = segmentation_to_mask(a["segmentation"], 128, 128, f"annotation {a['id']}").astype(bool)
                    assert not ids_map[win][m].any()
                    ids_map[win][m] = a["source_label"]
    return image, ids_map


def test_tiling_the_stitched_image_gives_the_committed_annotations():
    """Runs without stardist: cutting the reassembled image again reproduces both JSON files exactly."""
    image, ids_map = _stitch()
    tiles = real.tile_instances(image, ids_map)
    for split in ("train", "val"):
        assert json.dumps(real.coco_split(tiles, split), indent=1) + "\n" == \
            (ROOT / split / "annotations.json").read_text()


def _stardist_wheel():
    env = os.environ.get("MRCNN_LITE_STARDIST_WHEEL")
    if env:
        return Path(env)
    import importlib.util
    if importlib.util.find_spec("stardist") is not None:
        return None  # the installed package
    pytest.skip("needs stardist 0.9.2 (the 'real-data' extra) or MRCNN_LITE_STARDIST_WHEEL=<its wheel>")


def test_build_reproduces_the_committed_files_from_the_package(tmp_path):
    wheel = _stardist_wheel()
    out = real.build_nuclei(tmp_path / "nuclei", wheel=wheel)
    for split in ("train", "val"):
        assert (out / split / "annotations.json").read_text() == \
            (ROOT / split / "annotations.json").read_text()
        names = sorted(p.name for p in (ROOT / split / "images").iterdir())
        assert sorted(p.name for p in (out / split / "images").iterdir()) == names
        for name in names:  # the pixels; PNG bytes may differ with the zlib version
            a = np.array(Image.open(out / split / "images" / name))
            b = np.array(Image.open(ROOT / split / "images" / name))
            np.testing.assert_array_equal(a, b)
    # and the source itself: 125 nuclei, values that fit 8 bits
    image, ids_map = real.read_source(wheel)
    assert image.shape == ids_map.shape == (512, 512)
    assert len(np.unique(ids_map)) - 1 == 125


def test_build_refuses_other_files(tmp_path):
    fake = tmp_path / "stardist-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(real.SOURCE["image"], b"not the image")
        zf.writestr(real.SOURCE["mask"], b"not the mask")
    with pytest.raises(ValueError, match=r"img2d.tif: SHA-256 [0-9a-f]{64} is not the one of stardist 0.9.2"):
        real.build_nuclei(tmp_path / "out", wheel=fake)
    assert not (tmp_path / "out").exists()
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as zf:
        zf.writestr("x.txt", "")
    with pytest.raises(ValueError, match="has no stardist/data/images/img2d.tif"):
        real.build_nuclei(tmp_path / "out", wheel=tmp_path / "empty.whl")
    with pytest.raises(FileNotFoundError, match="stardist wheel not found"):
        real.build_nuclei(tmp_path / "out", wheel=tmp_path / "nowhere.whl")
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        real.nuclei("test")
