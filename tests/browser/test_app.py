"""The app in a real JupyterLab: run the quickstart notebook, then click through the app it shows.

Load data, see the clean preview, tokenize, create a model, start training, watch the live chart gain
points, press Stop and see the run stop with a checkpoint, evaluate and see the chart render. A second
test loads rows holding script / onerror payloads and checks that nothing executed.
Screenshots go to test-artifacts/ (look at them after a change to the app).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from .harness import (
    browser_available,
    browser_page,
    jupyterlab,
    open_notebook,
    rerun_cells_whose_widgets_failed,
    run_all,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"

POINTS_JS = """(app) => { const el = app.querySelector('.nbtune-live-chart .js-plotly-plot');
  return el && el.data && el.data[0] && el.data[0].x ? el.data[0].x.length : -1; }"""

PAYLOADS = [
    "<script>window.__nbtune_xss = 'script'</script> In the beginning was the word.",
    "<img src=x onerror=\"window.__nbtune_xss='img'\"> and the word was with the text.",
    "<svg onload=\"window.__nbtune_xss='svg'\"></svg> a third row of plain words here.",
    "javascript:window.__nbtune_xss='link' <a href=\"javascript:window.__nbtune_xss='a'\">click</a> words.",
    "<iframe srcdoc=\"<script>parent.__nbtune_xss='iframe'</script>\"></iframe> more words in a row.",
] * 4


@pytest.fixture(scope="module", params=["lab", "notebook"], ids=["jupyterlab4", "notebook7"])
def lab(request, tmp_path_factory):
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    frontend = request.param
    tmp_path = tmp_path_factory.mktemp(f"app-{frontend}")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(QUICKSTART, tmp_path / QUICKSTART.name)
    os.environ["NBTUNE_SMALL"] = "1"  # the kernel inherits it: the notebook picks its small settings
    try:
        with jupyterlab(tmp_path, frontend) as url, browser_page(tmp_path, height=3000) as page:
            open_notebook(page, url, QUICKSTART.name)
            run_all(page)
            rerun_cells_whose_widgets_failed(page, ARTIFACTS / f"app_{frontend}_widget_errors.txt")
            assert page.locator(".nbtune-app").count() > 0, "the app did not render, even after a second run"
            yield page, tmp_path, frontend
    finally:
        os.environ.pop("NBTUNE_SMALL", None)


def the_app(page):
    app = page.locator(".nbtune-app").last
    app.scroll_into_view_if_needed()
    return app


def open_tab(app, title: str) -> None:
    app.locator(".lm-TabBar-tab", has_text=title).first.click()


def fill(app, css: str, value: str) -> None:
    box = app.locator(f"{css} input, {css} textarea").first if not css.startswith("input") else app.locator(css)
    box.fill(value)
    box.press("Enter")


def wait_for_text(app, css: str, text: str, timeout: float = 300) -> None:
    """Wait until the element `css` in the app shows `text`; fail at once with the app's error panel if an action
    failed (the status line is not enough: a later preview may overwrite it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in app.locator(css).first.inner_text():
            return
        error = app.locator(".nbtune-error").inner_text()
        if error.strip():
            pytest.fail(error)
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {text!r} in {css}; status: {app.locator('.nbtune-status').inner_text()}")


def shot(page, frontend: str, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"app_{frontend}_{name}.png"))


