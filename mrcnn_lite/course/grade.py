"""The autograder: score a submitted notebook where the learner's code cannot reach the scoring.

What is trusted and what is not:

* the graded items, their points and the check calls come from the **course's** notebook of the same
  name (:mod:`.items`), never from the submission, whose check cells may have been edited;
* from the submission, only the **answer cells** are taken (nbgrader's ``solution`` cells, matched by
  their ``grade_id``, else by cell id). They run in a fresh process of their own
  (:mod:`.run_answers`), beside the course's own definitions; the learner's other cells never run, so a
  replaced checker or a results list edited in a later cell changes nothing;
* in that process the checkers only *call* the learner's functions, watched for calls to the package's
  or torchvision's implementation of the exercise (:mod:`.checks.off_limits`); what the functions
  returned comes back as plain data;
* this process makes the same cases, computes the expected outputs with the references and compares
  (:func:`.checks.runner.judge`). A prediction is compared with the course solution's answer.

A misbehaving submission still gets a fair report. When the answers' process dies (``os._exit``, a crash,
running out of memory: the process runs under a memory limit) or a step runs over ``timeout`` seconds,
the report says so in one line, the step is skipped and the process runs again for the rest: points
earned before stay earned. A file that is not a notebook, or not one of the course's, gets a one-line
report. ``run_notebook=True`` also executes the submission as written (nbclient) and notes where it
fails; that note is information, not points.

Limits, honestly: the learner's code and the checkers' harness share the answers' process, so an answer
written against the grader's internals (one that reinstalls the watch's profiler hook after using the
package, or rewrites code objects) is beyond what an in-process watch can see; the points still come
only from outputs judged here. Answers run beside the course's definitions only (imports, ``def``,
``class``, ``or_reference`` assignments): an answer that reads a variable computed by a plotting or
training cell fails here although it ran in the notebook.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import nbformat

from .assignments import strip_solutions
from .items import GradedItem, course_notebooks_dir, items_of

MAX_RESTARTS = 4
STARTUP_S = 180   # seconds the answers' process may take to start, whatever the step timeout


def declared_exercises(nb: "nbformat.NotebookNode") -> List[Dict[str, Any]]:
    """``[{"name", "max_points"}]`` of the automatically graded items of ``nb``, in order."""
    return [{"name": i.name, "max_points": i.points} for i in items_of(nb) if i.graded == "auto"]


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _empty_report(path: Path, problem: str, items: Optional[List[GradedItem]] = None) -> Dict[str, Any]:
    auto = [i for i in items or [] if i.graded == "auto"]
    return {"notebook": str(path), "score": 0.0, "max_score": sum(i.points for i in auto),
            "exercises": [{"name": i.name, "kind": i.kind, "points": 0.0, "max_points": i.points, "passed": False,
                           "status": "NOT GRADED", "message": problem} for i in auto],
            "by_hand": [i.to_dict() for i in items or [] if i.graded == "hand"],
            "errors": [problem]}


def _read_notebook(path: Path):
    """The notebook, or a one-line reason why ``path`` is not one."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except Exception as exc:
        return None, f"{path}: not a notebook ({type(exc).__name__}: {_one_line(exc, 100)})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, f"{path}: not a notebook (no cells)"
    return nb, None


def _answer_source(teacher_cell, submission, index: int) -> Optional[str]:
    """The submission's version of an answer cell: same nbgrader grade_id, else same cell id."""
    grade_id = teacher_cell.metadata.get("nbgrader", {}).get("grade_id")
    for cell in submission.cells:
        if cell.cell_type == "code" and grade_id and cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
            return cell.source
    cell_id = teacher_cell.get("id")
    for cell in submission.cells:
        if cell.cell_type == "code" and cell_id and cell.get("id") == cell_id:
            return cell.source
    return None


def build_steps(course_nb, submission, items: List[GradedItem]) -> (List[Dict[str, Any]], List[str]):
    """The steps :mod:`.run_answers` runs: the course's cells (definitions only), the submission's answer
    cells in their place, and one check step per automatic item."""
    by_cell: Dict[int, List[GradedItem]] = {}
    for item in items:
        if item.graded == "auto":
            by_cell.setdefault(item.cell, []).append(item)
    steps, notes = [], []
    for index, cell in enumerate(course_nb.cells):
        if cell.cell_type != "code":
            continue
        nbg = cell.metadata.get("nbgrader", {})
        if nbg.get("solution"):
            source = _answer_source(cell, submission, index)
            grade_id = nbg.get("grade_id", f"cell_{index}")
            if source is None:
                notes.append(f"answer cell {grade_id} is not in the submission: graded as not attempted")
                source = strip_solutions(cell.source)
            steps.append({"kind": "answer", "cell": index, "grade_id": grade_id, "source": source})
            continue
        steps.append({"kind": "given", "cell": index, "source": cell.source})
        for item in by_cell.get(index, []):
            steps.append({"kind": "check", "cell": index, "name": item.name, "checker": item.checker,
                          "answer": item.args[0] if item.args else "None",
                          "kwargs": {k: v for k, v in item.kwargs.items()}})
    return steps, notes


