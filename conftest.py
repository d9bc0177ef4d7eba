"""Run by pytest for both tests/ and notebooks/ (tests/conftest.py holds the tests' fixtures).

The notebooks' ``save_part`` cells store a learner's functions in ``$MRCNN_LITE_PARTS`` (default
``~/.mrcnn_lite/parts``). Under test each notebook's kernel gets its own empty folder, so a test run never
writes to the home folder, and notebook 10 runs the same way whichever notebooks ran before it.
"""
import os
import tempfile
from pathlib import Path

import pytest

_PARTS_ROOT = Path(tempfile.mkdtemp(prefix="mrcnn_lite_parts_"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    path = Path(str(item.fspath))
    if path.suffix == ".ipynb":   # before nbval starts the notebook's kernel, which inherits the environment
        os.environ["MRCNN_LITE_PARTS"] = str(_PARTS_ROOT / path.stem)
