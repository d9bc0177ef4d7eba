"""The cross-stage labs of notebooks 09 and 11 (``mrcnn_lite.course.labs``): the planted bug really gives the
symptom the notebook shows, locating and fixing are checked separately, the learner's fix restores the shipped
model, and the course's grader scores both parts from the answer cells alone."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

import mrcnn_lite as ml
from mrcnn_lite import ops
from mrcnn_lite.course import checks
from mrcnn_lite.course.assignments import strip_solutions
from mrcnn_lite.course.labs import SUSPECTS, _planted_candidates, lab_model, mask_roi_pool_of
from mrcnn_lite.data import ShapesDataset
from mrcnn_lite.engine.coco_eval import evaluate
from mrcnn_lite.ops.poolers import map_levels

ROOT = Path(__file__).resolve().parents[1]
NB09, NB11 = ROOT / "notebooks" / "09_mask_rcnn.ipynb", ROOT / "notebooks" / "11_evaluation.ipynb"
RIGHT = {"nine": "mask pooling", "eleven": "detection labels"}
LOCATE = {"nine": checks.check_model_nine_locate_lab, "eleven": checks.check_model_eleven_locate_lab}


def cell(path: Path, cell_id: str) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return next(c.source for c in nb.cells if c.get("id") == cell_id)


@pytest.fixture(scope="module")
def fixes():
    """The notebooks' solutions of the two fixes (their answer cells, run as the grader runs them)."""
    ns = {"torch": torch}
    exec(compile(cell(NB09, "lab9-fix"), "lab9-fix", "exec"), ns)
    exec(compile(cell(NB11, "lab11-fix"), "lab11-fix", "exec"), ns)
    return {"nine": ns["mask_roi_pool"], "eleven": ns["detection_candidates"]}


def planted_mask_roi_pool(features, boxes, image_size):
    """The lab model's broken mask pooling, written with the lab's signature: each level read at the scale of
    the next coarser one (the test below proves it is the lab model's)."""
    levels = map_levels([boxes], 2, 5)
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    out = features[0].new_zeros((len(boxes), features[0].shape[1], 14, 14))
    for level, f in enumerate(features):
        idx = torch.where(levels == level)[0]
        out[idx] = ops.roi_align(f, rois[idx], 14, spatial_scale=1 / 2 ** (level + 3), sampling_ratio=2)
    return out


@pytest.fixture(scope="module")
def held():
    return ShapesDataset(20, seed=2026)       # the held-out images of notebook 09's lab


@pytest.fixture(scope="module")
def shipped():
    return ml.load_course_model()


# ------------------------------------------------------------------------------------------------
# Locating
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lab", ["nine", "eleven"])
def test_locate_passes_the_right_suspect_only(lab, capsys):
    result = LOCATE[lab](lambda: RIGHT[lab], points=2)
    assert result.passed and result.points == 2 and result.message.startswith(f"PASS  model_{lab}_locate_lab (2/2")
    assert LOCATE[lab](lambda: f"  {RIGHT[lab].upper()} ", points=2).passed       # case and spaces ignored
    wrong = [s for s in SUSPECTS[lab] if s != RIGHT[lab]]
    assert len(wrong) == len(SUSPECTS[lab]) - 1 >= 6
    for suspect in wrong:
        result = LOCATE[lab](lambda: suspect, points=2)
        assert not result.passed and result.points == 0, suspect
        assert f"[{suspect!r}] is not where the bug is" in result.message and RIGHT[lab] not in result.message, \
            result.message


@pytest.mark.parametrize("lab", ["nine", "eleven"])
def test_locate_names_the_choices_for_an_answer_off_the_list(lab, capsys):
    for answer in ("roi align", 3, None):
        result = LOCATE[lab](lambda: answer, points=2)
        assert result.points == 0 and "answer with one of [" in result.message, result.message

    def todo():
        raise NotImplementedError

    result = LOCATE[lab](todo, points=2)
    assert not result.implemented and result.message.startswith(f"TODO  model_{lab}_locate_lab")


