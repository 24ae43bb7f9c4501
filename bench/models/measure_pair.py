#!/usr/bin/env python
"""Measure the default (target, draft) pair on its held-out stdlib files.

Reports, per model, the held-out next-token loss; the draft/target greedy agreement (fraction of
teacher-forced positions where the two argmaxes match); and, for greedy chain speculation with
k = 2, 4, 8, the mean number of tokens produced per target call (tau, bonus token included), from a
plain simulation without KV cache: the draft proposes k tokens greedily, the target scores the
sequence once, the longest prefix matching the target's argmaxes is accepted plus one target token.
Also checks that the speculative output equals plain greedy decoding with the target.

Writes bench/results/default_pair.md and (with --write-snippets) the held-out snippets that
tests/test_models.py uses to python_api/specdec/assets/default_pair/heldout_snippets.json.

Usage: python bench/models/measure_pair.py [--prompts 20] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from specdec.models import default_pair_dir, load_default_pair
from specdec_kernels.benchmarking import machine_description

REPO = Path(__file__).resolve().parents[2]

EOT = "<|endoftext|>"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def heldout_texts() -> tuple[list[str], list[str]]:
    names = json.loads((default_pair_dir() / "heldout_files.json").read_text())
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, found = [], []
    for n in names:
        p = root / n
        if p.is_file():
            texts.append(p.read_text(encoding="utf-8", errors="replace"))
            found.append(n)
    if len(found) < len(names):
        log(f"warning: {len(names) - len(found)} held-out files missing from {root}")
    return found, texts


@torch.no_grad()
def loss_and_agreement(target, draft, ids: torch.Tensor, ctx: int):
    n = (ids.numel() - 1) // ctx
    lt = ld = 0.0
    agree = cnt = 0
    for i in range(0, n, 8):
        x = torch.stack([ids[j * ctx : j * ctx + ctx + 1] for j in range(i, min(n, i + 8))])
        inp, y = x[:, :-1], x[:, 1:]
        a, b = target(input_ids=inp).logits, draft(input_ids=inp).logits
        lt += F.cross_entropy(a.flatten(0, 1), y.flatten(), reduction="sum").item()
        ld += F.cross_entropy(b.flatten(0, 1), y.flatten(), reduction="sum").item()
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        cnt += y.numel()
    return lt / cnt, ld / cnt, agree / cnt, cnt


@torch.no_grad()
def greedy(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


@torch.no_grad()
def speculate(target, draft, prompt: list[int], n: int, k: int) -> tuple[list[int], int, int]:
    """Greedy chain speculation; returns (new tokens, target calls, accepted draft tokens)."""
    seq = list(prompt)
    calls = accepted = 0
    while len(seq) - len(prompt) < n:
        prop = []
        for _ in range(k):
            prop.append(int(draft(input_ids=torch.tensor([seq + prop])).logits[0, -1].argmax()))
        logits = target(input_ids=torch.tensor([seq + prop])).logits[0, len(seq) - 1 :]
        tgt = logits.argmax(-1).tolist()  # k + 1 target choices
        calls += 1
        m = 0
        while m < k and prop[m] == tgt[m]:
            m += 1
        accepted += m
        seq += prop[:m] + [tgt[m]]
    return seq[len(prompt) : len(prompt) + n], calls, accepted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-snippets", action="store_true", help="(re)write heldout_snippets.json for the tests")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "default_pair.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    target, draft, tok = load_default_pair()
    eot = tok.convert_tokens_to_ids(EOT)
    names, texts = heldout_texts()
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids = []
    for e in enc:
        ids += [eot] + e
    ids = torch.tensor(ids + [eot])
    lt, ld, agr, ntok = loss_and_agreement(target, draft, ids, args.ctx)
    log(
        f"held-out ({len(names)} files, {ntok} scored tokens): target loss {lt:.3f}, draft loss {ld:.3f}, "
        f"agreement {agr:.3f}"
    )

    # prompts: evenly spaced windows over the held-out files (deterministic)
    need = args.prompt_tokens + args.new_tokens
    prompts, snippets = [], []
    usable = [e for e in enc if len(e) >= need]
    per = -(-args.prompts // len(usable))
    for e in usable:
        for j in range(per):
            start = (len(e) - need) * (j + 1) // (per + 1)
            prompts.append(e[start : start + args.prompt_tokens])
            snippets.append(tok.decode(e[start : start + need]))
    prompts, snippets = prompts[: args.prompts], snippets[: args.prompts]
    if args.write_snippets:
        path = default_pair_dir() / "heldout_snippets.json"
        path.write_text(json.dumps(snippets, indent=1) + "\n")
        log(f"wrote {len(snippets)} snippets to {path}")

    # per-snippet numbers for the first three snippets (the tests' floors come from these)
    for i, s in enumerate(snippets[:3]):
        x = torch.tensor([tok(s, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            a, b = target(input_ids=x).logits[0, :-1], draft(input_ids=x).logits[0, :-1]
        sl = F.cross_entropy(a, x[0, 1:]).item()
        sa = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        log(f"snippet {i}: {x.shape[1]} tokens, target loss {sl:.3f}, agreement {sa:.3f}")

    refs = [greedy(target, p, args.new_tokens) for p in prompts]
    rows = []
    for k in args.ks:
        tot_tok = tot_calls = tot_acc = mism = 0
        ts = time.time()
        for p, ref in zip(prompts, refs):
            out, calls, acc = speculate(target, draft, p, args.new_tokens, k)
            tot_tok += len(out)
            tot_calls += calls
            tot_acc += acc
            mism += out != ref
        tau = tot_tok / tot_calls
        alpha = tot_acc / (tot_calls * k)
        rows.append((k, tau, alpha, tot_calls, mism))
        log(
            f"k={k}: tau {tau:.2f} tokens/target call, draft acceptance {alpha:.3f}, "
            f"{mism}/{len(prompts)} outputs differ from plain greedy ({time.time() - ts:.0f} s)"
        )

    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())  # noqa: E731
    root = default_pair_dir()
    meta = json.loads((root / "training.json").read_text()) if (root / "training.json").exists() else {}
    pt = sum(p.numel() for p in target.parameters())
    pd = sum(p.numel() for p in draft.parameters())
    cmd = "python bench/models/measure_pair.py " + " ".join(sys.argv[1:])
    lines = [
        "# Default model pair (specdec.models.load_default_pair)",
        "",
        f"Target: Llama 4 layers x 256 hidden, {pt / 1e6:.2f}M parameters; "
        f"draft: Llama 1 layer x 128 hidden, {pd / 1e6:.2f}M "
        f"parameters (tied embeddings; byte-level BPE, vocab {len(tok)}). Trained by `bench/models/train_pair.py` "
        f"on the CPython {platform.python_version()} standard library (test dirs excluded); "
        f"evaluated on its {len(names)} held-out files "
        "(`heldout_files.json`, every 50th file by sorted path).",
        "",
        "| model | held-out loss (nats/token) | size on disk |",
        "|---|---|---|",
        f"| target | {lt:.3f} | {size(root / 'target') / 1e6:.1f} MB |",
        f"| draft | {ld:.3f} | {size(root / 'draft') / 1e6:.1f} MB |",
        "",
        f"Draft/target greedy (argmax) agreement, teacher-forced on {ntok} held-out tokens: **{agr:.3f}**.",
        "",
        f"Greedy chain speculation, {len(prompts)} held-out prompts of {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens each (simulation without KV cache; "
        "tau = tokens per target call, bonus token included; "
        "acceptance = accepted draft tokens / proposed):",
        "",
        "| k | tau | draft acceptance | target calls | outputs != plain greedy |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {tau:.2f} | {alpha:.3f} | {calls} | {m}/{len(prompts)} |" for k, tau, alpha, calls, m in rows]
    if meta:
        t, d = meta.get("target", {}), meta.get("draft", {})
        tmin = t.get("minutes", 0) + sum(r.get("minutes", 0) for r in t.get("previous_runs", []))
        ttok = t.get("tokens", 0) + sum(r.get("tokens", 0) for r in t.get("previous_runs", []))
        lines += [
            "",
            f"Training: target {tmin:.1f} min wall clock ({ttok / 1e6:.2f}M tokens), "
            f"draft {d.get('minutes', 0):.1f} min "
            f"({d.get('tokens', 0) / 1e6:.2f}M tokens, distilled from the target after the first "
            f"{100 * meta.get('args', {}).get('distill_after', 0):.0f}%), on a 2-core CPU shared with other jobs; "
            "see `python_api/specdec/assets/default_pair/training.json`.",
        ]
    lines += [
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_description()} (shared with other jobs); "
        f"measured {time.strftime('%Y-%m-%d')} in {time.time() - t0:.0f} s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
