"""Notebook 16's graded experiments: their checkers, the grader on the notebook, the quick runs, the list.

Fast where it can be: the checkers run on the notebook's own solutions (taken from its answer cells), a
wrong change and a missing one; the grader scores the solution notebook and a student copy (answer cells
only, without ``--run-notebook``); each experiment's quick budget returns its result fields. Notebook 16 is
not in test_course.py's graded fixture: nbval runs it as a whole.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from mrcnn_lite.course import checks
from mrcnn_lite.course import experiments as E
from mrcnn_lite.course.assignments import BEGIN
from mrcnn_lite.experiments.variants import set_poolers
from mrcnn_lite.model.mask_head import project_masks_on_boxes
from mrcnn_lite.model.transform import paste_masks_in_image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "16_experiments.ipynb"
PY = sys.executable
NAMES = ("levels", "anchors", "mask_res", "misalign")


@pytest.fixture(scope="module")
def solutions():
    """name -> the notebook's solution functions (its answer cells executed)."""
    ns = {"torch": torch, "set_poolers": set_poolers, "project_masks_on_boxes": project_masks_on_boxes,
          "paste_masks_in_image": paste_masks_in_image}
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and BEGIN in cell.source:
            exec(compile(cell.source, str(NOTEBOOK), "exec"), ns)
    return ns


# One plausible wrong change per experiment: it runs, but the run would measure something else.
def wrong_level(model):
    return set_poolers(model, levels=["3"])                      # P5, not P4


def wrong_octave(base_sizes, per_octave):
    return tuple(tuple(s * 2 ** (k / max(per_octave - 1, 1)) for k in range(per_octave)) for s in base_sizes)


def wrong_round_trip(gt_masks, boxes, M):
    n, H, W = gt_masks.shape                                      # always 28: M ignored
    t = project_masks_on_boxes(gt_masks.float(), boxes.float(), torch.arange(n), 28)
    return paste_masks_in_image(t[:, None], boxes.float(), (H, W))[:, 0] >= 0.5


def wrong_quantise(rois, spatial_scale):
    out = rois.clone()                                            # torch.round sends halves to even
    out[:, 1:] = torch.round(rois[:, 1:] * spatial_scale) / spatial_scale
    return out


CHANGES = {"levels": ("one_level", wrong_level, "expected: list of 2"),
           "anchors": ("octave_sizes", wrong_octave, "expected: [[8, 10.0794, 12.6992]"),
           "mask_res": ("round_trip", wrong_round_trip, "values differ (exactly)"),
           "misalign": ("quantise", wrong_quantise, "corners exactly half a cell")}


def _checker(name):
    return getattr(checks, f"check_experiment_{name}")


@pytest.mark.parametrize("name", NAMES)
def test_change_check_passes_the_solution(name, solutions, capsys):
    r = _checker(name)(solutions[CHANGES[name][0]], points=2)
    assert r.passed and r.points == 2, r.message
    assert capsys.readouterr().out.startswith(f"PASS  {name}_change (2/2 points)")


@pytest.mark.parametrize("name", NAMES)
def test_change_check_fails_a_wrong_change_with_the_case(name, capsys):
    r = _checker(name)(CHANGES[name][1], points=2)
    out = capsys.readouterr().out
    assert not r.passed and r.points == 0 and r.implemented
    assert out.startswith(f"FAIL  {name}_change (0/2 points)") and "input:" in out and "got:" in out, out
    assert CHANGES[name][2] in out, out


def test_levels_check_names_the_level_each_roi_came_from(capsys):
    checks.check_experiment_levels(wrong_level, points=2)
    out = capsys.readouterr().out
    assert "pooled-from level" in out and "expected 2, got 3" in out, out


@pytest.mark.parametrize("name", NAMES)
def test_change_check_reports_not_implemented(name, capsys):
    def todo(*args):
        raise NotImplementedError

    r = _checker(name)(todo, points=2)
    assert not r.passed and not r.implemented and r.status == "TODO"
    assert capsys.readouterr().out.startswith(f"TODO  {name}_change (0/2 points): not implemented yet")


