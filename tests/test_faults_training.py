"""Training faults: divergence, kills, stray files, resumes
with other settings. The toy detector of test_engine keeps most of these to a second or two."""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import mrcnn_lite as ml
from mrcnn_lite.data import Compose, RandomHorizontalFlip, ShapesDataset
from mrcnn_lite.engine import NonFiniteLossError, TrainConfig, Trainer, read_checkpoint, save_checkpoint, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import ToyData, ToyDetector, _cfg, _fresh_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


def _same_weights(a, b):
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), f"{k} differs"


# ------------------------------------------------------------------ the step as a plain function

@pytest.mark.slow
def test_train_step_is_a_plain_function_equal_to_the_trainer_method(tmp_path):
    images, targets = next(iter(Trainer(_fresh_model(p_drop=0.0), ToyData(), _cfg(), tmp_path)._loader(0)))
    m1 = _fresh_model(p_drop=0.0)
    opt = torch.optim.SGD(m1.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    got = train_step(m1, opt, images, targets, clip_grad_norm=0.5)
    t = Trainer(_fresh_model(p_drop=0.0), ToyData(), _cfg(clip_grad_norm=0.5, warmup_iters=0, schedule="step"),
                tmp_path)
    ref = t.train_step(images, targets)
    assert got == ref and isinstance(got["loss"], float)
    _same_weights(m1, t.model)


class NaNGradient(nn.Module):
    """A finite loss (0) whose gradient is NaN: d/dw sqrt(0 * w) = 0 / (2 sqrt(0))."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, images, targets):
        return {"loss_mask": torch.sqrt(self.w * 0.0).sum() + (self.w - 2).pow(2).sum() * 0}


def test_a_nan_gradient_with_a_finite_loss_stops_the_step_before_the_update():
    model = NaNGradient()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    targets = [{"image_id": 7}, {"image_id": 9}]
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at epoch 1, step 4, images \[7, 9\] "
                                                 r"\(parameter w"):
        train_step(model, opt, [torch.zeros(3, 4, 4)] * 2, targets, step=4, epoch=1)
    assert torch.equal(model.w.detach(), torch.ones(3))  # not stepped


class Steep(nn.Module):
    """loss = 10 * sum(w): finite at w = 1, gradient 10 everywhere."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, images, targets):
        return {"loss_classifier": 10 * self.w.sum()}


def test_weights_that_became_non_finite_are_not_saved(tmp_path):
    # lr 3e38 x gradient 10 overflows float32 in the update of the last step; the loss and the
    # gradient of that step were finite, so only the check of the weights at the save catches it.
    save_checkpoint({"epoch": 0, "marker": torch.tensor(1.0)}, tmp_path / "checkpoint.pt")
    t = Trainer(Steep(), ToyData(4), _cfg(epochs=1, lr=3e38, momentum=0.0, weight_decay=0.0, warmup_iters=0),
                tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite value in w after step 1; not saved"):
        t.fit()
    assert torch.equal(read_checkpoint(tmp_path / "checkpoint.pt")["marker"], torch.tensor(1.0))


# ------------------------------------------------------------------ diverging runs

def test_diverging_run_keeps_a_finite_checkpoint_that_resumes_at_a_sane_lr(tmp_path):
    """The issue's case on the toy model: lr 1e4 diverges within a few steps; the checkpoint left
    behind is the last state whose loss and gradients were finite, and it trains on at lr 1e-3."""
    run = tmp_path / "run"
    t = Trainer(_fresh_model(), ToyData(), _cfg(lr=1e4, warmup_iters=0, save_every=1, epochs=3), run)
    with pytest.raises(NonFiniteLossError, match=r"non-finite (loss|gradient) at epoch \d, step \d+ \((term|parameter)"):
        t.fit()
    state = read_checkpoint(run / "checkpoint.pt")
    assert _finite(state["model"]) and state["global_step"] == t.saved_step < t.global_step + 1
    resumed = Trainer(ToyDetector(), ToyData(), _cfg(lr=1e-3, warmup_iters=0, save_every=1, epochs=3), run)
    history = resumed.fit(resume=True)
    assert resumed.global_step == 9 and _finite(resumed.model.state_dict())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history["train"])
    assert any(c.startswith("lr 10000.0 -> 0.001") for c in resumed.resume_changes)


# ------------------------------------------------------------------ killed mid-epoch, resumed

KILL_SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_engine import ToyData, _cfg, _fresh_model
from test_faults_training import FlipData
from mrcnn_lite.engine import Trainer

class Killing(FlipData):
    def __getitem__(self, i):
        self.reads += 1
        if self.reads > {kill_after_reads}:
            os.kill(os.getpid(), signal.SIGKILL)   # a real kill, in the middle of epoch 2
        return super().__getitem__(i)

Trainer(_fresh_model(), Killing(), _cfg(save_every=2), {out!r}).fit()
"""


class FlipData(ToyData):
    """ToyData with a random horizontal flip: the data draws from the global RNG, like real transforms."""

    reads = 0

    def __getitem__(self, i):
        image, target = super().__getitem__(i)
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, target


@pytest.mark.heavy
@pytest.mark.slow
def test_killed_mid_epoch_resumes_to_the_same_weights_and_losses(tmp_path):
    straight = Trainer(_fresh_model(), FlipData(), _cfg(save_every=2), tmp_path / "a")
    straight.fit()

    # 12 images, batch 4: 3 steps per epoch. The kill comes while reading the batch of step 6
    # (epoch 2, third step); the newest checkpoint is the state after step 4 (saved every 2 steps,
    # written inside step 5 once its loss and gradients were finite): in the middle of epoch 2.
    out = tmp_path / "b"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(ROOT / "tests"), kill_after_reads=20, out=str(out)))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    state = read_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["epoch_samples"], state["global_step"]) == (1, 4, 4)

    torch.manual_seed(12345)  # a new process: another global RNG state and other initial weights
    resumed = Trainer(ToyDetector(), FlipData(), _cfg(save_every=2), out)
    resumed.fit(resume=True)
    assert resumed.global_step == straight.global_step == 12
    _same_weights(straight.model, resumed.model)  # bit for bit: same data, same random numbers
    assert [r["loss"] for r in straight.history["train"]] == [r["loss"] for r in resumed.history["train"]]
    steps = [r["step"] for r in json.loads((out / "metrics.json").read_text())["train"]]
    assert steps == list(range(1, 13))


class StopAt(torch.utils.data.Dataset):
    """Wraps a dataset; raises KeyboardInterrupt (a Ctrl-C) on read number ``stop`` when armed."""

    def __init__(self, ds, stop=None):
        self.ds, self.stop, self.reads = ds, stop, 0

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.reads += 1
        if self.stop is not None and self.reads == self.stop:
            raise KeyboardInterrupt
        return self.ds[i]


@pytest.mark.heavy
@pytest.mark.slow
def test_the_real_model_stopped_mid_epoch_resumes_exactly(tmp_path):
    """The tiny course model (trainable BatchNorm, random flips): Ctrl-C in the middle of the
    epoch, resume, and the weights equal an uninterrupted run's bit for bit."""
    def run(out, stop=None, seed_before=0):
        torch.manual_seed(seed_before)
        model = ml.build_model(ml.config.tiny(num_classes=4, norm="bn", min_size=64, max_size=64))
        data = StopAt(ShapesDataset(8, image_size=64, seed=2, transforms=Compose([RandomHorizontalFlip(0.5)])),
                      stop)
        cfg = TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, save_every=1, progress=False,
                          eval_every=0, seed=5, optimizer="adamw")
        return Trainer(model, data, cfg, out)

    straight = run(tmp_path / "a")
    straight.fit()
    stopped = run(tmp_path / "b", stop=6)  # reading the 2nd image of step 3
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    assert read_checkpoint(tmp_path / "b" / "checkpoint.pt")["global_step"] == 1
    resumed = run(tmp_path / "b", seed_before=99)
    resumed.fit(resume=True)
    _same_weights(straight.model, resumed.model)
    assert [r["loss"] for r in straight.history["train"]] == [r["loss"] for r in resumed.history["train"]]


