"""The Playground tab in a real JupyterLab: type a prompt, Send, watch two columns fill as tokens arrive, Stop.

The notebook opens two sessions with tiny from-scratch models, each slowed to about 20 tokens per second (a
forward pre-hook that sleeps 50 ms: the pace of a small real model on a CPU), so the test can watch the text
grow and press Stop in the middle of an answer. The prompt carries an `onerror` payload: it shows as text and
runs nothing. Screenshots go to test-artifacts/playground_*.png.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .harness import browser_available, browser_page, jupyterlab, open_notebook, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MAX_TOKENS = 400
PROMPT = "one two <img src=x onerror=\"window.__nbtune_xss='chat'\"> three"

SETUP = """
import time
import nbtune

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()
docs = [" ".join(WORDS[i % 6: i % 6 + 4 + i % 3]) for i in range(200)]

def slow_session(folder, seed):
    s = nbtune.Session(folder)
    s.load(docs)
    s.tokenize(vocab_size=300, context_length=64)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2, seed=seed)
    s.model.model.register_forward_pre_hook(lambda module, args: time.sleep(0.05))  # ~20 tokens/s
    return s

s, other = slow_session("mine", 0), slow_session("other", 1)
"""


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SETUP),
                nbformat.v4.new_code_cell("app = s.ui()\napp.show_tab('Playground')\napp")]
    nbformat.write(nb, path)


def _lengths(app) -> list[int]:
    return [len(text) for text in app.locator(".nbtune-chat-column:visible .nbtune-chat-answer").all_inner_texts()]


def test_playground_streams_two_columns_and_stops(tmp_path):
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    _notebook(tmp_path / "playground.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyterlab(tmp_path) as url, browser_page(tmp_path, height=1600) as page:
        open_notebook(page, url, "playground.ipynb")
        run_all(page)
        app = page.locator(".nbtune-playground").last
        app.wait_for(timeout=120_000)
        app.scroll_into_view_if_needed()
        app.locator(".nbtune-chat-others select").select_option(label="other")
        box = app.locator(".nbtune-chat-max-tokens input")
        box.fill(str(MAX_TOKENS))
        box.press("Enter")
        app.locator(".nbtune-chat-prompt textarea").fill(PROMPT)
        app.locator(".nbtune-chat-send").click()

        samples, deadline = [], time.time() + 120
        while time.time() < deadline:  # sample the columns while they stream
            lengths = _lengths(app)
            if len(lengths) == 2:
                samples.append(lengths)
                if all(len({s[i] for s in samples if s[i]}) >= 4 for i in range(2)):
                    break
            time.sleep(0.4)
        page.screenshot(path=str(ARTIFACTS / "playground_streaming.png"))
        assert len(samples) >= 4, samples
        for column in range(2):
            grown = [s[column] for s in samples]
            assert len(set(grown)) >= 4 and grown == sorted(grown), samples  # it grew, step by step

        app.locator(".nbtune-chat-stop").click()
        state = app.locator(".nbtune-chat-state")
        deadline = time.time() + 60
        while time.time() < deadline and "stopped" not in state.inner_text():
            time.sleep(0.3)
        assert "stopped" in state.inner_text(), state.inner_text()
        after_stop = _lengths(app)
        time.sleep(2.0)
        assert _lengths(app) == after_stop  # nothing more arrives
        tokens = [int(n) for n in re.findall(r"(\d+) tokens", state.inner_text())]
        assert len(tokens) == 2 and all(0 < n < MAX_TOKENS for n in tokens), state.inner_text()
        assert all("[stopped]" in t for t in app.locator(".nbtune-chat-column:visible .nbtune-chat-answer").all_inner_texts())
        labels = app.locator(".nbtune-chat-column:visible").all_inner_texts()
        assert any("this session (scratch)" in t for t in labels) and any("other (scratch)" in t for t in labels)

        history = app.locator(".nbtune-chat-history")
        history.wait_for(timeout=30_000)
        page.wait_for_function("(el) => el.innerText.includes('onerror')", arg=history.element_handle(),
                               timeout=30_000)
        assert page.evaluate("() => window.__nbtune_xss === undefined")
        assert app.locator("img[src='x']").count() == 0
        app.locator(".nbtune-chat-history").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "playground_stopped.png"))
