"""The book (``make book`` = ``docs/build_book.py``) built for two notebooks and read in headless Chromium.

Builds notebooks 01 (8 figures, a lab, a prediction) and 04 (figures and the AnchorExplorer widget) with
the book's own script, then opens the landing page, both notebook pages and the search page in Debian's
Chromium through Playwright, as ``tests/test_browser.py`` does. For each notebook page: it renders (its
title, the note on running it in JupyterLab), it shows as many images as the executed notebook has image
outputs (widget pictures included) and each image is loaded, there is no error or stderr output, and every
internal link points to a file that exists (and, for a ``#fragment``, to an element with that id). A second
test makes the build fail on a notebook that raises. Needs the ``book`` extra (Sphinx, myst-nb, the book
theme); without it, or without Chromium, the test is skipped with a hint, except under ``CI=true``.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("MRCNN_LITE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "tests" / "artifacts"
NOTEBOOKS = ["01_boxes_iou_nms", "04_anchors"]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

pytestmark = pytest.mark.slow


def _missing(reason: str, how: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"book test cannot run in CI: {reason}; {how}", pytrace=False)
    pytest.skip(f"{reason}; to run it, {how}")


def _need_book_extra():
    for mod in ("sphinx", "myst_nb", "sphinx_book_theme", "nbclient"):
        try:
            __import__(mod)
        except ImportError:
            _missing(f"the Python package {mod} is not installed",
                     "install the book extra: pip install -c requirements/constraints.txt -e '.[book]'")


def _build(out: Path, *notebooks: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "docs" / "build_book.py"), *notebooks, "--jobs", "2",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    _need_book_extra()
    out = tmp_path_factory.mktemp("book")
    result = _build(out, *NOTEBOOKS)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out


def _expected_images(executed: Path) -> tuple[int, int]:
    """(image outputs, pictures of widgets) of an executed notebook, read from the .ipynb itself: every
    image/* output, plus every PNG that an Image widget shown by a cell holds (children followed)."""
    nb = json.loads(executed.read_text())
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    images, pictures = 0, 0

    def walk(model_id, seen):
        if model_id in seen or model_id not in state:
            return 0
        seen.add(model_id)
        model = state[model_id]
        n = 0
        if model["model_name"] == "ImageModel" and any(b["path"] == ["value"] and base64.b64decode(b["data"])
                                                       for b in model.get("buffers", [])):
            n += 1
        for o in model["state"].get("outputs", []):  # an Output widget's captured figures
            n += sum(1 for k in o.get("data", {}) if k.startswith("image/"))
        for child in model["state"].get("children", []):
            n += walk(child.replace("IPY_MODEL_", ""), seen)
        return n

    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                pictures += walk(data[WIDGET_VIEW]["model_id"], set())
            elif any(k.startswith("image/") for k in data):
                images += 1
    return images, pictures


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _missing(f"no Chromium at {CHROMIUM}", "sudo apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package `playwright` is not installed", ".venv/bin/pip install playwright")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _check_links(page, html_file: Path, html_root: Path):
    """Every internal href of the page resolves to a file of the built site (and its #fragment to an id)."""
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert hrefs, f"{html_file.name}: no links at all"
    broken = []
    for href in hrefs:
        url = urlparse(href)
        if url.scheme in ("http", "https", "mailto") or href.startswith("javascript:"):
            continue
        target = (html_file.parent / unquote(url.path)).resolve() if url.path else html_file
        if not target.is_file() or html_root.resolve() not in target.parents:
            broken.append(f"{href} -> {target} (no such file in the book)")
            continue
        if url.fragment and target == html_file:
            if not page.evaluate("id => !!document.getElementById(id)", unquote(url.fragment)):
                broken.append(f"{href} (no element with id {url.fragment!r})")
        elif url.fragment and f'id="{url.fragment}"' not in target.read_text(errors="replace"):
            broken.append(f"{href} (no element with id {url.fragment!r} in {target.name})")
    assert not broken, f"{html_file.name}: broken links:\n" + "\n".join(broken)


@pytest.mark.heavy
def test_book_pages_in_chromium(book, browser):
    html = book / "html"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    failed_requests = []
    page.on("requestfailed", lambda r: failed_requests.append(f"{r.url} {r.failure}"))

    # The landing page: the course map links the two built notebooks, and only those.
    index = html / "index.html"
    page.goto(index.as_uri())
    assert "Mask R-CNN from scratch" in page.title()
    map_links = page.eval_on_selector_all("table a[href^='notebooks/']", "els => els.map(e => e.getAttribute('href'))")
    assert sorted(map_links) == [f"notebooks/{n}.html" for n in NOTEBOOKS], map_links
    all_notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert page.locator("text=not in this build").count() == len(all_notebooks) - len(NOTEBOOKS)
    _check_links(page, index, html)

    summary = {}
    for name in NOTEBOOKS:
        html_file = html / "notebooks" / f"{name}.html"
        assert html_file.is_file(), f"no page for {name}"
        page.goto(html_file.as_uri())
        page.wait_for_load_state("load")
        title = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"][0]["source"][0]
        heading = page.locator("article h1").first.inner_text()
        assert title.lstrip("# ").strip().split("·")[-1].strip() in heading, (heading, title)
        body = page.locator("article").inner_text()
        assert "Run this notebook yourself" in body and f"notebooks/{name}.ipynb" in body
        assert "Learning objectives." in body and "Study time." in body

        # Every figure of the executed notebook is on the page, and each one loaded.
        images, pictures = _expected_images(book / "executed" / f"{name}.ipynb")
        imgs = page.locator("article .cell_output img")
        assert imgs.count() == images + pictures, (name, imgs.count(), images, pictures)
        assert images >= 2, f"{name}: the executed notebook has only {images} figures"
        unloaded = page.eval_on_selector_all(
            "article .cell_output img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.src)")
        assert not unloaded, f"{name}: images that did not load: {unloaded}"

        # No error output: no traceback, no stderr block, no error class anywhere in the outputs.
        errors = page.eval_on_selector_all(
            "article .cell_output .stderr, article .cell_output .traceback, article .cell_output .error",
            "els => els.map(e => e.textContent.slice(0, 300))")
        assert not errors, f"{name}: error output on the page: {errors}"
        assert "Traceback (most recent call last)" not in body
        _check_links(page, html_file, html)
        summary[name] = (images, pictures)
        print(f"book page {name}: {images} figures + {pictures} widget picture(s), all loaded; no error output; "
              f"links resolve")
        page.screenshot(path=str(ARTIFACTS / f"book_{name}.png"), full_page=False)

    # The widget of notebook 04 is a picture of its first state, with the line saying it is live.
    assert summary["04_anchors"][1] >= 1, "the AnchorExplorer left no picture"
    page.goto((html / "notebooks" / "04_anchors.html").as_uri())
    assert page.locator("text=This is a live widget in JupyterLab").count() >= 1

    # Search: the theme's full-text search finds the anchors page.
    page.goto((html / "search.html").as_uri() + "?q=AnchorExplorer")
    page.wait_for_selector("#search-results li a", timeout=30_000)
    found = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.getAttribute('href'))")
    assert any("04_anchors" in h for h in found), found
    missing = [f for f in failed_requests if "ERR_FILE_NOT_FOUND" in f]  # (a navigation cut short is not one)
    assert not missing, f"files the pages ask for and the book lacks: {missing}"
    page.close()


def test_book_fails_loudly_on_a_notebook_error(tmp_path):
    _need_book_extra()
    import nbformat

    bad = tmp_path / "99_broken.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · broken"),
                                         nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("raise ValueError('planted error in cell 2')")])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, str(bad))
    result = _build(tmp_path / "book", str(bad))
    assert result.returncode != 0
    assert "99_broken.ipynb" in result.stderr and "planted error in cell 2" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "book" / "html").exists(), "a failed build must not render pages"


def test_native_log_lines_are_dropped_and_a_real_warning_is_kept():
    """torch.profiler's C++ logger writes to the kernel's stderr (notebook 13); the book drops exactly those lines."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("build_book", ROOT / "docs" / "build_book.py")
    book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(book)
    log = ("USDT:2026-12-07 04:09:22 25650:25650 SyncActivityProfilerHandler.cpp:39] profiler_start\n"
           "ERROR:2026-12-07 04:09:22 25650:25650 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n")
    warning = "/x/y.py:3: UserWarning: something the reader should see\n"
    cell = nbformat.v4.new_code_cell("prof()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=log),
        nbformat.v4.new_output("stream", name="stderr", text=log + warning),
        nbformat.v4.new_output("stream", name="stdout", text=log)])
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert book.drop_native_log_lines(nb) == 4
    assert [(o["name"], o["text"]) for o in nb.cells[0].outputs] == [("stderr", warning), ("stdout", log)]
    assert book.error_outputs(nb) == ["cell 0: /x/y.py:3: UserWarning: something the reader should see"]
