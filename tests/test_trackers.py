"""Trackers as listeners: what a run logs is read back with each tracker's own reader; defaults per method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, SMALLEST_MODEL, counting_docs, make_tiny_session

import nbtune
from nbtune.config import METHOD_DEFAULTS, TrainConfig
from nbtune.events import RunEndEvent, RunStartEvent, StepEvent
from nbtune.train import trackers

ROOT = Path(__file__).resolve().parents[1]


def _scratch(folder: Path) -> nbtune.Session:
    """The smallest model on 120 documents: the tests here need a run to log, not one that learns much."""
    return make_tiny_session(folder, counting_docs(120), model=SMALLEST_MODEL)


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_log_to_names_are_checked_and_lists_are_stored_as_one_string():
    assert TrainConfig(log_to=["tensorboard", "trackio"]).log_to == "tensorboard,trackio"
    assert TrainConfig.from_dict(TrainConfig(log_to=("trackio",)).to_dict()).log_to == "trackio"
    with pytest.raises(nbtune.ConfigError, match="did you mean 'tensorboard'"):
        TrainConfig(log_to="tensorbord")


def test_a_missing_tracker_package_says_what_to_install(monkeypatch, tmp_path):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "trackio" else real(name))
    with pytest.raises(nbtune.ConfigError, match="pip install trackio") as caught:
        trackers.listeners_for(TrainConfig(log_to="tensorboard,trackio"), tmp_path / "w" / "runs" / "run-001", {})
    assert caught.value.column == "log_to"


def test_tensorboard_gets_every_step_and_eval_of_a_run(tmp_path):
    pytest.importorskip("tensorboard")
    s = _scratch(tmp_path / "alice")
    run = s.train(steps=6, **{**FAST, "eval_every": 3}, eval_at_start=True, sample_prompt="one",
                  log_to="tensorboard")
    assert run.status == "finished"
    logged = _tensorboard_scalars(s.workdir / "runs" / run.id / "tensorboard")
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert logged["train/loss"] == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in run.metrics]
    assert logged["train/lr"] == [(m["step"], pytest.approx(m["lr"], rel=1e-6)) for m in run.metrics]
    assert [step for step, _ in logged["eval/bits_per_byte"]] == [0, 3, 6]
    assert [v for _, v in logged["eval/loss"]] == pytest.approx([e["eval_loss"] for e in run.evals], rel=1e-6)


def test_a_class_logs_to_one_shared_tensorboard_folder_by_student(tmp_path):
    pytest.importorskip("tensorboard")
    shared = tmp_path / "class-logs"
    for student in ("alice", "bob"):
        s = _scratch(tmp_path / student)
        s.train(steps=2, **FAST, log_to="tensorboard", log_dir=str(shared))
        s.close()
    assert sorted(p.relative_to(shared).as_posix() for p in shared.glob("*/*")) == \
        ["alice/run-001-scratch", "bob/run-001-scratch"]
    assert [step for step, _ in _tensorboard_scalars(shared / "bob" / "run-001-scratch")["train/loss"]] == [1, 2]


def _start(step: int) -> RunStartEvent:
    return RunStartEvent(run_id="r", step=step, plan={"total_steps": 3}, device="cpu", method="scratch",
                         resumed_from=None, setup={})


def _step(step: int, loss: float) -> StepEvent:
    return StepEvent(run_id="r", step=step, loss=loss, lr=1e-3, grad_norm=1.0, tokens=32, trained_tokens=32,
                     tokens_seen=32 * step, tokens_per_s=100.0, mfu=None, memory=None, elapsed=float(step),
                     epoch=step / 3, total_steps=3, micro_batch=1, grad_accum=1, flops=1.0)


def test_a_resumed_run_replaces_what_tensorboard_had_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    folder = tmp_path / "tb"
    logger = trackers.TensorBoardLogger(folder)
    for step, loss in ((0, None), (1, 5.0), (2, 4.0), (3, 3.0)):  # an interrupted run got to step 3 ...
        logger(_start(step) if loss is None else _step(step, loss))
    logger(RunEndEvent(run_id="r", step=3, status="failed", checkpoint=None, elapsed=3.0, tokens_seen=96))
    for step, loss in ((1, None), (2, 3.5), (3, 2.5)):  # ... and resumed from its checkpoint at step 1
        logger(_start(step) if loss is None else _step(step, loss))
    logger(RunEndEvent(run_id="r", step=3, status="finished", checkpoint=None, elapsed=3.0, tokens_seen=96))
    assert _tensorboard_scalars(folder)["train/loss"] == [(1, 5.0), (2, 3.5), (3, 2.5)]


def test_trackio_run_is_read_back_with_trackios_own_cli_offline(tmp_path):
    pytest.importorskip("trackio")
    store = tmp_path / "trackio-store"
    code = (
        "import json, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import FAST, SMALLEST_MODEL, counting_docs, make_tiny_session\n"
        f"s = make_tiny_session({str(tmp_path / 'carol')!r}, counting_docs(120), model=SMALLEST_MODEL)\n"
        "run = s.train(steps=4, **{**FAST, 'eval_every': 2}, log_to='trackio', log_project='class')\n"
        "print('RESULT', json.dumps({'losses': [m['loss'] for m in run.metrics], 'evals': [e['eval_loss'] for e in run.evals]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL")}  # local only
    env.update(TRACKIO_DIR=str(store), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])

    def metric(name: str) -> list[tuple[int, float]]:
        out = subprocess.run(["trackio", "get", "metric", "--project", "class", "--run", "carol/run-001-scratch",
                              "--metric", name, "--json"], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return [(v["step"], v["value"]) for v in json.loads(out.stdout)["values"]]

    assert metric("train/loss") == [(i + 1, pytest.approx(loss)) for i, loss in enumerate(trained["losses"])]
    assert [v for _, v in metric("eval/loss")] == pytest.approx(trained["evals"])


# ------------------------------------------------------------------ defaults per method
# (learning rate, batch size, grad accum) left at None, as the sources in nbtune/config.py give them: LoRA's 2e-4
# (QLoRA paper, Unsloth), full fine-tuning's 2e-5 (TRL), scratch's 1e-3 (nanoGPT's small model); 8 sequences a step,
# as 4 x 2 for the methods that keep more memory per sequence.
DOCUMENTED_DEFAULTS = {"scratch": (1e-3, 8, 1), "full": (2e-5, 4, 2), "lora": (2e-4, 8, 1), "qlora": (2e-4, 4, 2),
                       "lora-8bit": (2e-4, 4, 2)}


@pytest.mark.parametrize("method", sorted(DOCUMENTED_DEFAULTS))
def test_settings_left_at_none_take_the_methods_defaults(method):
    resolved = TrainConfig().for_method(method)
    assert (resolved.learning_rate, resolved.batch_size, resolved.grad_accum) == DOCUMENTED_DEFAULTS[method]


def test_every_method_has_documented_defaults_and_typed_values_win():
    assert set(METHOD_DEFAULTS) == set(DOCUMENTED_DEFAULTS)  # a new method gets a row above
    assert TrainConfig(learning_rate=5e-4).for_method("full").learning_rate == 5e-4  # a typed value wins
    assert TrainConfig(batch_tokens=256).for_method("qlora").batch_tokens == 256


def test_a_run_records_the_values_it_really_used(tmp_path):
    s = _scratch(tmp_path / "w")
    run = s.train(steps=1, background=False, progress=False)
    saved = json.loads((s.workdir / "runs" / run.id / "run.json").read_text())["config"]
    assert (saved["learning_rate"], saved["batch_size"], saved["grad_accum"]) == (1e-3, 8, 1)
    assert run.metrics[0]["lr"] <= 1e-3 and s.runs[-1]["config"] == saved


def test_the_train_tab_shows_the_values_a_run_of_the_current_model_will_use(tmp_path):
    s = _scratch(tmp_path / "w")
    app = nbtune.App(s)
    train = app.panel("Train")
    train.refresh()
    assert "defaults for scratch: learning rate 0.001, batch 8 x 1" in train.defaults.value
    assert train.form["learning_rate"].placeholder == "0.001 (scratch default)"
    assert train.form.config().learning_rate is None  # left empty: the run resolves it
    train.form["learning_rate"].value = "0.0005"
    run = s.train(train.form.config(), background=False, progress=False, steps=1)
    assert run.engine.config.learning_rate == 5e-4 and s.runs[-1]["config"]["batch_size"] == 8
