#!/usr/bin/env python
"""Forward latency vs tokens per call through specdec's runner, with and without the CPU padding of
slow forward widths to faster ones (specdec.runner.cpu_pad_map, measured per model), for a model pair.

    python bench/bench_latency.py --pair smollm2      # or --pair default; appends to bench/results/latency_cpu.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specdec_kernels.benchmarking import machine_description

REPO = Path(__file__).resolve().parents[1]

TOKENS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=["default", "smollm2"], default="smollm2")
    ap.add_argument("--prefix", type=int, default=256)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latency_cpu.md")
    args = ap.parse_args()
    from specdec import runner
    from specdec.models import load_default_pair, load_smollm2_pair

    target, draft, _ = load_smollm2_pair() if args.pair == "smollm2" else load_default_pair()
    tables = {}
    for label, pad in (("padded", True), ("unpadded", False)):
        tables[label] = [
            runner.time_forwards(m, TOKENS, prefix=args.prefix, reps=args.reps, pad=pad) for m in (target, draft)
        ]
        print(f"{label} done", file=sys.stderr)
    name = "SmolLM2-135M-Instruct + distilled draft" if args.pair == "smollm2" else "bundled pair"
    lines = [
        f"Forward latency, {name}, through specdec's runner, B=1, prefix {args.prefix}, median of {args.reps}; "
        f"{machine_description()}; command: "
        f"`python bench/bench_latency.py --pair {args.pair}`",
        "",
        "| tokens per call | target ms | target ms, unpadded | draft ms | draft ms, unpadded |",
        "|---:|---:|---:|---:|---:|",
    ]
    (tp, dp), (tu, du) = tables["padded"], tables["unpadded"]
    for n in TOKENS:
        lines.append(f"| {n} | {tp[n] * 1e3:.2f} | {tu[n] * 1e3:.2f} | {dp[n] * 1e3:.2f} | {du[n] * 1e3:.2f} |")
    lines.append("")
    lines.append(
        f"Padding maps measured by specdec.runner.cpu_pad_map: target {runner.cpu_pad_map(target)}, "
        f"draft {runner.cpu_pad_map(draft)}"
    )
    table = "\n".join(lines)
    print(table)
    with open(args.out, "a") as f:
        f.write("\n" + table + "\n")
    print(f"appended to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