# ------------------------------------------------------------------ files

def test_stale_temporaries_are_removed_at_start(tmp_path):
    for name in ("checkpoint.pt.abc123.tmp", "metrics.json.x.tmp", "metrics.csv.y.tmp"):
        (tmp_path / name).write_bytes(b"left by a killed run")
    (tmp_path / "notes.tmp").write_text("not ours")
    Trainer(_fresh_model(), ToyData(4), _cfg(epochs=1), tmp_path).fit()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == ["notes.tmp"]


@pytest.mark.slow
def test_metrics_json_write_killed_midway_leaves_the_previous_one(tmp_path):
    (tmp_path / "metrics.json").write_text('{"train": [], "eval": []}')
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_engine import ToyData, _cfg, _fresh_model
        from mrcnn_lite.engine import Trainer
        t = Trainer(_fresh_model(), ToyData(4), _cfg(epochs=1), {str(tmp_path)!r})
        t.history["train"].append({{"step": 1, "loss": 1.0, "pad": "x" * 5_000_000}})
        real_fsync = os.fsync
        def dying_fsync(fd):   # the text is written, not yet on disk nor renamed: kill
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = dying_fsync
        t.write_metrics()
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"train": [], "eval": []}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_and_metrics_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        Trainer(_fresh_model(), ToyData(4), _cfg(epochs=1), tmp_path).fit()
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "metrics.json", "metrics.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


