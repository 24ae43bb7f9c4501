#!/usr/bin/env python
"""Measure SmolLM2-135M-Instruct with its distilled draft on held-out chat prompts.

Prompts: built like the distillation prompts but only from held-out sources (stdlib files whose sorted
index % 50 == 0, every 10th pydoc topic), skipping the first 48 (the distillation script's own
held-out monitoring set). Reported:
  - greedy agreement: fraction of answer positions where the draft's argmax equals the target's,
    along the target's greedy answers (code prompts and prose prompts separately);
  - tau (tokens per target call after the prefill, bonus token included) of greedy chain speculation
    with k = 2, 4, 8 through specdec.generate, and of prompt lookup (k = 8) for comparison.

    python bench/models/measure_smollm2_pair.py --prompts 16
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

# distill_smollm2_draft.py sits beside this script: Python puts a script's own folder first on sys.path
from distill_smollm2_draft import build_prompts
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]


@torch.no_grad()
def agreement(target, draft, ids: torch.Tensor, new_tokens: int) -> tuple[int, int]:
    seq = target.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    lo = ids.shape[1] - 1
    t = target(seq).logits[0, lo:-1].argmax(-1)
    d = draft(seq).logits[0, lo:-1].argmax(-1)
    return int((t == d).sum()), t.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "smollm2_pair.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import specdec
    from specdec.bench import encode
    from specdec.models import load_smollm2_pair

    target, draft, tok = load_smollm2_pair()
    prompts = build_prompts(True, random.Random(1))[48 : 48 + args.prompts]
    kinds = ["code" if "```python" in p else "prose" for p in prompts]
    hits = {"code": [0, 0], "prose": [0, 0]}
    strategies = {f"chain k={k}": specdec.Chain(k) for k in args.ks}
    strategies["prompt lookup k=8 (no draft model)"] = specdec.PromptLookup(k=8)
    emitted = {n: [0, 0] for n in strategies}
    for p, kind in zip(tqdm(prompts, desc="prompts"), kinds):
        ids = encode(tok, p, chat=True)
        h, n = agreement(target, draft, ids, args.new_tokens)
        hits[kind][0] += h
        hits[kind][1] += n
        for name, s in strategies.items():
            out = specdec.generate(
                target, draft, ids, max_new_tokens=args.new_tokens, strategy=s, eos_token_id=tok.eos_token_id
            )
            emitted[name][0] += out.stats["new_tokens"] - 1  # the prefill's token is not speculative
            emitted[name][1] += out.stats["target_calls"] - 1
    total = [hits["code"][0] + hits["prose"][0], hits["code"][1] + hits["prose"][1]]
    rows = [
        ("greedy agreement, all answer tokens", total),
        ("greedy agreement, code prompts", hits["code"]),
        ("greedy agreement, prose prompts", hits["prose"]),
    ]
    lines = [
        f"SmolLM2-135M-Instruct + distilled 3-layer draft, {len(prompts)} held-out chat prompts "
        f"({kinds.count('code')} code, {kinds.count('prose')} prose), up to {args.new_tokens} new tokens, "
        f"greedy; command: `python bench/models/measure_smollm2_pair.py --prompts {args.prompts}`",
        "",
        "| measure | value |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {a / max(b, 1):.3f} ({b} tokens) |" for name, (a, b) in rows]
    lines += [f"| tau, {name} | {a / max(b, 1):.2f} |" for name, (a, b) in emitted.items()]
    table = "\n".join(lines)
    print(table)
    args.out.write_text(table + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
