"""KV-cache compaction benchmark: the one-launch op against the obvious PyTorch loops, same run.

    python bench/bench_compaction.py                 # CPU (or CUDA when available), default shape
    python bench/bench_compaction.py --out bench/results/compaction_cpu.md

Providers: ``op`` (torch.ops.specdec.compact_kv_cache, all layers in one call), ``per-layer op`` (the
same op called once per layer, CUDA only: L launches), ``torch gather+scatter per layer`` and
``torch index_select loop`` (per layer and sequence). GB/s counts the bytes moved: every kept row
read once and written once, K and V, all layers and heads.
"""

from __future__ import annotations

import argparse
import sys

import torch

import specdec_kernels as sk
from specdec_kernels.benchmarking import copy_bandwidth_gbps, gbps, machine_description, markdown_header, measure


def make_case(L, B, H, S, D, keep, prefix, dtype, device):
    """Cache with a prefix of ``prefix`` rows and a tree region after it; ``keep`` rows per sequence
    picked from the tree region (every other row: the ragged case a tree verification leaves)."""
    cache = torch.randn(L, 2, B, H, S, D, dtype=dtype, device=device)
    src = (prefix + 2 * torch.arange(keep, device=device)).expand(B, keep).contiguous()
    dst = torch.full((B,), prefix, dtype=torch.int64, device=device)
    counts = torch.full((B,), keep, dtype=torch.int64, device=device)
    return cache, src, dst, counts


def torch_gather_scatter(cache, src, dst, counts):
    # Per layer: gather the kept rows of every sequence (a copy, so in place is safe), scatter them back.
    L, _, B, H, S, D = cache.shape
    M = src.shape[1]
    idx = src.view(1, B, 1, M, 1).expand(2, B, H, M, D)
    out_idx = (dst.view(B, 1) + torch.arange(M, device=cache.device)).view(1, B, 1, M, 1).expand(2, B, H, M, D)
    for layer in range(L):
        kept = torch.gather(cache[layer], 3, idx)
        cache[layer].scatter_(3, out_idx, kept)


def torch_index_select_loop(cache, src, dst, counts):
    for layer in range(cache.shape[0]):
        for b in range(cache.shape[2]):
            n, d = int(counts[b]), int(dst[b])
            plane = cache[layer, :, b]  # [2, H, S, D]
            plane[:, :, d : d + n].copy_(plane.index_select(2, src[b, :n]))


def op_per_layer(cache, src, dst, counts):
    for layer in range(cache.shape[0]):
        sk.compact_kv_cache(cache[layer : layer + 1], src, dst, counts, check=False)


def op_one_launch(cache, src, dst, counts):
    sk.compact_kv_cache(cache, src, dst, counts, check=False)


def time_ms(fn, device, reps):
    """Median and (p20, p80) in ms over ``reps`` timed calls (None: the toolkit's default for the device)."""
    t = measure(fn, repeats=reps, device=device)
    return t.median_s * 1e3, t.quantile(0.2) * 1e3, t.quantile(0.8) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--keep", type=int, default=64)
    p.add_argument("--prefix", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--reps", type=int, default=None, help="timed calls per provider (default: 20 on CPU, 100 on CUDA)")
    p.add_argument("--out", help="also write the markdown table to this file")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    S = a.prefix + 2 * a.keep
    case = make_case(a.layers, a.batch, a.heads, S, a.head_dim, a.keep, a.prefix, dtype, a.device)
    moved = 2 * a.layers * 2 * a.batch * a.heads * a.keep * a.head_dim * case[0].element_size()

    providers = [("op (one launch, all layers)", op_one_launch)]
    if a.device == "cuda":
        providers.append(("op per layer (L launches)", op_per_layer))
    providers += [
        ("torch gather+scatter per layer", torch_gather_scatter),
        ("torch index_select loop", torch_index_select_loop),
    ]

    expected = case[0].clone()
    sk.compact_kv_cache_reference(expected, *case[1:])
    rows = []
    for name, fn in providers:
        cache = case[0].clone()
        fn(cache, *case[1:])
        assert torch.equal(cache, expected), f"{name} disagrees with the reference"
        med, lo, hi = time_ms(lambda: fn(cache, *case[1:]), a.device, a.reps)
        rows.append((name, med, lo, hi, gbps(moved, med * 1e-3)))
        print(f"  {name}: {med * 1e3:.1f} us", file=sys.stderr)
    bw = copy_bandwidth_gbps(max(moved, 1 << 26), a.device, repeats=a.reps)

    machine = machine_description(a.device)
    lines = [
        f"KV compaction, {machine}; L={a.layers} B={a.batch} H={a.heads} D={a.head_dim} {a.dtype}, "
        f"{a.keep} rows kept per sequence (every other row of the tree region), {moved / 1e6:.1f} MB moved",
        "",
        f"command: `python bench/bench_compaction.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        *markdown_header(["provider", "median µs", "p20-p80 µs", "GB/s", "vs op"], align="lrrrr"),
    ]
    base = rows[0][1]
    for name, med, lo, hi, gbs in rows:
        lines.append(f"| {name} | {med * 1e3:.1f} | {lo * 1e3:.1f}-{hi * 1e3:.1f} | {gbs:.1f} | {med / base:.2f}x |")
    lines += [
        "",
        f"measured copy bandwidth (torch copy_, read+write): {bw:.1f} GB/s; op reaches {rows[0][4] / bw:.0%} of it",
    ]
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
