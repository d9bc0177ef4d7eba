"""The autograder on small synthetic notebooks: fair scores, and no points for cheating.

A four-item course notebook is built here (box IoU, box encoding, NMS, one prediction, and one written
answer graded by hand); submissions are its student copy with answer cells filled in, honestly or not.
Each grading starts one fresh process for the answers (a few seconds), so the submissions pack several
cases each. The real notebooks are graded end to end in test_course.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import nbgrader_course_dir

import mrcnn_lite as ml
from mrcnn_lite.course import checks
from mrcnn_lite.course.assignments import add_nbgrader_metadata, make_student_notebook, split_check_cells
from mrcnn_lite.course.grade import format_table, grade_notebook
from mrcnn_lite.course.items import items_of
from mrcnn_lite.model import backbone as B

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NB = "03_tiny_course.ipynb"

BOX_IOU = '''def my_box_iou(boxes1, boxes2):
    """boxes1 (N, 4), boxes2 (M, 4) -> (N, M)."""
    ### BEGIN SOLUTION
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)
    ### END SOLUTION'''
ENCODE = '''def my_encode(targets, refs, weights=(1.0, 1.0, 1.0, 1.0)):
    """targets (N, 4), refs (N, 4) -> deltas (N, 4)."""
    ### BEGIN SOLUTION
    wx, wy, ww, wh = weights
    rw, rh = refs[:, 2] - refs[:, 0], refs[:, 3] - refs[:, 1]
    tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    return torch.stack([wx * (targets[:, 0] + 0.5 * tw - refs[:, 0] - 0.5 * rw) / rw,
                        wy * (targets[:, 1] + 0.5 * th - refs[:, 1] - 0.5 * rh) / rh,
                        ww * torch.log(tw / rw), wh * torch.log(th / rh)], dim=1)
    ### END SOLUTION'''
NMS = '''def my_nms(boxes, scores, iou_threshold):
    """boxes (N, 4), scores (N,) -> kept indices (K,)."""
    ### BEGIN SOLUTION
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while len(order) > 0:
        keep.append(int(order[0]))
        ious = my_box_iou(boxes[order[0]][None], boxes[order[1:]])[0]
        order = order[1:][ious.double() <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64)
    ### END SOLUTION'''
PREDICT = '''def predict_more_or_fewer():
    """Return "more" or "fewer"."""
    ### BEGIN SOLUTION
    return "more"
    ### END SOLUTION'''


def course_notebook() -> nbformat.NotebookNode:
    code, md = nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("import math\nimport torch\nimport torchvision\nimport mrcnn_lite as ml\nfrom mrcnn_lite.course import checks"),
        code(BOX_IOU),
        code("checks.check_box_iou(my_box_iou, points=2)"),
        code("my_box_iou = checks.or_reference(my_box_iou, ml.ops.box_iou)"),
        code(ENCODE),
        code("checks.check_encode(my_encode, points=2)"),
        code(NMS),
        code("checks.check_nms(my_nms, points=3)"),
        code(PREDICT),
        code('kept_09, kept_05 = 5, 3\nanswer = "more" if kept_09 > kept_05 else "fewer"\n'
             'checks.check_prediction(predict_more_or_fewer, answer, points=1, name="more_or_fewer", '
             'choices=("more", "fewer"))'),
        md("<!-- answer: why_more, 2 points, prediction -->\nA higher threshold suppresses fewer boxes."),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return add_nbgrader_metadata(split_check_cells(nb))


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    folder = tmp_path_factory.mktemp("course")
    nbformat.write(course_notebook(), str(folder / NB))
    return folder


def submission(course: Path, out: Path, answers=None, extra_cells=(), edit=None) -> Path:
    """The student copy of the course notebook, with ``answers[grade_id]`` as answer cells, extra code
    cells inserted (``(after_index, source)``), and ``edit(nb)`` applied last."""
    nb = make_student_notebook(nbformat.read(str(course / NB), as_version=4))
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if answers and grade_id in answers:
            cell.source = answers[grade_id]
    for after, source in sorted(extra_cells, reverse=True):
        nb.cells.insert(after + 1, nbformat.v4.new_code_cell(source))
    if edit:
        edit(nb)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    return out


def by_name(report):
    return {e["name"]: e for e in report["exercises"]}


def test_items_and_nbgrader_metadata_of_the_course_notebook(course):
    nb = nbformat.read(str(course / NB), as_version=4)
    items = [(i.name, i.kind, i.points, i.graded) for i in items_of(nb, NB)]
    assert items == [("box_iou", "build", 2, "auto"), ("encode", "build", 2, "auto"), ("nms", "build", 3, "auto"),
                     ("more_or_fewer", "prediction", 1, "auto"), ("why_more", "prediction", 2, "hand")]
    hand = nb.cells[-1].metadata["nbgrader"]
    assert hand["grade"] and hand["solution"] and hand["points"] == 2 and hand["grade_id"] == "why_more"
    student = make_student_notebook(nb)
    assert student.cells[-1].source.endswith("YOUR ANSWER HERE") and "suppresses" not in student.cells[-1].source


# ------------------------------------------------------------------------------------------------
# Fair scores: the solution, the untouched student copy, partial work
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_solution_full_marks_student_copy_zero_partial_work_partial(course, tmp_path):
    full = grade_notebook(course / NB, source=course / NB, timeout=120)
    assert (full["score"], full["max_score"]) == (8, 8), format_table(full)
    assert [h["name"] for h in full["by_hand"]] == ["why_more"] and full["errors"] == []

    untouched = grade_notebook(submission(course, tmp_path / "untouched" / NB), source=course / NB, timeout=120)
    assert untouched["score"] == 0 and untouched["max_score"] == 8
    assert all(e["status"] == "TODO" for e in untouched["exercises"]), format_table(untouched)

    # IoU solved; NMS solved on top of it; the encoding's answer left as handed out; a wrong prediction.
    partial = grade_notebook(submission(course, tmp_path / "partial" / NB, answers={
        "my_box_iou_answer": BOX_IOU, "my_nms_answer": NMS,
        "predict_more_or_fewer_answer": 'def predict_more_or_fewer():\n    return "fewer"'}), source=course / NB,
        timeout=120)
    got = {n: (e["points"], e["status"]) for n, e in by_name(partial).items()}
    assert got == {"box_iou": (2, "PASS"), "encode": (0, "TODO"), "nms": (3, "PASS"), "more_or_fewer": (0, "FAIL")}
    assert partial["score"] == 5


# ------------------------------------------------------------------------------------------------
# Cheats earn nothing, and the report says why
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_answers_that_call_the_package_or_torchvision_earn_zero(course, tmp_path):
    path = submission(course, tmp_path / "calls" / NB, answers={
        # (a) the package's own function, called in the answer
        "my_box_iou_answer": "def my_box_iou(boxes1, boxes2):\n    return ml.ops.box_iou(boxes1, boxes2)",
        # (a) an alias, made without `ml` (the name the notebook imported), through importlib
        "my_encode_answer": "import importlib\n_ops = importlib.import_module('mrcnn_lite.ops')\n"
                            "def my_encode(targets, refs, weights=(1.0, 1.0, 1.0, 1.0)):\n"
                            "    return _ops.BoxCoder(weights).encode_single(targets, refs)",
        # (a) torchvision's NMS
        "my_nms_answer": "def my_nms(boxes, scores, iou_threshold):\n    import torchvision\n"
                         "    return torchvision.ops.nms(boxes, scores, iou_threshold)",
        # (a) the package run at the top level of an answer cell (a table of answers made in advance)
        "predict_more_or_fewer_answer": "_kept = ml.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)\n" + PREDICT})
    report = grade_notebook(path, source=course / NB, timeout=120)
    ex = by_name(report)
    assert report["score"] == 0, format_table(report)
    assert "mrcnn_lite.ops.nms.nms (at the top level of its cell)" in ex["more_or_fewer"]["message"], \
        ex["more_or_fewer"]["message"]
    assert "your code called mrcnn_lite.ops.boxes.box_iou" in ex["box_iou"]["message"], ex["box_iou"]["message"]
    assert "your code called mrcnn_lite.ops.boxes.BoxCoder.encode_single" in ex["encode"]["message"], \
        ex["encode"]["message"]
    # 0 points, and the report names torchvision: either its import was refused in the answers' process, or
    # (torchvision already loaded there) the watch caught the call into it.
    assert ex["nms"]["points"] == 0 and ("torchvision cannot be imported while answers are checked" in
                                         ex["nms"]["message"] or "your code called torchvision.ops" in
                                         ex["nms"]["message"]), ex["nms"]["message"]


@pytest.mark.slow
def test_replaced_checkers_and_edited_results_earn_zero(course, tmp_path):
    fake_pass = [nbformat.v4.new_output("stream", text="PASS  box_iou (2/2 points): matches\n"),
                 nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=3)]

    def edit(nb):
        for cell in nb.cells:
            if "checks.check_box_iou(" in cell.source:
                cell.outputs = fake_pass                                   # (c) stored outputs that say PASS
            if "checks.check_encode(" in cell.source:
                cell.source = cell.source.replace("points=2", "points=20")  # points come from the course's copy
            if "checks.check_nms(" in cell.source:
                cell.source = 'print("PASS  nms (3/3 points)")\n3'        # (b) the check cell rewritten

    path = submission(course, tmp_path / "tamper" / NB, answers={
        # (b) the checkers replaced from an answer cell, whose function is still not written
        "my_encode_answer": "from mrcnn_lite.course import checks as _c\n"
                            "_c.check_encode = lambda *a, **k: 2\n"
                            "_c.runner.judge = lambda spec, outcomes: _c.CheckResult(spec.name, True, spec.points, "
                            "spec.points, 'PASS')\n"
                            "_c.runner.compare = lambda *a, **k: None\n"
                            # the runner's helper patched to answer with the reference instead
                            "_c.runner._quiet = lambda call, f, inputs: call(_c.reference_encode, inputs)\n"
                            "def my_encode(targets, refs, weights=(1.0, 1.0, 1.0, 1.0)):\n"
                            "    return torch.zeros(len(targets), 4)",
    }, extra_cells=[
        (2, "checks.check_box_iou = lambda *a, **k: 2"),                   # (b) a checker replaced in a cell
        (10, "from mrcnn_lite.course.checks import RESULTS, CheckResult\n"  # (c) results edited in a later cell
             "RESULTS[:] = [CheckResult(n, True, p, p, 'PASS') for n, p in "
             "[('box_iou', 2), ('encode', 2), ('nms', 3), ('more_or_fewer', 1)]]"),
    ], edit=edit)
    report = grade_notebook(path, source=course / NB, timeout=120)
    ex = by_name(report)
    assert (report["score"], report["max_score"]) == (0, 8), format_table(report)
    assert ex["box_iou"]["status"] == "TODO"
    # The patched helper stays patched for the checks after it: NMS and the prediction (not written) fail.
    assert all(ex[n]["points"] == 0 and ex[n]["status"] in ("TODO", "FAIL") for n in ("nms", "more_or_fewer"))
    assert ex["encode"]["status"] == "FAIL" and "your code called mrcnn_lite.course.checks.nb01_boxes.reference_encode" \
        in ex["encode"]["message"], ex["encode"]["message"]


def test_in_a_notebook_the_checks_refuse_the_package_however_it_is_reached(capsys):
    """The same watch runs in a learner's own kernel (and so in nbgrader's test cells)."""
    import functools

    cheats = {
        "alias": ml.ops.box_iou,
        "partial": functools.partial(ml.ops.box_iou),
        "lambda": lambda a, b: ml.ops.box_iou(a, b),
        "through a helper": lambda a, b: (lambda x, y: ml.ops.boxes.box_iou(x, y))(a, b),
        "or_reference": checks.or_reference(lambda a, b: (_ for _ in ()).throw(NotImplementedError()),
                                            ml.ops.box_iou),
    }
    for label, fn in cheats.items():
        result = checks.check_box_iou(fn)
        assert result.points == 0 and "your code called mrcnn_lite.ops.boxes.box_iou" in result.message, label

    class Sub(B.Bottleneck):            # the package's block, subclassed
        pass

    result = checks.check_bottleneck(Sub)
    assert result.points == 0 and "subclass" in result.message, result.message


# ------------------------------------------------------------------------------------------------
# Misbehaving submissions still get a fair report
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_crash_keeps_the_points_earned_before_and_after_it(course, tmp_path):
    path = submission(course, tmp_path / "crash" / NB, answers={
        "my_box_iou_answer": BOX_IOU,
        "my_encode_answer": "import os\nos._exit(3)",                                   # kills the process
        "my_nms_answer": "def my_nms(boxes, scores, iou_threshold):\n"
                         "    import ctypes\n    return ctypes.string_at(0)",           # a segmentation fault
        "predict_more_or_fewer_answer": PREDICT})
    report = grade_notebook(path, source=course / NB, timeout=120)
    ex = by_name(report)
    assert {n: e["points"] for n, e in ex.items()} == {"box_iou": 2, "encode": 0, "nms": 0, "more_or_fewer": 1}, \
        format_table(report)
    assert "answer cell my_encode_answer exited with code 3" in report["errors"][0], report["errors"]
    assert "the check of nms crashed with SIGSEGV" in report["errors"][1], report["errors"]
    assert ex["nms"]["status"] == "MISSING" and "SIGSEGV" in ex["nms"]["message"]
    assert all("\n" not in e for e in report["errors"])


@pytest.mark.heavy
@pytest.mark.slow
def test_memory_blow_up_and_endless_loop(course, tmp_path):
    path = submission(course, tmp_path / "hog" / NB, answers={
        "my_box_iou_answer": BOX_IOU,
        "my_encode_answer": "def my_encode(targets, refs, weights=(1.0, 1.0, 1.0, 1.0)):\n"
                            "    while True:\n        pass",
        "my_nms_answer": "def my_nms(boxes, scores, iou_threshold):\n"
                         "    hog = [bytearray(2**28) for _ in range(64)]\n    return hog",
        "predict_more_or_fewer_answer": PREDICT})
    report = grade_notebook(path, source=course / NB, timeout=15, memory_gb=1.0)
    ex = by_name(report)
    assert {n: e["points"] for n, e in ex.items()} == {"box_iou": 2, "encode": 0, "nms": 0, "more_or_fewer": 1}, \
        format_table(report)
    assert ex["encode"]["status"] == "MISSING" and "ran over the 15-s limit" in ex["encode"]["message"]
    assert ex["nms"]["status"] == "FAIL" and "raised MemoryError" in ex["nms"]["message"], ex["nms"]["message"]
    assert report["errors"] == ["the check of encode ran over the 15-s limit: skipped, the rest was checked again"]


def test_not_a_notebook_gets_a_one_line_report(course, tmp_path):
    text = tmp_path / NB
    text.write_text("print('hello')\n")
    other = tmp_path / "json" / NB
    other.parent.mkdir()
    other.write_text(json.dumps({"hello": 1}))
    unknown = tmp_path / "99_not_in_the_course.ipynb"
    nbformat.write(course_notebook(), str(unknown))
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "grade", str(text), str(other), str(unknown),
                           "--source", str(course)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "Traceback" not in proc.stdout
    notes = [l for l in proc.stdout.splitlines() if l.strip().startswith("note:")]
    assert len(notes) == 3, proc.stdout
    assert "not a notebook" in notes[0] and "not a notebook" in notes[1], notes
    assert "not one of the course's notebooks" in notes[2], notes
    assert "score: 0 / 8" in proc.stdout           # the known notebook's items, none graded


def test_list_prints_every_graded_item(course):
    proc = subprocess.run([PY, "-m", "mrcnn_lite.course", "list", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert all(set(i) == {"notebook", "name", "kind", "points", "graded"} for i in items)
    assert all(i["kind"] in ("build", "lab", "experiment", "prediction") and i["graded"] in ("auto", "hand")
               for i in items)
    names = [(i["notebook"], i["name"]) for i in items]
    assert len(names) == len(set(names))
    # The same items the grader scores: as many as the notebooks have check calls and hand-graded answers.
    from mrcnn_lite.course.assignments import default_notebooks

    calls = sum(c.source.count("checks.check_") for p in default_notebooks(ROOT / "notebooks")
                for c in nbformat.read(str(p), as_version=4).cells if c.cell_type == "code")
    assert sum(i["graded"] == "auto" for i in items) == calls
    assert {"build", "lab", "prediction"} <= {i["kind"] for i in items}
    box_iou = next(i for i in items if i["name"] == "box_iou")
    assert box_iou == {"notebook": "01_boxes_iou_nms.ipynb", "name": "box_iou", "kind": "build", "points": 2.0,
                       "graded": "auto"}
    table = subprocess.run([PY, "-m", "mrcnn_lite.course", "list", str(course / NB)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120).stdout
    assert "why_more" in table and "by hand" in table and "8 points graded automatically, 2 by hand" in table, table


# ------------------------------------------------------------------------------------------------
# nbgrader: plain (test cells in the learner's kernel) and scored by the course's grader
# ------------------------------------------------------------------------------------------------
def _nbgrader_autograde(root: Path, course: Path, submissions, config_extra: str = ""):
    """A standard nbgrader course folder: the course notebook as assignment "a", one student per submission,
    ``generate_assignment`` + ``autograde``; returns ``{student: {grade_id: score}}``."""
    import os

    from nbgrader.api import Gradebook

    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    nbgrader = nbgrader_course_dir(root, "tiny", cell_timeout=120, timeout=600, config_extra=config_extra,
                                   PYTHONPATH=pythonpath)
    (root / "source" / "a").mkdir(parents=True)
    (root / "source" / "a" / NB).write_text((course / NB).read_text())

    nbgrader("generate_assignment", "a", "--force")
    released = nbformat.read(str(root / "release" / "a" / NB), as_version=4)
    assert "suppresses" not in nbformat.writes(released) and "### BEGIN SOLUTION" not in nbformat.writes(released)
    for student, make in submissions.items():
        nbgrader("db", "student", "add", student)
        make(root / "submitted" / student / "a" / NB)
    nbgrader("autograde", "a", "--force")
    scores = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for student in submissions:
            nb = gb.find_submission_notebook(NB[:-len(".ipynb")], "a", student)
            scores[student] = {g.name: g.score for g in nb.grades}
    return scores


def _tampering(course):
    """IoU solved; the encoding and NMS not; a cell that replaces the NMS checker before its test cell."""
    return lambda out: submission(course, out, answers={"my_box_iou_answer": BOX_IOU},
                                  extra_cells=[(6, "checks.check_nms = lambda *a, **k: 3")])


@pytest.mark.heavy
@pytest.mark.slow
def test_nbgrader_scored_by_the_course_grader_gives_its_points_and_ignores_tampering(course, tmp_path):
    pytest.importorskip("nbgrader")
    partial = lambda out: submission(course, out, answers={"my_box_iou_answer": BOX_IOU, "my_nms_answer": NMS})  # noqa: E731
    config = ("from mrcnn_lite.course.nbgrader_checks import autograde_preprocessors\n"
              "c.Autograde.autograde_preprocessors = autograde_preprocessors()\n"
              "c.CourseChecks.timeout = 120\n")
    scores = _nbgrader_autograde(tmp_path, course, {"honest": partial, "tamper": _tampering(course)}, config)
    ours = grade_notebook(partial(tmp_path / "ours" / NB), source=course / NB, timeout=120)
    assert {k: v for k, v in scores["honest"].items() if k != "why_more"} == \
        {e["name"]: e["points"] for e in ours["exercises"]} == {"box_iou": 2, "encode": 0, "nms": 3, "more_or_fewer": 0}
    assert scores["tamper"]["nms"] == 0 and scores["tamper"]["box_iou"] == 2
    assert "why_more" in scores["honest"]          # the hand-graded answer is a manually graded cell


@pytest.mark.heavy
@pytest.mark.slow
def test_plain_nbgrader_gives_the_same_points_but_runs_tests_in_the_learners_kernel(course, tmp_path):
    """Without the course's preprocessor, nbgrader's test cells run in the learner's kernel: the off-limits
    watch works there too, but a cell that replaces a checker before its test cell is not stopped (the
    documented limit of that path). That plain nbgrader gives honest work the course grader's points is
    tested on real notebooks in test_course.py."""
    pytest.importorskip("nbgrader")
    calls = lambda out: submission(course, out, answers={  # noqa: E731
        "my_box_iou_answer": "def my_box_iou(boxes1, boxes2):\n    return ml.ops.box_iou(boxes1, boxes2)"})
    scores = _nbgrader_autograde(tmp_path, course, {"calls": calls, "tamper": _tampering(course)})
    assert scores["calls"]["box_iou"] == 0
    assert scores["tamper"]["box_iou"] == 2 and scores["tamper"]["encode"] == 0
    assert scores["tamper"]["nms"] == 3            # the limit: see mrcnn_lite/course/nbgrader_checks.py
