"""A Session survives how notebooks are used: cells re-run, kernels restarted or killed, the app clicked while a
cell runs, one project opened from two processes. Real processes, real files, real locks; no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST, TINY_MODEL, counting_docs

import nbtune
from nbtune import StageOrderError
from nbtune.store import ProjectLockedError, StaleSessionError
from nbtune.train.checkpoint import list_checkpoints
from nbtune.train.listeners import read_metrics

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TRAIN = dict(FAST, checkpoint_every=2, keep_checkpoints=2)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=kwargs.pop("env", ENV), timeout=kwargs.pop("timeout", 300), **kwargs)


# ---------------------------------------------------------------------------- 1. opening is the default


def test_session_on_a_saved_folder_opens_it_and_says_so(tmp_path, tiny_session):
    s = tiny_session("p")
    s.train(steps=2, **FAST)
    s.close()
    again = nbtune.Session(tmp_path / "p")
    assert "opened: saved" in repr(again)
    assert again.runs[0]["id"] == "run-001-scratch" and len(again.dataset) == len(counting_docs())
    assert again.tokens["train"]["input_ids"] == s.tokens["train"]["input_ids"]


def test_fresh_moves_the_old_state_into_a_dated_backup_and_deletes_nothing(tmp_path, tiny_session):
    s = tiny_session("p")
    s.train(steps=2, **FAST)
    (s.workdir / "my-notes.txt").write_text("mine")
    before = snapshot(s.workdir)
    s.close()
    new = nbtune.Session(tmp_path / "p", fresh=True)
    assert new.dataset is None and new.runs == [] and "started over" in repr(new)
    backups = list((tmp_path / "p" / "backups").iterdir())
    assert len(backups) == 1
    moved = snapshot(backups[0])
    for name, digest in before.items():  # every file is still there, byte for byte, in the backup or in place
        if name == "my-notes.txt" or name == ".nbtune.lock":
            continue
        assert moved[name] == digest
    assert (tmp_path / "p" / "my-notes.txt").read_text() == "mine"


def test_rerunning_stages_with_the_same_inputs_gives_the_same_result(tiny_session):
    s = tiny_session("p")
    first = (s.dataset["text"], s.train_split["row_id"], s.tokens["train"]["input_ids"])
    s.load(counting_docs())
    s.tokenize(vocab_size=300, context_length=32)
    assert (s.dataset["text"], s.train_split["row_id"], s.tokens["train"]["input_ids"]) == first


def test_an_out_of_date_session_object_cannot_overwrite_a_newer_save(tmp_path, tiny_session):
    old = tiny_session("p")
    new = nbtune.Session(tmp_path / "p")  # the cell re-run in the same kernel
    new.train(steps=2, **FAST)
    with pytest.raises(StaleSessionError, match="out of date"):
        old.load(["something else entirely"] * 5)
    assert nbtune.Session(tmp_path / "p").runs[0]["id"] == "run-001-scratch"


# ---------------------------------------------------------------------------- 2. runs never collide


def test_a_second_pass_makes_a_new_run_and_leaves_the_first_runs_files_untouched(tmp_path, tiny_session):
    first = tiny_session("p")
    first.train(steps=6, **TRAIN)
    run_one = snapshot(tmp_path / "p" / "runs" / "run-001-scratch")
    first.close()
    second = tiny_session("p")  # "Run all" again in a fresh kernel: the same cells
    second.train(steps=4, **TRAIN)
    assert snapshot(tmp_path / "p" / "runs" / "run-001-scratch") == run_one
    assert [r["id"] for r in second.runs] == ["run-001-scratch", "run-002-scratch"]
    steps = [r["step"] for r in read_metrics(second.workdir / "runs/run-002-scratch/metrics.jsonl")
             if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(second.workdir / "runs/run-002-scratch")] == [
        "step-000002", "step-000004"]


def test_run_folders_on_disk_that_session_json_forgot_are_listed_and_never_reused(tmp_path, tiny_session):
    s = tiny_session("p")
    s.train(steps=2, **FAST)
    s.close()
    state = json.loads((tmp_path / "p" / "session.json").read_text())
    state["runs"] = []  # what an older nbtune left after starting empty over a saved project
    (tmp_path / "p" / "session.json").write_text(json.dumps(state))
    again = tiny_session("p")
    assert again.runs[0]["id"] == "run-001-scratch" and again.runs[0]["status"] == "finished"
    assert again.train(steps=2, **FAST).id == "run-002-scratch"


def test_checkpoints_are_ordered_and_pruned_by_step_number_not_by_name(tmp_path):
    run_dir = tmp_path / "run"
    for step in (999_999, 1_000_000, 2, 10):
        folder = run_dir / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
    (run_dir / "checkpoints" / "step-notes").mkdir()  # not a checkpoint
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "step-000002", "step-000010", "step-999999", "step-1000000"]


def test_resuming_an_attached_run_never_prunes_its_checkpoints(tiny_session):
    elsewhere = tiny_session("elsewhere")
    stopper = {"at": 4}

    def stop(event):
        if event.kind == "step" and event.step == stopper["at"]:
            elsewhere.run.stop()

    elsewhere.train(steps=8, listeners=(stop,), **{**TRAIN, "keep_checkpoints": 1, "checkpoint_every": 1})
    run_dir = elsewhere.workdir / "runs" / "run-001-scratch"
    for step in (1, 2, 3):  # checkpoints the other side kept (e.g. with a larger keep_checkpoints)
        (run_dir / "checkpoints" / f"step-{step:06d}").mkdir()
        (run_dir / "checkpoints" / f"step-{step:06d}" / "state.json").write_text("{}")
    elsewhere.close()
    here = tiny_session("here")
    here.attach_run(run_dir)
    here.resume(here.runs[-1]["id"], progress=False)
    assert [p.name for p in list_checkpoints(run_dir)][:4] == ["step-000001", "step-000002", "step-000003",
                                                               "step-000004"]
    assert list_checkpoints(run_dir)[-1].name == "step-000008"


# ---------------------------------------------------------------------------- 3. one run at a time


def paused_run(s: nbtune.Session, *, steps: int = 50, listeners: tuple = (), **options):
    """A background run paused after its first step (waits for the pause checkpoint, no sleeping)."""
    paused = threading.Event()

    def on_event(event):
        if event.kind == "step" and event.step == 1:
            s.run.pause()
        if event.kind == "checkpoint" and event.reason == "pause":
            paused.set()

    run = s.train(steps=steps, listeners=(on_event, *listeners), **{**FAST, "background": True, **options})
    assert paused.wait(60), "the run did not pause"
    return run


def test_while_a_run_is_paused_stages_that_change_its_inputs_are_refused(tmp_path, tiny_session):
    s = tiny_session("p")
    run = paused_run(s)
    try:
        refused = {
            "train": lambda: s.train(steps=2, **FAST),
            "load": lambda: s.load(["x y z"] * 10),
            "clean": lambda: s.clean(),
            "tokenize": lambda: s.tokenize(vocab_size=300),
            "new_model": lambda: s.new_model(preset="tiny"),
            "use_model": lambda: s.use_model("default", method="lora"),
            "lab": lambda: s.lab(),
            "resume another run": lambda: s.resume("run-009-scratch", steps=3),
        }
        for name, call in refused.items():
            with pytest.raises(StageOrderError, match=f"{run.id} is paused") as info:
                call()
            assert "run.wait()" in str(info.value) or "stop" in str(info.value), name
        before = len(s.dataset)
        report = s.export(tmp_path / "exported", smoke_prompt=None)  # safe on a paused model
        assert report is not None and len(s.dataset) == before
        assert s.resume() is run and not run._token.pause_requested  # un-pauses in place
    finally:
        run.stop()
        run.wait(60)
    assert run.status == "stopped"


def test_a_rerun_session_cell_while_training_gives_back_the_session_that_trains(tmp_path, tiny_session):
    s = tiny_session("p")
    run = paused_run(s)
    try:
        again = nbtune.Session(tmp_path / "p")
        assert again is s and "this is the same Session object" in repr(again)
        with pytest.raises(StageOrderError, match="stop it"):
            nbtune.Session(tmp_path / "p", fresh=True)
    finally:
        run.stop()
        run.wait(60)


# ---------------------------------------------------------------------------- 4. stages are serialised


class HeldRows(list):
    """A list of rows whose reading waits until the test lets it go (a slow source, deterministically)."""

    def __init__(self, rows, entered, release):
        super().__init__(rows)
        self.entered, self.release = entered, release

    def __iter__(self):
        self.entered.set()
        assert self.release.wait(60)
        return super().__iter__()


def test_an_app_click_waits_for_the_stage_a_code_cell_is_running(tiny_session):
    s = tiny_session("p")
    app = s.ui(background=True)
    entered, release = threading.Event(), threading.Event()
    new_rows = [f"{doc} again" for doc in counting_docs(120, seed=3)]
    cell = threading.Thread(target=lambda: s.load(HeldRows(new_rows, entered, release)))
    cell.start()
    assert entered.wait(60)
    app.panel("Clean").apply.click()  # the app's worker calls s.clean() while the cell is inside s.load()
    assert s._stage_lock.wait_for_waiters(1, timeout=60), "the app's clean() did not wait for the cell's load()"
    assert s._stage_lock.holder == "load"
    assert "waiting for load() that a code cell is running" in app.jobs.status.value
    release.set()
    cell.join(60)
    app.wait(60)
    assert app.errors.last is None
    # serialised: clean() ran on the rows load() committed, never on a half-loaded Session
    assert s.clean_applied and set(s.dataset["row_id"]) <= set(s.raw_dataset["row_id"])
    assert all(text.endswith("again") for text in s.dataset["text"])
    assert len(s.raw_dataset) == len(new_rows)
    reopened = nbtune.Session.open(s.workdir, read_only=True)
    assert reopened.dataset["text"] == s.dataset["text"]


# ---------------------------------------------------------------------------- 5. two processes, one project

HOLDER = """
import sys, nbtune
s = nbtune.Session(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_second_process_gets_a_clear_error_or_a_read_only_view_and_a_dead_holder_is_taken_over(tmp_path, tiny_session):
    tiny_session("p").close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "p")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ProjectLockedError) as info:
            nbtune.Session(tmp_path / "p")
        assert f"process {holder.pid}" in str(info.value) and "read_only=True" in str(info.value)
        view = nbtune.Session(tmp_path / "p", read_only=True)
        assert len(view.dataset) == len(counting_docs()) and "read-only" in repr(view)
        with pytest.raises(StageOrderError, match="read-only"):
            view.clean()
        os.kill(holder.pid, signal.SIGKILL)  # the kernel dies without letting go
        holder.wait(30)
        taken = nbtune.Session(tmp_path / "p")  # the dead holder's lock is taken over
        assert len(taken.dataset) == len(counting_docs())
    finally:
        holder.kill()


