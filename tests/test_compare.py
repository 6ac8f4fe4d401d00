"""Comparing runs from their folders: what differs, curves on every axis, the best checkpoint, escaped HTML."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import FAST, TINY_MODEL, make_tiny_session

from nbtune.errors import ConfigError, DataError
from nbtune.eval.compare import AXES, best_checkpoint, compare_runs, config_diff, load_run
from nbtune.viz.compare_report import overlay_figure

PAYLOADS = ["<script>alert('x')</script>", "<img src=x onerror=alert(1)>", "\"><iframe src=javascript:alert(3)>"]
RUN = dict(steps=9, batch_size=4, warmup_steps=2, eval_every=3, eval_batches=2, checkpoint_every=3,
           keep_checkpoints=2, background=False, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three real runs of one session: lr 3e-3, lr 1e-3, and lr 1e-3 with a sample prompt full of HTML."""
    s = make_tiny_session(tmp_path_factory.mktemp("compare") / "w", model=None)
    for lr, extra in ((3e-3, {}), (1e-3, {}), (1e-3, {"sample_prompt": PAYLOADS[1]})):
        s.new_model(**TINY_MODEL)
        assert s.train(learning_rate=lr, **RUN, **extra).status == "finished"
    return [s.workdir / record["dir"] for record in s.runs]


def test_load_run_reads_settings_metrics_and_checkpoints(runs):
    run = load_run(runs[0])
    assert run.id == "run-001-scratch" and run.status == "finished" and run.method == "scratch"
    assert [r["step"] for r in run.steps] == list(range(1, 10))
    assert [e["step"] for e in run.evals] == [3, 6, 9]
    assert [p.name for p in run.checkpoints] == ["step-000006", "step-000009"]
    assert run.config["config"]["learning_rate"] == 3e-3


def test_config_diff_lists_exactly_what_differs(runs):
    two = [load_run(p) for p in runs[:2]]
    assert config_diff(two) == [("train.learning_rate", [3e-3, 1e-3])]
    three = [load_run(p) for p in runs]
    assert dict(config_diff(three)) == {"train.learning_rate": [3e-3, 1e-3, 1e-3],
                                        "train.sample_prompt": [None, None, PAYLOADS[1]]}
    assert config_diff(two[:1]) == []


def test_diff_flattens_nested_settings_and_skips_bookkeeping(runs, tmp_path):
    copy = tmp_path / "run-x"
    shutil.copytree(runs[1], copy)
    config = json.loads((copy / "run.json").read_text())
    config["model"]["config"]["layers"] = 4
    config["tokenizer"]["vocab_size"] = 999
    config["created"] = "another day"  # bookkeeping, never a difference
    (copy / "run.json").write_text(json.dumps(config))
    diff = dict(config_diff([load_run(runs[1]), load_run(copy)]))
    assert diff == {"model.config.layers": [2, 4], "tokenizer.vocab_size": [300, 999]}


@pytest.mark.parametrize("axis", sorted(AXES))
def test_every_axis_gives_one_trace_per_run_with_titles(runs, axis):
    report = compare_runs(runs, axis=axis)
    figures = report.figures()
    assert [f.layout.yaxis.title.text for f in figures] == [
        "train loss (nats per token)", "validation loss (nats per token)", "validation loss (bits per byte)",
        "throughput (tokens per second)", "peak memory (GiB)"]
    key = AXES[axis]
    for figure in figures:
        assert len(figure.data) == 3
        assert [t.name for t in figure.data] == [f"run-00{i}-scratch · scratch" for i in (1, 2, 3)]
        assert figure.layout.xaxis.title.text and "%{y" in figure.data[0].hovertemplate
    loss, eval_loss = figures[0], figures[1]
    run = load_run(runs[0])
    assert list(loss.data[0].x) == [r[key] for r in run.steps]
    assert list(loss.data[0].y) == [r["loss"] for r in run.steps]
    assert list(eval_loss.data[0].x) == [e[key] for e in run.evals]
    xs = list(loss.data[0].x)
    assert all(a < b for a, b in zip(xs, xs[1:], strict=False)), xs  # every axis grows with each step
    per_step = {"steps": 1, "tokens": RUN["batch_size"] * 32, "flops": xs[0]}  # 4 sequences of 32 tokens a step
    if axis in per_step:  # steps, tokens and FLOPs grow by the same amount every step; time does not
        assert xs == pytest.approx([per_step[axis] * k for k in range(1, 10)], rel=1e-9)
    unit = {"steps": "step", "tokens": "tokens", "flops": "FLOPs", "time": "seconds"}[axis]
    assert unit in loss.layout.xaxis.title.text


