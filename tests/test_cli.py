"""The command line (train / evaluate / predict / bench) and ``ml.load_checkpoint`` on the real tiny model.

Every run here is a few steps on a few 128-px images, so the whole file takes well under a minute
on 2 CPU cores; the AP that the full recipe reaches is measured by ``make demo``, not here.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mrcnn_lite as ml
from conftest import assert_same_detections
from mrcnn_lite.__main__ import build_parser, main
from mrcnn_lite.data import CLASSES, ShapesDataset, export_coco
from mrcnn_lite.engine import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
MINI_VAL = ROOT / "data" / "shapes-mini" / "val"
FAST = ["--no-progress", "--threads", "2"]


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "shapes", "export", "bench", "ablate"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert f"python -m mrcnn_lite {command}" in capsys.readouterr().out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One short course run: tiny model, 4 shapes images, 1 epoch of 2 steps, 2 held-out images."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--config", "tiny-shapes", "--out", str(out), "--epochs", "1", "--num-train", "4",
                 "--num-val", "2", "--batch-size", "2", "--lr", "0.005", "--warmup", "2"] + FAST) == 0
    return out


@pytest.mark.slow
def test_train_writes_checkpoint_metrics_and_plot(run_dir):
    for name in ("checkpoint.pt", "metrics.json", "metrics.csv", "losses.png"):
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["train"]) == 2 and metrics["train"][-1]["step"] == 2
    assert set(metrics["eval"][-1]["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    model = ml.load_checkpoint(run_dir / "checkpoint.pt")
    from mrcnn_lite.recipes import TINY_SHAPES_MODEL
    assert model.cfg == ml.config.tiny(num_classes=4, **TINY_SHAPES_MODEL) and not model.training


@pytest.mark.slow
def test_tiny_shapes_uses_its_recipe_unless_overridden(run_dir):
    """The course run trains with the recipe's optimizer and weight decay; --lr on the command line wins."""
    from mrcnn_lite.recipes import TINY_SHAPES_RECIPE as r
    from mrcnn_lite.engine.checkpoint import read_checkpoint

    state = read_checkpoint(run_dir / "checkpoint.pt")
    tc = state["train_config"]
    assert (tc["optimizer"], tc["weight_decay"], tc["lr"]) == (r["optimizer"], r["weight_decay"], 0.005)
    assert state["model_config"]["norm"] == "bn"  # from scratch: trainable BatchNorm
    # AdamW keeps two moments per parameter; SGD with momentum keeps one buffer.
    first = next(iter(state["optimizer"]["state"].values()))
    expected = {"exp_avg", "exp_avg_sq"} if r["optimizer"] == "adamw" else {"momentum_buffer"}
    assert expected <= set(first), sorted(first)


@pytest.mark.slow
def test_tiny_shapes_trains_on_crowded_images_and_holds_out_sparse_ones(run_dir, capsys, tmp_path):
    """The course recipe's training images hold min_shapes..max_shapes shapes; the held-out split keeps
    ShapesDataset's default 1-6, the distribution every reported AP is measured on."""
    from mrcnn_lite.recipes import TINY_SHAPES_RECIPE as r
    model = ml.load_checkpoint(run_dir / "checkpoint.pt")
    assert model.cfg.mask_batch_size_per_image is not None  # the course recipe's capped mask loss
    out = tmp_path / "crowded"
    assert main(["train", "--out", str(out), "--num-train", "2", "--num-val", "0", "--batch-size", "2",
                 "--min-shapes", "7", "--max-shapes", "7", "--no-progress", "--threads", "1"]) == 0
    assert "(7-7 shapes each)" in capsys.readouterr().out
    from mrcnn_lite.engine.checkpoint import read_checkpoint
    meta = read_checkpoint(out / "checkpoint.pt")["meta"]
    assert meta["recipe"] == "course" and meta["train_data"] == {
        "dataset": "ShapesDataset", "num_images": 2, "seed": 0, "min_shapes": 7, "max_shapes": 7}
    held_out = ShapesDataset(1)  # the default split every AP is measured on
    assert r["min_shapes"] > held_out.min_shapes and r["max_shapes"] > held_out.max_shapes
    with pytest.raises(SystemExit, match=r"--min-shapes: must be <= --max-shapes \(3\), got 5"):
        main(["train", "--out", str(tmp_path / "bad"), "--min-shapes", "5", "--max-shapes", "3"])
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_recipe_v1_trains_the_first_recipe(tmp_path, capsys):
    from mrcnn_lite.recipes import V1_MODEL, V1_RECIPE
    from mrcnn_lite.engine.checkpoint import read_checkpoint

    out = tmp_path / "v1"
    assert main(["train", "--recipe", "v1", "--out", str(out), "--num-train", "2", "--num-val", "0",
                 "--batch-size", "2", "--no-progress", "--threads", "1"]) == 0
    assert "(1-6 shapes each)" in capsys.readouterr().out
    state = read_checkpoint(out / "checkpoint.pt")
    assert state["model_config"] == ml.config.tiny(num_classes=4, **V1_MODEL).to_dict()
    assert state["model_config"]["mask_batch_size_per_image"] is None  # the paper's: every positive
    assert (state["train_config"]["amp"], state["train_config"]["lr"]) == (V1_RECIPE["amp"], V1_RECIPE["lr"])
    with pytest.raises(SystemExit, match="--recipe: v1 is a recipe of --config tiny-shapes"):
        main(["train", "--config", "tiny", "--recipe", "v1", "--out", str(tmp_path / "x")])


