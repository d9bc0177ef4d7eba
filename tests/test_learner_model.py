"""The learner's model (mrcnn_lite/course/learner_model.py): with correct solutions plugged in at every seam, it
trains exactly as the package model does; one wrong solution changes the losses, and the checker catches it."""
import pytest
import torch

import mrcnn_lite as ml
from mrcnn_lite.course import learner_model as lm
from mrcnn_lite.data.shapes import ShapesDataset

STEPS = 3
# The course recipe's model at 64 px, with 16 FPN channels and fewer sampled RoIs: the learner's RoIAlign loops
# over boxes and channels.
CFG = lm.course_config(min_size=64, max_size=64, fpn_out_channels=16, box_batch_size_per_image=16,
                       mask_batch_size_per_image=4,
                       rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50)


@pytest.fixture(scope="module")
def batch():
    ds = ShapesDataset(num_images=2, image_size=64, seed=3)
    images, targets = zip(*[ds[i] for i in range(2)])
    return ([im.double() for im in images],
            [{"boxes": t["boxes"].double(), "labels": t["labels"], "masks": t["masks"]} for t in targets])


def _train(build, batch, steps=STEPS):
    """Losses of ``steps`` SGD steps in float64 from the weights of seed 0 (and the same sampler draws)."""
    torch.manual_seed(0)
    model = build().double().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.manual_seed(1)
    history = []
    for _ in range(steps):
        losses = model(*batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


@pytest.fixture(scope="module")
def package_losses(batch):
    return _train(lambda: ml.build_model(CFG), batch)


def _max_rel(a, b):
    return max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-300) for x, y in zip(a, b) for k in y)


def test_course_solutions_pass_their_checkers_and_the_package_does_not():
    """The course's own solution code (read from the solution notebooks) passes every part's checker; the
    package's functions with the same signatures (``reference_parts``) are refused: not the learner's code."""
    verdicts = lm.check_parts(lm.course_solutions())
    assert [n for n, (ok, _) in verdicts.items() if not ok] == []
    assert set(verdicts) == {p.name for p in lm.PARTS}
    refused = lm.check_parts({"box_iou": lm.reference_parts()["box_iou"]})["box_iou"]
    assert refused[0] is False and "mrcnn_lite.ops" in refused[1], refused


def test_reference_solutions_train_as_the_package(batch, package_losses):
    built = lm.learner_model(lm.reference_parts(), CFG, check=False)
    assert built.yours == [p.name for p in lm.PARTS]                   # every part is the learner's
    assert type(built.model.rpn).__name__ == "LearnerRPN"
    losses = _train(lambda: lm.learner_model(lm.reference_parts(), CFG, check=False).model, batch)
    assert len(losses) == STEPS and set(losses[0]) == set(package_losses[0])
    print("max relative difference of the losses:", _max_rel(losses, package_losses))
    assert _max_rel(losses, package_losses) < 1e-10
    assert all(v > 0 for v in package_losses[0].values())               # every term was computed


