"""nbgrader, scored by the course's grader: the test cells' points come from outside the learner's kernel.

nbgrader's ``autograde`` executes the submission and reads each autograder test cell's value as its
points, in the learner's own kernel. The checks' off-limits watch works there too (an answer that calls
the package's implementation earns 0), and nbgrader restores the locked test cells and reads each cell's
output as it runs (a later cell cannot change it). What a kernel cannot stop is a learner's cell that
replaces a checker before the test cell calls it: an answer cell runs in the same Python as the test.

So a teacher's ``nbgrader_config.py`` can score with the course's grader instead::

    from mrcnn_lite.course.nbgrader_checks import autograde_preprocessors
    c.Autograde.autograde_preprocessors = autograde_preprocessors()

:class:`CourseChecks` takes nbgrader's place of ``Execute``: it grades the submission with
:func:`mrcnn_lite.course.grade.grade_notebook` against the assignment's *source* notebook (the answers
run in a process of their own, the scoring here) and writes each test cell's output as a check cell
would (the message, then the points as the cell's value), which ``SaveAutoGrades`` then reads. Hand-graded
cells are left to nbgrader's formgrader as before. The submission's own kernel never runs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List

import nbformat
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool, Float, Integer


class CourseChecks(Preprocessor):
    """Fill the autograder test cells' outputs from the course's grader (see the module's docstring)."""

    enabled = Bool(True)   # nbgrader registers its preprocessors without enabling them; ours are on
    timeout = Integer(300, help="seconds allowed per answer cell or check").tag(config=True)
    memory_gb = Float(6.0, help="memory limit of the process that runs the answers").tag(config=True)

    def preprocess(self, nb, resources):
        from nbgrader.coursedir import CourseDirectory

        from .grade import format_table, grade_notebook

        info = resources["nbgrader"]
        coursedir = CourseDirectory(config=self.config)
        source = Path(coursedir.format_path(coursedir.source_directory, ".", info["assignment"])) / \
            f"{info['notebook']}.ipynb"
        with tempfile.TemporaryDirectory(prefix="mrcnn_lite_nbgrader_") as tmp:
            path = Path(tmp) / f"{info['notebook']}.ipynb"
            nbformat.write(nb, str(path))
            report = grade_notebook(path, timeout=self.timeout, source=source, memory_gb=self.memory_gb)
        self.log.info("%s", format_table(report))
        by_name = {e["name"]: e for e in report["exercises"]}
        for cell in nb.cells:
            nbg = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code" or not nbg.get("grade") or nbg.get("solution"):
                continue
            # A test cell without output earns full marks in nbgrader: never leave one empty.
            e = by_name.get(nbg.get("grade_id")) or {
                "points": 0, "message": f"not graded: {'; '.join(report['errors']) or 'no such item in the course'}"}
            cell.outputs = [
                nbformat.v4.new_output("stream", name="stdout", text=e["message"] + "\n"),
                nbformat.v4.new_output("execute_result", data={"text/plain": f"{e['points']:g}"},
                                       execution_count=None)]
        for note in report["errors"]:
            self.log.warning("%s: %s", info["notebook"], note)
        return nb, resources


def autograde_preprocessors() -> List[type]:
    """nbgrader's default ``Autograde.autograde_preprocessors`` with :class:`CourseChecks` in place of
    ``Execute``."""
    from nbgrader.converters.autograde import Autograde
    from nbgrader.preprocessors import Execute

    return [CourseChecks if p is Execute else p for p in Autograde.class_traits()["autograde_preprocessors"].default()]