def _describe_exit(rc: int) -> str:
    if rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        why = {"SIGSEGV": " (a segmentation fault)", "SIGKILL": " (killed: out of memory?)",
               "SIGABRT": " (aborted)", "SIGBUS": " (a bus error)"}.get(name, "")
        return f"crashed with {name}{why}"
    return f"exited with code {rc} (os._exit or sys.exit in the learner's code?)"


def _run_answers(job_dir: Path, steps, skip, done, timeout: float, memory_bytes: int, env) -> (Optional[int], str):
    """Run :mod:`.run_answers` once. Returns (the step it stopped in, or None when it finished; why)."""
    (job_dir / "job.json").write_text(json.dumps({"steps": steps, "skip": sorted(skip), "done": sorted(done),
                                                  "memory_bytes": memory_bytes}))
    progress = job_dir / "progress"
    progress.write_text("start")
    with open(job_dir / "log.txt", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mrcnn_lite.course.run_answers", str(job_dir)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        current, since = "start", time.monotonic()
        timed_out = False
        while proc.poll() is None:
            time.sleep(0.1)
            now = progress.read_text() if progress.exists() else current
            if now != current:
                current, since = now, time.monotonic()
            # Starting (importing torch and the checkers) is not the learner's time: a limit of its own.
            if time.monotonic() - since > (timeout if current.isdigit() else max(timeout, STARTUP_S)):
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
    stopped = progress.read_text()
    if not timed_out and proc.returncode == 0 and stopped == "end":
        return None, ""
    step = int(stopped) if stopped.isdigit() else None
    why = (f"ran over the {timeout if step is not None else max(timeout, STARTUP_S):g}-s limit" if timed_out
           else _describe_exit(proc.returncode))
    if step is None:
        tail = (job_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        why += f" before any step ({_one_line(tail[0], 120)})"
    return step, why


def _step_label(step: Dict[str, Any]) -> str:
    if step["kind"] == "answer":
        return f"answer cell {step['grade_id']}"
    if step["kind"] == "check":
        return f"the check of {step['name']}"
    return f"course cell {step['cell']}"


def _expected_prediction(course_nb, item: GradedItem):
    """The answer of the course's solution to a prediction (run here: the course's code is trusted)."""
    import math

    import torch

    ns: Dict[str, Any] = {"torch": torch, "math": math}
    fn_name = item.args[0] if item.args else ""
    for cell in course_nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution") and f"def {fn_name}(" in cell.source:
            exec(compile(cell.source, f"<course solution {fn_name}>", "exec"), ns)
            return ns[fn_name]()
    raise ValueError(f"the course notebook has no solution cell defining {fn_name}")


def grade_notebook(path: Path, timeout: int = 300, kernel_name: str = "python3", source: Optional[Path] = None,
                   memory_gb: float = 6.0, run_notebook: bool = False) -> Dict[str, Any]:
    """Score the submission ``path`` against the course notebook ``source`` (default: the course's notebook
    of the same file name). The file is not changed.

    Returns ``{"notebook", "score", "max_score", "exercises": [{"name", "kind", "points", "max_points",
    "passed", "status", "message"}], "by_hand": [items graded by hand], "errors": [one line each]}``.
    """
    import torch

    from . import checks
    from .checks import runner

    path = Path(path)
    source = Path(source) if source is not None else course_notebooks_dir() / path.name
    submission, problem = _read_notebook(path)
    course_nb, course_problem = _read_notebook(source) if source.is_file() else (None, None)
    if course_nb is None:
        why = course_problem or f"{path.name} is not one of the course's notebooks (no {source})"
        return _empty_report(path, problem or f"{path}: not graded: {why}")
    items = items_of(course_nb, path.name)
    if submission is None:
        return _empty_report(path, f"{problem}: nothing graded", items)

    steps, notes = build_steps(course_nb, submission, items)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    package_root = str(Path(__file__).resolve().parents[2])   # the answers' process imports this mrcnn_lite
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    outcomes: Dict[int, Any] = {}
    lost: Dict[int, str] = {}   # check step -> why it has no outputs
    with tempfile.TemporaryDirectory(prefix="mrcnn_lite_grade_") as tmp:
        job_dir = Path(tmp)
        (job_dir / "out").mkdir()
        skip: set = set()
        for attempt in range(MAX_RESTARTS + 1):
            done = {int(p.stem) for p in (job_dir / "out").glob("*.pt")}
            stopped, why = _run_answers(job_dir, steps, skip, done, timeout, int(memory_gb * 2**30), env)
            if stopped is None and not why:
                break
            if stopped is None:
                notes.append(f"the answers' process {why}")
                break
            notes.append(f"{_step_label(steps[stopped])} {why}: skipped, the rest was checked again")
            if steps[stopped]["kind"] == "check":
                lost[stopped] = f"not checked: it {why}"
            skip.add(stopped)
        else:
            notes.append(f"gave up after {MAX_RESTARTS} restarts of the answers' process")
        for p in sorted((job_dir / "out").glob("*.note"), key=lambda p: int(p.stem)):
            notes.append(p.read_text())
        for p in (job_dir / "out").glob("*.pt"):
            try:
                outcomes[int(p.stem)] = torch.load(p, weights_only=True)["outcomes"]
            except Exception as exc:
                lost[int(p.stem)] = f"its outputs could not be read ({type(exc).__name__})"

    exercises = []
    check_steps = [k for k, s in enumerate(steps) if s["kind"] == "check"]
    auto_items = [i for i in items if i.graded == "auto"]
    for k, item in zip(check_steps, auto_items):
        if k in outcomes:
            args = [None, _expected_prediction(course_nb, item)] if item.checker == "check_prediction" else [None]
            spec = runner.spec_of(getattr(checks, item.checker), *args, **item.kwargs)
            if spec.kind == "cases":
                spec.cases = list(spec.cases)
            r = runner.judge(spec, outcomes[k])
            points = r.max_points if r.passed else min(float(r.points), item.points)
            status = "PASS" if r.passed else "TODO" if not r.implemented else "PART" if points > 0 else "FAIL"
            exercises.append({"name": item.name, "kind": item.kind, "points": points, "max_points": item.points,
                              "passed": bool(r.passed), "status": status, "message": r.message})
        else:
            exercises.append({"name": item.name, "kind": item.kind, "points": 0.0, "max_points": item.points,
                              "passed": False, "status": "MISSING",
                              "message": lost.get(k, "not checked (the answers' process stopped before it)")})
    if run_notebook:
        notes.append(run_as_written(path, timeout=timeout, kernel_name=kernel_name))
    return {
        "notebook": str(path),
        "score": sum(e["points"] for e in exercises),
        "max_score": sum(e["max_points"] for e in exercises),
        "exercises": exercises,
        "by_hand": [i.to_dict() for i in items if i.graded == "hand"],
        "errors": [_one_line(n, 240) for n in notes],
    }


def run_as_written(path: Path, timeout: int = 300, kernel_name: str = "python3") -> str:
    """Execute the submission as it is (a copy in memory) and say in one line whether it ran to the end."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            interrupt_on_timeout=True,
                            resources={"metadata": {"path": str(Path(path).parent.resolve())}})
    try:
        client.execute()
    except DeadKernelError:
        ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
        return f"as written, the notebook's kernel died after cell {ran[-1] if ran else 0}"
    except Exception as exc:
        return f"as written, the notebook stopped: {type(exc).__name__}: {_one_line(exc, 100)}"
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                return f"as written, the notebook runs with an error in cell {i}: {out.get('ename')}: " \
                       f"{_one_line(out.get('evalue'), 100)}"
    return "as written, the notebook runs to the end without an error"


def format_table(report: Dict[str, Any]) -> str:
    """The report as a plain-text table, one line per exercise."""
    rows = [(e["name"], f"{e['points']:g}/{e['max_points']:g}",
             e["status"], (e["message"].splitlines() or [""])[0][:90]) for e in report["exercises"]]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("exercise", "points", "result"))]
    lines = [f"{report['notebook']}"]
    if rows:
        lines.append(f"  {'exercise':<{widths[0]}}  {'points':>{widths[1]}}  {'result':<{widths[2]}}  message")
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    lines.append(f"  score: {report['score']:g} / {report['max_score']:g}")
    hand = report.get("by_hand", [])
    if hand:
        lines.append(f"  graded by hand (not in this score): {len(hand)} answers, "
                     f"{sum(h['points'] for h in hand):g} points: {', '.join(h['name'] for h in hand)}")
    for p in report["errors"]:
        lines.append(f"  note: {p}")
    return "\n".join(lines)