def test_quickstart_app_load_preview_train_stop_evaluate(lab):
    page, _, frontend = lab
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert page.locator(".jp-OutputArea-output .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']"
                        ).count() == 0, errors.all_inner_texts()
    app = the_app(page)
    shot(page, frontend, "0_after_run_all")

    # Data: load the embedded KJV text
    open_tab(app, "Data")
    app.locator(".nbtune-example select").select_option(label="KJV Bible (plain text, for from-scratch)")
    app.locator(".nbtune-load-example").click()
    wait_for_text(app, ".nbtune-header", "embedded example 'kjv'")
    assert "rows" in app.locator(".nbtune-data-report").inner_text()
    shot(page, frontend, "1_data")

    # Clean: a change previews at once (debounced); nothing is applied
    open_tab(app, "Clean")
    fill(app, ".nbtune-field-min_words", "2")  # a setting the quickstart left at its default
    wait_for_text(app, ".nbtune-clean-report", "Cleaning preview")  # new data: no preview until a change
    shot(page, frontend, "2_clean_preview")

    # Tokens and a tiny model from scratch
    open_tab(app, "Tokens")
    fill(app, ".nbtune-field-tokenizer", "bpe")
    fill(app, ".nbtune-field-vocab_size", "512")
    fill(app, ".nbtune-field-context_length", "64")
    app.locator(".nbtune-tokenize").click()
    wait_for_text(app, ".nbtune-header", "rows tokenized")
    open_tab(app, "Model")
    app.locator(".nbtune-model-path button", has_text="from scratch").click()
    app.locator(".nbtune-model-create").click()
    wait_for_text(app, ".nbtune-header", "scratch: preset tiny")
    shot(page, frontend, "3_model")

    # Train: the live chart gains points; Stop ends the run with a checkpoint
    open_tab(app, "Train")
    fill(app, ".nbtune-field-steps", "3000")
    fill(app, ".nbtune-field-eval_every", "1000")
    app.locator(".nbtune-train-start").click()
    counts, deadline = [], time.time() + 300
    while time.time() < deadline and len({c for c in counts if c > 0}) < 4:
        counts.append(app.evaluate(POINTS_JS))
        time.sleep(1.0)
    assert len({c for c in counts if c > 0}) >= 4, counts
    shot(page, frontend, "4_training")
    app.locator(".nbtune-train-stop").click()
    state = app.locator(".nbtune-train-state")
    deadline = time.time() + 120
    while time.time() < deadline and "stopped" not in state.inner_text():
        time.sleep(0.5)
    text = state.inner_text()
    assert "stopped" in text and "checkpoint" in text and "step-" in text, text
    assert max(counts) < 3000
    shot(page, frontend, "5_stopped")

    # Evaluate: the per-row chart renders
    open_tab(app, "Evaluate")
    fill(app, ".widget-text:has(input[placeholder='all rows'])", "32")
    app.locator(".nbtune-evaluate").click()
    page.wait_for_function("(app) => app.querySelectorAll('.nbtune-eval-report .js-plotly-plot').length > 0",
                           arg=app.element_handle(), timeout=60_000)
    assert "bits per byte" in app.locator(".nbtune-eval-report").inner_text().lower()
    shot(page, frontend, "6_evaluate")


def test_payloads_in_the_data_execute_nothing(lab):
    page, root, frontend = lab
    path = root / "payloads.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in PAYLOADS), encoding="utf-8")
    app = the_app(page)
    open_tab(app, "Data")
    fill(app, ".nbtune-load-path", str(path))
    app.locator(".nbtune-load-button").click()
    wait_for_text(app, ".nbtune-header", "payloads.jsonl")
    open_tab(app, "Clean")
    app.locator(".nbtune-field-exact_dedup input").uncheck()  # keep the repeats: more rows on screen
    wait_for_text(app, ".nbtune-clean-report", "Cleaning preview")
    open_tab(app, "Data")
    fill(app, ".nbtune-load-path", "<img src=x onerror=\"window.__nbtune_xss='error'\">.jsonl")
    app.locator(".nbtune-load-button").click()  # a path with a payload: the error message shows it, escaped
    page.wait_for_function("(app) => app.querySelector('.nbtune-error').innerText.includes('failed')",
                           arg=app.element_handle(), timeout=60_000)
    assert "onerror" in app.locator(".nbtune-error").inner_text()
    shot(page, frontend, "7_payloads")
    assert page.evaluate("() => window.__nbtune_xss === undefined"), page.evaluate("() => window.__nbtune_xss")
    assert app.locator("img[src='x']").count() == 0 and app.locator("svg[onload], iframe").count() == 0
    assert "<script>window.__nbtune_xss" in app.locator(".nbtune-data-report").inner_text()
