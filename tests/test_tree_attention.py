"""Tree attention: the Triton kernel (through the interpreter on CPU) and the reference against a float64
naive implementation built from the parents directly.

Tolerance (flash-attention's rule): the error of an implementation against the fp64 naive result is at
most twice the error of the naive implementation run in the low precision itself, plus a tiny floor.
Sizes are small on purpose: the interpreter runs every program in Python.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specdec_kernels as sk
from conftest import compile_ahead_of_time
from specdec_kernels import trees
from specdec_kernels.tree_attention import tree_attention_mask, tree_attention_reference, tree_depths

FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
# Unit roundoff: a low-precision kernel rounds its output (and, like every flash-attention kernel, the
# softmax weights before the PV product) once more than the naive low-precision computation may.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


# ---------------------------------------------------------------------------------------------------
# Trees and the naive implementation
# ---------------------------------------------------------------------------------------------------


def make_parents(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Parents [N] of a tree of a given shape: chain, star, deep (few branches), wide, random."""
    if kind == "chain":
        return trees.chain_parents(n)
    if kind == "star":
        return torch.tensor([-1] + [0] * (n - 1), dtype=torch.int64)
    p = [-1]
    for i in range(1, n):
        if kind == "deep":  # mostly extend the newest node
            j = i - 1 if torch.rand(1, generator=gen).item() < 0.8 else int(torch.randint(0, i, (1,), generator=gen))
        elif kind == "wide":  # attach near the root
            j = int(torch.randint(0, min(i, 3), (1,), generator=gen))
        else:
            j = int(torch.randint(0, i, (1,), generator=gen))
        p.append(j)
    return torch.tensor(p, dtype=torch.int64)


def naive_mask(parents: list[torch.Tensor], kv_lens: torch.Tensor, s: int) -> torch.Tensor:
    """Dense [B, N, S] visibility, walking each node's parent chain (independent of trees.ancestor_mask)."""
    n = parents[0].shape[0]
    mask = torch.zeros(len(parents), n, s, dtype=torch.bool)
    for b, par in enumerate(parents):
        prefix = int(kv_lens[b]) - n
        mask[b, :, :prefix] = True
        for i in range(n):
            j = i
            while j >= 0:
                mask[b, i, prefix + j] = True
                j = int(par[j])
    return mask


