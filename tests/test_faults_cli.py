"""The command line fails early, in one line, and keeps what it did.

Runs are a step or two of the tiny model on a few 128-px images."""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrcnn_lite.__main__ import main
from mrcnn_lite.data import CLASSES, ShapesDataset, export_coco
from mrcnn_lite.engine import Trainer, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MINI_VAL = ROOT / "data" / "shapes-mini" / "val"
FAST = ["--no-progress", "--threads", "2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_cli") / "run"
    assert main(["train", "--config", "tiny-shapes", "--out", str(out), "--epochs", "1", "--num-train", "2",
                 "--num-val", "0", "--batch-size", "2", "--lr", "0.005", "--warmup", "1"] + FAST) == 0
    return out / "checkpoint.pt"


TRAIN = ["train", "--config", "tiny-shapes", "--out", "OUT"]


@pytest.mark.parametrize("argv, arg", [
    (TRAIN + ["--epochs", "0"], "--epochs"),
    (TRAIN + ["--epochs", "-2"], "--epochs"),
    (TRAIN + ["--num-train", "0"], "--num-train"),
    (TRAIN + ["--num-val", "-1"], "--num-val"),
    (TRAIN + ["--batch-size", "0"], "--batch-size"),
    (TRAIN + ["--lr", "nan"], "--lr"),
    (TRAIN + ["--lr", "inf"], "--lr"),
    (TRAIN + ["--lr", "-0.1"], "--lr"),
    (TRAIN + ["--lr", "abc"], "--lr"),
    (TRAIN + ["--weight-decay", "nan"], "--weight-decay"),
    (TRAIN + ["--clip-grad-norm", "-1"], "--clip-grad-norm"),
    (TRAIN + ["--warmup", "-5"], "--warmup"),
    (TRAIN + ["--threads", "0"], "--threads"),
    (TRAIN + ["--threads", "-2"], "--threads"),
    (TRAIN + ["--workers", "-1"], "--workers"),
    (TRAIN + ["--save-every", "-1"], "--save-every"),
    (TRAIN + ["--eval-every", "-1"], "--eval-every"),
    (TRAIN + ["--seed", "-1"], "--seed"),
    (["evaluate", "--checkpoint", "c.pt", "--images", "i", "--annotations", "a.json", "--batch-size", "0"],
     "--batch-size"),
    (["evaluate", "--checkpoint", "c.pt", "--images", "i", "--annotations", "a.json", "--threads", "-1"],
     "--threads"),
    (["evaluate", "--checkpoint", "c.pt", "--images", "i", "--annotations", "a.json", "--mask-threshold", "2"],
     "--mask-threshold"),
    (["predict", "--checkpoint", "c.pt", "x.png", "--out", "o", "--score-thresh", "nan"], "--score-thresh"),
    (["shapes", "--out", "o", "--num-train", "-1"], "--num-train"),
    (["shapes", "--out", "o", "--num-val", "-3"], "--num-val"),
    (["shapes", "--out", "o", "--image-size", "0"], "--image-size"),
    (["shapes", "--out", "o", "--noise", "nan"], "--noise"),
])
def test_bad_arguments_are_usage_errors_naming_the_argument(argv, arg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {arg}" in err and "Traceback" not in err


def _no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(Trainer, "fit", fail)


def test_train_out_under_a_regular_file_fails_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("I am a file")
    _no_training(monkeypatch)
    with pytest.raises(SystemExit, match=r"error: --out .*file/run: cannot write there"):
        main(["train", "--config", "tiny-shapes", "--out", str(tmp_path / "file" / "run"), "--num-train", "2",
              "--num-val", "0", "--batch-size", "2"] + FAST)


def test_evaluate_out_under_a_regular_file_fails_before_the_evaluation(ckpt, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("I am a file")

    def fail(*a, **k):
        raise AssertionError("evaluation started")
    monkeypatch.setattr("mrcnn_lite.engine.coco_eval.evaluate", fail)
    with pytest.raises(SystemExit, match=r"error: --out .*file/m.json: its folder .*cannot write there"):
        main(["evaluate", "--checkpoint", str(ckpt), "--images", str(MINI_VAL / "images"), "--annotations",
              str(MINI_VAL / "annotations.json"), "--out", str(tmp_path / "file" / "m.json")])
    (tmp_path / "adir").mkdir()
    with pytest.raises(SystemExit, match=r"error: --out .*adir is a folder"):
        main(["evaluate", "--checkpoint", str(ckpt), "--images", str(MINI_VAL / "images"), "--annotations",
              str(MINI_VAL / "annotations.json"), "--out", str(tmp_path / "adir")])


def _copy_val(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(MINI_VAL / "images", images)
    ann = tmp_path / "annotations.json"
    shutil.copy(MINI_VAL / "annotations.json", ann)
    return images, ann


def test_evaluate_with_missing_images_fails_before_the_evaluation(ckpt, tmp_path):
    images, ann = _copy_val(tmp_path)
    (images / "000005.png").unlink()
    with pytest.raises(SystemExit, match=r"error: 1 of 32 image files .* missing \(image id 5: .*000005.png\)"):
        main(["evaluate", "--checkpoint", str(ckpt), "--images", str(images), "--annotations", str(ann)])


def test_evaluate_with_zero_images_is_a_clear_error(ckpt, tmp_path):
    images, ann = _copy_val(tmp_path)
    data = json.loads(ann.read_text())
    ann.write_text(json.dumps({**data, "images": [], "annotations": []}))
    with pytest.raises(SystemExit, match=r"error: .*annotations.json lists no images"):
        main(["evaluate", "--checkpoint", str(ckpt), "--images", str(images), "--annotations", str(ann)])


def test_evaluate_with_an_unreadable_image_names_it_in_one_line(ckpt, tmp_path):
    images, ann = _copy_val(tmp_path)
    (images / "000003.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--checkpoint", str(ckpt), "--images", str(images), "--annotations", str(ann),
              "--batch-size", "4"])
    msg = str(e.value.code)
    assert msg.startswith("error: cannot read image id 3 (") and "000003.png" in msg and "\n" not in msg


@pytest.mark.slow
def test_predict_a_folder_with_a_bad_file_predicts_the_rest_and_exits_non_zero(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("000000.png", "000001.png"):
        shutil.copy(MINI_VAL / "images" / name, folder / name)
    (folder / "broken.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: not a candidate")
    rc = main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(tmp_path / "pred")])
    assert rc == 1
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert [r["image"].rsplit("/", 1)[-1] for r in results] == ["000000.png", "000001.png"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 3 images could not be read" in err and "Traceback" not in err


def test_predict_applies_exif_orientation(ckpt, tmp_path):
    raw = np.zeros((40, 60, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: 60 high, 40 wide
    Image.fromarray(raw).save(tmp_path / "phone.png", exif=exif)
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "phone.png"), "--out",
                 str(tmp_path / "pred")]) == 0
    (r,) = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert (r["height"], r["width"]) == (60, 40)


class Evil:
    def __reduce__(self):
        return (print, ("PWNED: pickled code ran",))


def test_unsafe_weights_pickle_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"backbone.body.conv1.weight": Evil()}, protocol=2))
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "r50-fpn", "--out", str(tmp_path / "run"), "--images", str(MINI_VAL / "images"),
              "--annotations", str(MINI_VAL / "annotations.json"), "--weights", str(path),
              "--min-size", "64", "--max-size", "64"] + FAST)
    msg = str(e.value.code)
    assert msg.startswith(f"error: could not load --weights {path}") and "\n" not in msg
    assert "PWNED" not in capsys.readouterr().out


