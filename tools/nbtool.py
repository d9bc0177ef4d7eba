"""Notebook maintenance for the course: build, execute, and strip notebooks.

    python tools/nbtool.py py2nb SRC.py OUT.ipynb     # percent-format script -> notebook
    python tools/nbtool.py nb2py NB.ipynb OUT.py      # notebook -> percent-format script (to edit)
    python tools/nbtool.py run NB.ipynb [NB ...]      # execute in place, then strip (below)
    python tools/nbtool.py strip NB.ipynb [NB ...]    # strip only

Percent format: a line ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines
are written as ``# text``. Stripping keeps the outputs nbval compares -- the text outputs of cells
marked ``# NBVAL_CHECK_OUTPUT`` -- and drops everything else, widget state included (images never go into git).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

CHECK = "# NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def py2nb(src: Path, out: Path) -> None:
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in Path(src).read_text().splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, str(out))


def nb2py(nb_path: Path, out: Path) -> None:
    nb = nbformat.read(str(nb_path), as_version=4)
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            body = "\n".join(("# " + l) if l else "#" for l in cell.source.splitlines())
            parts.append("# %% [markdown]\n" + body)
        elif cell.cell_type == "code":
            parts.append("# %%\n" + cell.source)
    Path(out).write_text("\n\n".join(parts) + "\n")


def strip(nb) -> None:
    # Saved widget state holds rendered images (PNG bytes): never keep it.
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if CHECK in cell.source:
            kept = []
            for o in cell.outputs:
                if o.output_type == "stream" and o.get("name") == "stdout":
                    kept.append(o)
                elif o.output_type == "execute_result" and "text/plain" in o.get("data", {}):
                    o["data"] = {"text/plain": o["data"]["text/plain"]}
                    o["metadata"] = {}
                    kept.append(o)
            cell.outputs = kept
        else:
            cell.outputs = []
            cell.execution_count = None


def run(nb_path: Path, timeout: int = 600) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(str(nb_path), as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(nb_path).parent)}}).execute()
    strip(nb)
    nbformat.write(nb, str(nb_path))


def main(argv):
    cmd, *args = argv
    if cmd == "py2nb":
        py2nb(Path(args[0]), Path(args[1]))
    elif cmd == "nb2py":
        nb2py(Path(args[0]), Path(args[1]))
    elif cmd == "run":
        for a in args:
            run(Path(a))
            print("executed and stripped", a)
    elif cmd == "strip":
        for a in args:
            nb = nbformat.read(a, as_version=4)
            strip(nb)
            nbformat.write(nb, a)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