def test_load_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = ml.build_model(ml.config.tiny(num_classes=4, box_score_thresh=0.0))
    trainer = Trainer(model, ShapesDataset(2, seed=3), TrainConfig(epochs=1, batch_size=2, lr=0.005,
                      warmup_iters=1, progress=False), tmp_path)
    trainer.fit()
    loaded = ml.load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded.cfg == model.cfg
    images = [ShapesDataset(2, seed=9)[i][0] for i in range(2)]
    model.eval()
    with torch.no_grad():
        assert_same_detections(model(images), loaded(images))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ml.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not load checkpoint"):
        ml.load_checkpoint(bad)
    torch.save({"model": {}}, tmp_path / "noconfig.pt")
    with pytest.raises(ValueError, match="no 'model_config'"):
        ml.load_checkpoint(tmp_path / "noconfig.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no 'model' weights"):
        ml.load_checkpoint(tmp_path / "other.pt")


@pytest.mark.slow
def test_evaluate_on_the_shipped_val_set_writes_the_metrics_dict(run_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(run_dir / "checkpoint.pt"), "--images", str(MINI_VAL / "images"),
                 "--annotations", str(MINI_VAL / "annotations.json"), "--out", str(out), "--threads", "2"]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"bbox", "segm"}
    for kind in ("bbox", "segm"):
        assert set(metrics[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(-1.0 <= v <= 1.0 for v in metrics[kind].values())
    printed = capsys.readouterr().out
    assert "box  AP" in printed and "mask AP" in printed


@pytest.mark.slow
def test_evaluate_errors_are_clear(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--images", str(MINI_VAL / "images"),
              "--annotations", str(MINI_VAL / "annotations.json")])
    with pytest.raises(SystemExit, match="annotation file not found"):
        main(["evaluate", "--checkpoint", str(run_dir / "checkpoint.pt"), "--images", str(MINI_VAL / "images"),
              "--annotations", str(tmp_path / "missing.json")])


@pytest.mark.slow
def test_predict_writes_overlays_and_detections(run_dir, tmp_path):
    images = sorted((MINI_VAL / "images").glob("*.png"))[:2]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run_dir / "checkpoint.pt"), *map(str, images), "--out", str(out),
                 "--score-thresh", "0.0"]) == 0
    for img in images:
        assert (out / f"{img.stem}.png").read_bytes()[:4] == b"\x89PNG"
    dets = json.loads((out / "detections.json").read_text())
    assert [d["image"] for d in dets] == [str(p) for p in images]
    for d in dets:
        assert (d["height"], d["width"]) == (128, 128)
        for det in d["detections"]:
            assert len(det["box"]) == 4 and det["label"] in (1, 2, 3) and 0 <= det["score"] <= 1
            assert det["label_name"] in ("circle", "square", "triangle")
            assert set(det["mask"]) == {"size", "counts"}


