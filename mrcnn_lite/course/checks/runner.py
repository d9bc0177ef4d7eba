"""The checker engine: run a learner's function and a reference on the same cases, compare, report.

A checker (one per exercise, in ``nb01_boxes.py`` ... ``nb12_own_data.py``) is three things:

1. a generator of test cases: ``(label, inputs)`` pairs, ``inputs`` a dict of the positional arguments;
2. a reference that takes the same arguments (a package function, or a thin wrapper around one);
3. a ``check_<name>(fn, points=...)`` function that hands both to :func:`run_check` (or, for an exercise
   graded in parts such as a debugging lab with two planted bugs, to :func:`run_parts`).

It prints one line ``PASS`` / ``FAIL`` / ``TODO`` and, on a failure, the first case that went wrong. It
never raises: an exception in the learner's code becomes a ``FAIL`` message. Each call returns a
:class:`CheckResult` and appends it to :data:`RESULTS`, which the course's autograder reads; the result's
``repr`` is its points, so that the check cell's value is the score nbgrader's autograder reads too.

The results and how outputs are compared are in ``results.py``, the checkers' random inputs in
``inputs.py``, ``or_reference`` in ``fallback.py``; all are re-exported here.
"""
from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from torch import Tensor

from .fallback import or_reference  # noqa: F401
from .inputs import SEEDS, Fresh, gen, random_boxes, random_masks  # noqa: F401
from .results import RESULTS, CheckResult, compare, fmt  # noqa: F401


