"""Benchmark of the cleaning stage (nbtune.data.clean) on 100k synthetic documents.

Requirements checked (2 CPU cores):
* `apply` with the default CleanConfig on 100k short documents: at most 10 s;
* `preview` on the same 100k rows: under 1 s;
* near-duplicate dedup (near_dedup=True) of the 100k documents: reported in docs/s.

The documents are sentences drawn from a Zipf-weighted word list, some wrapped
in HTML (with script blocks and entities), some with e-mail addresses, ~10%
exact duplicates (some differing only in case and whitespace) and ~5%
near-duplicates (one or two words changed). Run:

    python benchmarks/bench_clean.py [--rows 100000] [--out benchmarks/results/clean.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

APPLY_LIMIT_S = 10.0
PREVIEW_LIMIT_S = 1.0


def make_documents(n: int, seed: int = 0) -> tuple[list[str], int, list[tuple[int, int]]]:
    """n synthetic documents; returns (docs, planted exact duplicates, planted (near-dup, source) pairs)."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ra", "tu", "se", "po", "di", "an", "er", "in", "on", "ve", "sa",
                 "to", "ri", "ma", "le", "go", "bu", "fa", "he", "ji", "wo", "zu", "ch", "th", "st", "pr"]
    vocab = sorted({"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(6000)})
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.07
    cdf = np.cumsum(weights / weights.sum())
    words = np.array(vocab)
    # Pre-draw a pool of word indices (one searchsorted call instead of one weighted choice per sentence).
    pool = np.minimum(np.searchsorted(cdf, rng.random(n * 60)), len(vocab) - 1)
    pos = 0

    def sentence() -> str:
        nonlocal pos
        k = int(rng.integers(5, 16))
        if pos + k > len(pool):
            pos = 0
        w = words[pool[pos : pos + k]]
        pos += k
        return " ".join(w).capitalize() + ".?!."[int(rng.integers(0, 4))]

    docs: list[str] = []
    exact = 0
    near: list[tuple[int, int]] = []
    for i in range(n):
        r = rng.random()
        if i > 100 and r < 0.10:  # exact duplicate, sometimes only up to case and whitespace
            src = docs[rng.integers(0, i)]
            docs.append(src.upper() if rng.random() < 0.2 else (src + "  " if rng.random() < 0.5 else src))
            exact += 1
            continue
        if i > 100 and r < 0.15:  # near duplicate: punctuation changed, a few words appended, or one word replaced
            j = int(rng.integers(0, i))
            kind = rng.integers(0, 3)
            if kind == 0:
                text = docs[j].replace(".", ";").replace("?", ".") + " !"
            elif kind == 1:
                text = docs[j] + " " + sentence()[:20]
            else:
                toks = docs[j].split(" ")
                toks[rng.integers(0, len(toks))] = str(words[rng.integers(0, len(words))])
                text = " ".join(toks)
            docs.append(text)
            near.append((i, j))
            continue
        n_sent = int(rng.integers(2, 6)) if rng.random() < 0.9 else int(rng.integers(8, 14))
        text = " ".join(sentence() for _ in range(n_sent))
        r2 = rng.random()
        if r2 < 0.08:
            text = f"<p>{text}</p>\n<p>Read <b>more</b> &amp; share.</p>"
        elif r2 < 0.10:
            text = f"<div><script>var x = 1;</script>{text}&nbsp;&copy; 2024</div>"
        elif r2 < 0.15:
            user = "".join(rng.choice(list("abcdefghij"), size=6))
            text = f"{text} Contact {user}@example.org or call 555-{rng.integers(100, 999)}-{rng.integers(1000, 9999)}."
        elif r2 < 0.20:
            text = text.replace(" ", "  ", 3) + "\n\n\n\n  trailing   line  "
        elif r2 < 0.205:  # boilerplate: the same line over and over (the repetition filter's target)
            text = "\n".join([sentence()] * 12) + "\n" + text
        docs.append(text)
    return docs, exact, near


def shingles(text: str) -> set:
    """The same shingles MinHash uses (case-folded word 5-grams), exactly, for checking its estimates."""
    import re

    toks = re.findall(r"\w+", text.casefold())
    if len(toks) < 5:
        return {" ".join(toks)}
    return set(zip(*(toks[k:] for k in range(5)), strict=False))


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


CPU: dict[str, float] = {}


def timed(fn, *args, **kwargs):
    """(result, wall seconds); the CPU seconds of this process go to CPU["last"]."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    CPU["last"] = time.process_time() - c0
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "clean.md")
    args = parser.parse_args()

    import datasets

    from nbtune.config import CleanConfig
    from nbtune.data import clean

    datasets.disable_progress_bars()
    docs, planted_exact, planted_near = make_documents(args.rows)
    ds = datasets.Dataset.from_dict({"row_id": np.arange(len(docs), dtype=np.int64), "text": docs})
    default = CleanConfig()
    load_before = os.getloadavg()[0]

    clean.apply(ds.select(range(2000)), default)  # warm-up (imports, regex compilation)
    rows: list[tuple[str, str, str, str, str]] = []

    def add(row: tuple[str, str, str, str]) -> None:
        """A table row; the CPU column is this process's CPU time of the last timed call."""
        name, wall, req, result = row
        rows.append((name, wall, f"{CPU['last']:.2f} s", req, result))

    # 1. Full apply with the default config and the default num_proc; then 1 vs 2 processes explicitly.
    res, t_apply = timed(clean.apply, ds, default)
    add((f"apply, default config (default num_proc = {clean.DEFAULT_NUM_PROC})",
                 f"{t_apply:.2f} s", f"<= {APPLY_LIMIT_S:.0f} s", "PASS" if t_apply <= APPLY_LIMIT_S else "FAIL"))
    for num_proc in (1, 2):
        _, t = timed(clean.apply, ds, default, num_proc=num_proc)
        add((f"apply, default config, num_proc={num_proc}", f"{t:.2f} s", "comparison", ""))

    # 2. Preview on the 100k set (2000-row sample), five seeds.
    times = [timed(clean.preview, ds, default, seed=seed)[1] for seed in range(5)]
    t_prev = max(times)
    add((f"preview, 2000-row sample of {len(ds):,} rows (worst of 5; median {statistics.median(times):.3f} s)",
                 f"{t_prev:.3f} s", f"< {PREVIEW_LIMIT_S:.0f} s", "PASS" if t_prev < PREVIEW_LIMIT_S else "FAIL"))
    near_cfg = CleanConfig(near_dedup=True)
    _, t = timed(clean.preview, ds, near_cfg)
    add(("preview with near_dedup=True", f"{t:.3f} s", f"< {PREVIEW_LIMIT_S:.0f} s",
                 "PASS" if t < PREVIEW_LIMIT_S else "FAIL"))

    # 3. Near-duplicate dedup of the 100k documents.
    nres, t_near = timed(clean.apply, ds, near_cfg)
    add((f"apply with near_dedup=True (default num_proc = {clean.DEFAULT_NUM_PROC})",
                 f"{t_near:.2f} s", f"{len(ds) / t_near:,.0f} docs/s", ""))
    for num_proc in (1, 2):
        _, t = timed(clean.apply, ds, near_cfg, num_proc=num_proc)
        add((f"apply with near_dedup=True, num_proc={num_proc}", f"{t:.2f} s", f"{len(ds) / t:,.0f} docs/s", ""))
    kept_docs = list(res.dataset["text"])
    sig, t_sig = timed(clean.minhash_signatures, kept_docs)
    add((f"near-dup core: MinHash signatures of the {len(kept_docs):,} rows left after exact dedup, 1 process",
                 f"{t_sig:.2f} s", f"{len(kept_docs) / t_sig:,.0f} docs/s", ""))
    (partner, _), t_lsh = timed(clean._near_duplicates, sig, near_cfg.near_dedup_threshold)
    add(("near-dup core: LSH banding + candidate verification + keep/drop", f"{t_lsh:.2f} s",
                 f"{len(kept_docs) / t_lsh:,.0f} docs/s", ""))
    load_after = os.getloadavg()[0]

    # Quality of the near-dup pass, against exact Jaccard of the shingle sets.
    thr = near_cfg.near_dedup_threshold
    removed_near = {rid: why for rid, why in nres.removed_reasons.items() if why.startswith("near-duplicate")}
    true_j = [jaccard(docs[rid], docs[int(why.split("row ")[1].split(" ")[0])]) for rid, why in removed_near.items()]
    precision = sum(j >= thr - 0.1 for j in true_j) / max(1, len(true_j))
    exact_removed = {rid for rid, why in nres.removed_reasons.items() if why.startswith("duplicate of")}
    eligible = [(i, j) for i, j in planted_near if i not in exact_removed and jaccard(docs[i], docs[j]) >= thr]
    recall = sum(i in removed_near for i, _ in eligible) / max(1, len(eligible))

    m = machine()
    steps = {s.name: s for s in res.steps}
    nsteps = {s.name: s for s in nres.steps}
    lines = [
        "# Cleaning benchmark (nbtune.data.clean)",
        "",
        f"- date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['platform']}",
        f"- datasets {datasets.__version__}, numpy {np.__version__}",
        f"- load average (1 min) before / after the runs: {load_before:.2f} / {load_after:.2f} "
        "(other work on the machine makes wall times noisy)",
        f"- data: {len(ds):,} synthetic documents, {sum(map(len, docs)) / len(docs):.0f} characters on average; "
        f"planted {planted_exact:,} exact duplicates (some differ in case/whitespace) and {len(planted_near):,} "
        "near-duplicates",
        f"- command: `python benchmarks/bench_clean.py --rows {args.rows}`",
        "",
        "| measurement | wall time | CPU, main process | requirement / rate | result |",
        "|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        "CPU is this process's CPU time: with num_proc=2 the workers' time is not in it. Requirements are "
        "checked on wall time.",
        "",
        "`apply` uses `clean.DEFAULT_NUM_PROC` processes when num_proc is None. It is 1: on this shared 2-core "
        "machine num_proc=2 was slower for the default config in every run during development, and with "
        "near_dedup on it won only 3 of 9 paired runs (the table above is a single run; compare the num_proc "
        "rows on your machine).",
        "",
        "Default config: removed " + ", ".join(f"{name} {s.removed:,}" for name, s in steps.items() if s.kind == "filter")
        + "; changed " + ", ".join(f"{name} {s.changed:,}" for name, s in steps.items() if s.kind == "transform")
        + f". Kept {res.rows_after:,} of {res.rows_before:,} rows.",
        "",
        f"near_dedup=True (threshold {thr}, LSH bands x rows = {clean.lsh_params(thr)}, {clean.NUM_PERM} permutations): "
        f"exact_dedup removed {nsteps['exact_dedup'].removed:,}, near_dedup removed {nsteps['near_dedup'].removed:,}. "
        f"Checked against the exact Jaccard of the shingle sets: {precision:.1%} of the removed rows have true "
        f"Jaccard >= {thr - 0.1:.1f} with the row they were matched to (mean {statistics.fmean(true_j or [0]):.2f}); "
        f"{recall:.1%} of the {len(eligible):,} planted near-duplicates with true Jaccard >= {thr} (and not already "
        "exact duplicates) were removed. Replacing one word of a ~45-word document changes 5 of ~41 shingles "
        "(Jaccard ~0.78), so many planted near-duplicates are, correctly, below the threshold.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")
    return 0 if all(r[4] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
