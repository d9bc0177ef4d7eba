"""Packaging hook: the wheel carries the trained course model.

The course checkpoint lives in the repository at ``data/checkpoints/tiny_shapes.pt`` (``data/README.md`` says
how it is made). A wheel holds only the package folder, so building one copies that file into it as
``mrcnn_lite/checkpoints/tiny_shapes.pt``; ``ml.load_course_model()`` falls back to that copy when the
repository's is not there (a learner who installed the wheel on a JupyterHub). Everything else about the
package is in ``pyproject.toml``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CHECKPOINT = Path("data") / "checkpoints" / "tiny_shapes.pt"
PACKAGED = Path("mrcnn_lite") / "checkpoints" / "tiny_shapes.pt"


class BuildPyWithCheckpoint(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's data/ directly
        src = Path(__file__).resolve().parent / CHECKPOINT
        if not src.is_file():
            raise FileNotFoundError(f"{src}: the course checkpoint must be in the repository to build the wheel")
        dst = Path(self.build_lib) / PACKAGED
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / PACKAGED))
        return outputs


setup(cmdclass={"build_py": BuildPyWithCheckpoint})
