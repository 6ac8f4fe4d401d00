"""Command line: `python -m nbtune demo` runs the whole pipeline offline and writes an HTML report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def demo(workdir: Path, out: Path | None, quick: bool) -> Path:
    """Both paths on the embedded data: pre-training text (KJV) and fine-tuning dialogs.

    Each gets its own Session (load -> preview -> clean -> tokenize); one HTML
    report holds both, so the two kinds of data can be compared side by side.
    """
    from nbtune.session import Session
    from nbtune.viz.report import write_html_report

    sections = []
    plans = [
        ("kjv", "Pre-training text (KJV verses)", dict(tokenizer="bpe", vocab_size=2048 if quick else 4096,
                                                        context_length=256)),
        ("dialogs", "Fine-tuning dialogs (chatterbot-corpus)", dict(tokenizer="bpe", vocab_size=1024 if quick else 2048,
                                                                     context_length=256)),
    ]
    for name, label, token_settings in plans:
        step_started = time.perf_counter()
        session = Session(workdir / name)
        print(f"[{label}] loading ...", flush=True)
        print(_indent(repr(session.load_example(name))))
        preview = session.preview_clean(mask_pii=True)
        print(_indent(repr(preview)))
        print(_indent(repr(session.clean(mask_pii=True))))
        print(_indent(repr(session.tokenize(**token_settings))))
        print(f"[{label}] done in {time.perf_counter() - step_started:.1f} s\n", flush=True)
        sections += [(f"{label}: {heading}", report) for heading, report in (
            ("data", session.reports["load"]), ("cleaning preview", preview),
            ("cleaning", session.reports["clean"]), ("tokens", session.reports["tokens"]))]
    target = out or workdir / "report.html"
    return write_html_report(target, "nbtune demo: pre-training text vs fine-tuning dialogs", sections)


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
