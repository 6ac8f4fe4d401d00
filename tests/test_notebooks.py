"""Every notebook in notebooks/ runs top to bottom without an error (in a scratch folder), and runs again.

The second pass is what "Run all" after a kernel restart does: a fresh kernel in the same folder. It must
work, keep every earlier run (the first pass's run folders byte for byte), and list them all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def execute(path: Path, folder: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors)


def run_files(folder: Path) -> dict[str, str]:
    """Every file inside a runs/ folder of any session under `folder`, with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "runs" in p.relative_to(folder).parts
            and not p.name.startswith(".")}


def listed_runs(folder: Path) -> dict[str, list[str]]:
    return {str(p.parent.relative_to(folder)): [r["id"] for r in json.loads(p.read_text())["runs"]]
            for p in sorted(folder.rglob("session.json"))}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two passes; the slowest (02) takes ~3 min on 2 quiet cores, far longer on a busy machine
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_runs_again_in_a_fresh_kernel(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NBTUNE_SMALL", "1")  # notebooks read this to pick fast settings
    execute(path, tmp_path)
    first_files, first_runs = run_files(tmp_path), listed_runs(tmp_path)
    assert first_runs
    execute(path, tmp_path)  # "Run all" again after a kernel restart, same folder
    second_files, second_runs = run_files(tmp_path), listed_runs(tmp_path)
    for name, digest in first_files.items():
        assert second_files.get(name) == digest, f"{name} changed or vanished in the second pass"
    for session, ids in first_runs.items():
        assert second_runs[session][: len(ids)] == ids  # every earlier run is still listed, in order
        assert len(second_runs[session]) == 2 * len(ids)  # and the second pass added its own
