"""End to end in a real browser: JupyterLab on localhost, notebook 06 in headless Chromium
(Debian's ``chromium`` driven by Playwright; no browser is downloaded), run all cells,
upload a smear through the demo's FileUpload widget, and check that the overlay and the
count table appear. A screenshot is kept in ``outputs/test-artifacts/``.

Skipped only when no Chromium executable can be found (``.ci/run`` installs Debian's
``chromium`` when apt is available; ``BLOODLIB_CHROMIUM`` may name another executable).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from stub_predictors import png_bytes, smear, store_tiny_segmenter

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "06_prediction_demo.ipynb"
ARTIFACTS = REPO / "outputs" / "test-artifacts"
RUN_TIMEOUT_S = 240

pytestmark = [pytest.mark.browser, pytest.mark.timeout(RUN_TIMEOUT_S + 120)]


def chromium_executable() -> str | None:
    """``$BLOODLIB_CHROMIUM``, or Debian's chromium on PATH."""
    env = os.environ.get("BLOODLIB_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(tmp: Path) -> Path:
    """A copy of notebook 06 that trains nothing (a tiny stored model instead)."""
    nb_dir = tmp / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.read(REPO / "notebooks" / NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "TRAIN_MISSING = True" in params.source
    params.source = params.source.replace("TRAIN_MISSING = True", "TRAIN_MISSING = False")
    nbformat.write(nb, nb_dir / NOTEBOOK)
    store_tiny_segmenter(tmp / "models", "browser-seg")
    (tmp / "upload_smear.png").write_bytes(png_bytes(smear(7, 240, 320)))
    return nb_dir


def _start_lab(tmp: Path, nb_dir: Path, port: int, token: str) -> subprocess.Popen:
    env = dict(os.environ, BLOODLIB_MODELS=str(tmp / "models"),
               JUPYTER_CONFIG_DIR=str(tmp / "jcfg"), JUPYTER_RUNTIME_DIR=str(tmp / "jrt"),
               IPYTHONDIR=str(tmp / "ipy"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={nb_dir}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.workspaces_dir={tmp / 'ws'}", "--ServerApp.allow_root=True"]
    log = open(tmp / "jupyter.log", "wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=nb_dir)


def _wait_for_server(port: int, token: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")


CURRENT = "window.jupyterapp && window.jupyterapp.shell.currentWidget"
KERNEL = f"{CURRENT} && {CURRENT}.sessionContext.session && {CURRENT}.sessionContext.session.kernel"
PROGRESS_JS = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputPrompt') || {}).textContent || '');
  const errors = [...document.querySelectorAll('.jp-OutputArea-output')]
      .map(o => o.textContent).filter(t => t.includes('Traceback') || /Error:/.test(t));
  return {cells: cells.length, done: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
          busy: prompts.filter(p => p.includes('*')).length, errors: errors.slice(0, 2)};
}"""


def _run_all_cells(page, timeout: float) -> dict:
    page.wait_for_function(f"() => {KERNEL} && {KERNEL}.status === 'idle'", timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + timeout
    state = {}
    while time.monotonic() < deadline:
        state = page.evaluate(PROGRESS_JS)
        assert not state["errors"], f"a notebook cell failed: {state['errors']}"
        if state["cells"] and state["done"] == state["cells"] and not state["busy"]:
            return state
        time.sleep(1)
    raise TimeoutError(f"notebook did not finish in {timeout:.0f} s: {state}")


def test_demo_notebook_in_jupyterlab(tmp_path):
    chromium = chromium_executable()
    if chromium is None:
        pytest.skip("no Chromium executable found (install Debian's `chromium`, e.g. "
                    "`apt-get install -y chromium`, or set BLOODLIB_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    nb_dir = _prepare(tmp_path)
    port, token = _free_port(), secrets.token_hex(16)
    proc = _start_lab(tmp_path, nb_dir, port, token)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        _wait_for_server(port, token, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu",
                                              "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}",
                          wait_until="domcontentloaded")
                state = _run_all_cells(page, RUN_TIMEOUT_S - 60)
                demo = page.locator(".bloodlib-demo").first
                demo.wait_for(state="visible", timeout=30_000)
                demo.scroll_into_view_if_needed()
                with page.expect_file_chooser() as chooser:  # the widget's own file dialog
                    demo.locator(".bloodlib-upload").first.click()
                chooser.value.set_files(str(tmp_path / "upload_smear.png"))
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.bloodlib-status')]"
                    ".some(e => e.textContent.includes('upload_smear.png'))", timeout=60_000)
                status = demo.locator(".bloodlib-status").inner_text()
                overlay = demo.locator(".bloodlib-overlay img").first
                overlay.wait_for(state="visible", timeout=30_000)
                width = overlay.evaluate("img => img.naturalWidth")
                table = demo.locator(".bloodlib-counts table").first
                table.wait_for(state="visible", timeout=30_000)
                table_text = table.inner_text()
                demo.screenshot(path=str(ARTIFACTS / "browser_demo_widget.png"))
                page.screenshot(path=str(ARTIFACTS / "browser_demo_page.png"))
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "browser_demo_failure.png"))
                raise
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert state["cells"] > 5 and "Processed 1 image(s)" in status, status
    assert width > 0
    for cls in ("neutrophil", "lymphocyte", "basophil"):
        assert cls in table_text
    (ARTIFACTS / "browser_demo.json").write_text(json.dumps(
        {"chromium": chromium, "status": status, "cells": state["cells"],
         "overlay_width": width, "counts_table": table_text}, indent=2))


def test_smear_report_page_in_chromium(tmp_path):
    """``bloodlib report`` output opened in headless Chromium: the summary cards, one row
    per smear with its thumbnail loaded, the differential bar; screenshot kept."""
    chromium = chromium_executable()
    if chromium is None:
        pytest.skip("no Chromium executable found (install Debian's `chromium`)")
    from playwright.sync_api import sync_playwright

    from bloodlib.inference.smear_report import write_smear_report
    from stub_predictors import StubClassifier, StubDetector
    from PIL import Image

    folder = tmp_path / "smears"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(smear(i, 240, 320)).save(folder / f"smear_{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    page_path = write_smear_report([folder], tmp_path / "report", StubDetector(),
                                   StubClassifier(), progress=False,
                                   model_names=["stub-detector", "stub-classifier"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(page_path.as_uri(), wait_until="load")
            rows = page.locator("tbody tr")
            assert rows.count() == 4
            loaded = page.evaluate("() => [...document.querySelectorAll('img.thumb')]"
                                   ".map(i => i.complete && i.naturalWidth > 0)")
            assert loaded == [True] * 4
            cards = page.locator(".card").all_inner_texts()
            assert any("smears" in c and "4" in c for c in cards)
            assert page.locator(".bar div").count() > 0
            assert "broken.png" in page.locator("body").inner_text()
            page.screenshot(path=str(ARTIFACTS / "browser_smear_report.png"), full_page=True)
        finally:
            browser.close()
