"""Where the course's shipped files are: the repository's ``data/`` folder, or the copy inside an installed wheel.

A clone (or an editable install) reads ``data/`` beside the package folder. A learner who installed the built
wheel on a fresh Jupyter server has no ``data/`` folder: the wheel carries the same files inside the package,
as ``mrcnn_lite/course_data/`` (``setup.py`` copies ``SHIPPED`` there when it builds the wheel). The shipped
results that notebooks 14 and 16 read (``SHIPPED_RESULTS``, under the repository's ``benchmarks/``) travel the
same way, as ``mrcnn_lite/course_data/benchmarks/``.
"""
from __future__ import annotations

from pathlib import Path

# What the wheel carries, relative to the repository's data/: the trained course model, the COCO-format
# shapes mini set (notebooks 00 and 12) and the real nucleus tiles (notebook 15).
SHIPPED = ("checkpoints/tiny_shapes.pt", "shapes-mini", "dsb2018-nuclei")
# ... and, relative to the repository's root, the shipped results of notebook 14 (the paper's ablations) and of
# notebook 16 (the graded experiments' reference runs).
SHIPPED_RESULTS = ("benchmarks/ablations/ablations.json", "benchmarks/experiments")

REPOSITORY = Path(__file__).resolve().parent.parent
REPOSITORY_DATA = REPOSITORY / "data"
PACKAGED_DATA = Path(__file__).resolve().parent / "course_data"


def course_data(relative: str) -> Path:
    """The path of a shipped file or folder, e.g. ``course_data("shapes-mini")`` (under ``data/``) or
    ``course_data("benchmarks/experiments")`` (a shipped result): the repository's copy when it exists, else the
    wheel's (which may not exist either: the caller's open says which file is missing)."""
    base = REPOSITORY if relative.split("/")[0] == "benchmarks" else REPOSITORY_DATA
    repository = base / relative
    return repository if repository.exists() else PACKAGED_DATA / relative
