"""Tree-attention microbenchmark: the Triton kernel against torch SDPA with an explicit boolean mask.

CUDA: median and 20/80 % quantiles (``specdec_kernels.benchmarking.measure``: CUDA events, L2 flushed
before each call) of ``tree_attention`` (Triton) and of ``F.scaled_dot_product_attention`` given the
dense [B, 1, N, S] bool mask, over N tree nodes and prefix lengths. CPU: the PyTorch reference (the CPU
path) and the same SDPA baseline, timed with ``time.perf_counter`` (the Triton interpreter is no speed
path and is not timed).

Reported per row: microseconds; TFLOP/s from an explicit count, 4 * D * Hq * (number of visible
(node, key) pairs), i.e. QK^T and PV over the entries the tree mask lets through; GB/s from an explicit
byte count, K and V of the valid entries read once plus q and out; and, on CUDA, that bandwidth as a
fraction of a measured device-to-device copy (read + write bytes / time).

    python bench/bench_tree_attention.py                          # CUDA defaults: B=1, 32q/8kv heads, D=128
    python bench/bench_tree_attention.py --device cpu --n 16 64 --prefix 512 2048 --out bench/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

import specdec_kernels as sk
from specdec_kernels import trees
from specdec_kernels.benchmarking import (
    copy_bandwidth_gbps,
    gbps,
    machine_description,
    markdown_header,
    markdown_row,
    measure,
    tflops,
)
from specdec_kernels.tree_attention import tree_attention_mask

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def random_tree(n: int, seed: int = 0) -> torch.Tensor:
    """An EAGLE-like tree: each node hangs off one of the few most recent nodes (mixed depth/width)."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([-1] + [max(0, i - 1 - int(torch.randint(0, 4, (1,), generator=g))) for i in range(1, n)])


def run(args) -> str:
    device = torch.device(args.device)
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    B, Hq, Hkv, D = args.batch, args.hq, args.hkv, args.d
    esize = torch.finfo(dtype).bits // 8
    reps = args.reps or (10 if device.type == "cpu" else None)  # None: the toolkit's CUDA default
    # CUDA only: the copy of a 1 GiB buffer (read + write) the kernel's bandwidth is compared with
    copy_gbs = copy_bandwidth_gbps(1 << 30, device, repeats=reps) if device.type == "cuda" else None
    rows = []
    for prefix in args.prefix:
        for n in args.n:
            torch.manual_seed(0)
            S = prefix + n
            q = torch.randn(B, Hq, n, D, device=device, dtype=dtype)
            k = torch.randn(B, Hkv, S, D, device=device, dtype=dtype)
            v = torch.randn(B, Hkv, S, D, device=device, dtype=dtype)
            kv_lens = torch.full((B,), S, dtype=torch.int64, device=device)
            tmask = trees.ancestor_mask(random_tree(n)).to(device)
            dense = tree_attention_mask(kv_lens, tmask, n, S).unsqueeze(1)  # [B, 1, N, S]
            visible = int(dense.sum())
            flops = 4 * D * Hq * visible
            nbytes = (2 * B * Hkv * S * D + 2 * B * Hq * n * D) * esize

            providers = {}
            if device.type == "cuda":
                providers["triton"] = lambda: sk.tree_attention(q, k, v, kv_lens, tmask, backend="triton", check=False)
            else:
                providers["reference"] = lambda: sk.tree_attention(
                    q, k, v, kv_lens, tmask, backend="reference", check=False
                )
            providers["sdpa_bool_mask"] = lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=dense, enable_gqa=True
            )
            for name, fn in providers.items():
                t = measure(fn, repeats=reps, device=device)
                med = t.median_s
                gbs = gbps(nbytes, med)
                rows.append(
                    (
                        n,
                        prefix,
                        name,
                        med * 1e6,
                        t.quantile(0.2) * 1e6,
                        t.quantile(0.8) * 1e6,
                        tflops(flops, med),
                        gbs,
                        None if copy_gbs is None else gbs / copy_gbs,
                    )
                )

    columns = ["N", "prefix", "provider", "median µs", "p20–p80 µs", "TFLOP/s", "GB/s (K/V once)"]
    lines = markdown_header(
        columns + (["% of copy BW"] if copy_gbs else []), align="rrlrrrr" + ("r" if copy_gbs else "")
    )
    for n, prefix, name, med, lo, hi, tf, gbs, frac in rows:
        cells = [n, prefix, name, f"{med:.1f}", f"{lo:.1f}–{hi:.1f}", f"{tf:.3f}", f"{gbs:.1f}"]
        lines.append(markdown_row(cells + ([f"{100 * frac:.0f}%"] if copy_gbs else [])))
    machine = machine_description(device)
    header = [
        "# Tree attention microbenchmark",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {machine}; {datetime.date.today().isoformat()}",
        f"- B={B}, Hq={Hq}, Hkv={Hkv}, D={D}, {dtype}, one shared random tree (EAGLE-like), kv_lens = prefix + N",
        "- TFLOP/s from 4·D·Hq·(visible (node, key) pairs); GB/s from K/V of the valid entries read once + q + out",
    ]
    if copy_gbs:
        header.append(f"- measured device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    if device.type == "cpu":
        header.append(f"- load average at start (the 2 cores are shared): {load_at_start:.1f}")
        header.append(
            "- CPU: `reference` is the CPU path of `tree_attention` (fp32 SDPA, GQA by reshaping q); "
            f"wall-clock median of {reps} calls. The Triton interpreter is not timed."
        )
    return "\n".join(header + [""] + lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, nargs="+", default=[16, 64, 128], help="tree nodes N")
    p.add_argument("--prefix", type=int, nargs="+", default=[1024, 8192, 32768], help="prefix lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hq", type=int, default=32)
    p.add_argument("--hkv", type=int, default=8)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--reps", type=int, default=None, help="timed calls per case (default: 10 on CPU, 100 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="also write the markdown table here (e.g. bench/results/...md)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = run(args)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
