"""Verification latency vs tree size for a Llama-shaped random-weight target (the end-to-end GPU check).

    python bench/gpu_verify_latency.py --shape 8b --out bench/results/gpu     # on a GPU (bf16, ~16 GB)
    python bench/gpu_verify_latency.py --shape tiny --device cpu               # smoke test anywhere

One target forward over N tree nodes (a random EAGLE-like tree) after a prefix, through the
"specdec_tree" attention hook and the project's buffer cache, exactly as the decoding loop verifies;
then tree_verify on its logits and compaction of the accepted path. Reported per N: median ms of the
forward, of verification, of compaction, and the forward's cost relative to N = 1 (how much a wider tree
costs: the quantity the cost model trades against tau).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import specdec_kernels as sk
from specdec.runner import ModelRunner, tree_attention_enabled
from specdec_kernels import trees
from specdec_kernels.benchmarking import machine_description, markdown_header, measure

SHAPES = {
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
}


def timed(fn, device, reps):
    """Median ms of ``reps`` calls after two warm-up calls. On a GPU each call starts from an idle device
    (as in the decoding loop, which waits for every step's result), so the host's launch time counts."""
    return measure(fn, warmup=2, repeats=reps, device=device, sync_each=True).median_s * 1e3


def random_tree(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.tensor([-1] + [max(0, i - 1 - int(torch.randint(0, 4, (1,), generator=g))) for i in range(1, n)])


@torch.inference_mode()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prefix", type=int, default=1024)
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", help="folder for verify_latency.md")
    a = p.parse_args(argv)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    cfg = LlamaConfig(**SHAPES[a.shape], max_position_embeddings=a.prefix + max(a.n) + 8)
    print(f"building a random {a.shape} Llama on {a.device} ...", file=sys.stderr)
    with torch.device(a.device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    g = torch.Generator().manual_seed(0)
    V = cfg.vocab_size
    rows = []
    with tree_attention_enabled(model):
        runner = ModelRunner(model, 1, a.prefix + max(a.n) + 8)
        ids = torch.randint(0, V, (1, a.prefix), generator=g).to(a.device)
        runner.prefill(ids, torch.ones_like(ids))
        base = None
        for n in a.n:
            parents = random_tree(n, g).to(a.device)
            mask = trees.ancestor_mask(parents)
            pos = a.prefix + trees.tree_depths(parents)[None]
            toks = torch.randint(0, V, (1, n), generator=g).to(a.device)
            fwd = timed(lambda: runner.forward(toks, pos, mask), a.device, a.reps)
            logits = runner.forward(toks, pos, mask)
            ver = timed(
                lambda: sk.tree_verify(toks, parents, target_logits=logits, greedy=True, validate=False),
                a.device,
                a.reps,
            )
            res = sk.tree_verify(toks, parents, target_logits=logits, greedy=True, validate=False)
            start = torch.tensor([a.prefix], device=a.device)
            comp = timed(
                lambda: runner.cache.compact(start[:, None] + res.path.clamp(min=0), start, res.num_accepted + 1),
                a.device,
                a.reps,
            )
            base = base or fwd
            rows.append((n, fwd, ver, comp, fwd / base))
            print(f"N={n}: forward {fwd:.2f} ms, verify {ver:.3f} ms, compact {comp:.3f} ms", file=sys.stderr)
    lines = [
        f"Verification latency vs tree size: random-weight Llama ({a.shape}, {dtype}), prefix {a.prefix}, "
        f"B=1, {machine_description(a.device)}",
        "",
        f"command: `python bench/gpu_verify_latency.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        *markdown_header(
            ["N", "target forward ms", "tree_verify ms", "compaction ms", "forward / forward(N=1)"], align="rrrrr"
        ),
    ]
    lines += [f"| {n} | {f:.2f} | {v:.3f} | {c:.3f} | {r:.2f} |" for n, f, v, c, r in rows]
    table = "\n".join(lines)
    print(table)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "verify_latency.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
