"""Packaging hook: the wheel carries the course's shipped data.

The trained course model (``data/checkpoints/tiny_shapes.pt``, ``data/README.md`` says how it is made), the
shapes mini set and the nucleus tiles live in the repository's ``data/``. A wheel holds only the package folder,
so building one copies them into it as ``mrcnn_lite/course_data/`` (the list is ``SHIPPED`` in
``mrcnn_lite/course_data.py``); the package reads that copy when the repository's is not there (a learner who
installed the wheel on a JupyterHub). Everything else about the package is in ``pyproject.toml``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# The same list as mrcnn_lite/course_data.py's SHIPPED (setup.py runs before the package can be imported).
SHIPPED = ("checkpoints/tiny_shapes.pt", "shapes-mini", "dsb2018-nuclei")
SHIPPED_RESULTS = ("benchmarks/ablations/ablations.json", "benchmarks/experiments")   # relative to the root
PACKAGED = Path("mrcnn_lite") / "course_data"


class BuildPyWithCheckpoint(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's data/ directly
        root = Path(__file__).resolve().parent
        for src, relative in [(root / "data" / r, r) for r in SHIPPED] + [(root / r, r) for r in SHIPPED_RESULTS]:
            if not src.exists():
                raise FileNotFoundError(f"{src}: the course's shipped data must be in the repository to build the wheel")
            dst = Path(self.build_lib) / PACKAGED / relative
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copyfile(src, dst)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            root = Path(self.build_lib) / PACKAGED
            outputs.extend(str(f) for f in root.rglob("*") if f.is_file())
        return outputs


setup(cmdclass={"build_py": BuildPyWithCheckpoint})
