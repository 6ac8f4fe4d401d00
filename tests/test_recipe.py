"""Recipes: the notebook's run under torchrun and accelerate launch (gloo on CPU), and back into the notebook.

Every launch here is a real multi-process job: two ranks on this machine's CPU,
talking over gloo, started by torchrun or accelerate's launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import counting_docs, make_tiny_session

import nbtune
from nbtune.eval.compare import load_run
from nbtune.train.listeners import read_metrics

STEPS = 8
SETTINGS = dict(batch_size=4, learning_rate=3e-3, warmup_steps=2, eval_every=4, eval_batches=4, checkpoint_every=4,
                keep_checkpoints=3, background=False)
# gloo all-reduces sum the two halves of a step in another order than one process does: float32 rounding only
LOSS_RTOL = 1e-5

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _accelerate(*flags: str) -> list[str]:
    with socket.socket() as probe:  # a free port: other jobs on this machine may hold accelerate's default
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2", "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def _launch(launcher: list[str], recipe, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([*launcher, str(recipe / "train.py"), "--no-progress", *args], capture_output=True,
                         text=True, env=env, timeout=300, cwd=recipe)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """A notebook session that trained the tiny model for 8 steps, and its exported recipe."""
    s = make_tiny_session(tmp_path_factory.mktemp("recipe") / "nb")
    run = s.train(steps=STEPS, progress=False, **SETTINGS)
    assert run.status == "finished"
    s.export_recipe("recipe")
    return s, run.losses, s.workdir / "recipe"


@pytest.fixture(scope="module")
def ddp_run(notebook):
    """The recipe trained by `torchrun --nproc_per_node=2` (DDP over gloo)."""
    _, _, recipe = notebook
    _launch(TORCHRUN, recipe, "--run-id", "ddp")
    return recipe / "output" / "runs" / "ddp"


# ------------------------------------------------------------------------------------------------ export


def test_export_writes_a_self_contained_recipe(notebook, tmp_path):
    s, _, recipe = notebook
    data = json.loads((recipe / "recipe.json").read_text())
    assert data["train"]["steps"] == STEPS and data["train"]["checkpoint_every"] == 4
    assert data["model"] == s.model_settings and data["split"] == s.split_config.to_dict()
    assert data["tokenizer"]["config"]["vocab_size"] == 300
    assert data["data"]["sources"] == [{"kind": "rows", "path": "data/rows.jsonl", "format": "text"}]  # a list
    rows = (recipe / "data" / "rows.jsonl").read_text().splitlines()
    assert [json.loads(r)["text"] for r in rows] == counting_docs()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(recipe / "tokenizer")).get_vocab() == s.tokenizer.get_vocab()
    assert "from nbtune.recipe import main" in (recipe / "train.py").read_text()


def test_exporting_again_keeps_the_runs_already_trained(notebook, tmp_path):
    s, _, _ = notebook
    s.export_recipe(tmp_path / "again", steps=3)
    (tmp_path / "again" / "output" / "runs" / "x").mkdir(parents=True)
    s.export_recipe(tmp_path / "again", steps=5, data="copy")
    assert json.loads((tmp_path / "again" / "recipe.json").read_text())["train"]["steps"] == 5
    assert (tmp_path / "again" / "output" / "runs" / "x").is_dir()


def test_export_refuses_what_it_cannot_do(notebook, tmp_path):
    s, _, _ = notebook
    with pytest.raises(nbtune.DataError, match="cannot be read again"):
        s.export_recipe(tmp_path / "refer", data="refer")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(nbtune.ConfigError, match="not an nbtune recipe"):
        s.export_recipe(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    with pytest.raises(nbtune.ConfigError, match="strategy"):
        s.export_recipe(tmp_path / "x", strategy="zero3")
    fresh = nbtune.Session(tmp_path / "fresh")
    with pytest.raises(nbtune.StageOrderError, match="tokenize"):
        fresh.export_recipe(tmp_path / "y")


def test_file_sources_are_referred_to_not_copied(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in counting_docs(60)))
    s = nbtune.Session(tmp_path / "w")
    s.load(str(path), text_column="body")
    s.clean(min_words=5)
    s.tokenize(vocab_size=280, context_length=16)
    s.new_model(preset="tiny", layers=1, hidden_size=32, heads=2, kv_heads=1)
    s.export_recipe(tmp_path / "recipe", steps=3)
    recipe = json.loads((tmp_path / "recipe" / "recipe.json").read_text())
    (source,) = recipe["data"]["sources"]
    assert source["kind"] == "path" and source["path"] == str(path) and source["mapping"] == {"text": "body"}
    assert recipe["clean"]["min_words"] == 5 and recipe["train"]["steps"] == 3
    assert not (tmp_path / "recipe" / "data").exists()
    from nbtune.recipe import build_session, tokens_fingerprint

    rebuilt = build_session(tmp_path / "recipe", tmp_path / "rebuilt")
    assert tokens_fingerprint(rebuilt.tokens) == tokens_fingerprint(s.tokens) == recipe["expected"]["tokens_fingerprint"]
    assert not (tmp_path / "rebuilt").exists()  # building the session writes nothing


def test_the_fingerprint_sees_one_changed_token(notebook):
    from datasets import DatasetDict

    from nbtune.recipe import tokens_fingerprint

    s, _, _ = notebook
    tokens = s.tokens

    def with_row_7_changed_by(delta: int) -> DatasetDict:
        """A new copy of the tokens, row 7's first token id plus `delta`."""
        train = tokens["train"].map(
            lambda row, i: {"input_ids": [row["input_ids"][0] + delta * (i == 7)] + row["input_ids"][1:]},
            with_indices=True)
        return DatasetDict(train=train, validation=tokens["validation"])

    assert tokens_fingerprint(with_row_7_changed_by(0)) == tokens_fingerprint(tokens)  # a copy: the same content
    assert tokens_fingerprint(with_row_7_changed_by(1)) != tokens_fingerprint(tokens)


