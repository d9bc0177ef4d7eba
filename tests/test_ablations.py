"""The paper's ablations: each variant changes exactly its part, and the runner's grid, files and resume."""
import json

import pytest
import torch
import torch.nn.functional as F

import mrcnn_lite as ml
from mrcnn_lite import ops
from mrcnn_lite.__main__ import main
from mrcnn_lite.data import ShapesDataset
from mrcnn_lite.data import collate_fn
from mrcnn_lite.experiments import ablations as A
from mrcnn_lite.experiments import variants as V
from mrcnn_lite.model.mask_head import project_masks_on_boxes


@pytest.fixture(scope="module")
def batch():
    ds = ShapesDataset(2, seed=3)
    return collate_fn([ds[0], ds[1]])


def _losses(model, batch, intermediates=False):
    torch.manual_seed(0)
    model.train()
    return model(*batch, return_intermediates=intermediates)


@pytest.mark.heavy
def test_every_variant_trains_and_predicts(batch):
    for name in A.VARIANTS:
        model = A.build_variant(name, 0)
        losses = _losses(model, batch)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values()), name
        model.eval()
        with torch.no_grad():
            out = model(batch[0])
        assert out[0]["masks"].shape[1:] == (1, 128, 128), name


def test_variants_leave_the_rpn_and_box_branch_as_the_paper_model(batch):
    """A mask-branch variant changes loss_mask only: the other four losses are the paper model's."""
    paper = _losses(A.build_variant("paper", 0), batch)
    for name in ("softmax", "gt_box_targets"):
        other = _losses(A.build_variant(name, 0), batch)
        for k in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
            assert torch.equal(other[k], paper[k]), (name, k)
        assert not torch.equal(other["loss_mask"], paper["loss_mask"]), name


def test_softmax_mask_loss_is_the_cross_entropy_against_gt_class_or_background(batch):
    model = A.build_variant("softmax", 0)
    losses, inter = _losses(model, batch, intermediates=True)
    logits = inter["mask_logits"]                              # (P, K, 28, 28)
    targets = inter["targets"]
    labels = torch.cat([t["labels"][m[l > 0]] for t, m, l in zip(targets, inter["matched_idxs"], inter["labels"])])
    t = torch.cat([project_masks_on_boxes(tg["masks"], p, m[l > 0], 28)
                   for tg, p, m, l in zip(targets, inter["mask_proposals"], inter["matched_idxs"], inter["labels"])])
    logp = logits.log_softmax(dim=1)
    rows = torch.arange(len(labels))
    expected = -(t * logp[rows, labels] + (1 - t) * logp[:, 0]).mean()
    assert torch.allclose(losses["loss_mask"], expected, rtol=1e-5, atol=1e-6)


def test_softmax_and_agnostic_probabilities():
    logits = torch.randn(3, 4, 28, 28)
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    heads = A.build_variant("softmax", 0).roi_heads
    probs = heads.mask_probabilities(logits, labels)
    assert [p.shape for p in probs] == [(2, 1, 28, 28), (1, 1, 28, 28)]
    assert torch.allclose(probs[0][1, 0], logits[1].softmax(0)[3])
    agnostic = A.build_variant("agnostic", 0).roi_heads
    assert agnostic.mask_predictor.mask_fcn_logits.out_channels == 1
    one = torch.randn(3, 1, 28, 28)
    probs = agnostic.mask_probabilities(one, labels)
    assert torch.allclose(probs[1][0, 0], one[2, 0].sigmoid())


def test_pooling_kernels():
    x = torch.randn(1, 3, 20, 20, dtype=torch.float64)
    rois = torch.tensor([[0, 3.3, 4.6, 41.0, 30.2], [0, 0.4, 0.4, 9.9, 70.1]], dtype=torch.float64)
    assert torch.equal(V.roi_pool_kernel(x, rois, (7, 7), 0.25, 2), ops.roi_pool(x, rois, (7, 7), 0.25))
    warp = V.make_roi_warp_kernel(ops.roi_align)(x, rois, (7, 7), 0.25, 2)
    quantised = torch.tensor([[0, 4.0, 4.0, 40.0, 32.0], [0, 0.0, 0.0, 8.0, 72.0]], dtype=torch.float64)
    assert torch.allclose(warp, ops.roi_align(x, quantised, (7, 7), 0.25, 2))
    assert not torch.allclose(warp, ops.roi_align(x, rois, (7, 7), 0.25, 2))  # the box did move