def naive_attention(q, k, v, mask, scale, dtype):
    """Masked attention computed entirely in ``dtype`` (float64 for the ground truth)."""
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    kd = kd.repeat_interleave(g, dim=1)
    vd = vd.repeat_interleave(g, dim=1)
    scores = (qd @ kd.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return p @ vd


def assert_within_tolerance(out, q, k, v, mask, scale, what=""):
    truth = naive_attention(q, k, v, mask, scale, torch.float64)
    low = naive_attention(q, k, v, mask, scale, q.dtype)
    base = (low.double() - truth).abs().max().item()
    err = (out.double() - truth).abs().max().item()
    assert out.dtype == q.dtype
    bound = 2 * base + FLOOR[q.dtype] + 2 * UNIT_ROUNDOFF[q.dtype] * truth.abs().max().item()
    assert err <= bound, f"{what}: error {err:.3g} vs low-precision naive error {base:.3g} (bound {bound:.3g})"


def make_case(
    *, b=2, hkv=2, g=2, n=7, d=32, prefix=(70, 0), kind="random", dtype=torch.float32, per_seq=False, slack=5, seed=0
):
    gen = torch.Generator().manual_seed(seed)
    kv_lens = torch.tensor([p + n for p in prefix], dtype=torch.int64)
    s = int(kv_lens.max()) + slack
    q = torch.randn(b, hkv * g, n, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, s, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, s, d, generator=gen).to(dtype)
    parents = [make_parents(n, kind, gen) for _ in range(b if per_seq else 1)]
    tmask = torch.stack([trees.ancestor_mask(p) for p in parents]) if per_seq else trees.ancestor_mask(parents[0])
    dense = naive_mask(parents * (1 if per_seq else b), kv_lens, s)
    return q, k, v, kv_lens, tmask, dense


# ---------------------------------------------------------------------------------------------------
# Kernel and reference against fp64
# ---------------------------------------------------------------------------------------------------

# (n, kind, g, dtype, packed, per_seq, num_splits, prefix)
KERNEL_CASES = [
    (1, "chain", 1, torch.float32, False, False, 1, (5, 0)),
    (7, "random", 2, torch.float16, True, True, 3, (200, 0)),
    (31, "deep", 4, torch.bfloat16, False, True, None, (140, 3)),
    (32, "star", 8, torch.float32, True, False, 1, (0, 64)),
    (33, "wide", 1, torch.float16, False, False, 2, (129, 65)),
    (64, "chain", 2, torch.bfloat16, True, True, 1, (1, 0)),
    (65, "random", 4, torch.float32, False, True, 2, (150, 7)),
]


@pytest.mark.parametrize("n,kind,g,dtype,packed,per_seq,num_splits,prefix", KERNEL_CASES)
def test_kernel_matches_fp64(n, kind, g, dtype, packed, per_seq, num_splits, prefix):
    q, k, v, kv_lens, tmask, dense = make_case(n=n, kind=kind, g=g, dtype=dtype, per_seq=per_seq, prefix=prefix)
    mask_arg = trees.pack_mask(tmask) if packed else tmask
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = sk.tree_attention(q, k, v, kv_lens, mask_arg, backend="triton", num_splits=num_splits)
    assert_within_tolerance(out, q, k, v, dense, scale, "triton")
    ref = sk.tree_attention(q, k, v, kv_lens, mask_arg, backend="reference")
    assert_within_tolerance(ref, q, k, v, dense, scale, "reference")


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    g=st.sampled_from([1, 2, 4, 8]),
    prefix=st.tuples(st.integers(0, 150), st.integers(0, 150)),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    kind=st.sampled_from(["chain", "star", "deep", "wide", "random"]),
    packed=st.booleans(),
    per_seq=st.booleans(),
    num_splits=st.sampled_from([None, 1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_kernel_random_configs(n, g, prefix, dtype, kind, packed, per_seq, num_splits, seed):
    q, k, v, kv_lens, tmask, dense = make_case(
        n=n, g=g, hkv=1, d=16, kind=kind, dtype=dtype, per_seq=per_seq, prefix=prefix, seed=seed
    )
    out = sk.tree_attention(
        q, k, v, kv_lens, trees.pack_mask(tmask) if packed else tmask, backend="triton", num_splits=num_splits
    )
    assert_within_tolerance(out, q, k, v, dense, 0.25, "triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["chain", "star", "deep", "wide", "random"])
def test_reference_matches_fp64(kind, dtype):
    # The reference is cheap: sweep tree shapes, N and GQA ratios on it.
    for n, g, prefix, per_seq in ((1, 1, (0, 3), False), (33, 8, (40, 0), True), (65, 4, (7, 100), True)):
        q, k, v, kv_lens, tmask, dense = make_case(n=n, g=g, kind=kind, dtype=dtype, per_seq=per_seq, prefix=prefix)
        out = tree_attention_reference(q, k, v, kv_lens, trees.pack_mask(tmask) if n > 1 else tmask)
        assert_within_tolerance(out, q, k, v, dense, 1.0 / math.sqrt(q.shape[-1]), f"reference n={n}")


@pytest.mark.parametrize(
    "d,dtype",
    [(64, torch.bfloat16), (128, torch.bfloat16), (128, torch.float32), (80, torch.float16), (256, torch.bfloat16)],
)
def test_kernel_head_dims(d, dtype):
    # Production head dims (and a padded non-power-of-two one) with tiny S to keep the interpreter fast;
    # fp32 with d=128 and d=256 take the narrower BLOCK_N=32 tiles.
    q, k, v, kv_lens, tmask, dense = make_case(b=1, hkv=1, g=4, n=5, d=d, prefix=(66,), dtype=dtype)
    out = sk.tree_attention(q, k, v, kv_lens, tmask, backend="triton")
    assert_within_tolerance(out, q, k, v, dense, d**-0.5, f"d={d}")


def test_split_k_matches_no_split():
    q, k, v, kv_lens, tmask, _ = make_case(n=9, g=2, prefix=(300, 130), kind="deep")
    one = sk.tree_attention(q, k, v, kv_lens, tmask, backend="triton", num_splits=1)
    for splits in (2, 5, 9):  # 9 splits > full tiles of the shorter sequence: some splits are empty
        many = sk.tree_attention(q, k, v, kv_lens, tmask, backend="triton", num_splits=splits)
        torch.testing.assert_close(many, one, atol=2e-6, rtol=2e-6)


def test_strided_cache_views_and_out_buffer():
    # k/v are per-layer views of one [L, 2, B, H, S_max, D] buffer, S_max > max(kv_lens); q is a transposed
    # projection output and out a transposed [B, N, Hq, D] buffer, as the Hugging Face hook uses them.
    gen = torch.Generator().manual_seed(3)
    L, B, Hkv, G, N, D, S_max = 2, 2, 2, 2, 6, 32, 96
    cache = torch.randn(L, 2, B, Hkv, S_max, D, generator=gen, dtype=torch.float16)
    k, v = cache[1, 0], cache[1, 1]
    q = torch.randn(B, N, Hkv * G, D, generator=gen, dtype=torch.float16).transpose(1, 2)
    kv_lens = torch.tensor([N + 75, N + 10])
    parents = make_parents(N, "random", gen)
    out = torch.empty(B, N, Hkv * G, D, dtype=torch.float16)
    res = sk.tree_attention(q, k, v, kv_lens, trees.ancestor_mask(parents), backend="triton", out=out.transpose(1, 2))
    assert res.data_ptr() == out.data_ptr()
    dense = naive_mask([parents, parents], kv_lens, S_max)
    assert_within_tolerance(out.transpose(1, 2), q, k, v, dense, D**-0.5, "strided")
    ref = sk.tree_attention(q, k, v, kv_lens, trees.ancestor_mask(parents), backend="reference")
    torch.testing.assert_close(ref, out.transpose(1, 2), atol=2e-3, rtol=2e-3)


def test_sm_scale_and_int32_kv_lens():
    q, k, v, kv_lens, tmask, dense = make_case(n=4, prefix=(20, 9))
    out = sk.tree_attention(q, k, v, kv_lens.to(torch.int32), tmask, sm_scale=0.3, backend="triton")
    assert_within_tolerance(out, q, k, v, dense, 0.3, "sm_scale")


def test_chain_equals_causal_attention():
    # A chain tree is plain causal attention over prefix + chain (torch SDPA as the oracle).
    q, k, v, _, _, _ = make_case(b=1, n=8, prefix=(40,), slack=0)
    kv_lens = torch.tensor([48])
    mask = torch.ones(8, 48, dtype=torch.bool).tril(40)
    expect = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    for backend in ("triton", "reference"):
        out = sk.tree_attention(q, k, v, kv_lens, trees.ancestor_mask(trees.chain_parents(8)), backend=backend)
        torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_upper_bits_ignored_and_empty_rows_are_zero():
    q, k, v, _, _, _ = make_case(b=1, n=5, prefix=(0,), slack=0)
    kv_lens = torch.tensor([5])
    full = torch.ones(5, 5, dtype=torch.bool)  # bits above the diagonal are ignored: same as causal
    causal = full.tril()
    empty_row = causal.clone()
    empty_row[3] = False  # prefix 0 and nothing allowed: zeros
    for backend in ("triton", "reference"):
        a = sk.tree_attention(q, k, v, kv_lens, full, backend=backend)
        c = sk.tree_attention(q, k, v, kv_lens, causal, backend=backend)
        torch.testing.assert_close(a, c, atol=0, rtol=0)
        e = sk.tree_attention(q, k, v, kv_lens, empty_row, backend=backend)
        assert torch.isfinite(e).all() and (e[:, :, 3] == 0).all()
        torch.testing.assert_close(e[:, :, 4], c[:, :, 4], atol=1e-6, rtol=1e-6)


def test_auto_backend_on_cpu_is_reference():
    q, k, v, kv_lens, tmask, _ = make_case(n=3, prefix=(4, 2))
    auto = sk.tree_attention(q, k, v, kv_lens, tmask)
    torch.testing.assert_close(auto, tree_attention_reference(q, k, v, kv_lens, tmask), atol=0, rtol=0)


def test_dense_mask_helper_matches_naive():
    gen = torch.Generator().manual_seed(5)
    parents = [make_parents(40, "random", gen) for _ in range(3)]
    kv_lens = torch.tensor([40, 77, 41])
    m = tree_attention_mask(kv_lens, trees.pack_mask(torch.stack([trees.ancestor_mask(p) for p in parents])), 40, 80)
    assert torch.equal(m, naive_mask(parents, kv_lens, 80))


# ---------------------------------------------------------------------------------------------------
# Sliding windows, logit soft-capping, attention sinks
# ---------------------------------------------------------------------------------------------------


def naive_depths(par: torch.Tensor) -> list[int]:
    """Depth of every node by walking its parent chain."""
    depth = []
    for i in range(par.shape[0]):
        d, j = 0, int(par[i])
        while j >= 0:
            d, j = d + 1, int(par[j])
        depth.append(d)
    return depth


def naive_window_mask(parents: list[torch.Tensor], kv_lens: torch.Tensor, s: int, window: int) -> torch.Tensor:
    """naive_mask restricted to a sliding window: node i at position prefix + depth_i sees positions
    p > prefix + depth_i - window, ancestors by their own positions prefix + depth_j."""
    mask = naive_mask(parents, kv_lens, s)
    n = parents[0].shape[0]
    for b, par in enumerate(parents):
        prefix = int(kv_lens[b]) - n
        depth = naive_depths(par)
        pos = torch.tensor([p if p < prefix else prefix + depth[p - prefix] if p < prefix + n else 0 for p in range(s)])
        for i in range(n):
            mask[b, i] &= pos > prefix + depth[i] - window
    return mask


def naive_features(q, k, v, mask, scale, dtype, softcap=None, sinks=None):
    """naive_attention with Gemma 2 soft-capping and gpt-oss sinks, computed entirely in ``dtype``."""
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    kd = kd.repeat_interleave(g, dim=1)
    vd = vd.repeat_interleave(g, dim=1)
    scores = (qd @ kd.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    if sinks is not None:
        sink_col = sinks.to(dtype).view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        p = torch.softmax(torch.cat([scores, sink_col], dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(p) @ vd  # rows with nothing visible (and no sink): zeros


def assert_features_within_tolerance(out, q, k, v, mask, scale, what, **feat):
    truth = naive_features(q, k, v, mask, scale, torch.float64, **feat)
    low = naive_features(q, k, v, mask, scale, q.dtype, **feat)
    base = (low.double() - truth).abs().max().item()
    err = (out.double() - truth).abs().max().item()
    assert out.dtype == q.dtype
    bound = 2 * base + FLOOR[q.dtype] + 2 * UNIT_ROUNDOFF[q.dtype] * truth.abs().max().item()
    assert err <= bound, f"{what}: error {err:.3g} vs low-precision naive error {base:.3g} (bound {bound:.3g})"


def feature_case(n, kind, g, dtype, prefix, window, per_seq=False, seed=0):
    """make_case plus the visibility of the window (naive), and random sinks [Hq]."""
    gen = torch.Generator().manual_seed(seed)
    kv_lens = torch.tensor([p + n for p in prefix], dtype=torch.int64)
    b, s = len(prefix), int(kv_lens.max()) + 3
    q = torch.randn(b, 2 * g, n, 16, generator=gen).to(dtype)
    k = torch.randn(b, 2, s, 16, generator=gen).to(dtype)
    v = torch.randn(b, 2, s, 16, generator=gen).to(dtype)
    parents = [make_parents(n, kind, gen) for _ in range(b if per_seq else 1)]
    tmask = torch.stack([trees.ancestor_mask(p) for p in parents]) if per_seq else trees.ancestor_mask(parents[0])
    per_b = parents * (1 if per_seq else b)
    dense = naive_mask(per_b, kv_lens, s) if window is None else naive_window_mask(per_b, kv_lens, s, window)
    sinks = torch.randn(2 * g, generator=gen) * 2
    return q, k, v, kv_lens, tmask, dense, sinks


# (n, kind, g, dtype, prefix, window, softcap, use_sinks, num_splits): windows smaller than the tree's
# depth, than the prefix, larger than everything; caps that bend most scores; splits with sinks.
FEATURE_CASES = [
    (9, "chain", 1, torch.float32, (70, 0), 4, None, False, 3),
    (13, "deep", 2, torch.float16, (70, 5), 30, None, False, None),
    (7, "random", 4, torch.bfloat16, (33, 0), 500, None, False, 2),
    (5, "star", 1, torch.float32, (129, 3), None, 0.7, False, 2),
    (11, "random", 4, torch.float16, (65, 0), None, None, True, 3),
    (33, "deep", 2, torch.bfloat16, (150, 7), 6, 3.0, True, 2),
    (1, "chain", 2, torch.float32, (100, 0), 1, None, True, 1),  # decode: window 1 sees only itself
    (6, "wide", 1, torch.float16, (90, 2), 3, 1.5, True, None),
]


@pytest.mark.parametrize("n,kind,g,dtype,prefix,window,softcap,use_sinks,num_splits", FEATURE_CASES)
def test_features_match_fp64(n, kind, g, dtype, prefix, window, softcap, use_sinks, num_splits):
    q, k, v, kv_lens, tmask, dense, sinks = feature_case(n, kind, g, dtype, prefix, window, per_seq=n % 2 == 1)
    sinks = sinks if use_sinks else None
    scale = 0.25
    feat = dict(window=window, softcap=softcap, sinks=sinks)
    for backend, packed in (("triton", n > 8), ("reference", n <= 8)):
        mask_arg = trees.pack_mask(tmask) if packed else tmask
        out = sk.tree_attention(
            q, k, v, kv_lens, mask_arg, sm_scale=scale, backend=backend, num_splits=num_splits, **feat
        )
        assert_features_within_tolerance(out, q, k, v, dense, scale, backend, softcap=softcap, sinks=sinks)


def test_window_larger_than_everything_equals_no_window():
    q, k, v, kv_lens, tmask, _, _ = feature_case(10, "random", 2, torch.float16, (80, 3), None, per_seq=True)
    for backend, splits in (("reference", None), ("triton", 1), ("triton", 3)):
        plain = sk.tree_attention(q, k, v, kv_lens, tmask, backend=backend, num_splits=splits)
        wide = sk.tree_attention(q, k, v, kv_lens, tmask, backend=backend, num_splits=splits, window=91)
        torch.testing.assert_close(wide, plain, atol=0, rtol=0)
        narrow = sk.tree_attention(q, k, v, kv_lens, tmask, backend=backend, num_splits=splits, window=80)
        assert not torch.equal(narrow, plain)  # 80: the longer sequence's root (position 80) loses entry 0


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("window,prefix,poisoned", [(3, 200, 192), (1, 100, 100), (4, 67, 64)])
def test_window_skips_prefix_tiles(num_splits, window, prefix, poisoned):
    # Entries before every row's window are never read: poison them with NaN (V's NaN would survive a
    # zero softmax weight). window 1 (and 3 for the deepest nodes) excludes the whole prefix: those rows
    # see only tree nodes. The result must equal the reference on the clean cache.
    n = 6
    q, k, v, kv_lens, tmask, _, _ = feature_case(n, "chain", 2, torch.float32, (prefix,), window)
    expect = sk.tree_attention(q, k, v, kv_lens, tmask, backend="reference", window=window)
    k[:, :, :poisoned] = float("nan")
    v[:, :, :poisoned] = float("nan")
    out = sk.tree_attention(q, k, v, kv_lens, tmask, backend="triton", window=window, num_splits=num_splits)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=1e-6)


def test_sinks_any_dtype_and_empty_rows():
    # Sinks in bf16 with fp32 q (gpt-oss keeps them in the model dtype); a row that sees nothing outputs
    # zeros, with or without a sink.
    q, k, v, _, _, _, sinks = feature_case(5, "chain", 1, torch.float32, (0,), None)
    kv_lens = torch.tensor([5])
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    mask[3] = False
    for backend in ("triton", "reference"):
        a = sk.tree_attention(q, k, v, kv_lens, mask, backend=backend, sinks=sinks.bfloat16())
        b = sk.tree_attention(q, k, v, kv_lens, mask, backend=backend, sinks=sinks.bfloat16().float())
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert torch.isfinite(a).all() and (a[:, :, 3] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_features_on_cuda(dtype):
    # Long prefixes (split-K by the heuristic), a window shorter than one of them, all three features.
    q, k, v, kv_lens, tmask, dense, sinks = feature_case(64, "random", 4, dtype, (4000, 37), 1000, per_seq=True)
    args = (t.cuda() for t in (q, k, v, kv_lens, tmask))
    out = sk.tree_attention(*args, sm_scale=0.25, window=1000, softcap=5.0, sinks=sinks.cuda())
    assert_features_within_tolerance(out.cpu(), q, k, v, dense, 0.25, "cuda", softcap=5.0, sinks=sinks)


def test_tree_depths_of_packed_and_dense_masks():
    gen = torch.Generator().manual_seed(9)
    parents = torch.stack([make_parents(37, "random", gen) for _ in range(2)])
    expect = torch.tensor([naive_depths(p) for p in parents], dtype=torch.int32)
    mask = trees.ancestor_mask(parents)
    assert torch.equal(tree_depths(mask, 37), expect)
    assert torch.equal(tree_depths(trees.pack_mask(mask), 37), expect)


# ---------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument, before any launch
# ---------------------------------------------------------------------------------------------------


def _good():
    q, k, v, kv_lens, tmask, _ = make_case(n=4, prefix=(3, 0))
    return dict(q=q, k=k, v=v, kv_lens=kv_lens, tree_mask=tmask)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda a: a.update(q=a["q"].half()), TypeError, "k must have q's dtype"),
        (lambda a: a.update(q=a["q"].double(), k=a["k"].double(), v=a["v"].double()), TypeError, "q must be float16"),
        (lambda a: a.update(q=a["q"][0]), ValueError, "q must be 4-D"),
        (lambda a: a.update(v=a["v"][:, :, :-1]), ValueError, "k and v must have the same shape"),
        (lambda a: a.update(q=a["q"][:, :3]), ValueError, "multiple of k/v heads"),
        (lambda a: a.update(k=a["k"][..., :16], v=a["v"][..., :16]), ValueError, "k, v must be"),
        (lambda a: a.update(kv_lens=a["kv_lens"].float()), TypeError, "kv_lens must be an int32/int64"),
        (lambda a: a.update(kv_lens=a["kv_lens"][:1]), TypeError, "kv_lens must be"),
        (lambda a: a.update(kv_lens=torch.tensor([7, 3])), ValueError, "kv_lens must satisfy"),
        (lambda a: a.update(kv_lens=torch.tensor([7, 100])), ValueError, "kv_lens must satisfy"),
        (lambda a: a.update(tree_mask=a["tree_mask"].int()), ValueError, "tree_mask \\(packed int32\\)"),
        (lambda a: a.update(tree_mask=a["tree_mask"].float()), TypeError, "tree_mask must be bool"),
        (lambda a: a.update(tree_mask=a["tree_mask"][:3, :3]), ValueError, "tree_mask \\(bool\\)"),
        (lambda a: a.update(tree_mask=a["tree_mask"].expand(3, 4, 4)), ValueError, "tree_mask \\(bool\\)"),
        (lambda a: a.update(tree_mask=a["tree_mask"].tolist()), TypeError, "tree_mask must be a torch.Tensor"),
        (lambda a: a.update(q=torch.randn(2, 4, 1025, 32)), ValueError, "1 <= N <= 1024"),
        (lambda a: a.update(backend="cuda"), ValueError, "backend must be one of"),
        (lambda a: a.update(sm_scale="0.1"), TypeError, "sm_scale"),
        (lambda a: a.update(out=torch.empty(1)), ValueError, "out must be"),
        (lambda a: a.update(num_splits=0), ValueError, "num_splits"),
        (lambda a: a.update(window=0), ValueError, "window must be >= 1"),
        (lambda a: a.update(window=2.0), TypeError, "window must be an int"),
        (lambda a: a.update(window=True), TypeError, "window must be an int"),
        (lambda a: a.update(softcap=0.0), ValueError, "softcap must be a finite float > 0"),
        (lambda a: a.update(softcap=float("inf")), ValueError, "softcap must be a finite float > 0"),
        (lambda a: a.update(softcap="30"), TypeError, "softcap must be a float"),
        (lambda a: a.update(sinks=[0.0] * 4), TypeError, "sinks must be a torch.Tensor"),
        (lambda a: a.update(sinks=torch.zeros(4, dtype=torch.int64)), TypeError, "sinks must be a floating"),
        (lambda a: a.update(sinks=torch.zeros(2)), ValueError, "sinks must have shape \\[Hq=4\\]"),
        (lambda a: a.update(sinks=torch.zeros(4, device="meta")), ValueError, "sinks is on meta"),
    ],
)
def test_bad_inputs(change, exc, match):
    args = _good()
    change(args)
    with pytest.raises(exc, match=match):
        sk.tree_attention(**args)


def test_bad_device_named():
    args = _good()
    args["kv_lens"] = args["kv_lens"].to("meta")
    with pytest.raises(ValueError, match="kv_lens is on meta"):
        sk.tree_attention(**args)


def test_unchecked_out_of_range_kv_lens_stay_in_bounds():
    # check=False skips the value check (no host sync); the kernel clamps kv_lens to [N, S] instead of
    # reading outside k/v.
    q, k, v, _, tmask, _ = make_case(b=1, n=4, prefix=(20,), slack=0)
    inside = sk.tree_attention(q, k, v, torch.tensor([24]), tmask, backend="triton")
    outside = sk.tree_attention(q, k, v, torch.tensor([10**6]), tmask, backend="triton", check=False)
    torch.testing.assert_close(outside, inside, atol=0, rtol=0)


_AOT_SCRIPT = r"""
import inspect, importlib, triton, torch
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
ta = importlib.import_module("specdec_kernels.tree_attention")
def sig(fn, ptrs, consts):
    out = {}
    for n in inspect.signature(fn.fn).parameters:
        out[n] = "constexpr" if n in consts else ("*" + ptrs.get(n, "fp32")) if n.isupper() and n not in ("N", "S") \
            else "fp32" if n in ("qk_scale", "cap_scale") else "i32"
    return out
for dtype, name, d, rows, split in ((torch.bfloat16, "bf16", 128, 64, True), (torch.float32, "fp32", 128, 256, False)):
    bm, bn, nw, ns = ta.pick_config(rows, d, dtype)
    consts = dict(H_KV=8, GROUP=4, HEAD_DIM=d, BLOCK_D=d, BLOCK_M=bm, BLOCK_N=bn, SPLIT=split,
                  WINDOW=split, SOFTCAP=split, SINKS_ON=split,  # the window/softcap/sinks path with the split
                  IEEE=dtype == torch.float32, UPCAST=False)
    ptrs = {"Q": name, "K": name, "V": name, "KV_LENS": "i64", "MASK": "i32", "DEPTH": "i32", "OUT": name}
    src = ASTSource(ta._tree_attention_fwd_kernel, sig(ta._tree_attention_fwd_kernel, ptrs, consts), constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=nw, num_stages=ns))
    assert "st.local" not in k.asm["ptx"], "register spills"
consts = dict(H_KV=8, GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_S=32, SINKS_ON=True)
src = ASTSource(ta.tree_attention_combine_kernel, sig(ta.tree_attention_combine_kernel, {"OUT": "bf16"}, consts),
                constexprs=consts)
triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=2))
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_gpu():
    # The interpreter does not check what the GPU compiler checks (layouts, reshapes, shared memory):
    # compile both kernels to sm_90 cubin ahead of time (ptxas ships with Triton; no GPU needed).
    compile_ahead_of_time(_AOT_SCRIPT, "compiled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n,prefix", [(1, (1000, 0)), (64, (4000, 37)), (200, (9000, 129))])
def test_kernel_on_cuda(n, prefix, dtype):
    q, k, v, kv_lens, tmask, dense = make_case(
        b=2, hkv=8, g=4, n=n, d=128, kind="random", per_seq=True, prefix=prefix, dtype=dtype
    )
    q, k, v, kv_lens, tmask, dense = (t.cuda() for t in (q, k, v, kv_lens, tmask, dense))
    out = sk.tree_attention(q, k, v, kv_lens, tmask)
    assert_within_tolerance(out, q, k, v, dense, 128**-0.5, "cuda")