def test_a_step_must_split_equally_across_processes():
    from nbtune.train.distributed import DistInfo, check_batch, shard

    assert check_batch(DistInfo(rank=1, world_size=2, local_rank=1), 4) == 2
    assert shard(DistInfo(rank=1, world_size=2, local_rank=1), 4) == slice(2, 4)
    with pytest.raises(nbtune.ConfigError, match="multiple of 3"):
        check_batch(DistInfo(rank=0, world_size=3, local_rank=0), 4)


def test_the_strategy_comes_from_the_flag_or_accelerate(monkeypatch):
    from nbtune.train.distributed import from_env

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env().strategy == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert from_env().strategy == "fsdp" and from_env("ddp").strategy == "ddp"


# ------------------------------------------------------------------------------------------------ launches


@pytest.mark.slow
def test_one_process_recipe_is_bitwise_the_notebook_run(notebook, tmp_path):
    _, reference, recipe = notebook
    _launch([sys.executable], recipe, "--out", str(tmp_path / "out"))
    run_dir = tmp_path / "out" / "runs" / "nb-scratch"
    assert _losses(run_dir) == reference
    run = json.loads((run_dir / "run.json").read_text())
    assert run["distributed"] is None and run["config"]["steps"] == STEPS


@pytest.mark.slow
def test_torchrun_two_processes_match_the_notebook_run(notebook, ddp_run):
    _, reference, _ = notebook
    losses = _losses(ddp_run)
    np.testing.assert_allclose(losses, reference, rtol=LOSS_RTOL)
    lines = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "step"] == list(range(1, STEPS + 1))  # rank 0 alone writes
    assert lines[0]["plan"]["sequences_per_step"] == 4  # the notebook's global batch
    run = json.loads((ddp_run / "run.json").read_text())
    assert run["distributed"] == {"strategy": "ddp", "world_size": 2, "backend": "gloo"}
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["step-000004", "step-000008"]
    state = json.loads((ddp_run / "checkpoints" / "step-000008" / "state.json").read_text())
    assert state["micro_batch"] * state["grad_accum"] == 4 and state["tokens_seen"] == STEPS * 4 * 32


def _cut_after_step_4(run_dir, target):
    """A copy of a finished run as if its job had been killed during step 5, after the step-4 checkpoint."""
    shutil.copytree(run_dir, target)
    shutil.rmtree(target / "checkpoints" / "step-000008")
    lines = (target / "metrics.jsonl").read_text().splitlines()
    (target / "metrics.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["step"] <= 5) + "\n")
    return target


@pytest.mark.slow
def test_attach_run_compares_and_resumes_in_one_process(notebook, ddp_run, tmp_path):
    s, reference, _ = notebook
    cut = _cut_after_step_4(ddp_run, tmp_path / "ddp-cut")
    notebook_again = nbtune.Session.open(s.workdir)
    report = notebook_again.attach_run(cut)
    run_id = notebook_again.runs[-1]["id"]
    assert run_id == "ddp" and ("training data", "same as this session's") in report.lines
    compared = notebook_again.compare()
    assert [r["id"] for r in compared.runs] == ["run-001-scratch", "ddp"]
    assert ("distributed.world_size", [None, 2]) in compared.diff

    run = notebook_again.resume(run_id, progress=False)
    assert run.status == "finished" and run.engine.strategy.world_size == 1
    np.testing.assert_allclose(run.losses, reference[4:], rtol=LOSS_RTOL)
    np.testing.assert_allclose(_losses(cut), reference, rtol=LOSS_RTOL)
    assert (cut / "checkpoints" / "step-000008").is_dir()
    assert nbtune.Session.open(s.workdir).runs[-1]["status"] == "finished"  # remembered after a restart


@pytest.mark.slow
def test_fsdp_resumes_a_ddp_checkpoint_and_its_own_checkpoint_loads_in_the_notebook(notebook, ddp_run, tmp_path):
    s, reference, recipe = notebook
    out = tmp_path / "out"
    run_dir = _cut_after_step_4(ddp_run, out / "runs" / "ddp")
    _launch(TORCHRUN, recipe, "--strategy", "fsdp", "--out", str(out), "--run-id", "ddp", "--resume")
    starts = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "run_start"]
    assert starts[-1]["resumed_from"].endswith("step-000004") and starts[-1]["plan"]["sequences_per_step"] == 4
    np.testing.assert_allclose(_losses(run_dir), reference, rtol=LOSS_RTOL)

    fresh = nbtune.Session.open(s.workdir)
    report = fresh.attach_run(out, checkpoint="latest")
    assert any(k == "weights loaded" and v.startswith("step-000008") for k, v in report.lines)
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "checkpoints" / "step-000008" / "model" / "model.safetensors"))
    weights = dict(fresh.model.model.named_parameters())
    assert sorted(saved) == sorted(weights)  # the single-process layout: tied weights written once
    assert all(np.array_equal(weights[k].detach().numpy(), v.numpy()) for k, v in saved.items())
    notebook_weights = dict(s.model.model.named_parameters())
    for name, value in saved.items():  # the notebook's own 8 steps, up to float rounding
        np.testing.assert_allclose(value.numpy(), notebook_weights[name].detach().numpy(), atol=1e-4)
    assert fresh.evaluate(max_rows=8).result.loss > 0
    fresh.export(tmp_path / "exported", smoke_prompt=None)
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert all(np.array_equal(exported[k].numpy(), v.numpy()) for k, v in saved.items())