# ----------------------------------------------------------------------------------------------
# The engine every checker uses: a check is a spec; the learner's side produces outputs, the
# reference's side judges them. In a notebook both happen here; the autograder runs them in two
# processes (see mrcnn_lite.course.grade), so that the learner's code never touches the judging.
# ----------------------------------------------------------------------------------------------
def _clone(inputs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def _short_traceback(exc: BaseException) -> str:
    """The learner's line that raised, without the checker's own frames."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "mrcnn_lite/course" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at line {f.lineno} of {f.name}: {f.line}" if f.line else ""


def _record(result: CheckResult, verbose: bool) -> CheckResult:
    RESULTS.append(result)
    if verbose:
        print(result.message)
    return result


def _default_call(f: Callable, inputs: Dict[str, Any]) -> Any:
    return f(*inputs.values())


@dataclass
class CheckSpec:
    """Everything a check needs except the learner's function: how to make the cases, call, compare.

    ``kind`` is ``"cases"`` (:func:`run_parts`), ``"prediction"`` (:func:`check_prediction`) or ``"choice"``
    (:func:`check_choice`, a lab's question "where is the bug?").
    ``cases`` is a generator: each side of a check takes its own spec, so each makes its own cases.
    """

    kind: str
    name: str
    points: float
    reference: Optional[Callable] = None
    cases: Any = None
    parts: Sequence[Tuple[str, float, Optional[Callable[[Any], Any]]]] = ()
    atol: float = 1e-6
    rtol: float = 1e-5
    exact: bool = False
    call: Callable = _default_call
    what: str = ""
    off_limits: Tuple[Any, ...] = ()
    actual: Any = None
    tolerance: float = 0.0
    choices: Optional[Sequence[str]] = None


_CAPTURE: List[List[CheckSpec]] = []


def spec_of(checker: Callable, *args, **kwargs) -> CheckSpec:
    """The :class:`CheckSpec` that ``checker(*args, **kwargs)`` would run, without running anything.
    The function under test (the first argument) is not looked at; pass ``None``."""
    _CAPTURE.append([])
    try:
        checker(*args, **kwargs)
    finally:
        captured = _CAPTURE.pop()
    if len(captured) != 1:
        raise ValueError(f"{getattr(checker, '__name__', checker)} ran {len(captured)} checks, expected 1")
    return captured[0]


def _quiet(call: Callable, f: Callable, inputs: Dict[str, Any]) -> Any:
    # A library's warning is not the learner's business here, and a check cell must not write to
    # stderr: nbgrader scores such a cell 0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(f, inputs)


def produce(spec: CheckSpec, fn: Callable) -> List[Dict[str, Any]]:
    """The learner's side of a check: call ``fn`` on the spec's cases, watched by
    :mod:`.off_limits`. One entry per case, ``{"status": "ok", "got": ...}`` until the first case
    that is not ok: ``"todo"`` (NotImplementedError), ``"error"`` (an exception: ``error``, ``where``)
    or ``"off_limits"`` (``error`` names what was called)."""
    from . import off_limits

    if spec.kind in ("prediction", "choice"):
        cases = [("your answer", {})]
        call = lambda f, inputs: f()  # noqa: E731
    else:
        cases, call = spec.cases, spec.call
    outcomes: List[Dict[str, Any]] = []
    for label, inputs in cases:
        watch = off_limits.Watch(spec.off_limits, harness=(call,))
        watch.watch_fn(fn)
        if watch.found:
            outcomes.append({"status": "off_limits", "error": watch.found[0]})
            return outcomes
        try:
            with watch:
                got = _quiet(call, fn, _clone(inputs))
        except NotImplementedError:
            outcomes.append({"status": "todo"})
            return outcomes
        except Exception as exc:  # the learner's bug: report it, never raise from a check cell
            if watch.found:
                outcomes.append({"status": "off_limits", "error": watch.found[0]})
            else:
                outcomes.append({"status": "error", "error": f"{type(exc).__name__}: {exc}",
                                 "where": _short_traceback(exc)})
            return outcomes
        if watch.found:
            outcomes.append({"status": "off_limits", "error": watch.found[0]})
            return outcomes
        outcomes.append({"status": "ok", "got": got})
    return outcomes


def judge(spec: CheckSpec, outcomes: Sequence[Dict[str, Any]]) -> CheckResult:
    """The reference's side of a check: the :class:`CheckResult` of ``outcomes`` (from :func:`produce`,
    possibly in another process) against the reference, on the spec's own cases."""
    name = spec.name
    if spec.kind == "prediction":
        return _judge_prediction(spec, outcomes[0] if outcomes else {"status": "missing"})
    if spec.kind == "choice":
        return _judge_choice(spec, outcomes[0] if outcomes else {"status": "missing"})
    parts = list(spec.parts)
    total = float(sum(p for _, p, _ in parts))
    problems: Dict[int, str] = {}
    n = 0
    for label, inputs in spec.cases:
        n += 1
        expected = _quiet(spec.call, spec.reference, _clone(inputs))
        shown_input = "\n".join(f"    {k} = {fmt(v)}" for k, v in inputs.items())
        outcome = outcomes[n - 1] if n <= len(outcomes) else {"status": "missing"}
        status = outcome.get("status")
        if status == "todo":
            return CheckResult(
                name, False, 0, total,
                f"TODO  {name} (0/{total:g} points): not implemented yet -- replace the "
                f"`raise NotImplementedError` with your code, run that cell, then this one.", implemented=False)
        if status == "off_limits":
            return CheckResult(
                name, False, 0, total,
                f"FAIL  {name} (0/{total:g} points): your code called {outcome['error']}, which this "
                f"exercise asks you to write yourself (case '{label}')")
        if status == "error":
            return CheckResult(
                name, False, 0, total,
                f"FAIL  {name} (0/{total:g} points): raised {outcome['error']} "
                f"on case '{label}'{outcome.get('where', '')}\n  input:\n{shown_input}\n"
                f"  expected: {fmt(expected)}")
        if status != "ok":
            return CheckResult(name, False, 0, total,
                               f"FAIL  {name} (0/{total:g} points): no output came back for case '{label}'")
        got = outcome["got"]
        for i, (part, _, select) in enumerate(parts):
            if i in problems:
                continue
            e, g = (expected, got) if select is None else (select(expected), _select(select, got))
            problem = compare(e, g, atol=spec.atol, rtol=spec.rtol, exact=spec.exact)
            if problem:
                problems[i] = (f"wrong {part + ' ' if part else ''}result on case '{label}'\n"
                               f"  input:\n{shown_input}\n  expected: {fmt(e)}\n  got:      {fmt(g)}\n  {problem}")
        if len(problems) == len(parts):
            break
    earned = float(sum(p for i, (_, p, _) in enumerate(parts) if i not in problems))
    if not problems:
        return CheckResult(name, True, total, total,
                           f"PASS  {name} ({total:g}/{total:g} points): matches {spec.what or 'the reference'} "
                           f"on {n} cases")
    lines = [f"FAIL  {name} ({earned:g}/{total:g} points): " + problems[min(problems)]]
    if len(parts) > 1:
        lines += [f"  part '{part}' ({p:g} points): {'FAIL' if i in problems else 'PASS'}"
                  for i, (part, p, _) in enumerate(parts)]
    return CheckResult(name, False, earned, total, "\n".join(lines))


def run_check(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Iterable[Tuple[str, Dict[str, Any]]],
    points: float = 1,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    exact: bool = False,
    call: Optional[Callable[[Callable, Dict[str, Any]], Any]] = None,
    what: str = "",
    verbose: bool = True,
    off_limits: Sequence[Any] = (),
) -> CheckResult:
    """Run ``fn`` and ``reference`` on every case; PASS if all outputs match.

    Args:
        name: the exercise's name (shown to the learner, used as key by the autograder).
        fn: the learner's function (or class).
        reference: same arguments as ``fn``, gives the right answer.
        cases: ``(label, inputs)`` pairs; ``inputs`` holds the positional arguments, in order, by name.
        points: what the exercise is worth.
        atol, rtol, exact: how outputs are compared (see :func:`compare`).
        call: how to call a function on a case; default ``f(*inputs.values())``.
        what: a few words about what was compared, for the PASS line.
        off_limits: what ``fn`` must not call (the reference is always off limits): functions, classes,
            or ``"module:qualname"`` strings for modules that may not be loaded (torchvision's ops).
    """
    return run_parts(name, fn, reference, cases, [("", points, None)], atol=atol, rtol=rtol, exact=exact,
                     call=call, what=what, verbose=verbose, off_limits=off_limits)


def run_parts(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Iterable[Tuple[str, Dict[str, Any]]],
    parts: Sequence[Tuple[str, float, Optional[Callable[[Any], Any]]]],
    atol: float = 1e-6,
    rtol: float = 1e-5,
    exact: bool = False,
    call: Optional[Callable[[Callable, Dict[str, Any]], Any]] = None,
    what: str = "",
    verbose: bool = True,
    off_limits: Sequence[Any] = (),
) -> CheckResult:
    """Like :func:`run_check`, but the output is graded in parts, each worth its own points.

    ``parts``: ``(label, points, select)``; ``select(output)`` picks what the part compares (``None``:
    the whole output). A part fails at its first case that differs; the result's points are the sum of
    the parts that pass on every case. A lab with two planted bugs gives partial credit this way.
    """
    total = float(sum(p for _, p, _ in parts))

    def make_spec():
        return CheckSpec("cases", name, total, reference=reference, cases=cases, parts=tuple(parts), atol=atol,
                         rtol=rtol, exact=exact, call=call or _default_call, what=what,
                         off_limits=(reference, *off_limits))

    if _CAPTURE:
        _CAPTURE[-1].append(make_spec())
        return CheckResult(name, False, 0, total, "not run: the spec was captured")
    cases = list(cases)  # one list, walked by both sides
    spec = make_spec()
    spec.cases = cases
    outcomes = produce(spec, fn)
    return _record(judge(spec, outcomes), verbose)


def _select(select: Callable[[Any], Any], got: Any) -> Any:
    """``select(got)``, or ``got`` itself when it does not have the expected structure (so that
    :func:`compare` reports the shape or type problem instead of an exception here)."""
    try:
        return select(got)
    except Exception:
        return got


def check_prediction(prediction: Callable[[], Any], actual: Any, points: float = 1, name: str = "prediction",
                     tolerance: float = 0.0, choices: Optional[Sequence[str]] = None) -> CheckResult:
    """A predict-then-run question: ``prediction()`` returns the learner's answer, written before the cell
    that computes ``actual`` was run. A number must be within ``tolerance`` of ``actual``; a choice (a
    string, one of ``choices``) must equal it, case and surrounding spaces ignored."""
    spec = CheckSpec("prediction", name, float(points), actual=actual, tolerance=tolerance,
                     choices=tuple(choices) if choices is not None else None)
    if _CAPTURE:
        _CAPTURE[-1].append(spec)
        return CheckResult(name, False, 0, points, "not run: the spec was captured")
    return _record(judge(spec, produce(spec, prediction)), True)


def _no_answer(spec: CheckSpec, outcome: Dict[str, Any], what: str, todo: str) -> Optional[CheckResult]:
    """The result of a one-answer check (a prediction, a choice) whose answer did not come back as a value:
    not written yet (TODO), a call that is off limits, an exception, or nothing at all; ``None`` when it did.
    ``what`` names the answer in the message ("your prediction"), ``todo`` opens the TODO message."""
    name, points, status = spec.name, spec.points, outcome.get("status")
    if status == "todo":
        return CheckResult(name, False, 0, points, f"TODO  {name} (0/{points:g} points): {todo} -- "
                           f"replace the `raise NotImplementedError` with your answer.", implemented=False)
    if status in ("off_limits", "error"):
        verb = "called" if status == "off_limits" else "raised"
        return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): {what} {verb} {outcome['error']}")
    if status != "ok":
        return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): no answer came back")
    return None