def test_bad_axis_and_metric_say_the_choices(runs):
    with pytest.raises(ConfigError, match="'steps', 'tokens', 'flops', 'time'"):
        compare_runs(runs, axis="epochs")
    with pytest.raises(ConfigError, match="eval_bpb"):
        compare_runs(runs, metrics=("loss", "accuracy"))
    with pytest.raises(ConfigError, match="no runs"):
        compare_runs([])


def test_not_a_run_folder_is_a_data_error(tmp_path, runs):
    with pytest.raises(DataError, match="no run.json"):
        load_run(tmp_path)
    with pytest.raises(DataError, match="no run folder"):
        load_run(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "run.json").write_text("{not json")
    with pytest.raises(DataError, match="line 1"):
        load_run(broken)


def test_summary_values_and_best_checkpoint(runs):
    report = compare_runs(runs[:2], axis="steps", metrics=("loss", "eval_loss"))
    first = report.runs[0]
    run = load_run(runs[0])
    assert first["steps"] == 9 and first["status"] == "finished"
    assert first["train_loss"] == run.steps[-1]["loss"] and first["eval_loss"] == run.evals[-1]["eval_loss"]
    assert first["eval_bpb"] == run.evals[-1]["eval_bpb"] and first["memory"] > 0
    assert first["tokens_per_s"] == float(np.median([r["tokens_per_s"] for r in run.steps[1:]]))
    best = best_checkpoint(run)
    lowest = min(run.evals, key=lambda e: e["eval_loss"])
    assert best["step"] == lowest["step"] and best["eval_loss"] == lowest["eval_loss"]
    text = repr(report)
    assert "train.learning_rate: 0.003 | 0.001" in text and "lowest validation loss" in text


def _synthetic_run(folder, evals: dict[int, float], checkpoints: list[int], keep: int = 2):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"id": folder.name, "method": "lora",
                                                 "config": {"keep_checkpoints": keep}}))
    lines = [{"kind": "run_start", "step": 0}]
    lines += [{"kind": "step", "step": s, "loss": 5.0 - s / 10, "tokens_seen": 64 * s, "elapsed": 0.5 * s,
               "flops": 1e6 * s, "tokens_per_s": 100.0, "memory": 2**20} for s in range(1, 13)]
    lines += [{"kind": "eval", "step": s, "eval_loss": loss, "eval_bpb": loss / 2} for s, loss in evals.items()]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")  # no run_end: crashed
    for step in checkpoints:
        ckpt = folder / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text("{}")
    return folder


