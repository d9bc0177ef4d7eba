"""The course in a real browser: JupyterLab + headless Chromium run notebook 04 and move a slider.

Needs Debian's Chromium (``/usr/bin/chromium``) and Playwright's Python package; Playwright drives the
system browser, it never downloads one. Without them the test is skipped, with a note on how to get
them -- except under ``CI=true``, where a missing browser is a failure.

What it checks: every cell of ``04_anchors.ipynb`` runs in JupyterLab with no error output, the
AnchorExplorer widget renders (sliders and an image), and the image changes when a slider moves
(the slider is focused and moved with the arrow key). A screenshot goes to
``tests/artifacts/browser_04_anchors.png``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("MRCNN_LITE_CHROMIUM", "/usr/bin/chromium"))
NOTEBOOK = "04_anchors.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"
HOW_TO = ("install Debian's Chromium and Playwright's Python package: `sudo apt-get install chromium` and "
          "`.venv/bin/pip install playwright` (no `playwright install` needed: the test uses the system browser)")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test cannot run in CI: {reason}; {HOW_TO}", pytrace=False)
    pytest.skip(f"{reason}; to run it, {HOW_TO}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free loopback port, token auth on, serving a copy of the notebook."""
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        _missing(f"{jupyter} not found (JupyterLab is in the dev extras)")
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    if (ROOT / "data").is_dir():
        shutil.copytree(ROOT / "data", root / "data")
    port, token = _free_port(), secrets.token_hex(16)
    # Private config/runtime/settings folders: the learner's own JupyterLab setup cannot interfere.
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline",
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    env.pop("MRCNN_LITE_FULL", None)
    # Render every cell (JupyterLab 4 otherwise only renders the cells in view), so that all prompts
    # and outputs can be inspected.
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # CI containers run as root
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        try:  # stop the kernels first (they run in their own sessions), then the server
            for k in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{k['id']}", method="DELETE")
            _api(base, token, "/api/shutdown", method="POST")
            proc.wait(timeout=15)
        except Exception:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def _cell_prompts(page):
    return page.eval_on_selector_all(
        ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent.trim())")


def test_anchors_notebook_in_jupyterlab(jupyterlab):
    if not CHROMIUM.exists():
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package `playwright` is not installed")
    base, token = jupyterlab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_04_anchors.png"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
            # JupyterLab may ask which kernel to start: take the notebook's own (Python 3).
            select = page.locator(".jp-Dialog button.jp-mod-accept")
            try:
                select.wait_for(state="visible", timeout=5_000)
                select.click()
            except Exception:
                pass  # no dialog
            # Wait for the kernel to be ready before running (the toolbar's status says "idle").
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

            page.click(".lm-MenuBar-item:has-text('Run')")
            page.click(".lm-Menu-item:has-text('Run All Cells')")

            # Done when the code cells show the execution counts 1, 2, ..., N of this fresh kernel (the
            # file itself stores a few counts from when it was built) and the kernel is idle again.
            deadline = time.time() + 90
            while True:
                prompts = _cell_prompts(page)
                status = page.get_attribute(".jp-Notebook-ExecutionIndicator", "data-status")
                fresh = [f"[{i}]:" for i in range(1, len(prompts) + 1)]
                done = bool(prompts) and prompts == fresh and status == "idle"
                if done:
                    break
                if time.time() > deadline:
                    page.screenshot(path=str(shot), full_page=True)
                    pytest.fail(f"cells did not finish in 90 s: prompts {prompts}, kernel {status}")
                time.sleep(0.5)

            # No error output anywhere.
            errors = page.eval_on_selector_all(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], "
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']",
                "els => els.map(e => e.textContent)")
            tracebacks = [e for e in errors if "Traceback" in e or "Error" in e]
            assert not tracebacks, "error output in the notebook:\n" + "\n---\n".join(t[:2000] for t in tracebacks)

            # The widget rendered: sliders and the image.
            widget = page.locator(".jupyter-widgets.widget-hbox").filter(has=page.locator(".widget-slider")).first
            widget.scroll_into_view_if_needed(timeout=30_000)
            handles = widget.locator(".widget-slider .noUi-handle")
            assert handles.count() >= 2, "the AnchorExplorer's sliders did not render"
            image = widget.locator("img").first
            image.wait_for(state="visible", timeout=30_000)
            src_before = image.get_attribute("src")
            assert src_before, "the explorer's image has no src"

            # Move the first slider (anchor size) with the keyboard; the image must be redrawn.
            handle = handles.first
            value_before = handle.get_attribute("aria-valuenow")
            handle.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            deadline = time.time() + 30
            while image.get_attribute("src") == src_before:
                if time.time() > deadline:
                    page.screenshot(path=str(shot), full_page=True)
                    pytest.fail(f"the image did not change after moving the slider "
                                f"(aria-valuenow {value_before} -> {handle.get_attribute('aria-valuenow')})")
                time.sleep(0.25)
            assert handle.get_attribute("aria-valuenow") != value_before
            widget.screenshot(path=str(ARTIFACTS / "browser_04_anchors_widget.png"))
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.exists() and shot.stat().st_size > 10_000
