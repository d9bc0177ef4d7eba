"""Trainer, checkpoints and COCO evaluation, on a toy detector so they run in seconds.

The toy model follows the Mask R-CNN training contract -- ``model(images, targets)`` returns a dict
of scalar losses -- and uses dropout, so resuming is only exact if the random state is restored.
"""
import hashlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mrcnn_lite.course.toy_detector import ToyDetector as _ToyDetector
from mrcnn_lite.engine import (NonFiniteLossError, TrainConfig, Trainer, coco_from_targets, coco_summary,
                               detections_to_coco, lr_factor, read_checkpoint, save_checkpoint)

ROOT = Path(__file__).resolve().parents[1]


class ToyDetector(_ToyDetector):
    """The course's toy detector (one definition, shared with the training checker), with dropout."""

    def __init__(self, p_drop=0.3, **kw):
        super().__init__(p_drop=p_drop, **kw)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=12):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        img = torch.rand(3, 16, 16, generator=g)
        xy = torch.rand(2, generator=g) * 8
        return img, {"boxes": torch.cat([xy, xy + 4])[None], "labels": torch.tensor([1])}


def _cfg(**kw):
    base = dict(epochs=4, batch_size=4, lr=0.05, warmup_iters=2, progress=False, eval_every=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _fresh_model(**kw):
    torch.manual_seed(0)
    return ToyDetector(**kw)


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = Trainer(_fresh_model(), ToyData(), _cfg(), tmp_path / "a")
    straight.fit()

    first = Trainer(_fresh_model(), ToyData(), _cfg(), tmp_path / "b")
    first.fit(until_epoch=2)                       # the session stops after epoch 2
    assert read_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    torch.manual_seed(12345)                       # a new process: different global RNG
    resumed = Trainer(ToyDetector(), ToyData(), _cfg(), tmp_path / "b")  # different initial weights too
    resumed.fit(resume=True)

    assert resumed.epoch == 4 and resumed.global_step == straight.global_step == 12
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), f"{k} differs after resume"
    assert [r["loss"] for r in straight.history["train"]] == [r["loss"] for r in resumed.history["train"]]
    for name in ("metrics.json", "metrics.csv", "losses.png"):
        assert (tmp_path / "b" / name).stat().st_size > 0


