"""Typed events: one dataclass per kind, the metrics.jsonl records they make, and the advice they carry to the app."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import FAST, counting_docs

import nbtune
from nbtune.events import (
    EVENT_KINDS,
    EVENT_TYPES,
    CheckpointEvent,
    ErrorEvent,
    EvalEvent,
    EventBus,
    RunEndEvent,
    RunStartEvent,
    SampleEvent,
    StepEvent,
)

# The keys of each kind's metrics.jsonl records, in order, as nbtune wrote them before events were typed
# (read from a run of the old code); error records gained "advice".
RECORD_KEYS = {
    "run_start": ["kind", "run_id", "step", "time", "plan", "device", "method", "resumed_from", "setup"],
    "step": ["kind", "run_id", "step", "time", "loss", "lr", "grad_norm", "tokens", "trained_tokens", "tokens_seen",
             "tokens_per_s", "mfu", "memory", "elapsed", "epoch", "total_steps", "micro_batch", "grad_accum", "flops"],
    "eval": ["kind", "run_id", "step", "time", "eval_loss", "eval_ppl", "eval_tokens", "eval_bpb", "tokens_seen",
             "elapsed", "flops"],
    "checkpoint": ["kind", "run_id", "step", "time", "path", "reason"],
    "sample": ["kind", "run_id", "step", "time", "prompt", "text"],
    "run_end": ["kind", "run_id", "step", "time", "status", "checkpoint", "elapsed", "tokens_seen"],
}


def _eval(step: int = 2) -> EvalEvent:
    return EvalEvent(run_id="r", step=step, eval_loss=2.0, eval_ppl=7.39, eval_tokens=64, eval_bpb=None,
                     tokens_seen=128, elapsed=1.5, flops=1e9)


def test_each_kind_has_its_class_and_fields():
    assert EVENT_KINDS == ("run_start", "step", "eval", "checkpoint", "sample", "run_end", "error")
    assert [EVENT_TYPES[kind] for kind in EVENT_KINDS] == [RunStartEvent, StepEvent, EvalEvent, CheckpointEvent,
                                                            SampleEvent, RunEndEvent, ErrorEvent]
    for kind, keys in RECORD_KEYS.items():
        names = [f.name for f in dataclasses.fields(EVENT_TYPES[kind])]
        assert ["kind", *names] == keys + (["error"] if kind == "run_end" else [])
    assert [f.name for f in dataclasses.fields(ErrorEvent)][3:] == [
        "recovered", "kind_of_error", "message", "advice", "checkpoint", "listener", "micro_batch", "grad_accum"]


def test_a_field_that_does_not_exist_fails_loudly():
    event = _eval()
    with pytest.raises(AttributeError):
        event.loss  # noqa: B018 - an eval event has eval_loss, not loss
    with pytest.raises(TypeError, match="advice"):
        ErrorEvent(run_id="r", step=1, recovered=True, kind_of_error="x", message="m")  # no advice: refused
    with pytest.raises(TypeError, match="valdation_loss"):
        EvalEvent(run_id="r", step=1, valdation_loss=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.eval_loss = 0.0


def test_a_listener_reading_a_missing_field_is_reported_with_advice_and_training_goes_on():
    bus, notices, reads = EventBus(), [], []
    bus.subscribe(lambda event: reads.append(event.loss), kinds=("eval",))  # a bug: eval events have eval_loss
    bus.subscribe(notices.append, kinds=(ErrorEvent,))
    bus.emit(_eval(2))
    bus.emit(_eval(4))
    assert reads == [] and [type(exc) for _, exc in bus.listener_errors] == [AttributeError, AttributeError]
    (notice,) = notices  # announced once
    assert notice.kind_of_error == "listener" and notice.recovered and "AttributeError" in notice.message
    assert notice.advice.startswith("free disk space or fix the listener")


def test_subscribe_takes_kind_names_or_classes():
    bus, by_name, by_class = EventBus(), [], []
    bus.subscribe(by_name.append, kinds=("eval",))
    bus.subscribe(by_class.append, kinds=(EvalEvent, CheckpointEvent))
    bus.emit(_eval())
    bus.emit(CheckpointEvent(run_id="r", step=2, path="/runs/r/checkpoints/step-000002", reason="interval"))
    assert [e.kind for e in by_name] == ["eval"] and [e.kind for e in by_class] == ["eval", "checkpoint"]
    with pytest.raises(ValueError, match="unknown event kind"):
        bus.subscribe(print, kinds=("evaluation",))


def test_records_write_the_kinds_fields_in_order_and_optional_ones_only_when_set():
    record = _eval().to_dict()
    assert list(record) == RECORD_KEYS["eval"] and record["kind"] == "eval" and record["eval_bpb"] is None
    recovered = ErrorEvent(run_id="r", step=3, recovered=True, kind_of_error="out_of_memory", message="m",
                           advice="a", micro_batch=2, grad_accum=2).to_dict()
    assert list(recovered)[4:] == ["recovered", "kind_of_error", "message", "advice", "micro_batch", "grad_accum"]
    ended = RunEndEvent(run_id="r", step=3, status="finished", checkpoint=None, elapsed=1.0, tokens_seen=9)
    assert list(ended.to_dict()) == RECORD_KEYS["run_end"]  # no "error" key unless the run failed
    assert json.loads(json.dumps(ended.to_dict())) == ended.to_dict()


def _tiny_session(workdir):
    s = nbtune.Session(workdir)
    s.load(counting_docs())
    s.tokenize(vocab_size=300, context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    return s


def _out_of_memory_above(model, limit: int) -> None:
    """The decoder (what the fused loss calls) raises torch's OOM error for training batches above `limit` rows."""
    decoder = model.get_decoder()
    real_forward = decoder.forward

    def forward(*args, input_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > limit and decoder.training:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU)")
        return real_forward(*args, input_ids=input_ids, **kwargs)

    decoder.forward = forward


