"""Student versions of the course notebooks.

An exercise cell holds the solution between two marker lines::

    def my_box_iou(boxes1, boxes2):
        ### BEGIN SOLUTION
        ...the teacher's code...
        ### END SOLUTION

``make_student_notebook`` replaces everything from ``### BEGIN SOLUTION`` to ``### END SOLUTION``
(markers included) with ``# YOUR CODE HERE`` and ``raise NotImplementedError``, indented like the
marker, and clears all outputs, execution counts and per-cell metadata that could echo the
solution. The ``# NBVAL_CHECK_OUTPUT`` lines are dropped too: they only matter for the teacher's
copy, whose stored outputs are what nbval compares.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List

import nbformat

from .items import HAND_MARK, items_of

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
NBVAL_MARK = "# NBVAL_CHECK_OUTPUT"
# Cell metadata worth keeping in a student copy (everything else is dropped).
KEEP_CELL_METADATA = ("tags", "editable", "deletable", "nbgrader", "jupyter")   # "jupyter": a hint cell stays collapsed


class SolutionMarkerError(ValueError):
    """A ``### BEGIN SOLUTION`` without its ``### END SOLUTION`` (or the other way round)."""


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace every solution block in ``source`` by ``# YOUR CODE HERE`` + ``raise NotImplementedError``."""
    out: List[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise SolutionMarkerError(f"{where}, line {number}: {BEGIN} inside another solution block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f"{indent}raise NotImplementedError")
        elif stripped.startswith(END):
            if not inside:
                raise SolutionMarkerError(f"{where}, line {number}: {END} without a {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SolutionMarkerError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def solution_lines(source: str) -> List[str]:
    """The lines between the markers (used by tests to make sure none of them leaks)."""
    lines, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s.startswith(BEGIN):
            inside = True
        elif s.startswith(END):
            inside = False
        elif inside:
            lines.append(line)
    return lines


def make_student_notebook(nb: "nbformat.NotebookNode") -> "nbformat.NotebookNode":
    """A student copy of a notebook (a new object; ``nb`` is not changed)."""
    student = nbformat.from_dict(nb)  # deep copy
    for i, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            source = strip_solutions(cell.source, where=f"cell {i}")
            source = "\n".join(l for l in source.splitlines() if l.strip() != NBVAL_MARK)
            cell.source = source
            cell.outputs = []
            cell.execution_count = None
        elif BEGIN in cell.source or END in cell.source:
            raise SolutionMarkerError(f"cell {i} is {cell.cell_type}, but solution markers belong in code cells")
        elif cell.cell_type == "markdown" and HAND_MARK.match(cell.source):
            # A written answer graded by hand: the student copy keeps the marker line (the item's name and
            # points) and leaves the answer to the learner, as nbgrader's "YOUR ANSWER HERE".
            cell.source = cell.source.splitlines()[0] + "\n\nYOUR ANSWER HERE"
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
    # Notebook metadata: keep only what Jupyter needs to pick a kernel.
    student.metadata = {k: v for k, v in student.metadata.items() if k in ("kernelspec", "language_info")}
    return student


def count_exercises(nb: "nbformat.NotebookNode") -> int:
    return sum(cell.source.count(BEGIN) for cell in nb.cells if cell.cell_type == "code")


def make_assignments(notebooks: Iterable[Path], out_dir: Path) -> List[Path]:
    """Write a student copy of each notebook into ``out_dir`` (same file names). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        path = Path(path)
        nb = nbformat.read(str(path), as_version=4)
        student = make_student_notebook(nb)
        target = out_dir / path.name
        if target.resolve() == path.resolve():
            raise ValueError(f"refusing to overwrite the solution notebook {path}: choose another --out")
        nbformat.write(student, str(target))
        written.append(target)
    return written


def default_notebooks(root: Path = Path("notebooks")) -> List[Path]:
    """All ``NN_*.ipynb`` notebooks of the course, in order."""
    return sorted(p for p in Path(root).glob("*.ipynb") if re.match(r"\d\d_", p.name))


# ----------------------------------------------------------------------------------------------
# nbgrader: the same notebooks, graded by a teacher's nbgrader course
# ----------------------------------------------------------------------------------------------
_CHECK_CALL = re.compile(r"\bchecks\.check_(\w+)\s*\(")
_DEFINED = re.compile(r"^(?:def|class)\s+(\w+)", re.MULTILINE)


def split_check_cells(nb: "nbformat.NotebookNode") -> "nbformat.NotebookNode":
    """Move what follows the check call of a check cell (e.g. the ``or_reference`` fallback) into a cell of
    its own, so that the check call is the cell's last statement: its value, the points, is the cell's
    result, which is what nbgrader reads as the score. Changes ``nb`` in place and returns it."""
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code" or not _CHECK_CALL.search(cell.source):
            continue
        lines = cell.source.splitlines()
        last = max(i for i, l in enumerate(lines) if _CHECK_CALL.search(l.split("#", 1)[0]))
        while last + 1 < len(lines) and (lines[last].rstrip().endswith((",", "("))
                                         or lines[last + 1].startswith((" ", ")"))):
            last += 1                                         # a call continued on the next lines
        rest = "\n".join(lines[last + 1:]).strip("\n")
        if rest.strip():
            cell.source = "\n".join(lines[: last + 1])
            cells.append(nbformat.v4.new_code_cell(rest))
    nb.cells = cells
    return nb


def add_nbgrader_metadata(nb: "nbformat.NotebookNode") -> "nbformat.NotebookNode":
    """Mark the cells the way nbgrader's "Create Assignment" toolbar does (schema 3), in place, from the
    graded items (:mod:`.items`), which the course's grader reads too:

    * a code cell with a solution block is an *autograded answer* (``solution``), id ``<name>_answer``
      after the function or class it defines;
    * a cell with a ``checks.check_<name>(..., points=P)`` call is an *autograder test* (``grade``, locked,
      ``P`` points, id the exercise's name, as the course's grader reports it);
    * a markdown cell opening with ``<!-- answer: <name>, <P> points, <kind> -->`` is a *manually graded
      answer* (``grade`` and ``solution``, ``P`` points, id ``<name>``);
    * every other cell carries no nbgrader metadata.
    """
    from .grade import declared_exercises

    hand = {i.cell: i for i in items_of(nb) if i.graded == "hand"}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and index in hand:
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": hand[index].name, "locked": False,
                                         "points": hand[index].points, "schema_version": 3, "solution": True,
                                         "task": False}
            continue
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            before = cell.source[: cell.source.index(BEGIN)]
            names = _DEFINED.findall(before)
            if not names:
                raise SolutionMarkerError(f"a solution block outside a function or class: {cell.source[:60]!r}")
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": f"{names[-1]}_answer", "locked": False,
                                         "schema_version": 3, "solution": True, "task": False}
        elif _CHECK_CALL.search(cell.source):
            found = declared_exercises(nbformat.v4.new_notebook(cells=[cell]))
            if len(found) != 1:
                raise ValueError(f"a check cell must call exactly one checker, found {len(found)}: {cell.source[:80]!r}")
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": found[0]["name"], "locked": True,
                                         "points": found[0]["max_points"], "schema_version": 3, "solution": False,
                                         "task": False}
    return nb
