"""The graded items of the course, read from the notebooks: one source for the list, the grader and nbgrader.

Two kinds of cell are graded:

* a **check cell** (graded automatically): a code cell with one call ``checks.check_<name>(answer, ...,
  points=P)``. The item's name is the call's ``name=`` or the checker's default name; its points are the
  call's ``points=`` or the checker's default; its kind comes from the checker (``check_..._lab``: a
  debugging lab; ``check_prediction``: a prediction; ``check_experiment...``: an experiment's automatic
  check; every other checker: a build exercise);
* an **answer cell graded by hand**: a markdown cell whose first line is
  ``<!-- answer: <name>, <P> points, <kind> -->`` (invisible once rendered), e.g. an experiment's written
  explanation or where a lab's bug was. nbgrader calls it a "manually graded answer".

``python -m mrcnn_lite.course list`` prints them; the grader scores the automatic ones, and
``add-nbgrader-metadata`` writes nbgrader's cell metadata from the same reading.
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import nbformat

KINDS = ("build", "lab", "experiment", "prediction")
HAND_MARK = re.compile(r"^\s*<!--\s*answer:\s*(\w+)\s*,\s*([0-9.]+)\s*points?\s*(?:,\s*(\w+)\s*)?-->")


@dataclass
class GradedItem:
    """One graded item of one notebook."""

    notebook: str                 # the notebook's file name
    name: str                     # the item's id (nbgrader's grade_id)
    kind: str                     # build | lab | experiment | prediction
    points: float
    graded: str                   # "auto" (a check cell) or "hand" (a manually graded answer)
    cell: int                     # index of the check cell / answer cell
    checker: Optional[str] = None     # "check_box_iou" (automatic items)
    args: List[str] = field(default_factory=list)    # the call's positional arguments, as source
    kwargs: Dict[str, Any] = field(default_factory=dict)   # its keyword arguments (literals only)

    def to_dict(self, full: bool = False) -> Dict[str, Any]:
        d = asdict(self)
        if not full:
            d = {k: d[k] for k in ("notebook", "name", "kind", "points", "graded")}
        return d


def kind_of_checker(checker: str) -> str:
    if checker == "check_prediction":
        return "prediction"
    if checker.startswith("check_experiment"):
        return "experiment"
    if checker.endswith("_lab"):
        return "lab"
    return "build"


def _check_calls(source: str) -> List[ast.Call]:
    """The ``checks.check_<name>(...)`` calls of a code cell (``# ...`` comments and magics ignored)."""
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name.startswith("check_"):
                calls.append(node)
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _auto_item(notebook: str, index: int, call: ast.Call, source: str) -> Optional[GradedItem]:
    from . import checks

    f = call.func
    checker = f.attr if isinstance(f, ast.Attribute) else f.id
    fn = getattr(checks, checker, None)
    if fn is None:
        return None
    params = inspect.signature(fn).parameters
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            continue
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ValueError(f"{notebook}, cell {index}: {checker}'s {kw.arg}= must be a literal, "
                             f"got {ast.get_source_segment(source, kw.value)!r}") from None
    name = kwargs.get("name", params["name"].default if "name" in params else checker[len("check_"):])
    points = kwargs.get("points", params["points"].default if "points" in params else 1)
    args = [ast.get_source_segment(source, a) for a in call.args]
    return GradedItem(notebook, name, kind_of_checker(checker), float(points), "auto", index, checker, args, kwargs)


def items_of(nb: "nbformat.NotebookNode", notebook: str = "") -> List[GradedItem]:
    """Every graded item of ``nb``, in cell order."""
    items = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            source = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
            for call in _check_calls(cell.source):
                item = _auto_item(notebook, index, call, source)
                if item is not None:
                    items.append(item)
        elif cell.cell_type == "markdown":
            m = HAND_MARK.match(cell.source)
            nbg = cell.metadata.get("nbgrader", {})
            if m:
                kind = m.group(3) or "experiment"
                if kind not in KINDS:
                    raise ValueError(f"{notebook}, cell {index}: kind {kind!r} is not one of {KINDS}")
                items.append(GradedItem(notebook, m.group(1), kind, float(m.group(2)), "hand", index))
            elif nbg.get("grade") and nbg.get("solution"):   # marked in nbgrader's toolbar, without our line
                items.append(GradedItem(notebook, nbg["grade_id"], "experiment", float(nbg.get("points", 0)),
                                        "hand", index))
    return items


def read_items(path: Path) -> List[GradedItem]:
    return items_of(nbformat.read(str(path), as_version=4), Path(path).name)


def course_notebooks_dir() -> Path:
    """``./notebooks`` when it exists (a teacher's course folder), else the one beside the package."""
    here = Path("notebooks")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "notebooks"


def format_items(items: List[GradedItem]) -> str:
    """A plain-text table, one line per item, with totals."""
    head = ("notebook", "item", "kind", "points", "graded")
    rows = [(i.notebook, i.name, i.kind, f"{i.points:g}", "automatically" if i.graded == "auto" else "by hand")
            for i in items]
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(head)]
    line = lambda r: "  ".join(f"{v:<{w}}" if k != 3 else f"{v:>{w}}" for k, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
    auto = sum(i.points for i in items if i.graded == "auto")
    hand = sum(i.points for i in items if i.graded == "hand")
    by_kind = ", ".join(f"{sum(i.kind == k for i in items)} {k}" for k in KINDS)
    out.append(f"{len(items)} items ({by_kind}): {auto:g} points graded automatically, {hand:g} by hand")
    return "\n".join(out)


def markdown_table(items: List[GradedItem]) -> str:
    """The teachers' table: one row per notebook, the items of each kind with their points (``(by hand)`` for
    the answers graded by hand), and the totals. docs/teachers.md holds this table as printed."""
    notebooks = list(dict.fromkeys(i.notebook for i in items))
    lines = ["| notebook | " + " | ".join(f"{k} (points)" for k in KINDS) + " |",
             "|---|" + "---|" * len(KINDS)]
    for nb in notebooks:
        cells = []
        for kind in KINDS:
            cells.append(", ".join(f"`{i.name}` {i.points:g}" + (" (by hand)" if i.graded == "hand" else "")
                                   for i in items if i.notebook == nb and i.kind == kind))
        lines.append(f"| {nb[:2]} | " + " | ".join(cells) + " |")
    auto = sum(i.points for i in items if i.graded == "auto")
    hand = sum(i.points for i in items if i.graded == "hand")
    by_kind = ", ".join(f"{sum(i.kind == k for i in items)} {k}" for k in KINDS)
    lines += ["", f"{len(items)} items in {len(notebooks)} notebooks ({by_kind}): {auto:g} points graded "
                  f"automatically, {hand:g} by hand."]
    return "\n".join(lines)