def test_a_real_run_writes_the_same_record_keys_and_every_error_carries_advice(tmp_path):
    s = _tiny_session(tmp_path / "s")
    _out_of_memory_above(s.model.model, limit=2)
    run = s.train(steps=4, checkpoint_every=2, sample_prompt="one two", **{**FAST, "eval_every": 2})
    lines = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert {line["kind"] for line in lines} == set(EVENT_KINDS)
    for line in lines:
        if line["kind"] != "error":
            assert list(line) == RECORD_KEYS[line["kind"]]
    (error,) = [line for line in lines if line["kind"] == "error"]
    assert error["kind_of_error"] == "out_of_memory" and error["micro_batch"] == 2
    assert error["advice"] == "nothing to do now; start with batch_size=2, grad_accum=2 next time to skip the retry"


def test_a_failed_run_says_where_to_continue_from(tmp_path):
    s = _tiny_session(tmp_path / "s")
    errors = []

    def fail_in_step_3(event):
        if event.kind == "checkpoint" and event.step == 2:
            _out_of_memory_above(s.model.model, limit=0)  # from now on even one row is too many

    with pytest.raises(MemoryError):
        s.train(steps=4, checkpoint_every=2, listeners=(fail_in_step_3, errors.append), **FAST)
    *recovered, failure = [e for e in errors if e.kind == "error"]
    assert [e.micro_batch for e in recovered] == [2, 1]  # halved twice, then nothing is left to halve
    assert not failure.recovered and failure.kind_of_error == "out_of_memory"
    assert failure.checkpoint.endswith("step-000002")
    assert failure.advice == ("make a step fit in memory (the message says how), then continue from step-000002: "
                              "s.resume('run-001-scratch') in a notebook, train.py --resume for a recipe")


# ------------------------------------------------------------------------------------------------ the app


def _train_tab(tmp_path):
    s = _tiny_session(tmp_path / "s")
    app = s.ui()
    train = app.panel("Train")
    for name, value in {"steps": "4", "batch_size": "4", "eval_every": "2", "eval_batches": "2",
                        "warmup_steps": "1", "learning_rate": "0.003"}.items():
        train.form[name].value = value
    said: list[str] = []
    train.state.observe(lambda change: said.append(change["new"]), names="value")
    return s, app, train, said


def test_the_app_status_line_shows_the_advice_of_an_out_of_memory_recovery(tmp_path):
    s, app, train, said = _train_tab(tmp_path)
    _out_of_memory_above(s.model.model, limit=2)
    train.start.click()
    app.wait()
    assert s.run.status == "finished"
    (line,) = [text for text in said if "out of memory" in text]
    assert "micro-batch 4 -&gt; 2" in line
    assert line.endswith("— nothing to do now; start with batch_size=2, grad_accum=2 next time to skip the retry"
                         "</span>")


def test_the_app_shows_the_advice_of_a_failed_listener(tmp_path):
    pytest.importorskip("tensorboard")
    s, app, train, said = _train_tab(tmp_path)
    (tmp_path / "not-a-folder").write_text("a file where TensorBoard's folder should go")
    train.form["log_to"].value = "tensorboard"
    train.form["log_dir"].value = str(tmp_path / "not-a-folder")
    train.start.click()
    app.wait()
    assert s.run.status == "finished" and len(s.run.metrics) == 4  # the tracker failed, training went on
    (line,) = [text for text in said if "TensorBoardLogger failed" in text]
    advice = "free disk space or fix the listener; checkpoints still hold every finished step"
    assert line.endswith(f"— {advice}</span>")
    assert "TensorBoardLogger failed" in train.problems.value and advice in train.problems.value