def test_misalign_check_refuses_the_package_quantiser(capsys):
    from mrcnn_lite.experiments import variants as V

    r = checks.check_experiment_misalign(lambda rois, s: V._quantised(rois, s), points=2)
    assert not r.passed and "_quantised" in r.message, r.message


@pytest.mark.parametrize("name", NAMES)
def test_prediction_scores_making_it_not_being_right(name, solutions, capsys):
    check = getattr(checks, f"check_experiment_{name}_prediction")
    for choice in E.EXPERIMENTS[name].choices:          # every choice earns the point, whatever the run shows
        r = check(lambda c=choice: "  " + c.upper() + " ", points=1)
        assert r.passed and r.points == 1, r.message
    r = check(lambda: "it depends", points=1)
    assert not r.passed and r.points == 0
    assert "must be one of" in r.message and repr(E.EXPERIMENTS[name].choices[0]) in r.message, r.message
    assert not check(lambda: 2, points=1).passed

    def todo():
        raise NotImplementedError

    assert check(todo, points=1).status == "TODO"
    assert solutions[f"predict_{name}"]() in E.EXPERIMENTS[name].choices


# ------------------------------------------------------------------------------------------------ the list
def test_course_list_shows_the_experiments():
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "list", "--json", str(NOTEBOOK)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    want = []
    for name in NAMES:
        want += [(f"{name}_prediction", "experiment", 1.0, "auto"), (f"{name}_change", "experiment", 2.0, "auto"),
                 (f"{name}_explanation", "experiment", 3.0, "hand")]
    assert [(i["name"], i["kind"], i["points"], i["graded"]) for i in items] == want
    assert all(i["notebook"] == NOTEBOOK.name for i in items)


def test_explanations_are_manually_graded_nbgrader_cells():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    hand = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("<!-- answer:")]
    assert len(hand) == 4
    for cell in hand:
        meta = cell.metadata["nbgrader"]
        assert meta["grade"] and meta["solution"] and meta["points"] == 3, meta


# ------------------------------------------------------------------------------------------------ the grader
def _grade(path: Path, out_json: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("MRCNN_LITE_FULL", None)
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "grade", str(path), "--source", str(NOTEBOOK),
                           "--json", str(out_json)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out_json.read_text())


@pytest.mark.slow
def test_grader_gives_the_solution_full_marks_and_the_student_copy_zero(tmp_path):
    report = _grade(NOTEBOOK, tmp_path / "solution.json")
    assert report["errors"] == [], report["errors"]
    assert report["max_score"] == 12 and report["score"] == 12, report["exercises"]
    assert all(e["status"] == "PASS" and e["kind"] == "experiment" for e in report["exercises"])
    assert [h["name"] for h in report["by_hand"]] == [f"{n}_explanation" for n in NAMES]

    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "make-assignments", "--out", str(tmp_path / "student"),
                           str(NOTEBOOK)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    student = tmp_path / "student" / NOTEBOOK.name
    assert "### BEGIN SOLUTION" not in student.read_text()
    cells = nbformat.read(str(student), as_version=4).cells
    for name in NAMES:   # the prompt stays; the answer cell is left to the learner
        prompt = next(i for i, c in enumerate(cells) if c.source.startswith(f"**Your explanation: {name}**"))
        assert cells[prompt + 1].source == f"<!-- answer: {name}_explanation, 3 points, experiment -->\n\nYOUR ANSWER HERE"
    report = _grade(student, tmp_path / "student.json")
    assert report["score"] == 0 and report["max_score"] == 12
    assert all(e["status"] == "TODO" for e in report["exercises"]), report["exercises"]


# ------------------------------------------------------------------------------------------------ the runs
FIELDS = {"experiment", "title", "conditions", "seeds", "seed_meaning", "budget", "budget_name", "metrics",
          "seconds", "setup"}