def test_a_run_trained_by_another_process_cannot_be_resumed_here_at_the_same_time(tmp_path, tiny_session):
    s = tiny_session("p")

    def stop(event):
        if event.kind == "step" and event.step == 2:
            s.run.stop()

    s.train(steps=6, listeners=(stop,), **FAST)
    s.close()
    run_dir = tmp_path / "p" / "runs" / "run-001-scratch"
    code = """
    import sys
    from nbtune.store import FileLock
    lock = FileLock(__import__('pathlib').Path(sys.argv[1]) / '.run.lock')
    assert lock.acquire() is None
    print('training', flush=True)
    sys.stdin.readline()
    """
    other = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(run_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert other.stdout.readline().strip() == "training"
        here = nbtune.Session(tmp_path / "p")
        with pytest.raises(StageOrderError, match=f"being trained right now by process {other.pid}"):
            here.resume("run-001-scratch", progress=False)
    finally:
        other.kill()
        other.wait(30)
    assert here.resume("run-001-scratch", progress=False).status == "finished"


# ---------------------------------------------------------------------------- 6. saves are transactions

SAVER = """
import sys, nbtune
s = nbtune.Session(sys.argv[1])
rows = [line for line in sys.argv[2].split('|')]
s.load(rows)
s.clean(min_words=2)
s.tokenize(vocab_size=300, context_length=32)
print("done", flush=True)
"""


def assert_consistent(workdir: Path) -> nbtune.Session:
    """The project opens, every data item is of one generation, and nothing a killed save left remains."""
    s = nbtune.Session(workdir)
    state = json.loads((workdir / "session.json").read_text())
    on_disk = sorted(p.name for p in (workdir / "data").iterdir())
    assert on_disk == sorted(Path(v).name for v in state["data"].values()), on_disk
    assert len(s.raw_dataset) == state["sources"][-1]["rows"]
    if s.clean_applied:
        assert set(s.dataset["row_id"]) <= set(s.raw_dataset["row_id"])
        assert set(s.dataset["text"]) <= set(s.raw_dataset["text"])
    if s.tokens is not None:
        tokenized = set(s.tokens["train"]["row_id"]) | set(s.tokens["validation"]["row_id"])
        assert tokenized == set(s.dataset["row_id"])
        texts = dict(zip(s.dataset["row_id"], s.dataset["text"], strict=True))
        first = s.tokens["train"][0]
        assert s.tokenizer.decode(first["input_ids"][:-1]).strip() == texts[first["row_id"]].strip()
    return s


OLD_ROWS = counting_docs(80, seed=11)
NEW_ROWS = [f"{doc} and more" for doc in counting_docs(90, seed=12)]


@pytest.mark.parametrize("point", ["after-write:loaded", "after-rename:loaded", "before-state", "after-state",
                                   "after-remove:cleaned", "after-write:tokens", "after-remove:tokens"])
def test_a_kill_at_any_point_of_a_save_leaves_a_project_that_opens_consistently(tmp_path, point):
    base = nbtune.Session(tmp_path / "p")
    base.load(OLD_ROWS)
    base.clean(min_words=2)
    base.tokenize(vocab_size=300, context_length=32)
    base.close()
    out = python(SAVER, str(tmp_path / "p"), "|".join(NEW_ROWS), env={**ENV, "NBTUNE_CRASH_AT": point})
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    s = assert_consistent(tmp_path / "p")
    assert s.raw_dataset["text"] in (OLD_ROWS, NEW_ROWS)


LOOPER = """
import sys, nbtune
s = nbtune.Session(sys.argv[1])
a, b = sys.argv[2].split('|'), sys.argv[3].split('|')
i = 0
while True:
    rows = a if i % 2 else b
    s.load(rows); print("loaded", i, flush=True)
    s.clean(min_words=2)
    s.tokenize(vocab_size=300, context_length=32)
    i += 1
"""


def test_kill_minus_nine_at_random_moments_of_repeated_saves(tmp_path):
    nbtune.Session(tmp_path / "p").close()
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", LOOPER, str(tmp_path / "p"), "|".join(OLD_ROWS),
                                 "|".join(NEW_ROWS)], stdout=subprocess.PIPE, text=True, env=ENV)
        assert proc.stdout.readline().startswith("loaded")
        for _ in range(rng.randint(0, 2)):
            proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.6))  # not a wait for anything: a random moment, so the kill lands inside a save
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert_consistent(tmp_path / "p").close()