def _judge_prediction(spec: CheckSpec, outcome: Dict[str, Any]) -> CheckResult:
    name, points, actual, choices = spec.name, spec.points, spec.actual, spec.choices
    problem = _no_answer(spec, outcome, "your prediction", "write your prediction first")
    if problem is not None:
        return problem
    answer = outcome["got"]
    if choices is not None:
        norm = str(answer).strip().lower()
        if norm not in [c.lower() for c in choices]:
            return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): answer one of "
                               f"{list(choices)}, got {answer!r}")
        right = norm == str(actual).strip().lower()
    else:
        try:
            right = abs(float(answer) - float(actual)) <= spec.tolerance
        except (TypeError, ValueError):
            return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): the answer "
                               f"must be a number, got {answer!r}")
    if right:
        return CheckResult(name, True, points, points, f"PASS  {name} ({points:g}/{points:g} points): "
                           f"you predicted {answer!r}; the run gives {actual!r}")
    return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): you predicted "
                       f"{answer!r}; the run gives {actual!r}. Where did your reasoning go wrong?")


def _as_choice_set(answer: Any) -> Optional[frozenset]:
    """A choice answer as a set of lower-case names: one string, or a list/tuple/set of strings."""
    if isinstance(answer, str):
        answer = [answer]
    if not isinstance(answer, (list, tuple, set, frozenset)) or not all(isinstance(a, str) for a in answer):
        return None
    return frozenset(a.strip().lower() for a in answer)


