"""Eager dispatch overhead of the registered ops (torch.ops.specdec.*) against the direct Python calls.

    python bench/bench_dispatch.py
    python bench/bench_dispatch.py --calls 200 --rounds 40 --out bench/results/dispatch_cpu.md

Small shapes on CPU, so the work itself is short and the difference between the two columns is what the
op layer costs per call (the op runs the same Python function after the dispatcher). Fast-path
arguments as a runtime would pass them: ``check=False`` / ``validate=False`` and a seed tensor. The
providers alternate round by round; the table gives the median per-call time over the rounds, and the
fastest round (the least disturbed by other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

import specdec_kernels as sk
from specdec_kernels.benchmarking import machine_description, markdown_header, measure
from specdec_kernels.trees import packed_ancestor_mask

OPS = torch.ops.specdec


def _copy(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def _fill(x: torch.Tensor) -> None:
    x.fill_(1.0)


# The same trivial bodies as ops (in namespaces of this script's own): the op layer's fixed cost with almost
# no work around it to add noise, registered the way specdec registers its Python ops (plain dispatcher
# kernel, specdec_kernels._ops.define_op) and through torch.library.custom_op for comparison.
_LIB = torch.library.Library("specdec_bench", "DEF")
_LIB.define("copy(Tensor x) -> Tensor")
_LIB.define("fill_(Tensor(a!) x) -> ()")
_LIB.impl("copy", _copy, "CompositeExplicitAutograd")
_LIB.impl("fill_", _fill, "CompositeExplicitAutograd")
_LIB.define(
    "copy_many(Tensor q, Tensor k, Tensor v, Tensor kv_lens, Tensor tree_mask, *, float? sm_scale=None, "
    "bool check=True, int? max_kv_len=None, int? num_splits=None, str? backend=None) -> Tensor"
)
_LIB.impl("copy_many", lambda q, k, v, kv_lens, tree_mask, **kw: q.clone(), "CompositeExplicitAutograd")
torch.library.custom_op("specdec_bench_custom_op::copy", _copy, mutates_args=())
torch.library.custom_op("specdec_bench_custom_op::fill_", _fill, mutates_args=("x",))


def cases():
    """(name, direct call, op call) with B=2, Hq=4, Hkv=2, N=5, D=16, S=16, V=32."""
    g = torch.Generator().manual_seed(0)
    parents = torch.tensor([-1, 0, 0, 1, 2])
    q = torch.randn(2, 4, 5, 16, generator=g)
    k = torch.randn(2, 2, 16, 16, generator=g)
    v = torch.randn(2, 2, 16, 16, generator=g)
    lens = torch.tensor([16, 9])
    mask = packed_ancestor_mask(parents)
    out = torch.empty(2, 5, 4, 16).transpose(1, 2)
    p = torch.softmax(torch.randn(2, 5, 32, generator=g), -1)
    dq = torch.softmax(torch.randn(2, 5, 32, generator=g), -1)
    tok = torch.multinomial(dq.flatten(0, 1), 1, generator=g).view(2, 5)
    seed = torch.tensor(1234)
    x = torch.zeros(1)
    return [
        ("trivial op x.clone(), as specdec registers", lambda: _copy(x), lambda: torch.ops.specdec_bench.copy(x)),
        (
            "trivial op q.clone() with tree_attention's arguments, as specdec registers",
            lambda: (lambda q, k, v, kv_lens, tree_mask, **kw: q.clone())(x, x, x, x, x, check=False, max_kv_len=16),
            lambda: torch.ops.specdec_bench.copy_many(x, x, x, x, x, check=False, max_kv_len=16),
        ),
        ("trivial op x.clone(), custom_op", lambda: _copy(x), lambda: torch.ops.specdec_bench_custom_op.copy(x)),
        (
            "trivial mutating op x.fill_(1), as specdec registers",
            lambda: _fill(x),
            lambda: torch.ops.specdec_bench.fill_(x),
        ),
        (
            "trivial mutating op x.fill_(1), custom_op",
            lambda: _fill(x),
            lambda: torch.ops.specdec_bench_custom_op.fill_(x),
        ),
        (
            "tree_attention",
            lambda: sk.tree_attention(q, k, v, lens, mask, check=False, max_kv_len=16),
            lambda: OPS.tree_attention(q, k, v, lens, mask, check=False, max_kv_len=16),
        ),
        (
            "tree_attention (out=)",
            lambda: sk.tree_attention(q, k, v, lens, mask, out=out, check=False, max_kv_len=16),
            lambda: OPS.tree_attention_out(q, k, v, lens, mask, out, check=False, max_kv_len=16),
        ),
        (
            "chain_verify (sampled)",
            lambda: sk.chain_verify(tok[:, 1:], p, dq[:, 1:], seed=seed, validate=False),
            lambda: OPS.chain_verify(tok[:, 1:], p, dq[:, 1:], seed=seed, validate=False),
        ),
        (
            "tree_verify (greedy, logits)",
            lambda: sk.tree_verify(tok, parents, target_logits=p, greedy=True, validate=False),
            lambda: OPS.tree_verify(tok, parents, target_logits=p, greedy=True, validate=False),
        ),
    ]


def per_call_us(fn, calls):
    """Mean µs per call over one round of ``calls`` back-to-back calls (no warm-up: see main)."""
    return measure(fn, warmup=0, repeats=1, number=calls).median_s * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds per provider (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, direct, op in cases():
        for fn in (direct, op):  # warm-up (first-call caches, op registration lookups)
            for _ in range(20):
                fn()
        times = {"direct": [], "op": []}
        for _ in range(args.rounds):
            times["direct"].append(per_call_us(direct, args.calls))
            times["op"].append(per_call_us(op, args.calls))
        rows.append(
            (
                name,
                statistics.median(times["direct"]),
                statistics.median(times["op"]),
                min(times["direct"]),
                min(times["op"]),
            )
        )

    lines = [
        f"Eager dispatch overhead of torch.ops.specdec.* vs the direct Python call, {machine_description()}; "
        "reference backend (CPU default), fast-path arguments "
        "(check=False / validate=False, seed tensor), B=2 Hq=4 Hkv=2 N=5 D=16 S=16 V=32.",
        "",
        f"command: `python bench/bench_dispatch.py --calls {args.calls} --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"µs per call: median and fastest of {args.rounds} rounds of {args.calls} calls; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other processes share the machine)",
        "",
        *markdown_header(
            [
                "op",
                "direct µs (median)",
                "torch.ops µs (median)",
                "overhead µs (median)",
                "direct µs (fastest)",
                "torch.ops µs (fastest)",
                "overhead µs (fastest)",
            ],
            align="lrrrrrr",
        ),
    ]
    lines += [
        f"| {n} | {d:.1f} | {o:.1f} | {o - d:+.1f} | {dm:.1f} | {om:.1f} | {om - dm:+.1f} |" for n, d, o, dm, om in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