def test_best_step_whose_checkpoint_was_pruned_points_to_the_nearest_kept(tmp_path):
    run = load_run(_synthetic_run(tmp_path / "r", {4: 2.0, 8: 2.5, 12: 3.0}, [8, 12]))
    assert run.status == "interrupted"
    best = best_checkpoint(run)
    assert best["step"] == 4 and best["eval_loss"] == 2.0 and best["eval_bpb"] == 1.0
    assert not best["exact"] and best["checkpoint_step"] == 8 and best["checkpoint"].endswith("step-000008")
    assert "step 4 was deleted" in best["note"] and "keep_checkpoints=2" in best["note"] and "2.5000" in best[
        "note"]
    exact = best_checkpoint(load_run(_synthetic_run(tmp_path / "e", {4: 2.0, 8: 1.0}, [4, 8])))
    assert exact["exact"] and exact["step"] == 8 and exact["checkpoint"].endswith("step-000008")
    none = best_checkpoint(load_run(_synthetic_run(tmp_path / "n", {4: 2.0}, [])))
    assert none["step"] == 4 and none["checkpoint"] is None and "no checkpoint" in none["note"]
    no_eval = best_checkpoint(load_run(_synthetic_run(tmp_path / "q", {}, [6, 12])))
    assert no_eval["step"] is None and no_eval["checkpoint"].endswith("step-000012")


def test_a_real_pruned_best_checkpoint(runs, tmp_path):
    copy = tmp_path / "pruned"
    shutil.copytree(runs[0], copy)
    best_step = best_checkpoint(load_run(copy))["step"]
    shutil.rmtree(copy / "checkpoints" / f"step-{best_step:06d}")
    best = best_checkpoint(load_run(copy))
    assert best["step"] == best_step and not best["exact"] and best["checkpoint_step"] != best_step
    assert "was deleted" in compare_runs([copy])._repr_html_()


def test_payloads_in_run_ids_and_config_values_are_escaped(runs, tmp_path):
    evil = tmp_path / "evil"
    shutil.copytree(runs[2], evil)
    config = json.loads((evil / "run.json").read_text())
    config["id"] = PAYLOADS[0]
    config["model_source"] = PAYLOADS[2]
    (evil / "run.json").write_text(json.dumps(config))
    report = compare_runs([runs[0], evil])
    assert dict(report.diff)["train.sample_prompt"] == [None, PAYLOADS[1]]
    html = report._repr_html_()
    for payload in PAYLOADS:
        assert payload not in html
    for marker in ("<img src=x", "<script>alert", "<iframe src=javascript"):
        assert marker not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    from nbtune.viz.report import write_html_report

    page = write_html_report(tmp_path / "r.html", "compare", [("Runs", report)]).read_text()
    for payload in PAYLOADS:
        assert payload not in page


def test_overlay_builder_is_pure_and_marks_empty_series():
    fig = overlay_figure([{"name": "a <b>", "x": [1, 2], "y": [2 * 2**30, 2**30], "step": [1, 2]},
                          {"name": "b", "x": [], "y": []}], metric="memory", axis="time")
    assert [t.name for t in fig.data] == ["a &lt;b&gt;", "b (no data)"]
    assert list(fig.data[0].y) == [2.0, 1.0]  # bytes shown as GiB
    assert fig.layout.xaxis.title.text == "training time (seconds)" and "step %{customdata}" in fig.data[0].hovertemplate


def test_same_run_ids_from_two_workdirs_get_distinct_names(runs, tmp_path):
    other = tmp_path / "other-workdir" / "runs" / "run-001-scratch"
    shutil.copytree(runs[0], other)
    report = compare_runs([runs[0], other], metrics=("loss",))
    names = [t.name for t in report.figures()[0].data]
    assert len(set(names)) == 2 and names[1].startswith("other-workdir/run-001-scratch")
    assert report.diff == []


def test_session_compare_and_export_are_wired(tmp_path, tiny_session):
    s = tiny_session("wired", trained_steps=3)
    s.train(steps=3, **{**FAST, "learning_rate": 1e-3})
    report = s.compare(axis="tokens")
    assert len(report.figures()[0].data) == 2
    exported = s.export("export", smoke_prompt="one two", max_new_tokens=3)
    assert (s.workdir / "export" / "model.safetensors").exists()
    assert "one two" in exported._repr_html_()
    html = s.report(tmp_path / "r.html").read_text()
    assert "6. Comparing runs" in html and "8. Export" in html
