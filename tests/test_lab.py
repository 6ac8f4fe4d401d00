"""The lab runs end to end on tiny models and reports curves, tables, ratios and the four differences."""

from __future__ import annotations

import pytest

import nbtune
from nbtune.eval.lab import ArmResult


def test_lab_end_to_end_on_tiny_models(tmp_path, tiny_pretrained, counting_down_docs):
    s = nbtune.Session(tmp_path / "lab")
    s.load(counting_down_docs)
    report = s.lab(base=str(tiny_pretrained), method="lora", fractions=(0.3, 1.0), finetune_steps=6,
                   scratch_vocab_size=280, max_scratch_steps=30, seq_len=32, batch_size=4, finetune_lr=1e-2,
                   evaluations=3, max_eval_rows=16)
    arms = report.result.arms
    assert [(a.arm, a.fraction) for a in arms] == [("fine-tune", 0.3), ("scratch", 0.3), ("fine-tune", 1.0),
                                                   ("scratch", 1.0)]
    for arm in arms:
        assert arm.curve[0]["step"] == 0 and len(arm.curve) >= 3
        assert arm.final_bpb < arm.start_bpb  # every arm learns
    assert arms[1].train_rows < arms[3].train_rows
    assert report.result.target_bpb == arms[2].final_bpb
    html = report._repr_html_()
    for words in ("Data:", "Compute:", "Starting point:", "Purpose:", "FLOPs to target"):
        assert words in html
    assert len(report.figures()) == 2 and len(report.figures()[0].data) == 4
    assert (s.workdir / "lab" / "lab-001" / "result.json").exists()  # each lab() gets its own folder
    assert all(arm.run_dir.startswith(str(s.workdir / "lab" / "lab-001")) for arm in arms)


def test_reaching_a_target_is_interpolated():
    arm = ArmResult("scratch", 1.0, 10, 100, 3, 1.0, 1, 1, curve=[
        {"step": 0, "tokens_seen": 0, "flops": 0.0, "elapsed": 0.0, "bpb": 4.0, "loss": 0},
        {"step": 1, "tokens_seen": 100, "flops": 100.0, "elapsed": 1.0, "bpb": 2.0, "loss": 0},
        {"step": 2, "tokens_seen": 200, "flops": 200.0, "elapsed": 2.0, "bpb": 1.0, "loss": 0}])
    assert arm.to_reach(3.0) == pytest.approx({"flops": 50.0, "tokens_seen": 50.0, "elapsed": 0.5})
    assert arm.to_reach(1.0)["flops"] == pytest.approx(200.0)
    assert arm.to_reach(0.5) is None


def test_lab_needs_held_out_rows(tmp_path, counting_down_docs):
    s = nbtune.Session(tmp_path / "lab2")
    s.load(counting_down_docs[:30], validation_fraction=0.0)
    with pytest.raises(nbtune.DataError, match="held-out"):
        s.lab()