# ---------------------------------------------------------------------------- 7. failures surface


def broken_forward(model, at_call: int):
    """From the `at_call`-th training forward on, the model raises (as a CUDA fault would)."""
    count = {"n": 0}

    def hook(module, args):
        count["n"] += 1
        if count["n"] >= at_call and model.training:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated in the model)")

    model.get_input_embeddings().register_forward_pre_hook(hook)


def test_a_background_run_that_fails_raises_from_wait(tiny_session):
    s = tiny_session("p")
    broken_forward(s.model.model, at_call=4)
    run = s.train(steps=6, **{**FAST, "background": True, "checkpoint_every": 2})
    with pytest.raises(RuntimeError, match="illegal memory access") as info:
        run.wait(60)
    assert "failed at step 4; step 3 is saved" in "\n".join(info.value.__notes__)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run.raise_for_status()


def test_a_listener_that_fails_shows_in_the_run_report_and_the_app(tiny_session):
    s = tiny_session("p")

    def disk_full(event):
        if event.kind == "step" and event.step >= 3:
            raise OSError(28, "No space left on device")

    run = paused_run(s, steps=5, listeners=(disk_full,))
    train = s.ui(background=False).panel("Train")
    train.refresh()  # the app opened while the run is paused follows it from now on
    train.resume.click()
    run.wait(60)
    assert run.status == "finished"
    report = run.report()
    assert any("No space left on device" in e["message"] for e in report.errors)
    assert "No space left on device" in report._repr_html_()
    assert "No space left on device" in train.problems.value and "disk_full" in train.problems.value