def test_coarse_pooler_pools_every_roi_from_p4(batch):
    model = A.build_variant("p4_roialign", 0).eval()
    pool = model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["2"] and model.roi_heads.mask_roi_pool.featmap_names == ["2"]
    feats = {k: torch.randn(1, 64, 192 // s, 192 // s) for k, s in (("0", 4), ("1", 8), ("2", 16), ("3", 32))}
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 180.0, 150.0]])]
    out = pool(feats, boxes, [(192, 192)])
    expected = model.kernels.roi_align(feats["2"], ops.roi_ops.boxes_to_rois(boxes), output_size=(7, 7),
                                       spatial_scale=1 / 16, sampling_ratio=pool.sampling_ratio)
    assert torch.allclose(out, expected)


def test_gt_box_targets_crop_with_the_matched_gt_box(batch):
    model = A.build_variant("gt_box_targets", 0)
    losses, inter = _losses(model, batch, intermediates=True)
    targets, logits = inter["targets"], inter["mask_logits"]
    pos = [m[l > 0] for m, l in zip(inter["matched_idxs"], inter["labels"])]
    t = torch.cat([project_masks_on_boxes(tg["masks"], tg["boxes"][i], i, 28) for tg, i in zip(targets, pos)])
    labels = torch.cat([tg["labels"][i] for tg, i in zip(targets, pos)])
    expected = F.binary_cross_entropy_with_logits(logits[torch.arange(len(labels)), labels], t)
    assert torch.allclose(losses["loss_mask"], expected, rtol=1e-5, atol=1e-6)


def test_no_gt_proposals_samples_from_the_proposals_only():
    heads = A.build_variant("no_gt_proposals", 0).roi_heads
    gt = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([2]),
          "masks": torch.zeros(1, 64, 64)}
    far = torch.tensor([[50.0, 50.0, 60.0, 60.0], [45.0, 0.0, 63.0, 20.0]])
    props, matched, labels, reg = heads.select_training_samples([far], [gt])
    assert (labels[0] == 0).all() and len(props[0]) == 2            # no positive: the GT box was not added
    paper = A.build_variant("paper", 0).roi_heads
    props, matched, labels, reg = paper.select_training_samples([far], [gt])
    assert (labels[0] == 2).sum() == 1                              # the paper's: the GT box is a positive


@pytest.mark.heavy
def test_runner_writes_tables_and_resumes(tmp_path, capsys):
    recipe = dict(batch_size=2, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup=1)
    log = []
    result = A.run_grid(["e"], [0], 2, tmp_path, recipe, num_heldout=3, log=log.append)
    assert sorted((r["variant"], r["seed"]) for r in result["runs"]) == [("mlp", 0), ("paper", 0)]
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved["runs"] == result["runs"] and saved["steps"] == 2
    for r in saved["runs"]:
        assert 0.0 <= r["mask_AP"] <= 1.0 and r["train_seconds"] > 0
    md = (tmp_path / "ablations.md").read_text()
    assert "### (e) mask head" in md and "| MLP |" in md and "| FCN (paper) |" in md
    # A rerun with one more table trains only the new variants; other settings are refused.
    result = A.run_grid(["e", "gt"], [0], 2, tmp_path, recipe, num_heldout=3, log=log.append, jobs=2)
    assert [r["variant"] for r in result["runs"]] == ["paper", "mlp", "no_gt_proposals"]  # VARIANTS' order
    assert "1 runs to do" in log[-2]
    assert result["tables"] == ["e", "gt"] and result["seeds"] == [0]
    # More seeds for one row: only its runs are trained; the file keeps every row, each with its own seeds.
    result = A.run_grid(["gt"], [0, 1], 2, tmp_path, recipe, num_heldout=3, log=log.append)
    assert "2 runs to do" in log[-3] and result["tables"] == ["e", "gt"] and result["seeds"] == [0, 1]
    assert sorted((r["variant"], r["seed"]) for r in result["runs"]) == [
        ("mlp", 0), ("no_gt_proposals", 0), ("no_gt_proposals", 1), ("paper", 0), ("paper", 1)]
    md = (tmp_path / "ablations.md").read_text()
    assert "| MLP | 1 |" in md and "| not added | 2 |" in md and "| FCN (paper) | 2 |" in md
    with pytest.raises(ValueError, match="other settings"):
        A.run_grid(["e"], [0], 3, tmp_path, recipe, num_heldout=3, log=log.append)


