#!/usr/bin/env python
"""The regimes the loop can run a model in: forward latency T(n) of n chain tokens through specdec's
runner (tree-attention hook, buffer cache), eager or compiled (:mod:`specdec.compiled`), fp32 or bf16,
for SmolLM2-135M-Instruct; T(n)/T(1) is what a verify of n tokens costs in single tokens.

    python bench/bench_regimes.py --out bench/results/regimes_cpu.md

Compiled forwards pad n to the bucket widths (specdec.compiled.WIDTHS), so T(5) is the width-16 graph;
the compile time of each graph is printed (stderr) and reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from specdec_kernels.benchmarking import machine_description

REPO = Path(__file__).resolve().parents[1]
TOKENS = (1, 2, 4, 5, 8, 16)
REGIMES = (
    ("eager fp32", torch.float32, False),
    ("eager bf16", torch.bfloat16, False),
    ("compiled fp32", torch.float32, True),
    ("compiled bf16", torch.bfloat16, True),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", type=int, default=256)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--regimes", default=",".join(r[0] for r in REGIMES))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from specdec import compiled, runner
    from specdec.models import load_smollm2

    chosen = [r for r in REGIMES if r[0] in args.regimes.split(",")]
    results, compile_s = {}, {}
    for label, dtype, comp in chosen:
        target, _ = load_smollm2(dtype=dtype)
        before = compiled.compile_stats()
        t0 = time.perf_counter()
        results[label] = runner.time_forwards(target, TOKENS, prefix=args.prefix, reps=args.reps, compile=comp)
        after = compiled.compile_stats()
        compile_s[label] = (after["graphs"] - before["graphs"], after["compile_s"] - before["compile_s"])
        print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    head = "| tokens n | " + " | ".join(f"{label} T(n) ms | T(n)/T(1)" for label, *_ in chosen) + " |"
    lines = [
        f"# Forward latency by regime, SmolLM2-135M-Instruct, B=1, prefix {args.prefix}, median of {args.reps}",
        "",
        f"Machine: {machine_description()}; torch {torch.__version__}. Command: "
        f"`python bench/bench_regimes.py {' '.join(sys.argv[1:])}`.",
        "",
        head,
        "|---:|" + "---:|---:|" * len(chosen),
    ]
    for n in TOKENS:
        cells = []
        for label, *_ in chosen:
            t = results[label]
            cells += [f"{t[n] * 1e3:.1f}", f"{t[n] / t[1]:.2f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Compiles (graphs, seconds; one per bucket width used, once per process): "]
    lines[-1] += "; ".join(f"{label}: {g} graphs, {s:.0f} s" for label, (g, s) in compile_s.items() if g)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