# ------------------------------------------------------------------ resuming with other settings

def _first_run(tmp_path, **kw):
    Trainer(_fresh_model(), ToyData(), _cfg(epochs=1, **kw), tmp_path).fit()


def test_resume_with_another_optimizer_names_it(tmp_path):
    _first_run(tmp_path)
    t = Trainer(_fresh_model(), ToyData(), _cfg(optimizer="adamw"), tmp_path)
    with pytest.raises(ValueError, match="trained with optimizer 'sgd', this run uses 'adamw'"):
        t.fit(resume=True)


def test_resume_with_another_number_of_classes_names_it(tmp_path):
    def trainer(num_classes):
        torch.manual_seed(0)
        model = ml.build_model(ml.config.tiny(num_classes=num_classes, min_size=32, max_size=32))
        return Trainer(model, ShapesDataset(2, image_size=32, seed=1),
                       TrainConfig(epochs=1, batch_size=2, progress=False, eval_every=0), tmp_path)
    trainer(4).fit()
    with pytest.raises(ValueError, match=r"the model differs \(num_classes: 4 in the checkpoint, 6 now\)"):
        trainer(6).fit(resume=True)


def test_resume_with_another_architecture_without_config_is_a_clear_error(tmp_path):
    _first_run(tmp_path)

    class Wider(ToyDetector):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 5, padding=2)

    with pytest.raises(ValueError, match="its weights do not fit this model .*size mismatch"):
        Trainer(Wider(), ToyData(), _cfg(), tmp_path).fit(resume=True)


def test_resume_with_another_batch_size_and_lr_is_accepted_and_said(tmp_path, capsys):
    _first_run(tmp_path)
    t = Trainer(_fresh_model(), ToyData(), _cfg(epochs=2, batch_size=6, lr=0.01), tmp_path)
    t.fit(resume=True)
    out = capsys.readouterr().out
    assert "note: resuming" in out and "batch_size 4 -> 6" in out and "lr 0.05 -> 0.01" in out
    assert "epochs 1 -> 2" in out
    assert t.optimizer.param_groups[0]["initial_lr"] == 0.01
    assert t.global_step == 3 + 2  # epoch 1: 3 steps of 4; epoch 2: 2 steps of 6