def _iou_without_intersection(boxes1, boxes2):
    """A planted bug: the union is area1 + area2, without taking the intersection off."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area1[:, None] + area2[None, :])


def test_a_wrong_solution_changes_the_losses_and_fails_its_check(batch, package_losses):
    parts = {**lm.reference_parts(), "box_iou": _iou_without_intersection}
    fast = ("roi_align",)  # its loop is slow, and it was proven equal above
    wrong = _train(lambda: lm.learner_model(parts, CFG, check=False, package=fast).model, batch)
    print("planted IoU bug: max relative difference of the losses:", _max_rel(wrong, package_losses))
    assert _max_rel(wrong, package_losses) > 1e-3

    # Checked, the wrong IoU fails its check and the package's stands in: the package model's losses again.
    checked_parts = {**lm.course_solutions(), "box_iou": _iou_without_intersection}
    built = lm.learner_model(checked_parts, CFG, package=fast)
    row = next(r for r in built.rows if r.part.name == "box_iou")
    assert not row.yours and row.why.startswith("fails check_box_iou")
    assert "box_iou" not in built.yours and len(built.yours) == len(lm.PARTS) - 2
    checked = _train(lambda: lm.learner_model({"box_iou": _iou_without_intersection}, CFG).model, batch)
    assert _max_rel(checked, package_losses) < 1e-10


def test_missing_and_declined_parts_are_the_packages(tmp_path):
    solutions = lm.course_solutions()
    built = lm.learner_model({"nms": solutions["nms"], "encode": solutions["encode"]},
                             CFG, package=("encode",), why_package="too slow")
    used = {r.part.name: (r.yours, r.why) for r in built.rows}
    assert used["nms"] == (True, "passes check_nms")
    assert used["encode"] == (False, "too slow")
    assert used["box_iou"][0] is False and used["box_iou"][1].startswith("not saved")
    assert "box_iou" in built.table() and "package's" in built.table()
    with pytest.raises(ValueError, match="unknown parts"):
        lm.learner_model({"iou": lm.reference_parts()["box_iou"]}, CFG)


def test_save_and_load_parts_keep_the_source(tmp_path, batch):
    def helper(x):
        return x * 1.0

    def my_box_iou(boxes1, boxes2):
        area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
        area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
        lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
        rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
        inter = helper((rb - lt).clamp(min=0).prod(dim=2))
        return inter / (area1[:, None] + area2[None, :] - inter)

    file = lm.save_part("box_iou", my_box_iou, helper, path=tmp_path)
    assert file == tmp_path / "box_iou.py" and "def my_box_iou" in file.read_text()
    loaded = lm.load_parts(tmp_path)
    assert list(loaded) == ["box_iou"] and loaded["box_iou"] is not my_box_iou
    a, b = batch[1][0]["boxes"], batch[1][1]["boxes"]
    assert torch.allclose(loaded["box_iou"](a, b), ml.ops.box_iou(a, b), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="unknown part"):
        lm.save_part("iou", my_box_iou, path=tmp_path)


def test_parts_table_reports_the_cost_of_one_step(batch):
    built = lm.learner_model(lm.reference_parts(), CFG, check=False)
    torch.manual_seed(0)
    package = ml.build_model(CFG).double()
    built.model.double()
    before = {k: v.clone() for k, v in built.model.state_dict().items()}
    built.measure(*batch, package_model=package)
    assert built.step_seconds["yours"] > 0 and built.step_seconds["package"] > 0
    roi = next(r for r in built.rows if r.part.name == "roi_align")
    assert roi.estimated and roi.timer.seconds > 0      # calls counted in the step, times one call's time
    assert next(r for r in built.rows if r.part.name == "nms").timer.seconds > 0   # timed in the step itself
    assert all(torch.equal(before[k], v) for k, v in built.model.state_dict().items())   # model untouched
    assert "one training step" in built.table() and "~" in built.table()


def test_eval_uses_the_learners_paste_and_nms(batch):
    torch.manual_seed(0)
    package = ml.build_model(CFG).double().eval()
    torch.manual_seed(0)
    built = lm.learner_model(lm.reference_parts(), CFG, check=False, package=("roi_align",))
    model = built.model.double().eval()
    with torch.no_grad():
        for m in (package, model):  # sharpen the random classifier so that there are detections
            m.roi_heads.box_predictor.cls_score.weight.mul_(30)
        ref, got = package(batch[0]), model(batch[0])
    paste = next(r for r in built.rows if r.part.name == "paste_mask")
    assert paste.timer.seconds > 0 and sum(len(r["boxes"]) for r in ref) > 0
    for r, g in zip(ref, got):
        assert torch.equal(r["labels"], g["labels"])
        torch.testing.assert_close(g["boxes"], r["boxes"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g["masks"], r["masks"], rtol=1e-10, atol=1e-10)


def test_the_notebooks_save_cells_carry_every_part_to_notebook_10(tmp_path, monkeypatch):
    """What a learner who solved notebooks 01-09 gets: each notebook's solution cells are run as a module (so
    their source can be read, as in a kernel), then that notebook's own ``save_part`` cells; ``load_parts`` then
    finds all 14 parts and every one passes its check in ``learner_model`` (none falls back to the package's)."""
    import importlib.util
    import json

    from mrcnn_lite.course.items import course_notebooks_dir

    monkeypatch.setenv("MRCNN_LITE_PARTS", str(tmp_path / "parts"))
    saved_cells = 0
    for number in sorted({p.notebook for p in lm.PARTS}):
        path = next(course_notebooks_dir().glob(f"{number}_*.ipynb"))
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        answers = ["".join(c["source"]) for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
        module_file = tmp_path / f"nb{number}.py"
        module_file.write_text("import torch, math\nimport torch.nn.functional as F\nfrom torch import Tensor\n"
                               "from mrcnn_lite import ops\nfrom mrcnn_lite.ops import BoxCoder\n"
                               "from typing import *\n\n" + "\n\n".join(answers))
        spec = importlib.util.spec_from_file_location(f"nb{number}", module_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for cell in cells:
            source = "".join(cell["source"])
            if "save_part(" in source:
                exec(compile(source, f"<{path.name} save cell>", "exec"), vars(module))
                saved_cells += 1
    assert saved_cells == len(lm.PARTS) == 14
    mine = lm.load_parts()
    assert sorted(mine) == sorted(p.name for p in lm.PARTS)
    built = lm.learner_model(mine, CFG)
    assert all(r.yours for r in built.rows), built.table()


@pytest.mark.heavy   # about 2 minutes: the written RoIAlign loops over every box and channel
def test_the_course_solution_code_trains_as_the_package(batch, package_losses):
    """The same, with the course's own *written* solutions (what a learner who solved 01-09 has, loops and all)
    in every seam, through the checkers: float64 losses equal to the package model's for STEPS steps."""
    built = lm.learner_model(lm.course_solutions(), CFG)
    assert built.yours == [p.name for p in lm.PARTS], built.table()
    losses = _train(lambda: lm.learner_model(lm.course_solutions(), CFG, check=False).model, batch)
    print("max relative difference of the losses:", _max_rel(losses, package_losses))
    assert _max_rel(losses, package_losses) < 1e-10
