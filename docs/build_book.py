"""Build the course as a static book: execute the notebooks, then render them and docs/*.md with Sphinx.

    python docs/build_book.py                       # every notebook, 2 at a time -> build/book/html/index.html
    python docs/build_book.py 01 04 --jobs 1        # a subset (by number or file name), e.g. for a quick look
    python docs/build_book.py --out /tmp/book       # another folder

Three steps, each failing loudly:

1. **Execute** each notebook with the default (FAST) settings in its own Jupyter kernel, ``--jobs`` at a
   time, each kernel with one thread (``OMP_NUM_THREADS=1``) so that two kernels share 2 cores without
   oversubscription. The kernel runs in ``notebooks/`` (the notebooks find ``data/`` and ``benchmarks/``
   beside it) and imports *this* checkout's package. A cell that raises stops that notebook; the script
   then prints the notebook, the cell and the error for every failure and exits 1, before building anything.
2. **Widgets to pictures.** A static page cannot run a kernel, so each widget output becomes a picture of its
   first state: the PNG of every ``Image`` widget and the outputs captured by every ``Output`` widget,
   read from the widget state the kernel sent, plus one line saying that the widget is live in JupyterLab.
   Text widgets (labels, HTML, progress bars) keep their text; controls are listed with their first values.
3. **Render** with Sphinx + myst-nb (``nb_execution_mode = "off"``: the notebooks are already executed)
   into ``OUT/html``: the landing page (``docs/index.md`` with the course map), one page per notebook, the
   pages of ``docs/``, and the full-text search of the book theme. Sphinx warnings are errors.

The executed notebooks stay in ``OUT/executed/`` (the tests count their image outputs against the page).
Nothing here is committed: ``build/`` is ignored by git.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import copy
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = ROOT / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
LIVE_NOTE = ("This is a live widget in JupyterLab (`make lab`): move its controls there. "
             "Shown here: a picture of its first state.")


def all_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def pick(names: list[str]) -> list[Path]:
    """Notebooks by number (``04``), stem (``04_anchors``), file name or path; all of them when none is given."""
    nbs = all_notebooks()
    if not names:
        return nbs
    picked = []
    for name in names:
        hits = [p for p in nbs if name in (p.name, p.stem, p.name[:2])]
        if not hits and name.endswith(".ipynb") and Path(name).is_file():
            hits = [Path(name).resolve()]
        if not hits:
            raise SystemExit(f"error: no notebook {name!r} in {NOTEBOOKS} (have {', '.join(p.stem for p in nbs)})")
        picked += [h for h in hits if h not in picked]
    return picked


# ------------------------------------------------------------------------------------------ 1. execute
def kernel_env() -> dict:
    env = dict(os.environ)
    env.pop("MRCNN_LITE_FULL", None)  # the default (FAST) settings
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               # figures must be displayed, even where the caller set Agg (CI does): the inline backend
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]))
    return env


def execute(src: str, dst: str, timeout: int) -> tuple[str, float, str | None]:
    """Run one notebook in a fresh kernel (in a worker process); returns (name, seconds, error or None).

    The kernel's working folder is ``notebooks/`` whichever notebook it runs, as in ``make lab``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    os.environ.clear()
    os.environ.update(kernel_env())  # the kernel inherits this process's environment
    # save_part cells write here, not to ~/.mrcnn_lite/parts; one empty folder per notebook, so that notebook
    # 10's page does not depend on which notebooks were built before it.
    os.environ["MRCNN_LITE_PARTS"] = tempfile.mkdtemp(prefix=f"mrcnn_lite_parts_{Path(src).stem}_")
    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        error = str(e)
    nbformat.write(nb, dst)
    return Path(src).name, time.perf_counter() - start, error


def execute_all(nbs: list[Path], out: Path, jobs: int, timeout: int) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    times, failures = {}, []
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(execute, str(nb), str(out / nb.name), timeout) for nb in nbs]
        for fut in cf.as_completed(futures):
            name, seconds, error = fut.result()
            times[name] = seconds
            print(f"  executed {name:32s} {seconds:6.1f} s{'  FAILED' if error else ''}", flush=True)
            if error:
                failures.append((name, error))
    if failures:
        for name, error in failures:
            print(f"\n=== {name} failed ===\n{error[-4000:]}", file=sys.stderr)
        raise SystemExit(f"error: {len(failures)} notebook(s) failed: {', '.join(n for n, _ in failures)} "
                         f"(executed copies with the error output in {out})")
    return times