def test_a_choice_whose_right_answer_is_not_a_choice_is_refused():
    with pytest.raises(ValueError, match="must be one or several of choices"):
        checks.check_choice(lambda: "a", "c", ("a", "b"), name="q")


# ------------------------------------------------------------------------------------------------
# Fixing
# ------------------------------------------------------------------------------------------------
def test_nine_fix_passes_the_solution_and_fails_the_planted_bug(fixes, capsys):
    assert checks.check_model_nine_lab(fixes["nine"], points=3).points == 3
    result = checks.check_model_nine_lab(planted_mask_roi_pool, points=3)
    assert not result.passed and result.points == 0
    assert result.message.startswith("FAIL  model_nine_lab (0/3 points): wrong result on case 'one box of 40 px")
    assert "values differ (within atol=1e-09" in result.message
    # the package's pooler (here: the working model's, behind the lab's signature) is off limits
    result = checks.check_model_nine_lab(mask_roi_pool_of(ml.load_course_model()), points=3)
    assert result.points == 0 and "MultiScaleRoIAlign" in result.message, result.message


def test_the_planted_pooling_is_the_lab_models(shipped, held):
    image = held[0][0]
    buggy = lab_model("nine")
    with torch.no_grad():
        _, inter = shipped([image], return_intermediates=True)
    features = [inter["features"][k] for k in "0123"]
    boxes, size = inter["detections"][0]["boxes"], tuple(inter["image_sizes"][0])
    assert len(boxes) >= 3
    with torch.no_grad():
        by_model = mask_roi_pool_of(buggy)(features, boxes, size)
        right = mask_roi_pool_of(shipped)(features, boxes, size)
    assert torch.allclose(planted_mask_roi_pool(features, boxes, size), by_model, atol=1e-5)
    assert (by_model - right).abs().max() > 0.5          # the planted bug changes the pooled features


def test_eleven_fix_passes_the_solution_and_fails_the_planted_bug(fixes, capsys):
    assert checks.check_model_eleven_lab(fixes["eleven"], points=3).points == 3
    result = checks.check_model_eleven_lab(_planted_candidates, points=3)
    assert not result.passed and result.points == 0
    assert result.message.startswith("FAIL  model_eleven_lab (0/3 points): wrong result on case 'one RoI, 4 classes")
    assert "item 2: 3 of 3 values differ (exactly); first difference at [0]: expected 1, got 0" in result.message


def test_a_fix_that_keeps_the_background_column_fails(capsys):
    def with_background(boxes, scores):
        labels = torch.arange(scores.shape[1]).repeat(scores.shape[0])
        return boxes.reshape(-1, 4), scores.reshape(-1), labels

    result = checks.check_model_eleven_lab(with_background, points=3)
    assert result.points == 0 and "item 0: wrong shape: expected (3, 4), got (4, 4)" in result.message, result.message


# ------------------------------------------------------------------------------------------------
# The symptoms, and the recovery
# ------------------------------------------------------------------------------------------------
def test_lab_nine_keeps_the_boxes_and_loses_the_masks(shipped, held):
    base, buggy = evaluate(shipped, held), evaluate(lab_model("nine"), held)
    assert base["bbox"]["AP"] > 0.75 and base["segm"]["AP"] > 0.75
    assert buggy["bbox"]["AP"] == base["bbox"]["AP"]        # the box branch is untouched
    assert buggy["segm"]["AP"] < 0.05                       # measured 0.012 (the shipped model: 0.767)
    images = [held[i][0] for i in range(4)]
    with torch.no_grad():
        a, b = shipped(images), lab_model("nine")(images)
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
        assert (x["masks"] - y["masks"]).abs().max() > 0.5


