"""Rejection-sampling benchmark: the fused Triton verification against the PyTorch reference, same run.

    python bench/bench_rejection_sampling.py                       # CUDA when available, else CPU
    python bench/bench_rejection_sampling.py --device cpu --out bench/results/rejection_sampling_cpu.md

Cases (CUDA): chain B=32, K=8, V=128256 with fp32 target/draft probabilities and with bf16 target logits
(temperature 1, fp32 draft probabilities); tree N=64 (4-ary, depth 3, children drawn from q without
replacement) with B in {1, 32}, fp32 probabilities, and bf16 logits with deterministic (top-k style)
children. CPU: the reference only, smaller sizes (V=32000, B in {1, 8}).

Target logits are peaked (a few tokens hold most of the mass, like a confident model) and the draft is
correlated with them (q = softmax(target logits + noise)), so walks go several nodes deep as in real
speculation. Timings: median and p20/p80 of --reps calls (``specdec_kernels.benchmarking.measure``: CUDA
events with the L2 flushed before each call on CUDA, wall clock on CPU). GB/s counts the bytes a verifier
must read at least once: for every
sequence, the target row of every visited node (``num_accepted + 1`` rows) plus, for sampled drafts,
the draft row of those nodes; the copy bandwidth is a device-to-device copy (read + write) of a large
buffer measured in the same run. ``validate=False`` in the timed calls (a decoding loop's setting).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

import specdec_kernels as sk
from specdec_kernels.benchmarking import (
    copy_bandwidth_gbps,
    gbps,
    machine_description,
    markdown_header,
    markdown_row,
    measure,
)


def peaked_logits(*shape, device, gen, top=4, boost=14.0):
    """Logits of a confident model: noise plus a boost on `top` random tokens (about 80% of the mass)."""
    logits = torch.randn(*shape, device=device, generator=gen) * 2
    idx = torch.randint(0, shape[-1], (*shape[:-1], top), device=device, generator=gen)
    return logits.scatter_add_(-1, idx, torch.full(idx.shape, boost, device=device))


def make_chain(B, K, V, device, logits_dtype=None, gen=None):
    t_logits = peaked_logits(B, K + 1, V, device=device, gen=gen)
    d_logits = t_logits[:, :K] + torch.randn(B, K, V, device=device, generator=gen)
    q = torch.softmax(d_logits, -1)
    x = torch.multinomial(q.flatten(0, 1), 1, generator=gen).view(B, K)
    if logits_dtype is not None:
        return dict(draft_tokens=x, target_logits=t_logits.to(logits_dtype), draft_probs=q)
    return dict(draft_tokens=x, target_probs=torch.softmax(t_logits, -1), draft_probs=q)


def tree_parents(N, arity=4):
    return torch.tensor([-1] + [(i - 1) // arity for i in range(1, N)], dtype=torch.int64)


def make_tree(B, N, V, device, logits_dtype=None, gen=None):
    parents = tree_parents(N).to(device)
    t_logits = peaked_logits(B, N, V, device=device, gen=gen)
    q = torch.softmax(t_logits + torch.randn(B, N, V, device=device, generator=gen), -1)
    tok = torch.zeros(B, N, dtype=torch.int64, device=device)
    for u in range(N):
        kids = (parents == u).nonzero().squeeze(1)
        if kids.numel():
            if logits_dtype is None:  # sampled without replacement from q_u
                tok[:, kids] = torch.multinomial(q[:, u], kids.numel(), replacement=False, generator=gen)
            else:  # deterministic: top-k of the draft
                tok[:, kids] = q[:, u].topk(kids.numel(), -1).indices
    if logits_dtype is not None:
        return dict(tokens=tok, parents=parents, target_logits=t_logits.to(logits_dtype))
    return dict(tokens=tok, parents=parents, target_probs=torch.softmax(t_logits, -1), draft_probs=q)


def useful_bytes(inputs, res):
    """Bytes of the rows a verifier must read: target (and draft) rows of every visited node."""
    rows = float((res.num_accepted + 1).sum())
    tgt = inputs.get("target_probs", inputs.get("target_logits"))
    V = tgt.shape[-1]
    per_row = V * tgt.element_size()
    if inputs.get("draft_probs") is not None:
        per_row += V * inputs["draft_probs"].element_size()
    return rows * per_row


def cases(device):
    # The shapes on CUDA (V=128256, chain B=32, trees B=1/32); smaller ones for the CPU reference.
    V, chain_b, tree_bs = (128256, 32, (1, 32)) if device == "cuda" else (32000, 8, (1, 8))
    yield "chain fp32 probs, sampled", f"B={chain_b} K=8", lambda g: ("chain", make_chain(chain_b, 8, V, device, gen=g))
    yield (
        "chain bf16 logits, sampled",
        f"B={chain_b} K=8",
        lambda g: ("chain", make_chain(chain_b, 8, V, device, torch.bfloat16, gen=g)),
    )
    for B in tree_bs:
        yield "tree fp32 probs, sampled", f"B={B} N=64", lambda g, B=B: ("tree", make_tree(B, 64, V, device, gen=g))
        yield (
            "tree bf16 logits, top-k",
            f"B={B} N=64",
            lambda g, B=B: ("tree", make_tree(B, 64, V, device, torch.bfloat16, gen=g)),
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--reps", type=int, default=None, help="timed calls per case (default: 20 on CPU, 100 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--note", default=None, help="a line about the machine, written under the header")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    providers = ["triton", "reference"] if device == "cuda" else ["reference"]
    gen = torch.Generator(device=device).manual_seed(0)
    copy_gbs = copy_bandwidth_gbps(1 << 28, device, repeats=args.reps)
    lines = [
        "# Rejection sampling (chain_verify / tree_verify)",
        "",
        f"Command: `python {shlex.join(sys.argv)}`  ",
        f"Machine: {device}, {machine_description(device)}  ",
        *([f"Note: {args.note}  "] if args.note else []),
        f"Copy bandwidth (same-device copy of 256 MiB, read + write): {copy_gbs:.1f} GB/s  ",
        "GB/s: target (+ draft) rows of the visited nodes, read once, over the median time.",
        "",
        *markdown_header(["case", "shape", "provider", "median µs", "p20–p80 µs", "GB/s", "% of copy", "mean emitted"]),
    ]
    print("\n".join(lines), flush=True)
    for name, shape, build in cases(device):
        kind, inputs = build(gen)
        fn = sk.chain_verify if kind == "chain" else sk.tree_verify
        for prov in providers:

            def call(prov=prov, fn=fn, inputs=inputs):
                return fn(**inputs, seed=1, validate=False, backend=prov)

            res = call()
            t = measure(call, repeats=args.reps, device=device)
            gbs = gbps(useful_bytes(inputs, res), t.median_s)
            row = markdown_row(
                [
                    name,
                    shape,
                    prov,
                    f"{t.median_s * 1e6:.1f}",
                    f"{t.quantile(0.2) * 1e6:.1f}–{t.quantile(0.8) * 1e6:.1f}",
                    f"{gbs:.2f}",
                    f"{100 * gbs / copy_gbs:.1f}%",
                    f"{float(res.num_emitted.float().mean()):.2f}",
                ]
            )
            lines.append(row)
            print(row, flush=True)
        del inputs
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