# ---------------------------------------------------------------------------------- 2. widgets -> pictures
def _widget_outputs(model_id: str, state: dict, seen: set) -> list[dict]:
    """Static outputs for the widget ``model_id`` and its children, in the order they are laid out."""
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    name, s = model.get("model_name", ""), model.get("state", {})
    outs: list[dict] = []
    if name == "ImageModel":
        data = _buffer(model, "value")
        if data is not None and s.get("format", "png") == "png":
            outs.append({"output_type": "display_data", "metadata": {},
                         "data": {"image/png": base64.b64encode(data).decode("ascii"), "text/plain": "<image>"}})
    elif name == "OutputModel":
        for o in s.get("outputs", []):
            o = copy.deepcopy(o)
            if o.get("output_type") == "display_data" and WIDGET_VIEW in o.get("data", {}):
                outs += _widget_outputs(o["data"][WIDGET_VIEW]["model_id"], state, seen)
            else:
                outs.append(o)
    elif name in ("HTMLModel", "HTMLMathModel", "LabelModel") and s.get("value"):
        text = s["value"] if name != "LabelModel" else html.escape(s["value"])
        outs.append({"output_type": "display_data", "metadata": {}, "data": {"text/html": text, "text/plain": ""}})
    elif name in ("IntProgressModel", "FloatProgressModel"):
        outs.append(_text(f"progress {s.get('value')} / {s.get('max')}"))
    elif name.endswith(("SliderModel", "CheckboxModel", "DropdownModel", "SelectModel", "SelectMultipleModel",
                        "TextModel", "ToggleButtonModel", "ToggleButtonsModel", "RadioButtonsModel")):
        labels = s.get("_options_labels")
        if labels is not None and "index" in s:  # selections sync their index, not their value
            index = s["index"]
            value = ", ".join(labels[i] for i in index) if isinstance(index, list) else (
                labels[index] if index is not None else None)
        else:
            value = s.get("value")
        outs.append(_text(f"{s.get('description') or name[:-5]}: {value}", control=True))
    for child in s.get("children", []):
        outs += _widget_outputs(child.replace("IPY_MODEL_", ""), state, seen)
    return outs


def _buffer(model: dict, key: str) -> bytes | None:
    for b in model.get("buffers", []):
        if b.get("path") == [key]:
            return base64.b64decode(b["data"])
    return None


def _text(text: str, control: bool = False) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text + "\n", "_control": control}


def _merge_controls(outs: list[dict]) -> list[dict]:
    """Consecutive control lines become one stdout block ("x1: 3.0 | y1: 4.0 | ...")."""
    merged: list[dict] = []
    for o in outs:
        if o.pop("_control", False) and merged and merged[-1].get("_controls"):
            merged[-1]["text"] = merged[-1]["text"].rstrip("\n") + " | " + o["text"]
            continue
        if o.get("output_type") == "stream" and o["text"].count(":") and "progress" not in o["text"]:
            o["_controls"] = True
        merged.append(o)
    for o in merged:
        o.pop("_controls", None)
    return merged


def freeze_widgets(nb) -> int:
    """Replace each widget view in ``nb`` by static outputs of its first state; returns how many."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        new = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW) if out.get("output_type") in ("display_data", "execute_result") else None
            if view is None:
                new.append(out)
                continue
            count += 1
            static = _merge_controls(_widget_outputs(view["model_id"], state, set()))
            note = {"output_type": "display_data", "metadata": {},
                    "data": {"text/markdown": f"*{LIVE_NOTE}*", "text/plain": LIVE_NOTE}}
            new += [note] + static
        cell.outputs = [_as_output(o) for o in new]
    nb.metadata.pop("widgets", None)  # the book has no widget manager (and loads no script from a CDN)
    return count


def _as_output(o):
    import nbformat

    return nbformat.from_dict(o)


def count_images(nb) -> int:
    """Image outputs of an executed notebook (what the page must show as <img>)."""
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if any(k in ("image/png", "image/jpeg", "image/svg+xml") for k in o.get("data", {})))


# A line of a C++ library's own log, written straight to the kernel's stderr (torch.profiler's kineto prints
# "USDT:2026-01-01 12:00:00 123:123 SyncActivityProfilerHandler.cpp:39] profiler_start", and on a machine
# without a GPU "ERROR:... DeviceProperties.cpp:56] gpuGetDeviceCount failed"): noise for a reader of the book.
NATIVE_LOG_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \w+\.cpp:\d+\] ")


def drop_native_log_lines(nb) -> int:
    """Remove the native log lines (above) from the stderr outputs of ``nb``; returns how many were removed."""
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = "".join(out["text"]).splitlines(keepends=True)
                rest = [line for line in lines if not NATIVE_LOG_LINE.match(line)]
                removed += len(lines) - len(rest)
                if not rest:
                    continue
                out["text"] = "".join(rest)
            kept.append(out)
        cell.outputs = kept
    return removed


def error_outputs(nb) -> list[str]:
    """Error and stderr outputs of an executed notebook (``cell i: first line``)."""
    found = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            if o.get("output_type") == "error" or (o.get("output_type") == "stream" and o.get("name") == "stderr"):
                text = o.get("ename", "") + " " + "".join(o.get("text", ""))
                found.append(f"cell {i}: {text.strip().splitlines()[0][:150] if text.strip() else '(empty)'}")
    return found


# --------------------------------------------------------------------------------------------- 3. render
def open_here_cell(name: str) -> dict:
    import nbformat

    return nbformat.v4.new_markdown_cell(
        f"```{{admonition}} Run this notebook yourself\n:class: tip\n"
        f"This page is `notebooks/{name}` executed with the default settings. To change it and run it live: "
        f"`make lab` in a clone of the repository opens JupyterLab on `notebooks/`; open `{name}` there "
        f"(a JupyterLab already running from the repository root has it at "
        f"<http://localhost:8888/lab/tree/notebooks/{name}>). Outside the repository, the notebook's first "
        f"code cell says how to install the package. The download button at the top of this page gives "
        f"the executed notebook.\n```")


def course_map(nbs: list[Path]) -> str:
    """The landing page's course map: one row per notebook (title and study time from its first cell)."""
    rows = ["| # | notebook | what you learn | study time |", "|---|---|---|---|"]
    built = {p.name for p in nbs}
    for p in all_notebooks():
        first = json.loads(p.read_text())["cells"][0]
        text = "".join(first["source"])
        title = text.splitlines()[0].lstrip("# ").split("·", 1)[-1].strip()
        m = re.search(r"\*\*Study time\.\*\*\s*(?:about\s*)?(\d+(?:\.\d+)?\s*hours?)", text, re.I)
        hours = m.group(1) if m else ""
        objectives = re.findall(r"^- (.+?)[;.]?$", text.split("**Learning objectives", 1)[-1], re.M)
        what = objectives[0] if objectives and "**Learning objectives" in text else ""
        link = f"[{title}](notebooks/{p.stem}.ipynb)" if p.name in built else f"{title} (not in this build)"
        rows.append(f"| {p.name[:2]} | {link} | {what} | {hours} |")
    return "\n".join(rows)


