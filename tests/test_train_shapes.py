"""The tiny model actually learns on shapes, and the PredictionExplorer's logic, headless."""
import pytest
import torch

import mrcnn_lite as ml
from mrcnn_lite.data import CLASSES, ShapesDataset
from mrcnn_lite.engine import TrainConfig, Trainer
from mrcnn_lite.viz.widgets import PredictionExplorer, prediction_view


@pytest.mark.slow
def test_a_short_tiny_run_on_shapes_lowers_the_loss(tmp_path):
    """12 steps on the same 2 images (batch 2): the summed loss of the last 3 steps is well below the first 3."""
    torch.manual_seed(0)
    model = ml.build_model(ml.config.tiny(num_classes=4, norm="bn"))
    cfg = TrainConfig(epochs=12, batch_size=2, lr=0.01, warmup_iters=2, clip_grad_norm=10.0, progress=False,
                      eval_every=0)
    trainer = Trainer(model, ShapesDataset(2, seed=4), cfg, tmp_path)
    rows = trainer.fit()["train"]
    assert len(rows) == 12
    first = sum(r["loss"] for r in rows[:3]) / 3
    last = sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.8 * first, (first, last)


def _as_output(target, scores):
    return {"boxes": target["boxes"].clone(), "labels": target["labels"].clone(), "scores": torch.tensor(scores),
            "masks": target["masks"][:, None].float()}


def test_prediction_view_counts_matches_and_thresholds():
    ds = ShapesDataset(3, seed=1, min_shapes=2)
    image, target = ds[0]
    n = len(target["labels"])
    scores = [0.9] * (n - 1) + [0.3]
    view = prediction_view(target, _as_output(target, scores), score_thresh=0.5)
    assert view["num_gt"] == n and view["num_pred"] == n - 1
    assert view["true_positives"] == n - 1 and view["false_positives"] == 0 and view["missed"] == 1
    wrong = _as_output(target, [0.9] * n)
    wrong["labels"] = wrong["labels"] % 3 + 1            # every class wrong: no match
    view = prediction_view(target, wrong, score_thresh=0.5)
    assert view["true_positives"] == 0 and view["false_positives"] == n and view["missed"] == n
    dup = _as_output(target, [0.9] * n)
    dup = {k: torch.cat([v, v]) for k, v in dup.items()}  # every detection twice: duplicates are false positives
    view = prediction_view(target, dup)
    assert view["true_positives"] == n and view["false_positives"] == n


def test_prediction_explorer_headless():
    ds = ShapesDataset(3, seed=1)
    outputs = [_as_output(t, [0.8] * len(t["labels"])) for _, t in (ds[i] for i in range(3))]
    ex = PredictionExplorer(None, ds, class_names=CLASSES, outputs=outputs)
    png0 = ex.image_widget.value
    assert png0[:4] == b"\x89PNG"
    view = ex.update(index=2, score_thresh=0.9)
    assert ex.controls["index"].value == 2 and view["num_pred"] == 0 and ex.image_widget.value != png0
    view = ex.update(score_thresh=0.5)
    assert view["true_positives"] == view["num_gt"] == len(ds[2][1]["labels"])
    assert "correct" in ex.info.value


@pytest.mark.slow
def test_prediction_explorer_runs_the_model_once_per_image():
    torch.manual_seed(0)
    model = ml.build_model(ml.config.tiny(num_classes=4))
    ds = ShapesDataset(2, seed=1)
    ex = PredictionExplorer(model, ds, score_thresh=0.0)
    ex.update(mask_thresh=0.3)
    assert list(ex._cache) == [0]
    ex.update(index=1)
    assert sorted(ex._cache) == [0, 1]