CRASHER = """
import os, signal, sys, nbtune
s = nbtune.Session(sys.argv[1])
def die(event):
    if event.kind == "checkpoint" and event.step == 4:
        os.kill(os.getpid(), signal.SIGKILL)   # the kernel crashes mid-run
s.train(steps=8, batch_size=4, learning_rate=3e-3, warmup_steps=2, eval_every=10, eval_batches=4,
        checkpoint_every=2, background=False, progress=False, listeners=(die,))
"""


def test_after_a_kernel_crash_the_run_is_interrupted_and_resumes_bitwise(tmp_path, tiny_session):
    reference = tiny_session("ref").train(steps=8, **{**FAST, "checkpoint_every": 2}).losses
    tiny_session("p").close()
    out = python(CRASHER, str(tmp_path / "p"))
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    s = nbtune.Session(tmp_path / "p")
    assert s.runs[0]["status"] == "interrupted" and s.runs[0]["checkpoint"].endswith("step-000004")
    train = s.ui(background=False).panel("Train")
    train.refresh()
    assert not train.resume.disabled and "interrupted" in train.state.value
    run = s.resume(progress=False)
    assert run.status == "finished" and run.metrics[0]["step"] == 5
    logged = [r["loss"] for r in read_metrics(s.workdir / "runs/run-001-scratch/metrics.jsonl") if r["kind"] == "step"]
    assert logged == reference


