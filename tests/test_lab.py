"""The lab runs end to end on tiny models and reports curves, tables, ratios, warnings, the compute sweep and the
four differences."""

from __future__ import annotations

import pytest

import nbtune
from nbtune.config import LabConfig
from nbtune.eval.lab import ArmResult, LabResult
from nbtune.viz.lab_report import LabReport


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
    for words in ("Data:", "Compute:", "Starting point:", "Purpose:", "FLOPs to target", "best bits/byte"):
        assert words in html
    for arm in arms:  # the best point is the curve's minimum, and where it was reached
        assert arm.best_bpb == min(p["bpb"] for p in arm.curve) <= arm.final_bpb
        assert f"{arm.best_bpb:.3f}" in html
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


def _curve(*bpbs: float, flops_per_step: float = 100.0) -> list[dict]:
    return [{"step": i, "tokens_seen": 10 * i, "flops": flops_per_step * i, "elapsed": float(i), "bpb": b, "loss": b}
            for i, b in enumerate(bpbs)]


def _arm(arm: str, *bpbs: float, fraction: float = 1.0, **extra) -> ArmResult:
    return ArmResult(arm, fraction, 10, 100, len(bpbs) - 1, 1.0, 1, 1, curve=_curve(*bpbs, **extra.pop("fl", {})),
                     **extra)


def test_an_arm_that_ends_worse_than_its_best_is_called_overfitting():
    assert _arm("fine-tune", 3.0, 2.0, 1.5).warnings() == []
    [said] = _arm("fine-tune", 3.0, 2.0, 1.5, 1.9).warnings()
    assert "best at step 2 (1.500 bits/byte)" in said and "ended at 1.900" in said and "overfitting" in said
    assert "worse than the base model" in _arm("fine-tune", 2.0, 2.5, 2.6).warnings()[0]
    assert _arm("scratch", 5.0, 5.0005).warnings() == []  # evaluation noise is not a trend


def test_a_scratch_arm_that_ends_worse_than_it_started_is_flagged():
    said = _arm("scratch", 5.0, 4.0, 5.5).warnings()
    assert len(said) == 2 and "ended worse than it started (5.000 -> 5.500" in said[0]
    assert "best at step 1" in said[1]


def _result(sweep: dict[float, tuple], *, capped: float | None = None) -> LabResult:
    config = LabConfig(fractions=(1.0,), scratch_compute=tuple(sweep))
    arms = [_arm("fine-tune", 3.0, 2.0), _arm("scratch", 8.0, *sweep[1.0], compute=1.0)]
    arms += [_arm("scratch", 8.0, *bpbs, compute=m, sweep=True, capped=m == capped,
                  fl={"flops_per_step": 100.0 * m / len(bpbs)}) for m, bpbs in sweep.items() if m != 1.0]
    return LabResult(config=config, arms=arms, target_bpb=2.0, held_out_rows=8, seconds=1.0)


def test_the_compute_sweep_says_where_scratch_matched_the_fine_tune():
    result = _result({1.0: (4.0,), 10.0: (3.0, 2.5), 100.0: (2.2, 1.9, 2.1)})
    assert [a.compute for a in result.sweep()] == [1.0, 10.0, 100.0]
    verdict = result.sweep_verdict()
    assert "matched the fine-tune arm (2.000 bits/byte) with 100x its compute" in verdict
    assert "with 1x, 10x it did not" in verdict
    report = LabReport(result)
    html = report._repr_html_()
    assert "Compute sweep" in html and verdict.split(" (")[0] in html and "overfitting" in html
    assert len(report.figures()) == 3 and len(report.figures()[2].data) == 4


def test_the_compute_sweep_says_when_scratch_never_matched():
    verdict = _result({1.0: (4.0,), 10.0: (3.0, 2.5)}, capped=10.0).sweep_verdict()
    assert verdict.startswith("Scratch did not match the fine-tune arm (2.000 bits/byte) even with 10x its compute")
    assert "best was 2.500 bits/byte at 10x" in verdict and "capped at max_scratch_steps: 10x" in verdict


def test_lab_compute_sweep_end_to_end(tmp_path, tiny_pretrained, counting_down_docs):
    s = nbtune.Session(tmp_path / "sweep")
    s.load(counting_down_docs)
    report = s.lab(base=str(tiny_pretrained), fractions=(1.0,), finetune_steps=3, scratch_vocab_size=280,
                   max_scratch_steps=12, seq_len=32, batch_size=4, finetune_lr=1e-2, evaluations=2,
                   max_eval_rows=8, scratch_compute=(1, 4))
    result = report.result
    assert [(a.arm, a.compute, a.sweep) for a in result.arms] == [("fine-tune", None, False), ("scratch", 1.0, False),
                                                                  ("scratch", 4.0, True)]
    x1, x4 = result.sweep()
    if x4.capped:  # 4x the FLOPs is 4x the steps, unless that is more than max_scratch_steps
        assert x4.steps == 12 <= 4 * x1.steps + 3
    else:
        assert 4 * x1.steps <= x4.steps < 4 * (x1.steps + 1)
    target = result.target_bpb  # matched: some sweep arm's curve got down to the fine-tune arm's bits/byte
    matched = any(point["bpb"] <= target for arm in (x1, x4) for point in arm.curve)
    assert result.sweep_verdict().startswith("Scratch matched" if matched else "Scratch did not match")
    assert "Compute sweep" in report._repr_html_()