@pytest.mark.slow
def test_accelerate_launch_trains_the_recipe(notebook, tmp_path):
    _, reference, recipe = notebook
    out = tmp_path / "out"
    _launch(_accelerate("--multi_gpu"), recipe, "--out", str(out))  # --multi_gpu: accelerate's torchrun path
    run_dir = out / "runs" / "nb-scratch"
    np.testing.assert_allclose(_losses(run_dir), reference, rtol=LOSS_RTOL)
    assert json.loads((run_dir / "run.json").read_text())["distributed"]["world_size"] == 2
    assert load_run(run_dir).status == "finished"


@pytest.mark.slow
def test_a_second_launch_into_the_same_run_folder_is_refused(notebook, ddp_run):
    _, _, recipe = notebook
    before = (ddp_run / "metrics.jsonl").read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(recipe / "train.py"), "--run-id", "ddp", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0 and "already holds a run" in out.stderr and "--resume" in out.stderr
    assert (ddp_run / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_lora_recipe_under_accelerate_fsdp_matches_the_notebook(notebook, counting_down_docs, tmp_path):
    pretrained = tmp_path / "pretrained"  # the notebook's scratch model, saved as a model to fine-tune
    notebook[0].model.save(pretrained)
    notebook[0].tokenizer.save_pretrained(str(pretrained))
    s = make_tiny_session(tmp_path / "ft", counting_down_docs, model=None, tokenizer=str(pretrained))
    s.use_model(str(pretrained), method="lora", lora_dropout=0.0)  # dropout masks are drawn per rank
    reference = s.train(steps=4, progress=False, **{**SETTINGS, "learning_rate": 1e-2}).losses
    s.export_recipe("recipe")
    _launch(_accelerate("--use_fsdp"), s.workdir / "recipe")  # sets ACCELERATE_USE_FSDP: nbtune shards with FSDP2
    run_dir = s.workdir / "recipe" / "output" / "runs" / "ft-lora"
    np.testing.assert_allclose(_losses(run_dir), reference, rtol=LOSS_RTOL)
    assert json.loads((run_dir / "run.json").read_text())["distributed"]["strategy"] == "fsdp"
    saved = {p.name for p in (run_dir / "checkpoints" / "step-000004" / "model").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved  # the adapter alone, as ever


AGREE_SCRIPT = """
import os, sys
from nbtune.train import distributed
info = distributed.from_env()
distributed.init(info)
try:
    distributed.agree("same" if info.rank == 0 or sys.argv[1] == "same" else "other", "the tokenized data", fix="x")
    print("agreed", flush=True)
except Exception as exc:
    print(f"{type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
distributed.shutdown()
"""


@pytest.mark.slow
def test_processes_that_built_different_data_stop(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(AGREE_SCRIPT)
    out = subprocess.run([*TORCHRUN, str(script), "different"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})  # (every launch above is the agreeing case)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("DataError: the processes disagree on the tokenized data") == 2


def test_data_that_changed_since_the_export_are_reported(notebook, capsys):
    from nbtune.recipe import _check_data, read_recipe

    s, _, recipe_dir = notebook
    recipe = read_recipe(recipe_dir)
    assert _check_data(s, recipe, None) == recipe["expected"]["tokens_fingerprint"]
    assert capsys.readouterr().err == ""
    recipe["expected"]["tokens_fingerprint"] = "0" * 64
    _check_data(s, recipe, None)
    assert "differ from the notebook's at export time" in capsys.readouterr().err