def test_resume_without_restoring_rng_would_differ(tmp_path):
    # Guards the test above: dropout really draws random numbers, so a resume that forgot the RNG
    # state would not reproduce the run.
    a = Trainer(_fresh_model(), ToyData(), _cfg(epochs=1), tmp_path / "a")
    a.fit()
    torch.manual_seed(999)
    b = Trainer(_fresh_model(), ToyData(), _cfg(epochs=1), tmp_path / "b")
    b.train_one_epoch()
    assert not torch.equal(a.model.fc.weight, b.model.fc.weight)


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_checkpoint_write_killed_midway_leaves_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"w": torch.arange(10.0), "epoch": 1}, path)
    before = _digest(path)
    # A real kill: the child starts writing a 40 MB checkpoint over the same path and SIGKILLs
    # itself after the first few bytes hit the disk.
    child = textwrap.dedent(f"""
        import os, signal, torch
        from mrcnn_lite.engine import checkpoint as ck
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 partial")
            f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        ck.torch.save = dying_save
        ck.save_checkpoint({{"w": torch.zeros(10_000_000), "epoch": 2}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT)
    assert proc.returncode == -9, "the writer should have been killed"
    assert _digest(path) == before
    state = read_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(10.0))


def test_checkpoint_failed_write_cleans_up_and_raises(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken(obj, f, *a, **k):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("mrcnn_lite.engine.checkpoint.torch.save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    assert read_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        read_checkpoint(bad)


def test_checkpoints_load_with_weights_only(tmp_path):
    t = Trainer(_fresh_model(), ToyData(), _cfg(epochs=1), tmp_path)
    t.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "train_config"}


def test_non_finite_loss_stops_with_step_and_term_and_keeps_checkpoint(tmp_path):
    # 12 images / batch 4 = 3 steps per epoch; the 5th forward is epoch 2, step 5.
    t = Trainer(_fresh_model(nan_at_call=5), ToyData(), _cfg(), tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5 \(term loss_classifier\)"):
        t.fit()
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1 and state["global_step"] == 3
    for k, v in state["model"].items():
        assert torch.isfinite(v).all(), k


def test_lr_schedule_warmup_then_decay():
    cfg = _cfg(warmup_iters=10, warmup_factor=0.1, schedule="cosine")
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 100, cfg) == pytest.approx(0.55 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)
    step = _cfg(warmup_iters=0, schedule="step", step_milestones=(0.5, 0.8), gamma=0.1)
    assert [lr_factor(i, 10, step) for i in (0, 4, 5, 7, 8, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, _cfg(schedule="linear"))


def test_bad_trainer_options():
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(ToyDetector(), ToyData(), _cfg(optimizer="adam"), "x")
    with pytest.raises(ValueError, match="amp"):
        Trainer(ToyDetector(), ToyData(), _cfg(amp="fp8"), "x")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        Trainer(ToyDetector(), ToyData(), _cfg(amp="fp16"), "x")


def test_bf16_autocast_runs_on_the_cpu(tmp_path):
    """amp='bf16' on the CPU: the forward's matrix products run in bfloat16, the weights stay float32."""
    seen = []
    model = _fresh_model(p_drop=0.0)
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    t = Trainer(model, ToyData(), _cfg(epochs=1, amp="bf16"), tmp_path)
    t.fit()
    assert seen and set(seen) == {torch.bfloat16}
    assert model.fc.weight.dtype == torch.float32


def test_eval_every_steps_records_ap_during_the_epoch(tmp_path):
    calls = []

    def evaluate_fn(model, val_set):
        calls.append(model.training)
        model.eval()  # as engine.evaluate does
        return {"bbox": {"AP": 0.1 * len(calls)}}

    t = Trainer(_fresh_model(), ToyData(n=12), _cfg(epochs=2, batch_size=2, eval_every=1, eval_every_steps=4),
                tmp_path, val_set=ToyData(2), evaluate_fn=evaluate_fn)
    hist = t.fit()
    # 6 steps an epoch: mid-epoch at steps 4 and 8 (12 is the end of epoch 2), and each epoch's end
    assert [(r["epoch"], r["step"]) for r in hist["eval"]] == [(1, 4), (1, 6), (2, 8), (2, 12)]
    assert calls == [True] * 4  # each evaluation found the model back in training mode


@pytest.mark.slow
def test_eval_every_steps_covers_epoch_ends_that_fit_skips(tmp_path):
    # eval_every=2: fit evaluates only the end of epoch 2 (and of the last epoch, 3). Step 6 ends epoch 1,
    # which fit does not evaluate, so the step schedule must; step 12 ends epoch 2, evaluated once, by fit.
    t = Trainer(_fresh_model(), ToyData(n=12), _cfg(epochs=3, batch_size=2, eval_every=2, eval_every_steps=3),
                tmp_path, val_set=ToyData(2), evaluate_fn=lambda model, val_set: {"bbox": {"AP": 0.0}})
    hist = t.fit()
    assert [r["step"] for r in hist["eval"]] == [3, 6, 9, 12, 15, 18]


@pytest.mark.slow
def test_adamw_and_grad_clipping_train(tmp_path):
    t = Trainer(_fresh_model(p_drop=0.0), ToyData(), _cfg(optimizer="adamw", lr=1e-2, clip_grad_norm=0.5,
                                                          epochs=6), tmp_path)
    hist = t.fit()["train"]
    assert hist[-1]["loss_box_reg"] < 0.5 * hist[0]["loss_box_reg"]


DDP_SCRIPT = """
import json, os, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_engine import ToyDetector, ToyData, _cfg
from mrcnn_lite.engine import Trainer
dist.init_process_group("gloo")
torch.manual_seed(0)
t = Trainer(ToyDetector(p_drop=0.0), ToyData(), _cfg(epochs=1), {out!r})
loader = t._loader(0)
images, targets = next(iter(loader))
losses = t.train_step(images, targets)
if dist.get_rank() == 0:
    json.dump({{"loss": losses["loss"], "fc": t.model.fc.weight.flatten().tolist()}}, open({res!r}, "w"))
dist.destroy_process_group()
"""


@pytest.mark.heavy
@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    res = tmp_path / "ddp.json"
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path / "ddp"), res=str(res)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script)], check=True, cwd=ROOT, env=env, timeout=120)
    got = __import__("json").loads(res.read_text())

    torch.manual_seed(0)
    single = Trainer(ToyDetector(p_drop=0.0), ToyData(), _cfg(epochs=1), tmp_path / "one")
    images, targets = next(iter(single._loader(0)))
    assert len(images) == 4                         # the same total batch, in one process
    ref = single.train_step(images, targets)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert np.allclose(got["fc"], single.model.fc.weight.flatten().tolist(), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- COCO evaluation
def _square_target(image_id, boxes, labels, size=32):
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    return {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels), "masks": masks}


def _as_output(target, scores, shift=0):
    boxes = target["boxes"] + shift
    masks = torch.roll(target["masks"].float(), shifts=(shift, shift), dims=(1, 2))[:, None]
    return {"boxes": boxes, "labels": target["labels"], "scores": torch.tensor(scores), "masks": masks}


def test_coco_eval_perfect_shifted_and_empty():
    targets = [_square_target(1, [[2, 2, 12, 12], [15, 15, 30, 28]], [1, 2]),
               _square_target(2, [[4, 6, 20, 22]], [3])]
    gt = coco_from_targets(targets, [(32, 32)] * 2, num_classes=4)
    perfect = [detections_to_coco(t["image_id"], _as_output(t, [0.9] * len(t["labels"]))) for t in targets]
    for iou_type in ("bbox", "segm"):
        res = [r for p in perfect for r in p[iou_type]]
        m = coco_summary(gt, res, iou_type)
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0), (iou_type, m)
    # Shift every prediction by 1 px: box IoUs become 81/119, 168/222 and 225/287 (0.68 .. 0.78), a
    # match at IoU 0.5 but not at the strict thresholds, so AP50 stays 1 while AP (0.5:0.95) drops.
    shifted = [detections_to_coco(t["image_id"], _as_output(t, [0.9] * len(t["labels"]), shift=1)) for t in targets]
    m = coco_summary(gt, [r for p in shifted for r in p["bbox"]], "bbox")
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] < 1.0 and 0.2 < m["AP"] < 0.7
    assert coco_summary(gt, [], "segm") == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
