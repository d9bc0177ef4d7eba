"""The build exercises state a contract; how to write them is the learner's, with optional hints.

Every build exercise found by the course's list of graded items has a text cell (the markdown cell with
"**Exercise" before its check cell) that holds a "**Contract.**" paragraph naming the inputs and the output,
and no API hint (a backticked call such as ``F.interpolate(`` or the names of the calls that solve it, such as
``topk`` or ``searchsorted``). Those moved into the markdown cell right after it, a hint marked optional and
collapsed in JupyterLab, which the grader does not read and the student copies keep.
"""
import copy
import re
from pathlib import Path

import nbformat
import pytest

from mrcnn_lite.course.assignments import make_student_notebook
from mrcnn_lite.course.items import items_of

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HINT = "**Hint (optional).**"

# A backticked call of a library function or method: `F.interpolate(`, `torch.randperm(`, `np.searchsorted(`.
LIBRARY_CALL = re.compile(r"`[^`]*\b(?:F|torch|np|numpy|nn|ops|ml|math|Tensor|BoxCoder)\.[\w.]*\s*\(")
# The calls that solve an exercise, named in backticks: they belong in its hint.
SOLVING_NAMES = ("interpolate", "topk", "searchsorted", "split", "meshgrid", "randperm", "repeat", "log_softmax",
                 "log1p", "clip_grad_norm_", "maximum.accumulate", "decode_single", "F.pad", "torch.stack",
                 "torch.sort")


def api_hints(text):
    """The backticked spans of ``text`` that hand over an API call."""
    spans = re.findall(r"`[^`\n]+`", text)
    return [s for s in spans if LIBRARY_CALL.search(s) or any(n in s for n in SOLVING_NAMES)]


def build_exercises():
    """(notebook, item, index of its exercise text cell, the notebook) for every build exercise."""
    out = []
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        items = items_of(nb, path.name)
        checks = [i.cell for i in items if i.graded == "auto"]
        for item in items:
            if item.kind != "build":
                continue
            before = max([c for c in checks if c < item.cell], default=-1)
            found = [j for j in range(item.cell - 1, before, -1)
                     if nb.cells[j].cell_type == "markdown" and "**Exercise" in nb.cells[j].source]
            out.append((path.name, item.name, found[0] if found else None, nb))
    return out


EXERCISES = build_exercises()


def test_the_course_has_build_exercises():
    assert len(EXERCISES) >= 20, [e[:2] for e in EXERCISES]


def test_api_hint_detector_flags_the_old_step_by_step_texts():
    # Texts the exercises used to hold: each must be caught, or the test below proves nothing.
    assert api_hints('upsampling to `L[i]`\'s size (`F.interpolate(..., size=..., mode="nearest")`)')
    assert api_hints("best first (`Tensor.split`, then `topk` along dim 1)")
    assert api_hints('reaches it (`np.searchsorted(recall, points, side="left")`)')
    assert api_hints('draw at random (with `torch.randperm(..., generator=generator)`)')
    assert not api_hints("Output: an `(N, M)` tensor; `self.downsample(x)` when the shape changes; `my_box_iou`")


@pytest.mark.parametrize("notebook,item,cell,nb", EXERCISES, ids=[f"{e[0][:2]}-{e[1]}" for e in EXERCISES])
def test_exercise_states_a_contract_without_api_hints(notebook, item, cell, nb):
    assert cell is not None, f"{notebook} {item}: no '**Exercise' markdown cell before its check cell"
    source = nb.cells[cell].source
    text = source[source.index("**Exercise"):]
    contract = [l for l in text.splitlines() if l.startswith("**Contract.**")]
    assert contract, f"{notebook} {item}: the exercise text has no line starting '**Contract.**'"
    body = text[text.index("**Contract.**"):]
    assert re.search(r"\bInputs?\b", body) and re.search(r"\bOutput\b", body), \
        f"{notebook} {item}: the contract must name the inputs and the output"
    assert "check" in body, f"{notebook} {item}: the contract must say what the check tries"
    assert not api_hints(text), f"{notebook} {item}: API hints in the exercise text: {api_hints(text)}"


@pytest.mark.parametrize("notebook,item,cell,nb", EXERCISES, ids=[f"{e[0][:2]}-{e[1]}" for e in EXERCISES])
def test_exercise_has_an_optional_collapsed_hint(notebook, item, cell, nb):
    hint = nb.cells[cell + 1]
    assert hint.cell_type == "markdown" and hint.source.startswith(HINT), \
        f"{notebook} {item}: the cell after the exercise text must start with {HINT!r}"
    assert hint.metadata.get("jupyter", {}).get("source_hidden") is True, f"{notebook} {item}: hint not collapsed"
    assert "nbgrader" not in hint.metadata, f"{notebook} {item}: a hint is not graded"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name[:2] for p in NOTEBOOKS])
def test_hints_are_optional_and_the_grader_does_not_need_them(path):
    nb = nbformat.read(str(path), as_version=4)
    hints = [c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("**Hint")]
    for c in hints:
        assert c.source.startswith(HINT), f"{path.name}: a hint cell not marked optional: {c.source[:60]!r}"
    # The graded items are the same with every hint cell removed.
    without = copy.deepcopy(nb)
    without.cells = [c for c in nb.cells if c not in hints]
    key = lambda items: [(i.name, i.kind, i.points, i.graded) for i in items]  # noqa: E731
    assert key(items_of(without, path.name)) == key(items_of(nb, path.name))


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] in ("01", "10")], ids=lambda p: p.name[:2])
def test_student_copies_keep_the_collapsed_hints(path):
    nb = nbformat.read(str(path), as_version=4)
    student = make_student_notebook(nb)
    hints = [c for c in student.cells if c.cell_type == "markdown" and c.source.startswith(HINT)]
    assert len(hints) == sum(c.cell_type == "markdown" and c.source.startswith(HINT) for c in nb.cells) > 0
    assert all(c.metadata.get("jupyter", {}).get("source_hidden") is True for c in hints)