def check_choice(answer: Callable[[], Any], right: Any, choices: Sequence[str], points: float = 1,
                 name: str = "choice", what: str = "") -> CheckResult:
    """A question answered by naming one of ``choices`` (a debugging lab's "where is the bug?").

    ``answer()`` returns one of ``choices`` as a string, or, where ``right`` names several (a lab with two
    planted bugs), a list or tuple of them in any order; case and surrounding spaces are ignored. Only the
    exact set ``right`` earns the points. A wrong answer is told that it is wrong, never what is right, so that
    the learner looks again with the tools; ``what`` says in a few words what a right answer found.
    """
    right_set = _as_choice_set(right)
    if right_set is None or not right_set <= {c.lower() for c in choices}:
        raise ValueError(f"check_choice: right={right!r} must be one or several of choices={list(choices)}")
    spec = CheckSpec("choice", name, float(points), actual=tuple(sorted(right_set)), choices=tuple(choices),
                     what=what)
    if _CAPTURE:
        _CAPTURE[-1].append(spec)
        return CheckResult(name, False, 0, points, "not run: the spec was captured")
    return _record(judge(spec, produce(spec, answer)), True)


def _judge_choice(spec: CheckSpec, outcome: Dict[str, Any]) -> CheckResult:
    name, points, choices = spec.name, spec.points, list(spec.choices or ())
    problem = _no_answer(spec, outcome, "your answer", "not answered yet")
    if problem is not None:
        return problem
    answer = outcome["got"]
    got = _as_choice_set(answer)
    if got is None or not got or not got <= {c.lower() for c in choices}:
        return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): answer with one of "
                           f"{choices} (or a list of them), got {answer!r}")
    right = frozenset(spec.actual)
    if got == right:
        return CheckResult(name, True, points, points, f"PASS  {name} ({points:g}/{points:g} points): "
                           f"{spec.what or 'that is where the bug is'}")
    places = "one place" if len(right) == 1 else f"{len(right)} places"
    hint = "" if len(right) == len(got) else f"; the bug is in {places}"
    return CheckResult(name, False, 0, points, f"FAIL  {name} (0/{points:g} points): {sorted(got)} is not "
                       f"where the bug is{hint}. Look again with the tools, then answer.")
