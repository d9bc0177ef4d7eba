"""The autograder: run a notebook top to bottom and score its check cells.

The exercises a notebook offers are read from its source: every call ``check_<name>(..., points=P)``
in a code cell is one exercise worth ``P`` points (``name="..."`` overrides the name); a check graded
in parts (a debugging lab) can earn some of them. The notebook is
then executed with nbclient -- a time limit per cell, errors do not stop the run -- and one extra
cell at the end prints the :data:`mrcnn_lite.course.checks.RESULTS` of the kernel as JSON. An
exercise whose check never ran (an error before it, a timeout) scores 0 with a message saying so.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import nbformat

MARKER = "@@mrcnn_lite.course.results@@"
_CHECK_CALL = re.compile(r"\bcheck_(\w+)\s*\(([^\n]*)")
_POINTS = re.compile(r"\bpoints\s*=\s*([0-9.]+)")
_NAME = re.compile(r"\bname\s*=\s*[\"'](\w+)[\"']")
_DUMP_CELL = (
    "import json as _json\n"
    "from mrcnn_lite.course import checks as _checks\n"
    f"print({MARKER!r} + _json.dumps([r.to_dict() for r in _checks.RESULTS]))"
)


def declared_exercises(nb: "nbformat.NotebookNode") -> List[Dict[str, Any]]:
    """``[{"name", "max_points"}]`` for every ``check_<name>(...)`` call in the notebook, in order."""
    from . import checks

    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            code = line.split("#", 1)[0]
            m = _CHECK_CALL.search(code)
            if not m or not hasattr(checks, "check_" + m.group(1)):
                continue
            checker = getattr(checks, "check_" + m.group(1))
            args = m.group(2)
            name_m, points_m = _NAME.search(args), _POINTS.search(args)
            defaults = checker.__defaults__ or ()
            default_points = defaults[0] if defaults else 1
            found.append({"name": name_m.group(1) if name_m else m.group(1),
                          "max_points": float(points_m.group(1)) if points_m else float(default_points)})
    return found


def _results_from(cell) -> Optional[List[Dict[str, Any]]]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out.get("text", "").splitlines():
                if line.startswith(MARKER):
                    return json.loads(line[len(MARKER):])
    return None


def _first_error(nb) -> Optional[str]:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                return f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
    return None


def grade_notebook(path: Path, timeout: int = 300, kernel_name: str = "python3") -> Dict[str, Any]:
    """Execute ``path`` (a copy in memory; the file is not changed) and score it.

    Returns ``{"notebook", "score", "max_score", "exercises": [{"name", "points", "max_points",
    "passed", "status", "message"}], "errors": [...]}``.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    declared = declared_exercises(nb)
    nb.cells.append(nbformat.v4.new_code_cell(_DUMP_CELL))
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            interrupt_on_timeout=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    problems = []
    try:
        client.execute()
    except DeadKernelError as exc:
        problems.append(f"the kernel died: {exc}")
    except Exception as exc:  # e.g. a timeout the kernel could not be interrupted from
        problems.append(f"execution stopped: {type(exc).__name__}: {exc}")
    results = _results_from(nb.cells[-1]) or []
    if not results and not problems:
        problems.append("no check results came back (did `from mrcnn_lite.course import checks` run?)")
    first_error = _first_error(nb)
    if first_error:
        problems.append(f"first error: {first_error}")

    by_name = {r["name"]: r for r in results}  # the last run of each check counts
    exercises = []
    for ex in declared:
        r = by_name.get(ex["name"])
        if r is None:
            exercises.append({"name": ex["name"], "points": 0.0, "max_points": ex["max_points"], "passed": False,
                              "status": "MISSING", "message": "the check cell did not run (an error or timeout before it?)"})
        else:
            # A lab graded in parts earns the points of the parts that passed (nbgrader reads the same
            # number: it is the value of the check cell).
            points = ex["max_points"] if r["passed"] else min(float(r["points"]), ex["max_points"])
            status = "PASS" if r["passed"] else ("TODO" if not r.get("implemented", True) else
                                                 "PART" if points > 0 else "FAIL")
            exercises.append({"name": ex["name"], "points": points, "max_points": ex["max_points"],
                              "passed": bool(r["passed"]), "status": status, "message": r["message"]})
    return {
        "notebook": str(path),
        "score": sum(e["points"] for e in exercises),
        "max_score": sum(e["max_points"] for e in exercises),
        "exercises": exercises,
        "errors": problems,
    }


def format_table(report: Dict[str, Any]) -> str:
    """The report as a plain-text table, one line per exercise."""
    rows = [(e["name"], f"{e['points']:g}/{e['max_points']:g}",
             e["status"], e["message"].splitlines()[0][:90]) for e in report["exercises"]]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("exercise", "points", "result"))]
    lines = [f"{report['notebook']}",
             f"  {'exercise':<{widths[0]}}  {'points':>{widths[1]}}  {'result':<{widths[2]}}  message"]
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    lines.append(f"  score: {report['score']:g} / {report['max_score']:g}")
    for p in report["errors"]:
        lines.append(f"  note: {p}")
    return "\n".join(lines)
