"""Package-level promises: a light import, a core without ipywidgets, a demo that runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "datasets", "plotly", "ipywidgets", "peft", "bitsandbytes", "pandas"]


def _run(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=ROOT).stdout


def test_import_nbtune_imports_nothing_heavy():
    out = _run(f"import sys, json, nbtune; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_every_settings_and_error_class_the_readme_names_is_importable_from_nbtune():
    import nbtune

    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\bnbtune\.([A-Z]\w+)", readme))
    named |= set(re.findall(r"\b([A-Z][A-Za-z]+(?:Config|Error))\b", readme)) - {"OutOfMemoryError", "ValueError"}
    assert {"TrainConfig", "LabConfig", "ScratchModelConfig", "PretrainedModelConfig", "ProjectLockedError"} <= named
    missing = sorted(name for name in named if not hasattr(nbtune, name))
    assert missing == []
    assert set(nbtune.__all__) >= named


def test_core_never_imports_ipywidgets(tmp_path):
    code = (
        "import sys, json, nbtune\n"
        f"s = nbtune.Session({str(tmp_path / 'w')!r})\n"
        "s.load(['alpha beta gamma delta'] * 3 + ['epsilon zeta eta theta', 'iota kappa lambda mu'] * 5)\n"
        "s.preview_clean(); s.clean(); s.tokenize(vocab_size=280, context_length=16)\n"
        f"s.report({str(tmp_path / 'r.html')!r})\n"
        "print(json.dumps('ipywidgets' in sys.modules))\n"
    )
    assert json.loads(_run(code).strip().splitlines()[-1]) is False


def test_no_core_module_imports_ipywidgets():
    offenders = []
    for path in (ROOT / "nbtune").rglob("*.py"):
        relative = path.relative_to(ROOT / "nbtune")
        if relative.parts[0] == "ui":
            continue
        if re.search(r"^\s*(import|from)\s+ipywidgets", path.read_text(), re.MULTILINE):
            offenders.append(str(relative))
    assert offenders == []


@pytest.mark.slow
def test_demo_writes_a_report(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "nbtune", "demo", "--quick", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = tmp_path / "demo" / "report.html"
    assert report.exists() and f"Report written to {report}" in result.stdout
    html = report.read_text()
    assert "From scratch" in html and "Fine-tune" in html and "Plotly.newPlot" in html
    assert "Training run run-001-scratch" in html and "Training run run-001-lora" in html


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_the_notebooks_session_folders_are_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    folders = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        source = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        found = re.search(r"^WORKDIR = (?:pathlib\.Path\()?'([^']+)'", source, re.MULTILINE)
        assert found, f"{notebook.name}: no WORKDIR = '...' in its cells"
        folders.append(f"notebooks/{found.group(1)}/session.json")
    assert len(folders) == 4
    checked = subprocess.run(["git", "check-ignore", "--no-index", *folders], capture_output=True, text=True, cwd=ROOT)
    assert sorted(checked.stdout.split()) == sorted(folders)
