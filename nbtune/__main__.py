"""Command line: `python -m nbtune demo` runs the whole pipeline offline and writes an HTML report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def demo(workdir: Path, out: Path | None, quick: bool) -> Path:
    """Both paths on the embedded data, end to end, in one HTML report.

    * from scratch: KJV verses -> clean -> new BPE tokenizer -> tiny Llama -> train;
    * fine-tune: chat dialogs -> clean -> SmolLM2-135M-Instruct (embedded) with LoRA -> train;
    * then: evaluate (bits/byte, vs the base), generate side by side, compare both runs on FLOPs.
    """
    from nbtune.session import Session
    from nbtune.viz.report import write_html_report

    sections = []
    scratch = Session(workdir / "scratch")
    sections += _data_stages(scratch, "kjv", "From scratch (KJV verses)", vocab_size=1024 if quick else 4096)
    _say("From scratch", scratch.new_model(preset="tiny"))
    run = scratch.train(steps=20 if quick else 100, batch_size=8, learning_rate=3e-3, eval_every=10 if quick else 25,
                        eval_batches=8, sample_prompt="And God said", background=False)
    sections += [("From scratch: model", scratch.reports["model"]), ("From scratch: training", run.report())]

    tuned = Session(workdir / "finetune")
    sections += _data_stages(tuned, "dialogs", "Fine-tune (chat dialogs)", vocab_size=1024)
    _say("Fine-tune", tuned.use_model("default", method="lora"))
    sections.append(("Fine-tune: tokens with the model's tokenizer", tuned.reports["tokens"]))
    run = tuned.train(steps=2 if quick else 6, batch_size=2, seq_len=128, learning_rate=2e-4,
                      eval_every=2 if quick else 3, eval_batches=2, sample_prompt="What is AI?", background=False)
    sections += [("Fine-tune: model", tuned.reports["model"]), ("Fine-tune: training", run.report())]
    sections += _evaluate_both(scratch, tuned, quick)
    target = out or workdir / "report.html"
    return write_html_report(target, "nbtune demo: train from scratch vs fine-tune", sections)


def _evaluate_both(scratch: Any, tuned: Any, quick: bool) -> list[tuple[str, Any]]:
    """Evaluate the fine-tuned model (vs its base), generate side by side, compare the two runs on FLOPs."""
    from nbtune.eval.compare import compare_runs

    evaluation = tuned.evaluate(max_rows=8 if quick else 16)
    _say("Fine-tune", evaluation)
    generations = tuned.generate(["What is AI?"], max_new_tokens=8 if quick else 16, others={"scratch": scratch})
    _say("Side by side", generations)
    comparison = compare_runs([scratch.workdir / scratch.runs[-1]["dir"], tuned.workdir / tuned.runs[-1]["dir"]],
                              axis="flops")
    return [("Fine-tune: evaluation", evaluation), ("Generations: fine-tuned vs base vs scratch", generations),
            ("Both runs against training FLOPs", comparison)]


def _data_stages(session: Any, example: str, label: str, vocab_size: int) -> list[tuple[str, Any]]:
    """load -> preview -> clean -> tokenize, printing each report; returns the report sections."""
    started = time.perf_counter()
    reports = [("data", session.load_example(example)), ("cleaning preview", session.preview_clean(mask_pii=True)),
               ("cleaning", session.clean(mask_pii=True)),
               ("tokens", session.tokenize(tokenizer="bpe", vocab_size=vocab_size, context_length=256))]
    for _, report in reports:
        _say(label, report)
    print(f"[{label}] data ready in {time.perf_counter() - started:.1f} s\n", flush=True)
    return [(f"{label}: {heading}", report) for heading, report in reports]


def _say(label: str, report: Any) -> None:
    print(f"[{label}]")
    print(_indent(repr(report)), flush=True)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbtune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="run the pipeline offline on the embedded data and write an HTML report")
    run.add_argument("--workdir", type=Path, default=Path("nbtune-demo"), help="where sessions are saved")
    run.add_argument("--out", type=Path, default=None, help="report path (default: WORKDIR/report.html)")
    run.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    path = demo(args.workdir.resolve(), args.out, args.quick)
    print(f"Report written to {path}  ({time.perf_counter() - started:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