def test_lab_eleven_keeps_the_boxes_and_names_the_class_below(shipped, held):
    base, buggy = evaluate(shipped, held), evaluate(lab_model("eleven"), held)
    assert buggy["bbox"]["AP"] < 0.1 and buggy["segm"]["AP"] < 0.1     # measured 0.048, 0.056 (shipped 0.779, 0.767)
    images = [held[i][0] for i in range(4)]
    with torch.no_grad():
        a, b = shipped(images), lab_model("eleven")(images)
    for x, y in zip(a, b):
        assert len(x["boxes"]) > 0 and torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])
        assert torch.equal(y["labels"], x["labels"] - 1)


@pytest.mark.parametrize("lab", ["nine", "eleven"])
def test_the_fix_restores_the_shipped_model(lab, fixes, shipped, held):
    fixed = lab_model(lab, fix=fixes[lab])
    images = [held[i][0] for i in range(8)]
    with torch.no_grad():
        a, b = shipped(images), fixed(images)
    for x, y in zip(a, b):
        # neither fix touches the box branch's numbers
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(x[k], y[k]), k
        # the shipped model pools with the fast floor's RoIAlign, the notebook's fix with the reference one:
        # round-off in the masks (measured 4e-7)
        assert (x["masks"] - y["masks"]).abs().max() < 1e-5
    fixed_ap = evaluate(fixed, held)
    base = evaluate(shipped, held)
    for kind in ("bbox", "segm"):
        assert abs(fixed_ap[kind]["AP"] - base[kind]["AP"]) < 1e-6


def test_lab_models_change_only_their_own_copy(shipped, held):
    lab_model("nine"), lab_model("eleven")
    fresh = ml.load_course_model()
    assert type(fresh.roi_heads) is type(shipped.roi_heads)
    assert fresh.roi_heads.mask_roi_pool.roi_align is not None
    with torch.no_grad():
        a, b = shipped([held[0][0]]), fresh([held[0][0]])
    assert torch.equal(a[0]["masks"], b[0]["masks"]) and torch.equal(a[0]["labels"], b[0]["labels"])


def test_lab_model_names_a_wrong_lab():
    with pytest.raises(ValueError, match=r"lab_model: name must be one of \['nine', 'eleven'\], got 'ten'"):
        lab_model("ten")


# ------------------------------------------------------------------------------------------------
# The course's grader: both parts from the answer cells alone
# ------------------------------------------------------------------------------------------------
def _grade(path: Path, source: Path):
    from mrcnn_lite.course.grade import grade_notebook

    report = grade_notebook(path, source=source)
    assert not [e for e in report["errors"] if "raised" in e or "crashed" in e], report["errors"]
    return {e["name"]: e for e in report["exercises"]}


def test_grader_scores_locating_and_fixing_separately(tmp_path):
    nb = nbformat.read(str(NB09), as_version=4)
    for c in nb.cells:
        if c.get("id") == "lab9-locate":
            c.source = c.source.replace('return "mask pooling"', 'return "mask head"')   # wrong stage
    path = tmp_path / NB09.name
    nbformat.write(nb, str(path))
    by_name = _grade(path, NB09)
    assert by_name["model_nine_locate_lab"]["points"] == 0 and by_name["model_nine_locate_lab"]["status"] == "FAIL"
    assert by_name["model_nine_lab"]["points"] == 3 and by_name["model_nine_lab"]["status"] == "PASS"

    student = nbformat.read(str(NB11), as_version=4)
    for c in student.cells:
        if c.cell_type == "code" and c.get("id") == "lab11-locate":
            c.source = strip_solutions(c.source)                   # not attempted
    path = tmp_path / NB11.name
    nbformat.write(student, str(path))
    by_name = _grade(path, NB11)
    assert by_name["model_eleven_locate_lab"]["status"] == "TODO" and by_name["model_eleven_locate_lab"]["points"] == 0
    assert by_name["model_eleven_lab"]["points"] == 3
