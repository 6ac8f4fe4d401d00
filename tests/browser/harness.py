"""Start JupyterLab on loopback and drive it with headless Chromium (see shared BROWSER_TESTING notes).

What held on this kind of machine: Debian's /usr/bin/chromium driven by the
Playwright python package (never `playwright install`), JupyterLab started with
`--LabApp.expose_app_in_browser=True` so the test can wait on the kernel through
`window.jupyterapp`, a fresh HOME and workspace dir, and SIGTERM at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_available() -> str | None:
    """None if the browser test can run, else the reason it cannot."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright python package is not installed (pip install playwright)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, frontend: str = "lab") -> Iterator[str]:
    """Run JupyterLab (or Notebook 7 with frontend='notebook') serving `root`; yields a URL template for a path."""
    port, token = _free_port(), secrets.token_hex(16)
    home = root / ".home"
    home.mkdir(exist_ok=True)
    # every cell stays in the page: with windowing, a cell scrolled out of view (the app, after "run all") can
    # be missing from the DOM for a while, and a locator waiting for it times out on a busy machine
    tracker = home / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text('{"windowingMode": "none"}')
    env = {**os.environ, "HOME": str(home), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", frontend, "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--expose-app-in-browser", "--ServerApp.disable_check_xsrf=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"JupyterLab did not start: {(root / 'jupyterlab.log').read_text()[-2000:]}")
        yield (f"{base}/lab/tree/{{path}}?token={token}&reset" if frontend == "lab"
               else f"{base}/notebooks/{{path}}?token={token}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def browser_page(root: Path, width: int = 1400, height: int = 2200) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    profile = root / ".chromium"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport={"width": width, "height": height})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


KERNEL_IDLE_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.sessionContext || !w.sessionContext.session) return false;
  const k = w.sessionContext.session.kernel;
  return w.sessionContext.isReady && k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""


def open_notebook(page, url_template: str, path: str, timeout_ms: int = 120_000) -> None:
    page.goto(url_template.format(path=path))
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_ms)


def run_all(page) -> None:
    """Run every cell; resolves when they have all finished."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


FAILED_WIDGET_CELLS_JS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return nb.widgets.map((c, i) => [i, c]).filter(([i, c]) => c.model.type === 'code' &&
    c.node.innerText.includes('Click to show javascript error')).map(([i, c]) => i);
}"""

RUN_CELL_JS = """async (index) => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  nb.activeCellIndex = index;
  await window.jupyterapp.commands.execute('notebook:run-cell');
}"""


def rerun_cells_whose_widgets_failed(page, log_to: Path) -> list[str]:
    """Cells whose widget output JupyterLab could not render ("Click to show javascript error"): write the
    error it shows into `log_to`, and run each such cell once more; returns the errors.

    On a freshly started JupyterLab the app's view failed to render once in a CI run on 2 busy cores (the same
    test passed on a rerun); running the cell again, as a user would, renders it, and the error text is kept for
    a look. A widget that fails twice is the test's failure, not hidden here.
    """
    errors = []
    for index in page.evaluate(FAILED_WIDGET_CELLS_JS):
        cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
        button = cell.get_by_text("Click to show javascript error").first
        button.click()
        errors.append(f"cell {index}: " + cell.locator(".jp-OutputArea").first.inner_text()[-2000:])
        page.evaluate(RUN_CELL_JS, index)
        page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
    if errors:
        log_to.write_text("\n\n".join(errors), encoding="utf-8")
    return errors


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def block_network(page) -> list[str]:
    """Abort every request that leaves this machine (any page, frame or popup of the browser context).

    Returns the list the blocked URLs are appended to, so a test can assert that
    nothing (e.g. no plotly.js CDN) was even attempted.
    """
    from urllib.parse import urlsplit

    blocked: list[str] = []

    def handle(route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "file", "about") or parts.hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.context.route("**/*", handle)
    return blocked


NOTEBOOK_OUTPUTS_JS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return nb.widgets.filter(c => c.model.type === 'code').map(c => c.model.outputs.toJSON());
}"""


def notebook_outputs(page) -> list[list[dict]]:
    """Every code cell's outputs as nbformat dicts, read from the open notebook's model."""
    return page.evaluate(NOTEBOOK_OUTPUTS_JS)