@pytest.mark.slow
def test_diverging_cli_run_stops_in_one_line_and_resumes_at_a_sane_lr(tmp_path):
    out = tmp_path / "run"
    common = ["train", "--config", "tiny-shapes", "--out", str(out), "--epochs", "1", "--num-train", "6",
              "--num-val", "0", "--batch-size", "2", "--warmup", "0", "--save-every", "1"] + FAST
    with pytest.raises(SystemExit) as e:
        main(common + ["--lr", "100"])
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("error: training stopped: non-finite")
    assert "step " in msg and ("term" in msg or "parameter" in msg) and "images [" in msg
    assert "last good checkpoint" in msg
    state = read_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert main(common + ["--lr", "1e-3", "--resume"]) == 0
    state = read_checkpoint(out / "checkpoint.pt")
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_with_another_config_is_one_clear_line(ckpt, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "tiny", "--out", str(run), "--images", str(MINI_VAL / "images"),
              "--annotations", str(MINI_VAL / "annotations.json"), "--resume"] + FAST)
    msg = str(e.value.code)
    assert msg.startswith("error: cannot resume from") and "the model differs" in msg and "norm" in msg
    assert "\n" not in msg


def test_train_with_an_unreadable_image_stops_in_one_line(tmp_path):
    images, ann = _copy_val(tmp_path)
    (images / "000001.png").write_bytes((images / "000001.png").read_bytes()[:100])  # truncated
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "tiny", "--out", str(tmp_path / "run"), "--images", str(images),
              "--annotations", str(ann), "--epochs", "1", "--batch-size", "32", "--no-flip"] + FAST)
    msg = str(e.value.code)
    assert msg.startswith("error: cannot read image id 1 (") and "000001.png" in msg and "\n" not in msg


@pytest.mark.slow
def test_large_category_ids_train_predict_and_evaluate_with_their_mapping(tmp_path):
    ds = ShapesDataset(2, image_size=64, seed=3)
    export_coco(ds, tmp_path, "train", class_names=CLASSES)
    ann = tmp_path / "train" / "annotations.json"
    data = json.loads(ann.read_text())
    ids = {1: 10**7, 2: 10**7 + 5, 3: 42}
    for c in data["categories"]:
        c["id"] = ids[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = ids[a["category_id"]]
    ann.write_text(json.dumps(data))
    out = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--out", str(out), "--images", str(tmp_path / "train" / "images"),
                 "--annotations", str(ann), "--epochs", "1", "--batch-size", "2", "--lr", "0.005",
                 "--warmup", "1", "--save-every", "0"] + FAST) == 0
    state = read_checkpoint(out / "checkpoint.pt")
    assert state["model_config"]["num_classes"] == 4  # not 10 million
    assert state["meta"]["label_to_category"] == [0, 42, 10**7, 10**7 + 5]
    assert state["meta"]["class_names"] == ["__background__", "triangle", "circle", "square"]
    assert main(["predict", "--checkpoint", str(out / "checkpoint.pt"), str(tmp_path / "train" / "images" / "000000.png"),
                 "--out", str(tmp_path / "pred"), "--score-thresh", "0"]) == 0
    dets = [d for r in json.loads((tmp_path / "pred" / "detections.json").read_text()) for d in r["detections"]]
    assert dets and all(d["category_id"] == [0, 42, 10**7, 10**7 + 5][d["label"]] for d in dets)
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--images",
                 str(tmp_path / "train" / "images"), "--annotations", str(ann), "--out",
                 str(tmp_path / "m.json")]) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"bbox", "segm"}