def test_summary_mean_and_sample_std():
    runs = [{"variant": "paper", "seed": s, "params": 1, "box_AP": b, "mask_AP": m, "mask_AP50": 0.5,
             "mask_AP75": 0.4, "train_seconds": 10.0} for s, b, m in ((0, 0.2, 0.3), (1, 0.4, 0.5))]
    s = A.summarise(runs)["paper"]
    assert s["mask_AP"][0] == pytest.approx(0.4) and s["mask_AP"][1] == pytest.approx(0.1414213, rel=1e-5)
    assert s["seeds"] == [0, 1]


@pytest.mark.heavy
def test_cli_rejects_unknown_rows_and_runs_a_small_grid(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "--rows", "b,z", "--out", str(tmp_path)])
    assert "argument --rows" in capsys.readouterr().err
    assert main(["ablate", "--rows", "gt", "--seeds", "1", "--steps", "1", "--num-heldout", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### GT boxes in the training RoIs" in out and "| not added |" in out
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved["steps"] == 1 and len(saved["runs"]) == 2 and "ablate" in saved["command"]


def test_shipped_results_cover_every_row_with_two_seeds():
    """benchmarks/ablations/ablations.json (read by notebook 14): every table, every variant, >= 2 seeds (the
    same seeds within a table, so that a table compares like with like)."""
    from pathlib import Path
    shipped = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "ablations" / "ablations.json").read_text())
    assert shipped["tables"] == list(A.TABLES) and len(shipped["seeds"]) >= 2
    summary = A.summarise(shipped["runs"])
    for key, (title, rows) in A.TABLES.items():
        common = set.intersection(*(set(summary[name]["seeds"]) for name, _ in rows))
        assert len(common) >= 2, (key, [summary[name]["seeds"] for name, _ in rows])
        for name, _ in rows:
            assert set(summary[name]["seeds"]) <= set(shipped["seeds"]), (key, name)
    assert all(0.0 <= r["mask_AP"] <= 1.0 and r["steps"] == shipped["steps"] for r in shipped["runs"])
    md = (Path(__file__).resolve().parents[1] / "benchmarks" / "ablations" / "ablations.md").read_text()
    assert md == A.markdown(shipped)  # the committed table is the JSON's


def test_ablations_train_the_course_architecture_with_the_papers_sampling():
    """The grid's model is the course model's network (the same parameters) without the course recipe's
    training shortcuts: the mask loss on every positive RoI, as in the paper."""
    from mrcnn_lite.recipes import TINY_SHAPES_MODEL, V1_MODEL
    grid, course = ml.config.tiny(num_classes=4, **V1_MODEL), ml.config.tiny(num_classes=4, **TINY_SHAPES_MODEL)
    shapes = lambda cfg: {k: v.shape for k, v in ml.build_model(cfg).state_dict().items()}  # noqa: E731
    assert shapes(grid) == shapes(course)
    assert grid.mask_batch_size_per_image is None and course.mask_batch_size_per_image is not None
    assert A.build_variant("paper", 0).cfg == grid
