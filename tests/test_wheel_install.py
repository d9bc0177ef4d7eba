"""A learner without the repository: the built wheel installed into a fresh virtual environment.

Builds the wheel from a copy of the files a build needs (so the repository stays untouched), makes a fresh
venv, installs the wheel the way the first code cell of every notebook tells a learner to (``%pip install
mrcnn_lite-0.1.0-py3-none-any.whl``, which runs ``python -m pip install``), then runs that cell's code in a
folder outside the repository and checks that the trained course model loads and detects the shapes.

To avoid a 5 GB torch install, the fresh venv sees the dependencies (torch, torchvision, ...) of the
running environment through a ``.pth`` file that points to a folder of links to that environment's
site-packages, *minus* anything of mrcnn_lite: the package itself can come only from the wheel (checked).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mrcnn_lite.course_data import SHIPPED, SHIPPED_RESULTS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "09_mask_rcnn.ipynb"

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _setup_cell() -> str:
    """The code of the notebook's 'Running outside this repository' cell (the one right after its first cell)."""
    cell = json.loads(NOTEBOOK.read_text())["cells"][1]
    source = "".join(cell["source"])
    assert cell["cell_type"] == "code" and source.startswith("# Running outside this repository"), source[:200]
    assert "%pip install mrcnn_lite-0.1.0-py3-none-any.whl" in source
    return source


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mrcnn_lite", src / "mrcnn_lite", ignore=shutil.ignore_patterns("__pycache__"))
    for relative in [f"data/{r}" for r in SHIPPED] + list(SHIPPED_RESULTS):
        (src / relative).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / relative).is_dir():
            shutil.copytree(ROOT / relative, src / relative)
        else:
            shutil.copy(ROOT / relative, src / relative)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
         env=_clean_env())
    wheels = list(dist.glob("mrcnn_lite-0.1.0-py3-none-any.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    return wheels[0]


def test_wheel_carries_the_course_data(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "mrcnn_lite/course/data/lab_case.pt" in names
    # every shipped file, byte for byte the repository's size: data/ and the shipped results of notebooks 14, 16
    for base, relative in [(ROOT / "data", r) for r in SHIPPED] + [(ROOT, r) for r in SHIPPED_RESULTS]:
        files = [f for f in (base / relative).rglob("*") if f.is_file()] if (base / relative).is_dir() \
            else [base / relative]
        assert files, relative
        for f in files:
            packaged = "mrcnn_lite/course_data/" + f.relative_to(base).as_posix()
            assert packaged in names, packaged
            assert zipfile.ZipFile(wheel).getinfo(packaged).file_size == f.stat().st_size, packaged
    assert not [n for n in names if n.startswith(("data/", "notebooks/", "tests/"))]


@pytest.mark.heavy
def test_fresh_venv_installs_the_wheel_and_predicts(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], env=_clean_env())
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())

    # The running environment's dependencies, without mrcnn_lite (an editable install of the repository).
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith(("mrcnn_lite", "__editable__", "_mrcnn_lite", "pip-", "pip")) or name.endswith(".pth"):
            continue
        (deps / entry.name).symlink_to(entry)
    (site / "zz_course_deps.pth").write_text(str(deps) + "\n")
    # The venv's own setuptools (bundled by ensurepip) is older than torch asks for: use the shared one.
    _run([python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], env=_clean_env())

    outside = tmp_path / "learner"  # a folder with no repository above it
    outside.mkdir()
    cell = _setup_cell()
    (outside / "setup_cell.py").write_text(cell)

    before = _run([python, "setup_cell.py"], cwd=outside, env=_clean_env())
    assert before.stdout.strip().startswith("not ready: mrcnn_lite is not installed"), before.stdout

    # What `%pip install mrcnn_lite-0.1.0-py3-none-any.whl` runs in the learner's kernel.
    shutil.copy(wheel, outside / wheel.name)
    _run([python, "-m", "pip", "install", "--no-index", wheel.name], cwd=outside, env=_clean_env())

    after = _run([python, "setup_cell.py"], cwd=outside, env=_clean_env())
    assert after.stdout.strip() == "ready: mrcnn_lite 0.1.0 and its trained course model", after.stdout

    predict = outside / "predict.py"
    predict.write_text(
        "import json, torch, mrcnn_lite as ml\n"
        "from mrcnn_lite.data import ShapesDataset\n"
        "from mrcnn_lite.pretrained import COURSE_CHECKPOINT\n"
        "torch.set_num_threads(1)\n"
        "model = ml.load_course_model()\n"
        "ds = ShapesDataset(4, seed=99)\n"
        "hits = total = 0\n"
        "with torch.no_grad():\n"
        "    for image, target in ds:\n"
        "        out = model([image])[0]\n"
        "        keep = out['scores'] > 0.5\n"
        "        iou = ml.ops.box_iou(target['boxes'], out['boxes'][keep])\n"
        "        for g in range(len(target['boxes'])):\n"
        "            total += 1\n"
        "            same = out['labels'][keep] == target['labels'][g]\n"
        "            hits += bool(((iou[g] >= 0.5) & same).any()) if keep.any() else 0\n"
        "        assert out['masks'].shape[1:] == (1, *image.shape[1:])\n"
        "from mrcnn_lite.data import CocoInstances, nuclei\n"
        "from mrcnn_lite.course_data import course_data\n"
        "mini = course_data('shapes-mini') / 'val'\n"
        "n_mini = len(CocoInstances(mini / 'images', mini / 'annotations.json'))\n"
        "from mrcnn_lite.course import experiments\n"
        "ablations = json.loads(course_data('benchmarks/ablations/ablations.json').read_text())\n"
        "print(json.dumps({'file': ml.__file__, 'checkpoint': str(COURSE_CHECKPOINT), 'hits': hits, 'total': total,\n"
        "                  'mini': n_mini, 'nuclei': len(nuclei('val')), 'ablation_runs': len(ablations['runs']),\n"
        "                  'references': sorted(p.name for p in experiments.REFERENCE_DIR.glob('*.json'))}))\n")
    result = json.loads(_run([python, predict.name], cwd=outside, env=_clean_env()).stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(site.resolve()), result  # from the wheel, not the repository
    assert Path(result["checkpoint"]).resolve().is_relative_to(site.resolve()), result
    # The trained model finds most shapes of held-out images (its held-out AP50 is about 0.93).
    assert result["total"] >= 4 and result["hits"] >= 0.75 * result["total"], result
    # The data the notebooks read from the repository's data/ come with the wheel too (notebooks 00, 12, 15).
    assert result["mini"] == 32 and result["nuclei"] == 4, result
    # ... and the shipped results notebooks 14 and 16 print (the ablation table, the experiments' reference runs).
    assert result["ablation_runs"] >= 22 and result["references"] == [
        "anchors.json", "levels.json", "mask_res.json", "misalign.json"], result
