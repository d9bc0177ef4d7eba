"""Committed notebooks carry no images: only the text outputs nbval checks (tools/nbtool.py strip)."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_images_or_widget_state(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"], f"{path.name}: saved widget state (run tools/nbtool.py strip)"
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            assert not any(k.startswith("image/") for k in data), f"{path.name} cell {i}: image output"
        if cell["cell_type"] == "code" and "# NBVAL_CHECK_OUTPUT" not in "".join(cell["source"]):
            assert not cell.get("outputs"), f"{path.name} cell {i}: outputs on an unchecked cell"
    assert path.stat().st_size < 100_000, f"{path.name} is {path.stat().st_size} bytes"


def test_notebooks_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))), numbers
