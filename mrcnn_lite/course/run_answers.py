"""The learner's side of the autograder: run a submission's answers in a process of their own.

``python -m mrcnn_lite.course.run_answers JOB_DIR`` reads ``JOB_DIR/job.json`` (written by
:mod:`mrcnn_lite.course.grade`): a list of steps, in the notebook's order,

* ``given``: a cell of the *course's* notebook, reduced to its imports, definitions and simple
  assignments (what the answers may use: ``torch``, a handed-out ``lab_...`` function, an earlier
  exercise wrapped by ``or_reference``); the learner's own edits of these cells are never run;
* ``answer``: the learner's answer cell, run as written;
* ``check``: call the learner's function on the checker's cases (:func:`..checks.runner.produce`, watched by
  :mod:`..checks.off_limits`) and write what it returned to ``JOB_DIR/out/<step>.pt``.

Nothing here decides a point: the grader, in another process, makes the same cases, computes the
expected outputs and compares (:func:`..checks.runner.judge`), loading these files with
``weights_only=True`` (plain tensors, numbers, strings and containers; no code). Before the first step
the file ``progress`` names the step being run, so that the grader can tell which step a crash or a
timeout hit and run again without it. torchvision cannot be imported here: its ops are C kernels that
the off-limits watch cannot see.
"""
from __future__ import annotations

import ast
import json
import linecache
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

BLOCKED = ("torchvision",)


class _Blocker:
    """A ``sys.meta_path`` finder that refuses the BLOCKED packages."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} cannot be imported while answers are checked (the exercises ask for "
                              f"your own code)")
        return None


def _given_statements(source: str) -> List[ast.stmt]:
    """The statements of a course cell an answer may need: imports, defs, classes, and assignments whose
    value calls nothing but ``or_reference`` / ``os.environ.get`` (a plot or a training run is skipped)."""
    try:
        tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
    except SyntaxError:
        return []
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            keep.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
            if all(ast.unparse(c.func).endswith(("or_reference", "os.environ.get")) for c in calls):
                keep.append(node)
    return keep


def plain(value: Any) -> Any:
    """``value`` as data the grader can load with ``weights_only=True``: plain tensors (a subclass loses
    its class), numbers, strings, lists, tuples and dicts of them. Anything else raises TypeError."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).clone()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (list, tuple):
        return type(value)(plain(v) for v in value)
    if type(value) is dict:
        return {str(k): plain(v) for k, v in value.items()}
    raise TypeError(f"returned a {type(value).__name__}, which the checker cannot read "
                    f"(return tensors, numbers, or lists/tuples/dicts of them)")


def _run_code(source: str, filename: str, ns: Dict[str, Any]) -> None:
    source = "\n".join(l if not l.lstrip().startswith(("%", "!")) else "" for l in source.splitlines())
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks show lines
    exec(compile(source, filename, "exec"), ns)


def main(job_dir: str) -> int:
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    out = job_dir / "out"
    progress = job_dir / "progress"

    import math

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    from .checks import off_limits, runner
    from . import checks

    sys.meta_path.insert(0, _Blocker())
    if job.get("memory_bytes"):
        # A learner's memory blow-up becomes a MemoryError here instead of the machine's OOM killer. The
        # limit is on address space, counted from what torch and the checkers already map.
        import resource

        mapped = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024 \
            if Path("/proc/self/status").exists() else 0
        limit = mapped + int(job["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    skip, done = set(job.get("skip", [])), set(job.get("done", []))
    specs = {}
    for k, step in enumerate(job["steps"]):
        if step["kind"] == "check":
            specs[k] = runner.spec_of(getattr(checks, step["checker"]), None,
                                      *([None] if step["checker"] == "check_prediction" else []), **step["kwargs"])
    all_off_limits = tuple(x for s in specs.values() for x in s.off_limits)
    ns: Dict[str, Any] = {"__name__": "__main__", "torch": torch, "math": math, "np": np, "nn": nn, "F": F}
    tainted: Dict[str, str] = {}          # answer cell's file name -> what it called at its top level
    # One watch over the whole run, from before the first answer: whatever the answers patch (a checker,
    # the runner's helpers), a call into an exercise's implementation from anything but a checker's own
    # harness is seen. Each step checks that the watch is still the one installed.
    harness = [runner._default_call] + [s.call for s in specs.values() if s.kind == "cases"]
    whole_run = off_limits.Watch(all_off_limits, harness=harness)
    whole_run.__enter__()
    removed = None
    for k, step in enumerate(job["steps"]):
        if k in skip or k in done:
            continue
        progress.write_text(str(k))
        if removed is None and sys.getprofile() is not whole_run._bound_hook:
            removed = "sys.setprofile (an answer removed the checker's watch)"
        whole_run.found.clear()           # what a step calls counts against that step only
        # During a check, what is off limits is that exercise's list (another exercise may use the package's
        # function legitimately); while answers run, every exercise's.
        whole_run.codes = off_limits.codes_of(specs[k].off_limits if k in specs else all_off_limits)
        if step["kind"] == "check" and removed:
            outcomes = [{"status": "off_limits", "error": removed}]
            tmp = out / f"{k}.pt.tmp"
            torch.save({"name": step["name"], "outcomes": outcomes}, tmp)
            os.replace(tmp, out / f"{k}.pt")
            continue
        if step["kind"] == "given":
            for node in _given_statements(step["source"]):
                try:
                    exec(compile(ast.Module([node], type_ignores=[]), f"<course cell {step['cell']}>", "exec"), ns)
                except Exception:  # e.g. an import of torchvision: the answers do not need it
                    pass
        elif step["kind"] == "answer":
            filename = f"<answer {step['grade_id']}>"
            watch = off_limits.Watch(all_off_limits)
            try:
                with watch:
                    _run_code(step["source"], filename, ns)
            except Exception as exc:
                (out / f"{k}.note").write_text(f"answer cell {step['grade_id']} raised {type(exc).__name__}: "
                                               f"{str(exc)[:200]} (its definitions before the error were kept)")
            if watch.found:
                tainted[filename] = watch.found[0]
        else:
            outcomes = _check(step, specs[k], ns, tainted)
            if whole_run.found and all(o["status"] == "ok" for o in outcomes):
                outcomes = [{"status": "off_limits", "error": whole_run.found[0]}]
            tmp = out / f"{k}.pt.tmp"
            torch.save({"name": step["name"], "outcomes": outcomes}, tmp)
            os.replace(tmp, out / f"{k}.pt")
    progress.write_text("end")
    return 0


def _check(step: Dict[str, Any], spec, ns: Dict[str, Any], tainted: Dict[str, str]) -> List[Dict[str, Any]]:
    from .checks import runner

    try:
        fn = eval(compile(step["answer"], "<check>", "eval"), ns)
    except Exception as exc:
        return [{"status": "error", "error": f"{type(exc).__name__}: {exc} (did its answer cell run?)"}]
    code = getattr(getattr(fn, "__wrapped__", fn), "__code__", None)
    if code is not None and code.co_filename in tainted:
        return [{"status": "off_limits", "error": f"{tainted[code.co_filename]} (at the top level of its cell)"}]
    outcomes = runner.produce(spec, fn)
    for o in outcomes:
        if o["status"] == "ok":
            try:
                o["got"] = plain(o["got"])
            except TypeError as exc:
                o.clear()
                o.update(status="error", error=f"TypeError: {exc}")
    return outcomes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
