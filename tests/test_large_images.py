"""Camera-sized images (issue 27): compact masks equal the pasted ones, and a 6000x4000 photo with 50
detections is predicted within 4 GiB.

The memory checks run in a fresh Python (``subprocess``) so that the peak resident size (VmHWM) and the
address-space limit belong to the prediction alone. ``RLIMIT_AS`` counts virtual memory, and importing
a CUDA build of torch already maps about 3.2 GB of it (libraries, not data), so the limit is set after the
model is loaded, at that address space + 4 GiB: every allocation of the prediction (and of its PNG and
JSON output) must fit in the 4 GiB above it, or it fails with an allocator error.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mrcnn_lite as ml
from mrcnn_lite.data import ShapesDataset, crop_to_rle, mask_to_rle
from mrcnn_lite.model.transform import crops_to_masks, paste_masks_cropped, paste_masks_in_image

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def _upsampled(seed: int, h: int, w: int) -> torch.Tensor:
    """A shapes image (128 px) scaled bilinearly to ``h x w``: a large image the course model reads."""
    image, _ = ShapesDataset(1, seed=seed)[0]
    return F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)


@pytest.fixture(scope="module")
def model():
    m = ml.load_course_model()
    m.roi_heads.score_thresh = 0.0  # every detection up to detections_per_img (50): many masks to paste
    return m


@pytest.mark.parametrize("seed, size", [(0, (300, 450)), (1, (517, 301)), (2, (128, 128)), (3, (960, 1280))])
def test_compact_masks_decode_to_the_pasted_masks_thresholded(model, seed, size):
    image = _upsampled(seed, *size)
    with torch.no_grad():
        model.transform.mask_format = "full"
        full = model([image])[0]
        model.transform.mask_format = "compact"
        try:
            compact = model([image])[0]
        finally:
            model.transform.mask_format = "full"
    assert "masks" not in compact and len(compact["mask_crops"]) == len(full["scores"]) == 50
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(compact[key], full[key])
    assert compact["mask_origins"].shape == (50, 2) and compact["mask_origins"].dtype == torch.int64
    assert all(c.dtype == torch.bool for c in compact["mask_crops"])
    decoded = crops_to_masks(compact["mask_crops"], compact["mask_origins"], size)
    expected = full["masks"][:, 0] >= 0.5
    assert expected.any(dim=(1, 2)).sum() >= 10  # masks with pixels: the comparison is not empty
    assert torch.equal(decoded, expected)
    # and the RLE that predict writes, made from the crops, is the RLE of the full mask
    for i in range(0, 50, 7):
        x0, y0 = compact["mask_origins"][i].tolist()
        assert crop_to_rle(compact["mask_crops"][i].numpy(), x0, y0, *size) == mask_to_rle(expected[i].numpy())


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9, 1.0])
def test_paste_masks_cropped_equals_paste_masks_in_image_at_any_threshold(threshold):
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 1, 28, 28, generator=g)
    xy = torch.rand(20, 2, generator=g) * torch.tensor([140.0, 90.0]) - 20   # some boxes stick out
    boxes = torch.cat([xy, xy + 1 + torch.rand(20, 2, generator=g) * 60], dim=1)
    boxes[0] = torch.tensor([200.0, 10.0, 230.0, 20.0])                      # one misses the canvas
    crops, origins = paste_masks_cropped(masks, boxes, (100, 120), threshold)
    assert crops[0].numel() == 0
    pasted = paste_masks_in_image(masks, boxes, (100, 120))[:, 0]
    assert torch.equal(crops_to_masks(crops, origins, (100, 120)), pasted >= threshold)
    with pytest.raises(ValueError, match="threshold must be in"):
        paste_masks_cropped(masks, boxes, (100, 120), 0.0)


def test_mask_format_and_threshold_are_checked_when_set(model):
    with pytest.raises(ValueError, match="mask_format must be 'full' or 'compact', got 'rle'"):
        model.transform.mask_format = "rle"
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="mask_threshold must be in"):
            model.transform.mask_threshold = bad
    assert (model.transform.mask_format, model.transform.mask_threshold) == ("full", 0.5)


def _run(code: str) -> dict:
    """Run ``code`` in a fresh Python with one thread; it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


PRELUDE = """
    import json, resource, torch, torch.nn.functional as F
    import mrcnn_lite as ml
    from mrcnn_lite.data import ShapesDataset
    torch.set_num_threads(1)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    model = ml.load_course_model()
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])  # first call: lazily made buffers, allocator warm
"""