@pytest.mark.parametrize("name", NAMES)
def test_quick_budget_returns_the_result_fields(name, solutions):
    change = solutions[CHANGES[name][0]]
    result = E.run(name, change, seeds=[0], budget="quick")
    assert FIELDS <= set(result), set(result)
    assert result["budget"] == E.EXPERIMENTS[name].budgets["quick"] and result["seeds"] == [0]
    assert len(result["conditions"]) >= 2 and result["conditions"] == list(result["metrics"])
    for cond, metrics in result["metrics"].items():
        assert set(E.TABLE_METRICS[name]) <= set(metrics), (cond, metrics)
        for values in metrics.values():
            assert len(values) == 1 and all(v == v for v in values)      # one value per seed, no NaN
    assert E.answer_of(name, result) in E.EXPERIMENTS[name].choices
    assert result["change"] == CHANGES[name][0]


def test_quick_runs_measure_the_conditions_they_name(solutions):
    anchors = E.run("anchors", solutions["octave_sizes"], seeds=[0], budget="quick")
    m = anchors["metrics"]
    assert m["1 size x ratio 1"]["anchors_per_image"][0] * 3 == m["1 size x 3 ratios (course)"]["anchors_per_image"][0]
    assert m["3 sizes/octave x 3 ratios"]["coverage_all"][0] >= m["3 sizes/octave x ratio 1"]["coverage_all"][0]
    misalign = E.run("misalign", solutions["quantise"], seeds=[0], budget="quick")
    ap = {c: v["mask_AP75"][0] for c, v in misalign["metrics"].items()}
    assert ap["RoIAlign (trained with)"] > ap["RoIPool (quantised box and bins)"], ap


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name: unknown experiment"):
        E.run("nope")
    with pytest.raises(ValueError, match="budget"):
        E.run("anchors", budget="huge")
    with pytest.raises(ValueError, match="seeds"):
        E.run("anchors", seeds=[])


def test_experiment_command_writes_the_reference_files(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "experiment", "anchors", "--seeds", "0,1", "--budget",
                           "quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "anchors.json").read_text())
    assert data["seeds"] == [0, 1] and data["budget_name"] == "quick"
    assert data["command"].startswith("python -m mrcnn_lite.course experiment anchors --seeds 0,1")
    assert "CPUs" in data["machine"]
    assert all(len(v) == 2 for m in data["metrics"].values() for v in m.values())
    assert "| 3 sizes/octave x ratio 1 |" in (tmp_path / "anchors.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_shipped_reference_results_have_two_seeds_and_the_command(name):
    data = E.reference_results(name)
    assert data is not None, f"benchmarks/experiments/{name}.json is missing"
    assert data["budget_name"] == "full" and len(data["seeds"]) >= 2
    assert data["command"].startswith(f"python -m mrcnn_lite.course experiment {name}") and data["machine"]
    assert (E.REFERENCE_DIR / f"{name}.md").is_file()


def test_committed_notebook_carries_nbgrader_metadata_and_stores_full_marks():
    """As test_course.py checks notebooks 01-12: the metadata is what add-nbgrader-metadata writes, and every
    check cell's stored output (compared by nbval) says PASS with full points."""
    from mrcnn_lite.course.assignments import add_nbgrader_metadata, split_check_cells
    from mrcnn_lite.course.grade import declared_exercises

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    marked = add_nbgrader_metadata(split_check_cells(nbformat.from_dict(nb)))
    assert [c.source for c in marked.cells] == [c.source for c in nb.cells], "run add-nbgrader-metadata"
    assert [c.metadata.get("nbgrader") for c in marked.cells] == [c.metadata.get("nbgrader") for c in nb.cells]
    graded = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    exercises = declared_exercises(nb)
    assert len(graded) == len(exercises) == 8
    for cell, ex in zip(graded, exercises):
        assert cell.source.startswith("# NBVAL_CHECK_OUTPUT"), ex["name"]
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        value = [o["data"]["text/plain"] for o in cell.outputs if o.output_type == "execute_result"]
        assert f"PASS  {ex['name']} ({ex['max_points']:g}/{ex['max_points']:g} points)" in text, text
        assert value == [f"{ex['max_points']:g}"], value
