#!/usr/bin/env python
"""Loop overhead per step: specdec.generate on two tiny random models (2 and 1 layers, hidden 64), where
the forwards cost little and the Python loop (proposal, verification, bookkeeping) is most of a step.

    python bench/bench_loop_overhead.py                      # prints a JSON line per strategy
    python bench/bench_loop_overhead.py --tree OLD_CHECKOUT  # also the same run on another checkout

With ``--tree`` the same measurement runs in a subprocess on that checkout's code (its ``python_api`` and
``specdec_kernels`` first on the path), interleaved with this one, so two versions of the loop compare
on the same machine in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = ("chain:4", "eagle2:16", "lookup:8")


def measure(reps: int, new_tokens: int) -> dict[str, float]:
    """Median milliseconds per step of each strategy (greedy, batch 1, greedy output checked)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import specdec
    from specdec import runner

    runner.CPU_PADDING = False  # (a timing-based map would differ between the two runs)
    torch.set_num_threads(1)

    def tiny(layers: int, hidden: int, seed: int):
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=97,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
        return LlamaForCausalLM(cfg).eval()

    target, draft = tiny(2, 64, 0), tiny(1, 64, 0)
    ids = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(1)).repeat(1, 2)
    strategy = specdec.strategies
    make = getattr(strategy, "from_name", None)
    out = {}
    for name in STRATEGIES:
        if make is None:  # a checkout before the registry: the benchmark module parsed the names
            from specdec.bench import _strategy as make  # noqa: PLC0415
        per_step = []
        for _ in range(reps + 1):
            s = make(name)
            drafter = None if name.startswith("lookup") else draft
            t0 = time.perf_counter()
            res = specdec.generate(target, drafter, ids, max_new_tokens=new_tokens, strategy=s)
            per_step.append((time.perf_counter() - t0) / max(res.stats["steps"], 1) * 1e3)
        out[name] = statistics.median(per_step[1:])  # the first run warms up
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--tree", type=Path, help="another checkout to measure the same way, interleaved")
    ap.add_argument("--rounds", type=int, default=3, help="alternations between the two checkouts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.reps, args.new_tokens)))
        return
    here = Path(__file__).resolve().parents[1]
    trees = {"this checkout": here} | ({"other checkout": args.tree.resolve()} if args.tree else {})
    results: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(args.rounds):
        for label, root in trees.items():
            env = dict(os.environ, PYTHONPATH=f"{root / 'python_api'}{os.pathsep}{root}")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--reps", str(args.reps)]
            cmd += ["--new-tokens", str(args.new_tokens)]
            res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True)
            results[label].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print("| strategy | " + " | ".join(f"{k} (ms/step)" for k in trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for name in STRATEGIES:
        cells = [statistics.median(r[name] for r in results[k]) for k in trees]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
