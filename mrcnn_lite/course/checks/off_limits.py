"""What an exercise's solution may not call: the package's (or torchvision's) own implementation of it.

An exercise that asks for ``box_iou`` is not answered by ``return ml.ops.box_iou(a, b)``. While a checker
calls the learner's function, :class:`Watch` follows every Python call (``sys.setprofile``) and notes the
first one into an off-limits function, i.e. into the code of one of those functions or of a method of one
of those classes. A call is allowed only when the checker's own harness makes it directly (the harness of
the Bottleneck exercise builds the package's block to copy its weights); everything reached from the
learner's code, however indirectly (an alias, a ``functools.partial``, a subclass, a wrapper, the package
calling itself), counts.

Why at run time and not by reading the solution's text (an AST scan): the package is one attribute away
in every notebook (``ml``, ``checks``, a ``from ... import`` in an earlier cell), and a name can be
rebuilt from strings; what runs is what counts. The limits: C kernels are not Python calls (the
autograder's checking process therefore cannot import torchvision at all, whose ops are C kernels), and
a learner who rewrites the profiler hook or copies the package's code objects defeats any in-process
watch; the autograder reports a hook that was removed.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import CodeType, FunctionType
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

_PACKAGE = str(Path(__file__).resolve().parents[2]).replace("\\", "/") + "/"          # .../mrcnn_lite/
_CHECKERS = _PACKAGE + "course/checks/nb"      # the checkers' harness: case generators and call helpers
_LIBRARIES = tuple({p.replace("\\", "/") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def _is_learners(filename: str) -> bool:
    """Code neither of this package nor of Python's or an installed library: an answer, a notebook cell."""
    f = filename.replace("\\", "/")
    return f.startswith("<answer ") or not (f.startswith(_PACKAGE) or f.startswith(_LIBRARIES) or f.startswith("<frozen"))


def _functions_of(obj: Any) -> Iterable[Callable]:
    """The plain functions behind ``obj``: itself, what it wraps, or every method of a class."""
    if isinstance(obj, str):  # "module:qualname", only when that module is already loaded
        module_name, _, qualname = obj.partition(":")
        module = sys.modules.get(module_name)
        if module is None:
            return
        target: Any = module
        try:
            for part in qualname.split("."):
                target = getattr(target, part)
        except AttributeError:
            return
        yield from _functions_of(target)
        return
    if isinstance(obj, type):
        for value in vars(obj).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if isinstance(value, FunctionType):
                yield value
        return
    if isinstance(obj, functools.partial):
        yield from _functions_of(obj.func)
        return
    obj = getattr(obj, "__func__", obj)  # a bound method
    while obj is not None:
        if isinstance(obj, FunctionType):
            yield obj
        obj = getattr(obj, "__wrapped__", None)


def describe(fn: Callable) -> str:
    mod = getattr(fn, "__module__", "") or ""
    return f"{mod}.{fn.__qualname__}" if mod else fn.__qualname__


def codes_of(off_limits: Sequence[Any]) -> Dict[CodeType, str]:
    """``{code object: "module.qualname"}`` for everything in ``off_limits``."""
    codes = {}
    for obj in off_limits:
        if obj is None:
            continue
        for fn in _functions_of(obj):
            codes[fn.__code__] = describe(fn)
    return codes


def is_off_limits(fn: Any, off_limits: Sequence[Any]) -> Optional[str]:
    """What off-limits thing ``fn`` *is* (an alias, a partial, a subclass), or ``None``."""
    codes = codes_of(off_limits)
    if isinstance(fn, type):
        classes = [c for c in off_limits if isinstance(c, type)]
        for base in fn.__mro__:
            if base in classes:
                return f"{base.__module__}.{base.__qualname__}" + (" (your class is a subclass of it)"
                                                                     if base is not fn else "")
        return None
    for f in _functions_of(fn):
        if f.__code__ in codes:
            return codes[f.__code__]
    return None


class Watch:
    """``with Watch(off_limits, harness=(call,)) as w: call(fn, inputs)``; afterwards ``w.found`` lists
    what off-limits code ran (at most one entry: the first)."""

    def __init__(self, off_limits: Sequence[Any], harness: Sequence[Callable] = ()):
        self.codes = codes_of(off_limits)
        self.off_limits = off_limits
        self.harness = {f.__code__ for h in harness for f in _functions_of(h)}
        from .runner import produce
        self.stop = produce.__code__       # the learner's check cell, above it, is not what is checked
        self.found: List[str] = []
        self._previous = None
        self._bound_hook = self._hook  # one bound method, so that `sys.getprofile() is` can tell it is still set

    def _hook(self, frame, event, arg):
        if event != "call" or self.found or frame.f_code not in self.codes:
            return
        # Allowed: the checkers' harness calls it (a case generator, the call helper), and no learner's
        # code is between (an answer calling the harness to call the package does not count as the harness).
        first_ours = None
        caller = frame.f_back
        while caller is not None and caller.f_code is not self.stop:
            code = caller.f_code
            if _is_learners(code.co_filename):
                self.found.append(self.codes[frame.f_code])
                return
            if first_ours is None and (code.co_filename.replace("\\", "/").startswith(_PACKAGE)):
                first_ours = code
            caller = caller.f_back
        if first_ours is None or not (first_ours in self.harness
                                      or first_ours.co_filename.replace("\\", "/").startswith(_CHECKERS)):
            self.found.append(self.codes[frame.f_code])

    def watch_fn(self, fn: Any) -> None:
        what = is_off_limits(fn, self.off_limits)
        if what and not self.found:
            self.found.append(what)

    def __enter__(self) -> "Watch":
        self._previous = sys.getprofile()
        sys.setprofile(self._bound_hook)
        return self

    def __exit__(self, *exc) -> None:
        intact = sys.getprofile() is self._bound_hook
        sys.setprofile(self._previous)
        if not intact and not self.found:
            self.found.append("sys.setprofile (your code removed the checker's watch)")
