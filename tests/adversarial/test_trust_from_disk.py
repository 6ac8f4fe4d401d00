"""A shared folder never grants trust: trust_remote_code / allow_pickle in session.json, run.json or recipe.json is
used only when the caller passes it again. The model folder's own code writes a marker file when it runs: without
the explicit flag there is no marker, ever; with it there is (so the check could fail)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FAST, counting_down_docs_list

import nbtune
from nbtune import ConfigError

pytestmark = pytest.mark.timeout(600)

CODE = """
from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "llama"
"""


def evil_copy(model: Path, root: Path) -> tuple[Path, Path]:
    """A copy of a real model folder whose config.json points AutoConfig at Python code in the folder."""
    folder, marker = root / "evil-model", root / "MARKER"
    shutil.copytree(model, folder)
    (folder / "configuration_evil.py").write_text(CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def asks_trust(evil: Path):
    def edit(model_settings: dict) -> None:
        model_settings["config"]["model"] = str(evil)
        model_settings["config"]["trust_remote_code"] = True
    return edit


@pytest.fixture
def shared_project(tmp_path, tiny_pretrained):
    """A project someone else made: a fine-tune of a local model with one finished run, then closed."""
    s = nbtune.Session(tmp_path / "shared")
    s.load(counting_down_docs_list(60))
    s.tokenize(context_length=32)
    s.use_model(str(tiny_pretrained), method="full")
    s.train(steps=2, **FAST)
    s.export_recipe("recipe")
    s.close()
    evil, marker = evil_copy(tiny_pretrained, tmp_path)
    return tmp_path / "shared", evil, marker


def test_session_json_asking_for_trust_is_refused_unless_the_caller_passes_it(shared_project):
    folder, evil, marker = shared_project
    edit_json(folder / "session.json", lambda state: asks_trust(evil)(state["model"]))
    s = nbtune.Session(folder)
    with pytest.raises(ConfigError, match="trust_remote_code=True") as info:
        s.evaluate()
    assert "session.json" in str(info.value) and "nbtune.Session(" in str(info.value)
    assert s.model is None and not marker.exists()
    s.close()
    with pytest.raises(Exception):  # noqa: B017 - the code runs; what it does afterwards does not matter here
        nbtune.Session(folder, trust_remote_code=True).evaluate()
    assert marker.exists()  # the positive control: with the flag, the folder's code does run


def test_a_tokenizer_setting_read_from_disk_does_not_grant_trust(shared_project):
    folder, evil, marker = shared_project

    def edit(state):
        state["tokens"]["config"].update(tokenizer=str(evil), trust_remote_code=True)
    edit_json(folder / "session.json", edit)
    with pytest.raises(ConfigError, match="tokenizer settings ask for trust_remote_code=True"):
        nbtune.Session(folder).tokenize()
    assert not marker.exists()


def test_run_json_asking_for_trust_is_refused_by_attach_run_unless_passed(shared_project, tmp_path):
    folder, evil, marker = shared_project
    run_dir = folder / "runs" / "run-001-full"
    edit_json(run_dir / "run.json", lambda run: asks_trust(evil)(run["model"]))
    here = nbtune.Session(tmp_path / "here")
    here.load(counting_down_docs_list(60))
    here.tokenize(context_length=32)
    with pytest.raises(ConfigError, match="run's model settings ask for trust_remote_code=True") as info:
        here.attach_run(run_dir, checkpoint="latest")
    assert "run.json" in str(info.value) and not marker.exists()
    assert here.runs == [] and here.model_settings == {}  # the failed stage changed nothing
    with pytest.raises(Exception):  # noqa: B017
        here.attach_run(run_dir, checkpoint="latest", trust_remote_code=True)
    assert marker.exists()


def test_recipe_json_asking_for_trust_needs_the_command_line_flag(shared_project):
    from nbtune.recipe import main, run_recipe

    folder, evil, marker = shared_project
    recipe = folder / "recipe"
    edit_json(recipe / "recipe.json", lambda r: asks_trust(evil)(r["model"]))
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        run_recipe(recipe, progress=False)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017
        main([str(recipe), "--trust-remote-code", "--no-progress"])
    assert marker.exists()


def test_allow_pickle_from_disk_is_refused_too(shared_project):
    folder, _, _ = shared_project
    edit_json(folder / "session.json", lambda state: state["model"]["config"].update(allow_pickle=True))
    with pytest.raises(ConfigError, match="allow_pickle=True"):
        nbtune.Session(folder).evaluate()
    assert nbtune.Session(folder, allow_pickle=True).evaluate().result.rows > 0