@pytest.mark.heavy
@pytest.mark.slow
def test_predict_on_a_6000x4000_photo_with_50_detections_fits_4_gib(tmp_path):
    out = _run(f"""
        from pathlib import Path
        from mrcnn_lite.cli.predict import predict_image, _detections, _write_overlay
        image, _ = ShapesDataset(1, seed=0)[0]
        # the address space now (torch's libraries, the model) + 4 GiB: the prediction's budget
        limit = status("VmSize") + 4 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        image = F.interpolate(image[None], size=(4000, 6000), mode="bilinear")[0].clamp(0, 1)
        model.transform.mask_format = "compact"
        out = predict_image(model, image, 0.0)
        dets = _detections(out, "rle", ["bg", "circle", "square", "triangle"], [0, 1, 2, 3])
        _write_overlay(Path({str(tmp_path)!r}) / "photo.png", image, out, ["bg", "circle", "square", "triangle"])
        pixels = sum(int(c.sum()) for c in out["mask_crops"])
        print(json.dumps({{"n": len(dets), "pixels": pixels, "peak_rss": status("VmHWM"),
                          "rle": dets[0]["mask"]["size"]}}))
    """)
    assert out["n"] >= 50 and out["pixels"] > 0 and out["rle"] == [4000, 6000]
    assert out["peak_rss"] < 4 * GiB  # the whole process, torch and the model included
    assert (tmp_path / "photo.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("paster", ["ours", "torchvision"])
def test_full_masks_need_no_more_than_the_output(paster):
    """The default output (torchvision's contract) of a 2000x3000 image with 50 detections is 1.14 GiB of
    float masks; pasting them one at a time into the output costs little more. torchvision's paster
    (each mask on its own full-size canvas, then ``torch.stack``), run in the same model, needs about
    twice the output: the measurement can tell the two apart."""
    swap = ("from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste\n"
            "model.transform.paste_masks = lambda m, b, s: tv_paste(m, b, s)\n") if paster == "torchvision" else ""
    out = _run(swap + textwrap.dedent("""
        image, _ = ShapesDataset(1, seed=0)[0]
        image = F.interpolate(image[None], size=(2000, 3000), mode="bilinear")[0].clamp(0, 1)
        before = status("VmHWM")
        with torch.no_grad():
            result = model([image])[0]
        print(json.dumps({"n": len(result["scores"]), "growth": status("VmHWM") - before,
                          "output": result["masks"].numel() * result["masks"].element_size(),
                          "shape": list(result["masks"].shape)}))
    """))
    assert out["n"] == 50 and out["shape"] == [50, 1, 2000, 3000] and out["output"] == 50 * 6_000_000 * 4
    if paster == "ours":
        # besides the output: the image's normalised copies (2 x 72 MB) and the model's work
        assert out["growth"] < out["output"] + 0.25 * GiB
    else:
        assert out["growth"] > 1.5 * out["output"]


# ------------------------------------------------------------------ the predict command

COURSE = ROOT / "data" / "checkpoints" / "tiny_shapes.pt"
MINI_VAL = ROOT / "data" / "shapes-mini" / "val"


@pytest.mark.heavy
@pytest.mark.slow
def test_predict_writes_coco_results_that_score_as_evaluate_does(tmp_path):
    """predict's coco_results.json, read by pycocotools' loadRes, gives the AP that ``evaluate`` measures
    on the same images (same detections; scores and boxes rounded in the JSON, >= 0.5 against > 0.5)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mrcnn_lite.__main__ import main
    from mrcnn_lite.data import CocoInstances
    from mrcnn_lite.engine import evaluate

    assert main(["predict", "--checkpoint", str(COURSE), str(MINI_VAL / "images"), "--out", str(tmp_path),
                 "--score-thresh", "0"]) == 0
    expected = evaluate(ml.load_course_model(), CocoInstances(MINI_VAL / "images", MINI_VAL / "annotations.json"))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(MINI_VAL / "annotations.json"))
        dt = gt.loadRes(str(tmp_path / "coco_results.json"))
        for kind in ("bbox", "segm"):
            E = COCOeval(gt, dt, kind)
            E.evaluate(), E.accumulate(), E.summarize()
            assert E.stats[0] == pytest.approx(expected[kind]["AP"], abs=0.005), kind
            assert E.stats[0] > 0.75
    per_image = json.loads((tmp_path / "detections.json").read_text())
    assert [r["image_id"] for r in per_image] == sorted(gt.getImgIds())  # 000007.png is image id 7
    assert not list(tmp_path.glob("*.tmp"))


def test_predict_polygons_are_the_rle_masks_in_place(tmp_path):
    from pycocotools import mask as mask_utils

    from mrcnn_lite.__main__ import main
    images = sorted((MINI_VAL / "images").glob("*.png"))[:3]
    for fmt in ("rle", "polygon"):
        assert main(["predict", "--checkpoint", str(COURSE), *map(str, images), "--out", str(tmp_path / fmt),
                     "--mask-format", fmt]) == 0
    rle, poly = (json.loads((tmp_path / f / "detections.json").read_text()) for f in ("rle", "polygon"))
    count = 0
    for a, b in zip(rle, poly):
        for da, db in zip(a["detections"], b["detections"]):
            m = mask_utils.decode(da["mask"])
            polygon = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(db["mask"], 128, 128)))
            assert np.array_equal(m, polygon)  # shapes have no holes, which polygons could not express
            count += 1
    assert count >= 5


def test_predict_keeps_the_old_results_when_a_run_fails_midway(tmp_path, monkeypatch):
    from mrcnn_lite.__main__ import main
    from mrcnn_lite.cli import predict as predict_cli
    images = [str(p) for p in sorted((MINI_VAL / "images").glob("*.png"))[:3]]
    assert main(["predict", "--checkpoint", str(COURSE), *images[:1], "--out", str(tmp_path)]) == 0
    old = {name: (tmp_path / name).read_text() for name in ("detections.json", "coco_results.json")}
    real, calls = predict_cli.predict_image, []

    def dies_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run
        return real(*a, **kw)

    monkeypatch.setattr(predict_cli, "predict_image", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        main(["predict", "--checkpoint", str(COURSE), *images, "--out", str(tmp_path)])
    assert {name: (tmp_path / name).read_text() for name in old} == old
    assert not list(tmp_path.glob("*.tmp"))


def test_predict_reports_an_image_the_model_refuses_and_goes_on(tmp_path, capsys):
    from PIL import Image

    from mrcnn_lite.__main__ import main
    Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(tmp_path / "strip.png")
    image = MINI_VAL / "images" / "000000.png"
    rc = main(["predict", "--checkpoint", str(COURSE), str(tmp_path / "strip.png"), str(image),
               "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "strip.png:" in ln)
    assert line.startswith(f"error: {tmp_path / 'strip.png'}: image 0: a 1x3000 image would be resized")
    assert "1 of 2 images were refused by the model" in err and "Traceback" not in err
    (r,) = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert r["image"] == str(image)