@pytest.mark.slow
def test_resume_continues_the_run(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["train", "--config", "tiny-shapes", "--out", str(run), "--epochs", "2", "--num-train", "4",
                 "--num-val", "0", "--batch-size", "2", "--lr", "0.005", "--warmup", "2", "--resume"] + FAST) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == 4
    steps = [r["step"] for r in json.loads((run / "metrics.json").read_text())["train"]]
    assert steps == [1, 2, 3, 4]  # epoch 1 kept from the first run, epoch 2 added


@pytest.mark.slow
def test_train_on_own_coco_data_with_an_empty_image(tmp_path):
    ds = ShapesDataset(3, seed=5)
    empty = ShapesDataset(1, seed=5, empty_prob=1.0)
    assert len(empty[0][1]["boxes"]) == 0
    export_coco(_Cat(ds, empty), tmp_path, "train", class_names=CLASSES)
    out = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--images", str(tmp_path / "train" / "images"),
                 "--annotations", str(tmp_path / "train" / "annotations.json"), "--out", str(out),
                 "--epochs", "1", "--batch-size", "2", "--lr", "0.005", "--warmup", "1"] + FAST) == 0
    rows = json.loads((out / "metrics.json").read_text())["train"]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["meta"]["class_names"] == ["__background__", "circle", "square", "triangle"]


class _Cat(torch.utils.data.Dataset):
    """Two datasets one after the other, with distinct image ids (export_coco uses target['image_id'])."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __len__(self):
        return len(self.a) + len(self.b)

    def __getitem__(self, i):
        if i < len(self.a):
            return self.a[i]
        image, target = self.b[i - len(self.a)]
        return image, {**target, "image_id": i}


def test_train_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="--images DIR and --annotations"):
        main(["train", "--config", "r50-fpn", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="weights file not found"):
        main(["train", "--config", "r50-fpn", "--out", str(tmp_path), "--images", str(MINI_VAL / "images"),
              "--annotations", str(MINI_VAL / "annotations.json"), "--weights", str(tmp_path / "coco.pth")])


@pytest.mark.slow
def test_torchvision_weights_with_another_class_count_reinitialise_the_predictors(tmp_path):
    from mrcnn_lite.torchvision_compat import load_torchvision_weights

    small = dict(min_size=64, max_size=64)
    coco = ml.maskrcnn_resnet50_fpn(num_classes=91, **small)
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    mine = ml.maskrcnn_resnet50_fpn(num_classes=4, **small)
    fresh = load_torchvision_weights(mine, path)
    assert fresh == ["roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
                     "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight",
                     "roi_heads.mask_predictor.mask_fcn_logits.bias", "roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(mine.backbone.body.layer1[0].conv1.weight, coco.backbone.body.layer1[0].conv1.weight)


def test_bench_hook_is_wired():
    from mrcnn_lite.cli.bench import cmd_bench

    args = build_parser().parse_args(["bench"])
    assert args.func is cmd_bench and args.kernels == "fast"
    args = build_parser().parse_args(["bench", "--kernels", "both", "--quick", "--threads", "2"])
    assert (args.kernels, args.quick, args.threads) == ("both", True, 2)


DDP_WORKER = textwrap.dedent("""
    import json, os, sys, torch
    import torch.distributed as dist
    import mrcnn_lite as ml
    from mrcnn_lite.data import ShapesDataset
    from mrcnn_lite.engine import TrainConfig, Trainer
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = ml.build_model(ml.config.tiny(num_classes=4))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, warmup_iters=1, progress=False)
    trainer = Trainer(model, ShapesDataset(8, seed=1), cfg, sys.argv[1])
    trainer.fit()
    params = {k: v.tolist() for k, v in model.named_parameters()}
    with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump({"steps": trainer.global_step, "params": params}, f)
    dist.destroy_process_group()
""")


@pytest.mark.heavy
@pytest.mark.slow
def test_ddp_two_gloo_processes_train_the_real_model_in_step(tmp_path):
    """torchrun with 2 CPU processes: 2 steps of the tiny Mask R-CNN, identical weights on both ranks."""
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(tmp_path)], check=True, cwd=ROOT, env=env, timeout=180)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    assert r0["params"] == r1["params"]
    assert (tmp_path / "checkpoint.pt").exists()  # written by rank 0 only