# ---------------------------------------------------------------------------- 8. continue a finished run


def test_a_finished_run_is_trained_further_with_a_replanned_schedule(tiny_session):
    s = tiny_session("p")
    run = s.train(steps=6, **FAST)
    with pytest.raises(StageOrderError, match="steps="):
        s.resume(run.id)
    longer = s.resume(run.id, steps=4, learning_rate=1e-3, warmup_steps=2)
    assert longer.status == "finished" and [m["step"] for m in longer.metrics] == [7, 8, 9, 10]
    lrs = [m["lr"] for m in longer.metrics]
    assert lrs[:2] == pytest.approx([0.5e-3, 1e-3])  # warmup to the new peak, then decay
    assert lrs[3] < lrs[2] == pytest.approx(lrs[1])
    saved = json.loads((s.workdir / "runs" / run.id / "run.json").read_text())
    assert saved["config"]["steps"] == 10
    assert [(g["start"], g["end"]) for g in saved["segments"]] == [(0, 6), (6, 10)]
    logged = [r["step"] for r in read_metrics(s.workdir / "runs" / run.id / "metrics.jsonl") if r["kind"] == "step"]
    assert logged == list(range(1, 11))
    assert longer.extend(2).metrics[-1]["step"] == 12  # the handle's way, the same thing


def test_an_extension_stopped_and_resumed_after_a_restart_is_bitwise_exact(tmp_path, tiny_session):
    reference = tiny_session("ref")
    reference.train(steps=4, **FAST)
    expected = reference.resume("run-001-scratch", steps=6).losses
    s = tiny_session("p")
    s.train(steps=4, **FAST)

    def stop(event):
        if event.kind == "step" and event.step == 7:
            s.run.stop()

    s.resume("run-001-scratch", steps=6, listeners=(stop,))
    s.close()
    code = """
    import json, sys, nbtune
    s = nbtune.Session(sys.argv[1])
    print(json.dumps(s.resume(progress=False).losses))
    """
    out = python(code, str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr[-2000:]
    logged = [r["loss"] for r in read_metrics(tmp_path / "p/runs/run-001-scratch/metrics.jsonl")
              if r["kind"] == "step"]
    assert logged[4:] == expected
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected[3:]


def test_a_session_dropped_without_close_lets_go_of_the_project(tmp_path, tiny_session):
    import gc

    s = tiny_session("p")
    del s
    gc.collect()
    out = python("import sys, nbtune; print(len(nbtune.Session(sys.argv[1]).dataset))", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(len(counting_docs()))


def test_an_empty_validation_split_is_saved_and_read_back(tmp_path, tiny_session):
    s = tiny_session("p", model=None, validation_fraction=0.0)
    assert len(s.tokens["validation"]) == 0 and len(s.tokens["train"]) == len(counting_docs())
    s.close()
    again = nbtune.Session(tmp_path / "p")
    assert len(again.tokens["validation"]) == 0
    assert again.tokens["validation"].column_names == again.tokens["train"].column_names
    again.new_model(**TINY_MODEL)
    assert again.train(steps=2, **FAST).status == "finished"  # no validation rows: no evaluation, no error
