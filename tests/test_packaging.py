"""The install files agree with each other and the package imports cleanly."""
import ast
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


def room_imports():
    """The package's import graph between rooms: room -> rooms it imports. A room is a sub-package or a
    top-level module of ``mrcnn_lite`` (``model``, ``fast``, ``build``, ...); imports inside a room and of the
    package root are left out. Read from the code with ``ast``, lazy imports inside functions included."""
    pkg = ROOT / "mrcnn_lite"
    modules = {}
    for f in pkg.rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        modules[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f

    def room(module):
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    graph = {}
    for name, f in modules.items():
        base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                parent = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join(parent + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("mrcnn_lite") and room(target) not in ("", room(name)):
                    graph.setdefault(room(name), set()).add(room(target))
    return graph


def test_import_directions():
    """ops imports nothing of mrcnn_lite; model imports only ops and config (never the fast floor, the
    builder, the engine, the experiments, the course or the CLI); and no two rooms import each other,
    directly or round a longer circle."""
    graph = room_imports()
    assert "ops" not in graph, graph.get("ops")
    assert graph["model"] <= {"ops", "config"}, graph["model"]
    assert graph["fast"] <= {"ops", "model", "config"}, graph["fast"]

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(r for r in graph if r in reachable(r))
    assert not circles, f"rooms on an import circle: {circles}"


def test_the_import_test_sees_a_circle(monkeypatch):
    """The graph above is read from the code: a lazy import of the fast floor inside model/ shows up."""
    real = Path.read_text

    def with_a_lazy_import(path, *args, **kwargs):
        text = real(path, *args, **kwargs)
        if path.name == "kernels.py" and path.parent.name == "model":
            text += "\n\ndef _lazy():\n    from ..fast.kernels import fast_kernels\n"
        return text

    monkeypatch.setattr(Path, "read_text", with_a_lazy_import)
    graph = room_imports()
    assert "fast" in graph["model"] and "model" in graph["fast"]


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