def stage(nbs: list[Path], executed: Path, src: Path) -> dict[str, int]:
    """The Sphinx source folder: docs/ pages, the landing page with the course map, executed notebooks."""
    import nbformat

    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    for f in DOCS.iterdir():
        if f.suffix in (".md", ".py") and f.name != "build_book.py":
            shutil.copy(f, src / f.name)
    try:  # MathJax for the pages, so that the formulas render without a network (conf.py picks it up)
        import jupyter_server_mathjax

        shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", src / "_static" / "mathjax")
    except ImportError:
        print("  note: jupyter-server-mathjax is not installed; the pages will load MathJax from its CDN")
    index = (src / "index.md").read_text()
    (src / "index.md").write_text(index.replace("<!-- COURSE_MAP -->", course_map(nbs)))
    figures = {}
    for nb_path in nbs:
        nb = nbformat.read(str(executed / nb_path.name), as_version=4)
        frozen = freeze_widgets(nb)
        dropped = drop_native_log_lines(nb)
        for line in error_outputs(nb):   # what is left on stderr is the notebook's own: say so in the build log
            print(f"  stderr   {nb_path.name:32s} {line}")
        # the first cell is the title + objectives; the note on running it live comes right after it
        nb.cells.insert(1, open_here_cell(nb_path.name))
        nbformat.write(nb, str(src / "notebooks" / nb_path.name))
        figures[nb_path.name] = count_images(nb)
        print(f"  staged   {nb_path.name:32s} {figures[nb_path.name]:3d} figures, {frozen} widget(s) as pictures"
              + (f", {dropped} native log line(s) dropped" if dropped else ""))
    return figures


def render(src: Path, html_dir: Path) -> None:
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-j", "1",
           "-d", str(src.parent / "doctrees"), str(src), str(html_dir)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    result = subprocess.run(cmd, env=env)
    if result.returncode:
        raise SystemExit(f"error: sphinx-build failed (exit {result.returncode}): {' '.join(cmd)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Execute the course notebooks and build the book (static HTML).")
    ap.add_argument("notebooks", nargs="*", help="numbers or names of notebooks (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "book", help="output folder (default build/book)")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks executed at once (default 2)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell before it counts as failed")
    ap.add_argument("--reuse-executed", action="store_true",
                    help="skip step 1 and render the executed copies already in OUT/executed (to work on the pages)")
    args = ap.parse_args(argv)
    for mod in ("nbclient", "sphinx", "myst_nb", "sphinx_book_theme"):
        try:
            __import__(mod)
        except ImportError:
            raise SystemExit(f"error: {mod} is not installed; install the book extra: "
                             f"pip install -c requirements/constraints.txt -e '.[book]'")
    nbs = pick(args.notebooks)
    out = args.out.resolve()
    start = time.perf_counter()
    if args.reuse_executed:
        missing = [p.name for p in nbs if not (out / "executed" / p.name).is_file()]
        if missing:
            raise SystemExit(f"error: --reuse-executed, but {out / 'executed'} lacks {', '.join(missing)}")
    else:
        print(f"executing {len(nbs)} notebook(s), {args.jobs} at a time ...", flush=True)
        execute_all(nbs, out / "executed", args.jobs, args.timeout)
    t_exec = time.perf_counter() - start
    figures = stage(nbs, out / "executed", out / "src")
    if (out / "html").exists():
        shutil.rmtree(out / "html")
    print("rendering ...", flush=True)
    render(out / "src", out / "html")
    total = time.perf_counter() - start
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"book: {out / 'html' / 'index.html'}  ({sum(figures.values())} figures on {len(nbs)} notebook pages; "
          f"executing {t_exec:.0f} s, total {total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
