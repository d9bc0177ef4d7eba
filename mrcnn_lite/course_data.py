"""Where the course's shipped files are: the repository's ``data/`` folder, or the copy inside an installed wheel.

A clone (or an editable install) reads ``data/`` beside the package folder. A learner who installed the built
wheel on a fresh Jupyter server has no ``data/`` folder: the wheel carries the same files inside the package,
as ``mrcnn_lite/course_data/`` (``setup.py`` copies ``SHIPPED`` there when it builds the wheel).
"""
from __future__ import annotations

from pathlib import Path

# What the wheel carries, relative to the repository's data/: the trained course model, the COCO-format
# shapes mini set (notebooks 00 and 12) and the real nucleus tiles (notebook 15).
SHIPPED = ("checkpoints/tiny_shapes.pt", "shapes-mini", "dsb2018-nuclei")

REPOSITORY_DATA = Path(__file__).resolve().parent.parent / "data"
PACKAGED_DATA = Path(__file__).resolve().parent / "course_data"


def course_data(relative: str) -> Path:
    """The path of a shipped file or folder, e.g. ``course_data("shapes-mini")``: the repository's copy when it
    exists, else the wheel's (which may not exist either: the caller's open says which file is missing)."""
    repository = REPOSITORY_DATA / relative
    return repository if repository.exists() else PACKAGED_DATA / relative
