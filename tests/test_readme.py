"""The README's Python blocks run, in order, offline on CPU.

Where the README uses settings meant for real work (an 8000-token vocabulary, 500 steps, the 135M embedded model
in the lab), the test swaps in tiny ones; each swap names the exact text it replaces, so a README edit that drops
it fails here instead of silently testing something else. What cannot run here is skipped with the reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import counting_docs

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = 'preset="tiny", layers=1, hidden_size=32, heads=2, kv_heads=1'

# block index -> (first words of the block, [(README text, what runs instead)], lines left out with the reason)
PLAN: dict[int, tuple[str, list[tuple[str, str]], dict[str, str]]] = {
    0: ("import nbtune", [
        ('vocab_size=8000, context_length=512', "vocab_size=300, context_length=32"),
        ('preset="small"', TINY_MODEL),
        ("steps=500", "steps=3"),
        ("s.lab()", "s.lab(base=TINY_PRETRAINED, fractions=(1.0,), finetune_steps=2, max_scratch_steps=3, seq_len=32, "
                    "batch_size=4, scratch_vocab_size=280, evaluations=2, max_eval_rows=8)"),
    ], {'s = nbtune.Session("my-project"); s.resume()':
        "continues a run interrupted by a kernel restart; this run finished (tests/test_notebook_proof.py kills and "
        "resumes runs)"}),
    1: ('s = nbtune.Session("alice")', [("steps=200", "steps=2"), ('"/shared/class-logs"', "CLASS_LOGS")], {}),
    2: ('s.export_recipe("recipe"', [("steps=5000", "steps=2")], {}),
    3: ('s.attach_run("recipe/output")', [], {}),
    4: ('s = nbtune.Session("my-project")', [], {}),
}


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.finditer(r"(?m)^( *)```python\n(.*?)^\1```", text, re.DOTALL)
    return [re.sub(r"(?m)^" + match.group(1), "", match.group(2)) for match in blocks]


def runnable(index: int, block: str) -> str:
    start, swaps, left_out = PLAN[index]
    assert block.lstrip().startswith(start), f"README block {index} changed: it starts {block[:60]!r}"
    for readme_text, instead in swaps:
        assert readme_text in block, f"README block {index} no longer says {readme_text!r}: update this test"
        block = block.replace(readme_text, instead)
    lines = block.splitlines()
    for line, _reason in left_out.items():  # the reason documents the skip (PLAN)
        assert any(row.startswith(line) for row in lines), f"README block {index} no longer has {line!r}"
        lines = [row for row in lines if not row.startswith(line)]
    return "\n".join(lines)


def test_every_python_block_of_the_readme_is_planned():
    assert len(python_blocks()) == len(PLAN), "a Python block was added to or removed from the README: plan it here"


@pytest.mark.slow
def test_the_readme_python_blocks_run(tmp_path, monkeypatch, tiny_pretrained):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    for i, doc in enumerate(counting_docs(160)):  # unique rows: cleaning drops exact duplicates
        (notes / f"note-{i:03d}.md").write_text(f"{doc} and {' '.join(str(i))}\n")
    namespace = {"TINY_PRETRAINED": str(tiny_pretrained), "CLASS_LOGS": str(tmp_path / "class-logs")}
    blocks = python_blocks()

    exec(compile(runnable(0, blocks[0]), "README block 0", "exec"), namespace)
    s = namespace["s"]
    assert (tmp_path / "report.html").exists() and (s.workdir / "my-model").is_dir()  # export: inside the workdir
    assert s.runs[-1]["status"] == "finished" and len(s.reports["lab"].result.arms) == 2
    s.close()

    # block 1 (instructors): "load, tokenize, new_model" stands in the comment; the test does those steps
    student = runnable(1, blocks[1]).replace(
        "# ... load, tokenize, new_model / use_model as in the lesson ...",
        f"s.load(NOTES); s.tokenize(vocab_size=300, context_length=32); s.new_model({TINY_MODEL})")
    assert "s.load(NOTES)" in student
    namespace["NOTES"] = str(notes / "*.md")
    exec(compile(student, "README block 1", "exec"), namespace)
    namespace["s"].close()
    assert (tmp_path / "class-logs" / "alice" / "run-001-scratch").is_dir()

    namespace["s"] = s = __import__("nbtune").Session("my-project")
    exec(compile(runnable(2, blocks[2]), "README block 2", "exec"), namespace)
    # the README's next (bash) block: `python recipe/train.py`, from the session's folder
    done = subprocess.run([sys.executable, "recipe/train.py"], cwd=s.workdir, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    exec(compile(runnable(3, blocks[3]), "README block 3", "exec"), namespace)
    assert any(r.get("attached") for r in s.runs)
    s.close()

    exec(compile(runnable(4, blocks[4]), "README block 4", "exec"), namespace)
    assert type(namespace["s"].ui()).__name__ == "App"
    namespace["s"].close()
