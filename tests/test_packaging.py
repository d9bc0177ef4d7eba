"""The install files agree with each other and the package imports cleanly."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda name where they differ.
CONDA_NAME = {"torch": "pytorch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower()


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_deps():
    deps = []
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:\n", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)(.*)$", line)
        if m and m.group(1) not in ("pip",):
            deps.append((m.group(1).lower(), m.group(2).strip()))
    return dict(deps)


def test_environment_yml_matches_pyproject():
    proj = _pyproject()["project"]
    reqs = proj["dependencies"] + proj["optional-dependencies"]["dev"]
    conda = _conda_deps()
    for req in reqs:
        name = _name(req)
        conda_name = CONDA_NAME.get(name, name)
        assert conda_name in conda, f"{name} is in pyproject.toml but not in environment.yml"
        spec = req[len(name):].strip()
        assert conda[conda_name] == spec, f"{name}: pyproject says {spec!r}, environment.yml says {conda[conda_name]!r}"
    pypi_names = {CONDA_NAME.get(_name(r), _name(r)) for r in reqs} | {"python"}
    extra = set(conda) - pypi_names
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {sorted(extra)}"
    py = _pyproject()["project"]["requires-python"]
    assert conda["python"] == py


def test_constraints_pin_the_working_pair():
    pins = (ROOT / "requirements" / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_ops_work_without_torchvision():
    # mrcnn_lite.ops is the from-scratch reference: with torchvision made unimportable, the package
    # still imports, the ops compute, and the fast floor falls back to its own kernels (and says so).
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import torch, mrcnn_lite as ml\n"
        "from mrcnn_lite.fast import TORCHVISION_KERNELS_AVAILABLE\n"
        "assert not TORCHVISION_KERNELS_AVAILABLE\n"
        "b = torch.tensor([[0., 0., 4., 4.], [2., 2., 6., 6.]])\n"
        "assert abs(ml.ops.box_iou(b, b)[0, 1].item() - 4 / 28) < 1e-7\n"
        "assert ml.ops.roi_align(torch.ones(1, 1, 8, 8), [b], 2).shape == (2, 1, 2, 2)\n"
        "m = ml.build_model(ml.config.tiny(num_classes=2)).eval()\n"
        "with torch.no_grad(): m([torch.rand(3, 64, 64)])\n"
        "used = m.kernels_used()\n"
        "assert used['batched_nms'] == 'mrcnn_lite.fast.batched_nms', used\n"
        "assert used['roi_align'] == 'mrcnn_lite.fast.roi_align', used\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for f in (ROOT / "mrcnn_lite" / "ops").glob("*.py"):
        assert "torchvision" not in re.sub(r'""".*?"""|#.*', "", f.read_text(), flags=re.S), f"{f.name} mentions torchvision in code"


def test_import_directions():
    """ops imports nothing of mrcnn_lite; model imports only ops, config and itself (and the fast floor
    in one place, model/kernels.py, when a model is built with kernels="fast"); the stage modules never
    import the fast floor, the tools or the course."""
    pattern = re.compile(r"^\s*from \.+(\w*)|^\s*import mrcnn_lite\.(\w+)|^\s*from mrcnn_lite\.(\w+)", re.M)

    def imported(path):
        found = set()
        for m in pattern.finditer(path.read_text()):
            found.add(next(g for g in m.groups() if g is not None) or "")
        return found

    pkg = ROOT / "mrcnn_lite"
    for f in (pkg / "ops").glob("*.py"):
        assert imported(f) <= {"", "boxes", "nms", "roi_ops", "poolers"}, f.name
    stages = {"", "anchors", "backbone", "box_head", "fpn", "frozen_bn", "inputs", "interop", "kernels", "mask_head",
              "mask_rcnn", "matching", "roi_heads", "rpn", "rpn_head", "transform", "ops", "config"}
    for f in (pkg / "model").glob("*.py"):
        allowed = stages | ({"fast"} if f.name == "kernels.py" else set())
        assert imported(f) <= allowed, (f.name, imported(f) - allowed)


def test_the_command_line_is_the_top_floor_and_recipes_are_data():
    """Nothing in the package imports the CLI but the entry points (``__main__.py``); ``recipes.py`` imports nothing,
    so every room can read the recipes without reaching up into the command line."""
    pkg = ROOT / "mrcnn_lite"
    cli_import = re.compile(r"^\s*(from \.+(cli|__main__)\b|from mrcnn_lite\.(cli|__main__)\b|import mrcnn_lite\.(cli|__main__)\b)",
                            re.M)
    for f in pkg.rglob("*.py"):
        if f.parent.name == "cli" or f.name == "__main__.py":
            continue
        assert not cli_import.search(f.read_text()), f"{f.relative_to(ROOT)} imports the command line"
    code = re.sub(r'""".*?"""|#.*', "", (pkg / "recipes.py").read_text(), flags=re.S)
    assert not re.search(r"^\s*(import|from)\s", code, re.M), "recipes.py must be plain data"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M), ".ci/run must run `make test`"
