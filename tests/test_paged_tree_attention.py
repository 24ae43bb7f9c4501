"""Paged tree attention (ragged queries, paged KV cache) against the padded tree attention on the same data.

Every case builds a padded ``[B, Hkv, S, D]`` cache and scatters the same entries into pages whose block
ids are a random permutation of the pool; every slot that holds no valid entry (unused blocks, the tail
of a request's last block, the padded cache past kv_lens) is NaN, so any read outside ``seq_lens_k``
shows up as NaN in the output. The padded function runs request by request (its N is per call) with the
clean ``[n_b, n_b]`` mask, while the paged call gets a mask whose ignored bits (above the diagonal, past
n_b) are random. First the reference against the padded reference, then Triton (interpreter) against the
padded Triton kernel and the paged reference. The padded implementations are tested against float64 in
test_tree_attention.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import specdec_kernels as sk
from conftest import compile_ahead_of_time, requires_cuda
from specdec_kernels import trees
from specdec_kernels.paged_tree_attention import paged_tree_attention, paged_tree_attention_reference

# Triton (paged) against Triton (padded) or the reference. Both kernels round the softmax weights to the
# input dtype before the PV product, but at different tile boundaries (different BLOCK_M, splits), and
# round the output once: a few units in the last place of outputs of size ~1 (fp16 2^-11, bf16 2^-8).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_parents(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)], dtype=torch.int64)


def make_case(
    ns,
    prefixes,
    *,
    hkv=2,
    g=2,
    d=32,
    page=16,
    dtype=torch.float32,
    idx=torch.int64,
    seed=0,
    spare_blocks=3,
    table_pad=2,
    device="cpu",
):
    """A ragged batch in both layouts. Returns (paged args dict, padded data dict)."""
    gen = torch.Generator().manual_seed(seed)
    B, n_max, hq = len(ns), max(max(ns), 1), hkv * g
    lens = [n + p for n, p in zip(ns, prefixes)]
    s = max(lens) + 3
    valid = torch.arange(s)[None, :] < torch.tensor(lens)[:, None]  # [B, S]
    k_pad = torch.randn(B, hkv, s, d, generator=gen).to(dtype).masked_fill(~valid[:, None, :, None], math.nan)
    v_pad = torch.randn(B, hkv, s, d, generator=gen).to(dtype).masked_fill(~valid[:, None, :, None], math.nan)
    q = torch.randn(sum(ns), hq, d, generator=gen).to(dtype)

    needed = [-(-length // page) for length in lens]  # pages per request
    num_blocks = sum(needed) + spare_blocks
    perm = torch.randperm(num_blocks, generator=gen)
    # Entries past a request's pages are never read: fill them with ids outside the pool.
    table = torch.full((B, max(needed) + table_pad), num_blocks + 7, dtype=torch.int64)
    k_cache = torch.full((num_blocks, page, hkv, d), math.nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    used = 0
    for b, length in enumerate(lens):
        table[b, : needed[b]] = perm[used : used + needed[b]]
        used += needed[b]
        pos = torch.arange(length)
        blocks, slots = table[b, pos // page], pos % page
        k_cache[blocks, slots] = k_pad[b, :, :length].transpose(0, 1)
        v_cache[blocks, slots] = v_pad[b, :, :length].transpose(0, 1)

    # The ignored bits (above the diagonal, rows/columns past n_b) are random; clean[b] is the real tree.
    junk = torch.rand(B, n_max, n_max, generator=gen) < 0.5
    clean = []
    mask = junk.clone()
    for b, n in enumerate(ns):
        tri = torch.ones(n, n, dtype=torch.bool).tril()
        clean.append(trees.ancestor_mask(random_parents(n, gen)) if n else torch.zeros(0, 0, dtype=torch.bool))
        mask[b, :n, :n] = torch.where(tri, clean[b], junk[b, :n, :n])
    cu = torch.tensor([0] + torch.tensor(ns).cumsum(0).tolist())
    paged = dict(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        cu_seqlens_q=cu.to(idx),
        seq_lens_k=torch.tensor(lens).to(idx),
        block_table=table.to(idx),
        tree_mask=mask,
    )
    paged = {k: t.to(device) for k, t in paged.items()}
    padded = dict(ns=ns, lens=lens, cu=cu.tolist(), k=k_pad.to(device), v=v_pad.to(device), clean=clean)
    return paged, padded


def padded_result(paged, padded, backend, packed=False, sm_scale=None, **features):
    """Request by request with the padded tree_attention: [T, Hq, D]."""
    q = paged["q"]
    out = torch.zeros_like(q)
    for b, n in enumerate(padded["ns"]):
        if n == 0:
            continue
        lo = padded["cu"][b]
        mask = padded["clean"][b].to(q.device)
        o = sk.tree_attention(
            q[lo : lo + n].transpose(0, 1).unsqueeze(0),
            padded["k"][b : b + 1],
            padded["v"][b : b + 1],
            torch.tensor([padded["lens"][b]], device=q.device),
            trees.pack_mask(mask) if packed else mask,
            backend=backend,
            sm_scale=sm_scale,
            **features,
        )
        out[lo : lo + n] = o[0].transpose(0, 1)
    return out


def with_mask(paged, packed):
    return dict(paged, tree_mask=trees.pack_mask(paged["tree_mask"])) if packed else paged


# ---------------------------------------------------------------------------------------------------
# Reference against the padded reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [1, 5, 16])
def test_reference_matches_padded_reference(page):
    # Cheap: sweep GQA/MHA, dtypes, index dtypes and mask kinds. Same fp32 computation on the same
    # gathered entries, so equal to the last bit.
    configs = [
        (4, torch.float32, torch.int32, False, (3, 1, 7), (9, 0, 70)),
        (1, torch.float16, torch.int64, True, (1, 5, 2, 40), (0, 33, 16, 4)),
        (4, torch.bfloat16, torch.int64, False, (6, 1), (0, 21)),
        (1, torch.float32, torch.int32, True, (2, 0, 4), (5, 0, 0)),  # a request with no tree this step
    ]
    for seed, (g, dtype, idx, packed, ns, prefixes) in enumerate(configs):
        paged, padded = make_case(ns, prefixes, g=g, page=page, dtype=dtype, idx=idx, seed=seed)
        got = paged_tree_attention(**with_mask(paged, packed), backend="reference")
        expect = padded_result(paged, padded, "reference", packed)
        assert torch.isfinite(got).all(), f"page={page} config {seed}: read a NaN slot"
        torch.testing.assert_close(got, expect, atol=0, rtol=0, msg=f"page={page} config {seed}")


# ---------------------------------------------------------------------------------------------------
# Triton (interpreter) against the padded Triton kernel and the paged reference
# ---------------------------------------------------------------------------------------------------

# (page, g, dtype, index dtype, packed, num_splits, ns, prefixes)
KERNEL_CASES = [
    (1, 4, torch.float32, torch.int32, False, None, (3, 1, 6), (9, 0, 70)),
    (16, 1, torch.float16, torch.int64, True, 2, (1, 7, 4), (140, 3, 0)),
    (5, 4, torch.bfloat16, torch.int64, False, 1, (5, 1, 2), (67, 0, 13)),
    (5, 1, torch.float32, torch.int32, True, 3, (4, 0, 2), (200, 0, 64)),
    (16, 2, torch.bfloat16, torch.int32, True, None, (33, 1), (5, 0)),  # Nmax > 32: two mask words
]


@pytest.mark.parametrize("page,g,dtype,idx,packed,num_splits,ns,prefixes", KERNEL_CASES)
def test_triton_matches_padded(page, g, dtype, idx, packed, num_splits, ns, prefixes):
    paged, padded = make_case(ns, prefixes, g=g, page=page, dtype=dtype, idx=idx, seed=page + g)
    args = with_mask(paged, packed)
    got = paged_tree_attention(**args, backend="triton", num_splits=num_splits)
    assert got.dtype == dtype and got.shape == paged["q"].shape
    assert torch.isfinite(got).all(), "read a NaN slot"
    tol = TOL[dtype]
    torch.testing.assert_close(got, padded_result(paged, padded, "triton", packed), atol=tol, rtol=tol)
    torch.testing.assert_close(got, paged_tree_attention_reference(**args), atol=tol, rtol=tol)


def test_triton_split_k_matches_no_split():
    paged, _ = make_case((3, 2), (300, 130), g=2, page=16, seed=11)
    one = paged_tree_attention(**paged, backend="triton", num_splits=1)
    for splits in (2, 7):  # 7 splits > full tiles of the shorter request: some splits are empty
        torch.testing.assert_close(
            paged_tree_attention(**paged, backend="triton", num_splits=splits), one, atol=2e-6, rtol=2e-6
        )


# (page, g, dtype, num_splits, ns, prefixes, window, softcap, use_sinks)
FEATURE_CASES = [
    (5, 2, torch.float32, 3, (4, 1, 6), (130, 0, 70), 9, None, False),  # windows < prefix, < a deep tree
    (16, 4, torch.float16, None, (3, 7), (90, 2), None, 2.0, True),
    (1, 1, torch.bfloat16, 2, (5, 2, 1), (67, 13, 200), 3, 1.0, True),  # window 3 < tree depth: no prefix
]


@pytest.mark.parametrize("page,g,dtype,num_splits,ns,prefixes,window,softcap,use_sinks", FEATURE_CASES)
def test_features_match_padded(page, g, dtype, num_splits, ns, prefixes, window, softcap, use_sinks):
    # Window, soft-capping and sinks: the paged reference equals the padded reference to the last bit,
    # Triton matches the padded Triton kernel and the paged reference (both tested against fp64 in
    # test_tree_attention.py).
    paged, padded = make_case(ns, prefixes, g=g, page=page, dtype=dtype, seed=page + g)
    sinks = torch.randn(paged["q"].shape[1], generator=torch.Generator().manual_seed(1)) if use_sinks else None
    feat = dict(window=window, softcap=softcap, sinks=sinks)
    ref = paged_tree_attention(**paged, backend="reference", **feat)
    torch.testing.assert_close(ref, padded_result(paged, padded, "reference", **feat), atol=0, rtol=0)
    got = paged_tree_attention(**paged, backend="triton", num_splits=num_splits, **feat)
    assert torch.isfinite(got).all(), "read a NaN slot"
    tol = TOL[dtype]
    torch.testing.assert_close(got, padded_result(paged, padded, "triton", **feat), atol=tol, rtol=tol)
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_window_skips_prefix_pages(num_splits):
    # K/V tiles entirely before every row's window are never read: NaN there (in their pages) must not
    # show up. Every node of request b sees from prefix_b - 4 on (the root), so the BLOCK_N-aligned tiles
    # below (prefix_b - 4) rounded down to a multiple of 64 (BLOCK_N is 32 or 64) are outside all windows.
    ns, prefixes, window = (4, 1), (200, 150), 5
    paged, padded = make_case(ns, prefixes, g=2, page=16, seed=3)
    expect = paged_tree_attention(**paged, backend="reference", window=window)
    for b, prefix in enumerate(prefixes):
        pos = torch.arange((prefix - 4) // 64 * 64)
        blocks, slots = paged["block_table"][b, pos // 16], pos % 16
        paged["k_cache"][blocks, slots] = float("nan")
        paged["v_cache"][blocks, slots] = float("nan")
    got = paged_tree_attention(**paged, backend="triton", window=window, num_splits=num_splits)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-6)


def test_strided_views_out_buffer_and_sm_scale():
    # k/v caches are the two halves of one [2, num_blocks, page, Hkv, D] buffer, q a slice of a fused
    # [T, 3, Hq, D] projection, out a transposed buffer; all written/read through their strides.
    paged, padded = make_case((4, 2), (20, 9), g=2, page=5, dtype=torch.float16, seed=4)
    kv = torch.stack([paged["k_cache"], paged["v_cache"]])
    qkv = torch.randn(paged["q"].shape[0], 3, *paged["q"].shape[1:]).half()
    qkv[:, 1] = paged["q"]
    args = dict(paged, q=qkv[:, 1], k_cache=kv[0], v_cache=kv[1])
    expect = padded_result(paged, padded, "reference", sm_scale=0.3)
    for backend in ("triton", "reference"):
        buf = torch.empty(paged["q"].shape[1], paged["q"].shape[0], paged["q"].shape[2], dtype=torch.float16)
        res = paged_tree_attention(**args, backend=backend, sm_scale=0.3, out=buf.transpose(0, 1))
        assert res.data_ptr() == buf.data_ptr()
        torch.testing.assert_close(buf.transpose(0, 1), expect, atol=TOL[torch.float16], rtol=TOL[torch.float16])


def test_empty_rows_are_zero():
    # Prefix 0 and a node that may see nothing (not even itself): zeros; its neighbours are unaffected.
    paged, padded = make_case((4, 3), (0, 6), seed=6)
    mask = paged["tree_mask"].clone()
    mask[0, 2] = False
    for backend in ("triton", "reference"):
        e = paged_tree_attention(**dict(paged, tree_mask=mask), backend=backend)
        full = paged_tree_attention(**paged, backend=backend)
        assert torch.isfinite(e).all() and (e[2] == 0).all()
        torch.testing.assert_close(e[[0, 1, 3, 4, 5, 6]], full[[0, 1, 3, 4, 5, 6]], atol=0, rtol=0)


def test_hints_and_unchecked_values_stay_in_bounds():
    # check=False skips the value checks (no host read); the kernel clamps seq_lens_k to its capacity and
    # block ids into the pool instead of reading outside the caches.
    paged, _ = make_case((3, 2), (10, 4), page=4, spare_blocks=0, table_pad=0, seed=8)
    # Every slot of the pool is read once seq_lens_k is the capacity: zeros instead of NaN there.
    paged.update(k_cache=paged["k_cache"].nan_to_num(), v_cache=paged["v_cache"].nan_to_num())
    capacity = paged["block_table"].shape[1] * 4
    table = paged["block_table"].clone()
    table[1, 2:] = torch.tensor([0, paged["k_cache"].shape[0] - 1])  # the last: where the bad id is clamped to
    base = paged_tree_attention(**dict(paged, block_table=table), backend="triton")
    hinted = paged_tree_attention(
        **dict(paged, block_table=table), backend="triton", check=False, max_seqlen_q=3, max_seqlen_k=14
    )
    torch.testing.assert_close(hinted, base, atol=0, rtol=0)
    full = dict(paged, block_table=table, seq_lens_k=torch.tensor([capacity, capacity]))
    inside = paged_tree_attention(**full, backend="triton")
    bad_table = table.clone()
    bad_table[1, -1] = 10**6
    outside = paged_tree_attention(
        **dict(full, seq_lens_k=torch.tensor([10**6, 10**6]), block_table=bad_table), backend="triton", check=False
    )
    torch.testing.assert_close(outside, inside, atol=0, rtol=0)


def test_auto_backend_on_cpu_is_reference():
    paged, _ = make_case((2, 3), (4, 0), seed=9)
    torch.testing.assert_close(paged_tree_attention(**paged), paged_tree_attention_reference(**paged), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# The torch op
# ---------------------------------------------------------------------------------------------------


def test_torch_op_opcheck():
    paged, _ = make_case((3, 1), (5, 0), g=2, page=5, seed=10)
    args = tuple(paged.values())
    torch.library.opcheck(torch.ops.specdec.paged_tree_attention.default, args, {"sm_scale": 0.5})
    out = torch.empty_like(paged["q"])
    torch.library.opcheck(torch.ops.specdec.paged_tree_attention_out.default, args + (out,))
    torch.testing.assert_close(
        torch.ops.specdec.paged_tree_attention(*args), paged_tree_attention(**paged), atol=0, rtol=0
    )


def test_torch_op_opcheck_with_window_softcap_sinks():
    paged, _ = make_case((3, 2), (9, 0), g=2, page=5, seed=12)
    args = tuple(paged.values())
    feat = dict(window=3, softcap=2.0, sinks=torch.randn(paged["q"].shape[1]))
    torch.library.opcheck(torch.ops.specdec.paged_tree_attention.default, args, feat)
    out = torch.empty_like(paged["q"])
    out_op = torch.ops.specdec.paged_tree_attention_out.default
    torch.library.opcheck(out_op, args + (out,), dict(feat, backend="triton"))
    want = paged_tree_attention(**paged, **feat)
    assert not torch.equal(want, paged_tree_attention(**paged))  # the features reach the op
    torch.testing.assert_close(torch.ops.specdec.paged_tree_attention(*args, **feat), want, atol=0, rtol=0)


def test_torch_compile_routes_through_the_ops():
    # Under torch.compile the function calls the registered ops: one graph (fullgraph), same numbers,
    # out written in place.
    paged, _ = make_case((3, 2), (5, 0), seed=13)

    def f(*args, out):
        return paged_tree_attention(*args, out=out) + 1.0 if out is not None else paged_tree_attention(*args) * 2.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    expect = paged_tree_attention(**paged)
    torch.testing.assert_close(compiled(*paged.values(), out=None), expect * 2.0, atol=0, rtol=0)
    out = torch.empty_like(expect)
    torch.testing.assert_close(compiled(*paged.values(), out=out), expect + 1.0, atol=0, rtol=0)
    torch.testing.assert_close(out, expect, atol=0, rtol=0)


def test_shared_2d_mask():
    # A [Nmax, Nmax] mask is every request's tree (its [n_b, n_b] corner).
    paged, _ = make_case((4, 2, 3), (7, 0, 20), page=5, seed=14)
    shared = paged["tree_mask"][0]
    per_request = shared.expand(3, 4, 4).clone()
    for backend in ("triton", "reference"):
        for packed in (False, True):
            got = paged_tree_attention(**with_mask(dict(paged, tree_mask=shared), packed), backend=backend)
            expect = paged_tree_attention(**dict(paged, tree_mask=per_request), backend=backend)
            torch.testing.assert_close(got, expect, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def _good():
    paged, _ = make_case((3, 2), (4, 0), page=4, seed=12)
    return paged


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda a: a.update(q=a["q"].half()), TypeError, "k_cache must have q's dtype"),
        (lambda a: a.update(q=a["q"][None]), ValueError, "q must be 3-D"),
        (lambda a: a.update(k_cache=a["k_cache"][:, :, :, :16]), ValueError, "k_cache must be"),
        (lambda a: a.update(v_cache=a["v_cache"][:-1]), ValueError, "same shape"),
        (lambda a: a.update(q=a["q"][:, :3]), ValueError, "multiple of k_cache/v_cache heads"),
        (lambda a: a.update(seq_lens_k=a["seq_lens_k"].float()), TypeError, "seq_lens_k must be an int32/int64"),
        (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"][:2]), TypeError, "cu_seqlens_q must be"),
        (lambda a: a.update(block_table=a["block_table"][0]), TypeError, "block_table must be"),
        (lambda a: a.update(tree_mask=a["tree_mask"][:1]), ValueError, "tree_mask"),
        (lambda a: a.update(tree_mask=a["tree_mask"].float()), TypeError, "tree_mask must be bool"),
        (lambda a: a.update(tree_mask=torch.ones(2, 1025, 1025, dtype=torch.bool)), ValueError, "Nmax <= 1024"),
        (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 3, 4])), ValueError, "run from 0 to T=5"),
        (lambda a: a.update(cu_seqlens_q=torch.tensor([1, 3, 5])), ValueError, "run from 0 to T=5"),
        (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 6, 5])), ValueError, "non-decreasing"),
        (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 4, 5])), ValueError, "<= Nmax=3"),
        (lambda a: a.update(seq_lens_k=torch.tensor([7, 1])), ValueError, "seq_lens_k\\[b\\] must be >= n_b"),
        (lambda a: a.update(seq_lens_k=torch.tensor([7, 100])), ValueError, "max_blocks \\* page_size"),
        (lambda a: a["block_table"].__setitem__((0, 0), -1), ValueError, "block_table entries"),
        (lambda a: a["block_table"].__setitem__((1, 0), 10**4), ValueError, "block_table entries"),
        (lambda a: a.update(max_seqlen_q=2), ValueError, "max_seqlen_q=2 must be >="),
        (lambda a: a.update(max_seqlen_k=0), ValueError, "max_seqlen_k must be a positive int"),
        (lambda a: a.update(num_splits=0), ValueError, "num_splits"),
        (lambda a: a.update(backend="cuda"), ValueError, "backend must be one of"),
        (lambda a: a.update(sm_scale=float("nan")), ValueError, "sm_scale"),
        (lambda a: a.update(out=torch.empty(5, 4, 31)), ValueError, "out must be"),
        (lambda a: a.update(seq_lens_k=a["seq_lens_k"].to("meta")), ValueError, "seq_lens_k is on meta"),
        (lambda a: a.update(window=-1), ValueError, "window must be >= 1"),
        (lambda a: a.update(softcap=-2.0), ValueError, "softcap must be a finite float > 0"),
        (lambda a: a.update(sinks=torch.zeros(3)), ValueError, "sinks must have shape"),
    ],
)
def test_bad_inputs(change, exc, match):
    args = _good()
    change(args)
    with pytest.raises(exc, match=match):
        paged_tree_attention(**args)


def test_bad_values_raise_before_any_write():
    args = _good()
    out = torch.full_like(args["q"], 7.0)
    with pytest.raises(ValueError, match="seq_lens_k"):
        paged_tree_attention(**dict(args, seq_lens_k=torch.tensor([7, 1])), out=out, backend="triton", check=True)
    assert (out == 7.0).all()


# ---------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
import importlib, inspect, torch, triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
pta = importlib.import_module("specdec_kernels.paged_tree_attention")  # the package attribute is the function
fn = pta._paged_tree_attention_fwd_kernel
for dtype, name, page, split in ((torch.bfloat16, "bf16", 16, True), (torch.float16, "fp16", 1, False)):
    bm, bn, nw, ns = pta.pick_config(4 * 64, 128, dtype)
    consts = dict(H_KV=8, GROUP=4, PAGE_SIZE=page, HEAD_DIM=128, BLOCK_D=128, BLOCK_M=bm, BLOCK_N=bn, SPLIT=split,
                  WINDOW=split, SOFTCAP=split, SINKS_ON=split, IEEE=False, UPCAST=False)  # features with split
    ptrs = dict(Q=name, K=name, V=name, OUT=name, CU_Q="i32", SEQ_LENS="i64", BLOCK_TABLE="i32", MASK="i32",
                DEPTH="i32", SINKS="fp32", MID_O="fp32", MID_LSE="fp32")
    sig = {n: "constexpr" if n in consts else "*" + ptrs[n] if n in ptrs
           else "fp32" if n in ("qk_scale", "cap_scale") else "i32"
           for n in inspect.signature(fn.fn).parameters}
    k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=nw, num_stages=ns))
    assert "st.local" not in k.asm["ptx"], "register spills"
print("compiled")
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm90_without_gpu():
    # The interpreter does not check what the GPU compiler checks (layouts, scalar control flow, shared
    # memory): compile the kernel to sm_90 ahead of time (ptxas ships with Triton; no GPU needed).
    compile_ahead_of_time(_AOT_SCRIPT, "compiled")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("page", [1, 16])
def test_kernel_on_cuda(page, dtype):
    ns = (1, 64, 17, 5)
    paged, padded = make_case(ns, (4000, 37, 0, 900), hkv=8, g=4, d=128, page=page, dtype=dtype, device="cuda")
    got = paged_tree_attention(**paged)
    torch.testing.assert_close(got, padded_result(paged, padded, "triton"), atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(got, paged_tree_attention_reference(**paged), atol=TOL[dtype], rtol=TOL[dtype])
