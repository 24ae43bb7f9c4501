"""Paged tree attention: the token trees of a ragged batch attend to a paged KV cache (serving layout).

Same semantics as :func:`specdec_kernels.tree_attention` (see there and docs/design.md, "Trees"), in the
layout of serving runtimes instead of padded ``[B, H, S, D]`` tensors:

- queries are packed ("varlen"): request b's ``n_b`` tree nodes are rows
  ``cu_seqlens_q[b] : cu_seqlens_q[b + 1]`` of ``q [T, Hq, D]``, in topological order;
- the cache is paged: ``k_cache, v_cache [num_blocks, page_size, Hkv, D]`` (vLLM's per-layer layout;
  SGLang's token-slot buffers are ``page_size = 1``). Cache position p of request b lives in block
  ``block_table[b, p // page_size]`` at slot ``p % page_size``. Request b has ``seq_lens_k[b]`` valid
  positions, its tree's K/V already written at the last ``n_b`` of them (prefix ``seq_lens_k[b] - n_b``);
- ``tree_mask [B, Nmax, Nmax]`` bool (or packed int32 ``[B, Nmax, ceil(Nmax / 32)]``): entry
  ``[b, i, j]`` for ``i, j < n_b`` says node i of request b sees node j; the rest is ignored.

Kernel layout: the padded kernel's (FlashAttention-2 with GQA row stacking, bit-packed tree mask,
flash-decoding split-K), one program per (request, KV head, BLOCK_M tile of the request's ``G * n_b``
rows, split). Each K/V tile's positions are translated through the block table (one gather of
BLOCK_N block ids, so any page size works, including 1 and sizes that do not divide BLOCK_N). Tiles
past a request's rows do nothing, so the grid can be sized from ``Nmax`` without reading the lengths.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from specdec_kernels import _ops, trees
from specdec_kernels._backend import interpreter_enabled, resolve_backend
from specdec_kernels.tree_attention import (
    MAX_HEAD_DIM,
    MAX_TREE_NODES,
    SUPPORTED_DTYPES,
    AttentionFeatures,
    add_sink,
    check_features,
    check_sm_scale,
    dense_tree_mask,
    load_full_tile,
    load_tile,
    online_softmax_step,
    pick_config,
    pick_num_splits,
    tile_scores,
    tree_attention_combine_kernel,
    tree_attention_reference,
    tree_mask_tile,
    window_start,
    windowed_tree_mask,
)

_NAME = "paged_tree_attention"
_INDEX_DTYPES = (torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _paged_slots(table_row, pos, ok, stride_btn, num_blocks, PAGE_SIZE: tl.constexpr):
    # Cache positions pos [BLOCK_N] of one request (ok: which exist) -> (block id, slot in the block), int64.
    # Block ids are clamped into the pool: an unchecked bad table gives wrong results, never a stray read.
    blk = tl.load(table_row + (pos // PAGE_SIZE).to(tl.int64) * stride_btn, mask=ok, other=0).to(tl.int64)
    blk = tl.minimum(tl.maximum(blk, 0), num_blocks - 1)
    return blk, (pos % PAGE_SIZE).to(tl.int64)


@triton.jit(do_not_specialize=["T", "n_max", "num_blocks", "max_blocks", "num_splits", "window"])
def _paged_tree_attention_fwd_kernel(
    Q,  # [T, Hq, D] any strides
    K,  # [num_blocks, PAGE_SIZE, Hkv, D] any strides
    V,  # [num_blocks, PAGE_SIZE, Hkv, D] any strides
    CU_Q,  # [B + 1] int32/int64
    SEQ_LENS,  # [B] int32/int64, valid cache positions per request, tree included
    BLOCK_TABLE,  # [B, max_blocks] int32/int64
    MASK,  # [B or 1, Nmax, W] int32 packed ancestor mask (window applied); stride_mb = 0 when shared
    DEPTH,  # [B or 1, Nmax] int32 tree depth of each node (read when WINDOW); stride_db = 0 when shared
    SINKS,  # [Hq] any float dtype, sink logit per query head (read when SINKS_ON and not SPLIT)
    OUT,  # [T, Hq, D] any strides (written when SPLIT is False)
    MID_O,  # [Hkv, num_splits, T * G, D] fp32 contiguous (written when SPLIT is True)
    MID_LSE,  # [Hkv, num_splits, T * G] fp32 contiguous, log2-sum-exp2 of the split
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kblk,
    stride_kpg,
    stride_kh,
    stride_kd,
    stride_vblk,
    stride_vpg,
    stride_vh,
    stride_vd,
    stride_btb,
    stride_btn,
    stride_mb,
    stride_mi,
    stride_mw,
    stride_db,
    stride_ot,
    stride_oh,
    stride_od,
    T,
    n_max,
    num_words,
    num_blocks,
    max_blocks,
    num_splits,
    window,  # sliding window (read when WINDOW)
    qk_scale,  # sm_scale * log2(e); with SOFTCAP sm_scale / softcap
    cap_scale,  # softcap * log2(e) (read when SOFTCAP)
    H_KV: tl.constexpr,
    GROUP: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINKS_ON: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # b * H_KV + kv head (axis 0: no 65535 limit on the batch)
    pid_m = tl.program_id(1)  # tile of the request's G * n_b query rows
    pid_s = tl.program_id(2)  # split of the prefix
    b = pid_bh // H_KV
    hkv = pid_bh % H_KV
    b64 = b.to(tl.int64)

    # The clamps keep every access inside the given buffers when the values were not checked (check=False);
    # checked values pass through unchanged.
    q_start = tl.minimum(tl.maximum(tl.load(CU_Q + b).to(tl.int32), 0), T)
    q_end = tl.minimum(tl.maximum(tl.load(CU_Q + b + 1).to(tl.int32), q_start), T)
    capacity = max_blocks * PAGE_SIZE
    n = tl.minimum(tl.minimum(q_end - q_start, n_max), capacity)  # tree nodes of request b
    seq_len = tl.minimum(tl.maximum(tl.load(SEQ_LENS + b).to(tl.int32), n), capacity)
    prefix = seq_len - n
    num_rows = n * GROUP
    live = pid_m * BLOCK_M < num_rows  # tiles past the request's rows (the grid is sized for Nmax) skip all work

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_rows
    node = rows // GROUP  # tree node of the row
    head = hkv * GROUP + rows % GROUP  # query head of the row
    tok = (q_start + node).to(tl.int64)  # row of q and out
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)

    q_ptrs = Q + tok[:, None] * stride_qt + head.to(tl.int64)[:, None] * stride_qh + offs_d[None, :] * stride_qd
    q = load_tile(q_ptrs, row_ok, d_ok, EVEN_D)  # [BLOCK_M, BLOCK_D]
    table_row = BLOCK_TABLE + b64 * stride_btb
    k_base = K + hkv.to(tl.int64) * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + hkv.to(tl.int64) * stride_vh + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    num_full = tl.where(live, prefix // BLOCK_N, 0)
    t_first = 0
    lo_min = 0
    if WINDOW:
        # Row at logical position prefix + depth sees prefix positions p >= prefix + depth - window + 1,
        # i.e. p - prefix + window - 1 >= depth (so only the depths stay live, not a second row vector).
        depth = tl.load(DEPTH + b * stride_db + node, mask=row_ok, other=0)
        lo_min = window_start(prefix + depth - window + 1, row_ok, prefix)
        t_first = tl.minimum(lo_min // BLOCK_N, num_full)

    # 1. Full prefix tiles (from the first one any row's window reaches); split-K divides them among the
    #    programs of axis 2. No score mask unless a window cuts them.
    per_split = tl.cdiv(num_full - t_first, num_splits)
    t_lo = t_first + pid_s * per_split
    t_hi = tl.minimum(t_lo + per_split, num_full)
    for t in range(t_lo, t_hi):
        pos = t * BLOCK_N + offs_n
        blk, slot = _paged_slots(table_row, pos, pos < prefix, stride_btn, num_blocks, PAGE_SIZE)
        k = load_full_tile(k_base + (blk * stride_kblk + slot * stride_kpg)[:, None], d_ok, EVEN_D)
        v = load_full_tile(v_base + (blk * stride_vblk + slot * stride_vpg)[:, None], d_ok, EVEN_D)
        qk = tile_scores(q, k, qk_scale, cap_scale, SOFTCAP, IEEE, UPCAST)
        if WINDOW:
            qk = tl.where((pos - prefix + window - 1)[None, :] >= depth[:, None], qk, float("-inf"))
        m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, WINDOW, IEEE, UPCAST)

    if pid_s == num_splits - 1:
        # 2. The prefix's ragged tail: fewer than BLOCK_N positions, bounds-masked.
        tail_start = (prefix // BLOCK_N) * BLOCK_N
        if live & (tail_start < prefix) & (lo_min < prefix):  # (a window may exclude the whole tail)
            pos = tail_start + offs_n
            pos_ok = pos < prefix
            blk, slot = _paged_slots(table_row, pos, pos_ok, stride_btn, num_blocks, PAGE_SIZE)
            k = load_tile(k_base + (blk * stride_kblk + slot * stride_kpg)[:, None], pos_ok, d_ok, EVEN_D)
            v = load_tile(v_base + (blk * stride_vblk + slot * stride_vpg)[:, None], pos_ok, d_ok, EVEN_D)
            qk = tile_scores(q, k, qk_scale, cap_scale, SOFTCAP, IEEE, UPCAST)
            visible = pos_ok[None, :]
            if WINDOW:
                visible = visible & ((pos - prefix + window - 1)[None, :] >= depth[:, None])
            qk = tl.where(visible, qk, float("-inf"))
            m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, True, IEEE, UPCAST)

        # 3. The tree block: node j sits at prefix + j; only j <= the tile's last node can be an ancestor.
        #    (A window's limit on ancestors is already in the mask: see windowed_tree_mask.)
        last_node = tl.where(live, tl.minimum(n - 1, (pid_m * BLOCK_M + BLOCK_M - 1) // GROUP), -1)
        mask_rows = MASK + b64 * stride_mb + node.to(tl.int64)[:, None] * stride_mi
        for j0 in range(0, last_node + 1, BLOCK_N):
            j = j0 + offs_n
            j_ok = j <= last_node
            blk, slot = _paged_slots(table_row, prefix + j, j_ok, stride_btn, num_blocks, PAGE_SIZE)
            k = load_tile(k_base + (blk * stride_kblk + slot * stride_kpg)[:, None], j_ok, d_ok, EVEN_D)
            v = load_tile(v_base + (blk * stride_vblk + slot * stride_vpg)[:, None], j_ok, d_ok, EVEN_D)
            qk = tile_scores(q, k, qk_scale, cap_scale, SOFTCAP, IEEE, UPCAST)
            allowed = tree_mask_tile(mask_rows, stride_mw, num_words, row_ok, node, j0, BLOCK_M, BLOCK_N)
            qk = tl.where(allowed, qk, float("-inf"))
            m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, True, IEEE, UPCAST)

    if SINKS_ON and not SPLIT:  # with splits the combine kernel adds the sink, once
        sink = tl.load(SINKS + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        l_i, acc = add_sink(m_i, l_i, acc, sink)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # a row with nothing to attend to outputs zeros
    out = acc / l_safe[:, None]
    if SPLIT:
        # The padded combine kernel's layout for one "sequence" of T nodes: row tok * G + g of KV head hkv.
        mid_row = (hkv * num_splits + pid_s).to(tl.int64) * (T * GROUP) + q_start * GROUP + rows
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(MID_LSE + mid_row, lse, mask=row_ok)
        tl.store(MID_O + mid_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    else:
        o_ptrs = OUT + tok[:, None] * stride_ot + head.to(tl.int64)[:, None] * stride_oh + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------------


def _paged_tree_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens_k: torch.Tensor,
    block_table: torch.Tensor,
    packed: torch.Tensor,
    sm_scale: float,
    out: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_splits: int | None,
    features: AttentionFeatures | None = None,
) -> torch.Tensor:
    """Launch the kernel (and the padded kernel's split combine). max_seqlen_q/k: upper bounds of n_b and
    seq_lens_k (they size the grid and the split heuristic, nothing is read back)."""
    T, Hq, D = q.shape
    num_blocks, page_size, Hkv, _ = k_cache.shape
    B = seq_lens_k.shape[0]
    G = Hq // Hkv
    if B == 0 or T == 0:
        return out
    features = features or AttentionFeatures()
    block_m, block_n, num_warps, num_stages = pick_config(max_seqlen_q * G, D, q.dtype)
    block_d = max(16, triton.next_power_of_2(D))
    m_tiles = triton.cdiv(max_seqlen_q * G, block_m)
    if num_splits is None:  # live programs: every request has a tile, and T * G rows fill at most this many
        live = max(B, triton.cdiv(T * G, block_m)) * Hkv
        num_splits = pick_num_splits(live, max_seqlen_k, block_n, q.device)
    split = num_splits > 1
    if split:
        mid_o = torch.empty(Hkv, num_splits, T * G, D, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(Hkv, num_splits, T * G, dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out  # unused
    stride_mb = packed.stride(0) if packed.dim() == 3 else 0
    depth, stride_db = features.depth_arg(packed)
    qk_scale, cap_scale = features.score_scales(sm_scale)
    _paged_tree_attention_fwd_kernel[(B * Hkv, m_tiles, num_splits)](
        q,
        k_cache,
        v_cache,
        cu_seqlens_q,
        seq_lens_k,
        block_table,
        packed,
        depth,
        features.sinks_arg(packed),
        out,
        mid_o,
        mid_lse,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *block_table.stride(),
        stride_mb,
        packed.stride(-2),
        packed.stride(-1),
        stride_db,
        *out.stride(),
        T,
        packed.shape[-2],
        packed.shape[-1],
        num_blocks,
        block_table.shape[1],
        num_splits,
        features.window or 0,
        qk_scale,
        cap_scale,
        H_KV=Hkv,
        GROUP=G,
        PAGE_SIZE=page_size,
        HEAD_DIM=D,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        SPLIT=split,
        WINDOW=features.window is not None,
        SOFTCAP=features.softcap is not None,
        SINKS_ON=features.sinks is not None,
        IEEE=q.dtype == torch.float32,
        UPCAST=q.dtype == torch.bfloat16 and interpreter_enabled(),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if split:  # all T rows as one sequence of T "nodes" (B = 1): out row t = tok, stride_on = out.stride(0)
        tree_attention_combine_kernel[(Hkv * T * G,)](
            mid_o,
            mid_lse,
            features.sinks_arg(out),
            out,
            0,
            out.stride(1),
            out.stride(0),
            out.stride(2),
            T,
            num_splits,
            H_KV=Hkv,
            GROUP=G,
            HEAD_DIM=D,
            BLOCK_D=block_d,
            BLOCK_S=max(2, triton.next_power_of_2(num_splits)),
            SINKS_ON=features.sinks is not None,
            num_warps=1 if D <= 64 else 2,
        )
    return out


# --------------------------------------------------------------------------------------------------
# Reference (defines the semantics; also the CPU path)
# --------------------------------------------------------------------------------------------------


def gather_pages(cache: torch.Tensor, table_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` positions of one request from a paged cache ``[num_blocks, page_size, H, D]``,
    as a contiguous-layout ``[H, length, D]`` tensor (position p from block ``table_row[p // page_size]``)."""
    page_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    blocks = table_row.to(device=cache.device, dtype=torch.int64)[pos // page_size]
    return cache[blocks, pos % page_size].transpose(0, 1)


def paged_tree_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens_k: torch.Tensor,
    block_table: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch paged tree attention; same arguments and result as :func:`paged_tree_attention`.

    Request by request: gather its ``seq_lens_k[b]`` cache positions through the block table into a
    ``[1, Hkv, S_b, D]`` cache and apply :func:`tree_attention_reference` (the padded semantics) to its
    ``n_b`` nodes and the ``[n_b, n_b]`` corner of its mask. It reads the index values on the host, so it
    always checks them (shapes are the caller's business: :func:`paged_tree_attention` checks them).
    """
    n_max = tree_mask.shape[-2]
    check_features(window, softcap, sinks, q.shape[1], q.device, f"{_NAME}_reference")
    _check_values(q, k_cache, cu_seqlens_q, seq_lens_k, block_table, n_max, None, None)
    dense = dense_tree_mask(tree_mask, n_max)  # [B or 1, Nmax, Nmax], bits above the diagonal cleared
    result = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens_k.tolist()
    for b, s in enumerate(lens):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            continue
        k = gather_pages(k_cache, block_table[b], s).unsqueeze(0)
        v = gather_pages(v_cache, block_table[b], s).unsqueeze(0)
        mask = dense[b if dense.shape[0] > 1 else 0, : hi - lo, : hi - lo]
        kv_len = torch.tensor([s], device=q.device)
        o = tree_attention_reference(
            q[lo:hi].transpose(0, 1).unsqueeze(0),
            k,
            v,
            kv_len,
            mask,
            sm_scale=sm_scale,
            window=window,
            softcap=softcap,
            sinks=sinks,
        )
        result[lo:hi] = o[0].transpose(0, 1)
    if out is None:
        return result
    out.copy_(result)
    return out


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _check_inputs(q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask, sm_scale, out) -> None:
    """Shapes, dtypes and devices (no host sync). Raises TypeError/ValueError naming the argument."""
    tensors = (
        ("q", q),
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("cu_seqlens_q", cu_seqlens_q),
        ("seq_lens_k", seq_lens_k),
        ("block_table", block_table),
        ("tree_mask", tree_mask),
    )
    for name, t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_NAME}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in tensors[1:]:
        if t.device != q.device:
            raise ValueError(f"{_NAME}: {name} is on {t.device} but q is on {q.device}")
    if q.dim() != 3:
        raise ValueError(f"{_NAME}: q must be 3-D [T, Hq, D], got shape {tuple(q.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{_NAME}: q must be float16, bfloat16 or float32, got {q.dtype}")
    T, Hq, D = q.shape
    if D < 1 or D > MAX_HEAD_DIM:
        raise ValueError(f"{_NAME}: head_dim must be in [1, {MAX_HEAD_DIM}], got {D}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"{_NAME}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.dim() != 4 or t.shape[0] < 1 or t.shape[1] < 1 or t.shape[3] != D:
            raise ValueError(
                f"{_NAME}: {name} must be [num_blocks >= 1, page_size >= 1, Hkv, D={D}], got {tuple(t.shape)}"
            )
    if tuple(k_cache.shape) != tuple(v_cache.shape):
        raise ValueError(
            f"{_NAME}: k_cache and v_cache must have the same shape, "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    Hkv = k_cache.shape[2]
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"{_NAME}: q heads ({Hq}) must be a multiple of k_cache/v_cache heads ({Hkv})")
    if seq_lens_k.dtype not in _INDEX_DTYPES or seq_lens_k.dim() != 1:
        raise TypeError(
            f"{_NAME}: seq_lens_k must be an int32/int64 tensor of shape [B], got "
            f"{seq_lens_k.dtype} {tuple(seq_lens_k.shape)}"
        )
    B = seq_lens_k.shape[0]
    if cu_seqlens_q.dtype not in _INDEX_DTYPES or tuple(cu_seqlens_q.shape) != (B + 1,):
        raise TypeError(
            f"{_NAME}: cu_seqlens_q must be an int32/int64 tensor of shape [B + 1 = {B + 1}], got "
            f"{cu_seqlens_q.dtype} {tuple(cu_seqlens_q.shape)}"
        )
    if (
        block_table.dtype not in _INDEX_DTYPES
        or block_table.dim() != 2
        or block_table.shape[0] != B
        or block_table.shape[1] < 1
    ):
        raise TypeError(
            f"{_NAME}: block_table must be an int32/int64 tensor of shape [B={B}, max_blocks >= 1], "
            f"got {block_table.dtype} {tuple(block_table.shape)}"
        )
    if tree_mask.dim() not in (2, 3) or not 1 <= tree_mask.shape[-2] <= MAX_TREE_NODES:
        raise ValueError(
            f"{_NAME}: tree_mask must be [B, Nmax, Nmax] bool or [B, Nmax, ceil(Nmax/32)] int32 "
            f"with 1 <= Nmax <= {MAX_TREE_NODES}, got {tuple(tree_mask.shape)}"
        )
    trees.validate_tree_mask(tree_mask, tree_mask.shape[-2], B, name=f"{_NAME}: tree_mask")
    check_sm_scale(sm_scale)
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{_NAME}: out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"{_NAME}: out must be {tuple(q.shape)} {q.dtype} on {q.device}, "
                f"got {tuple(out.shape)} {out.dtype} on {out.device}"
            )


def _check_hint(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{_NAME}: {name} must be a positive int or None, got {value!r}")


def _check_values(q, k_cache, cu_seqlens_q, seq_lens_k, block_table, n_max, max_seqlen_q, max_seqlen_k):
    """Index values, in one host read: ``cu_seqlens_q`` runs from 0 to T without decreasing, every
    ``n_b <= Nmax`` and ``n_b <= seq_lens_k[b] <= max_blocks * page_size``, the block ids of every used
    page lie in ``[0, num_blocks)``, and the hints bound what they claim to. Returns (max n_b, max seq_lens_k)."""
    T = q.shape[0]
    num_blocks, page_size = k_cache.shape[:2]
    B, max_blocks = block_table.shape
    cu = cu_seqlens_q.to(torch.int64)
    if B == 0:
        if int(cu[0]) != 0 or T != 0:
            raise ValueError(f"{_NAME}: cu_seqlens_q must run from 0 to T={T} (q's rows), got {cu.tolist()}")
        return 0, 0
    lens = seq_lens_k.to(torch.int64)
    n = cu[1:] - cu[:-1]
    used = torch.arange(max_blocks, device=cu.device) < ((lens + page_size - 1) // page_size)[:, None]
    bad_block = ((block_table < 0) | (block_table >= num_blocks)) & used
    first, last, n_lo, n_hi, room, len_hi, any_bad = torch.stack(
        [cu[0], cu[-1], n.min(), n.max(), (lens - n).min(), lens.max(), bad_block.any().to(torch.int64)]
    ).tolist()
    if first != 0 or last != T:
        raise ValueError(f"{_NAME}: cu_seqlens_q must run from 0 to T={T} (q's rows), got {first} .. {last}")
    if n_lo < 0:
        raise ValueError(f"{_NAME}: cu_seqlens_q must be non-decreasing")
    if n_hi > n_max:
        raise ValueError(
            f"{_NAME}: every request's node count n_b = cu_seqlens_q[b+1] - cu_seqlens_q[b] must be "
            f"<= Nmax={n_max} (tree_mask's dim 1), got {n_hi}"
        )
    if room < 0:
        raise ValueError(f"{_NAME}: seq_lens_k[b] must be >= n_b (the tree's K/V are its last n_b entries)")
    if len_hi > max_blocks * page_size:
        raise ValueError(
            f"{_NAME}: seq_lens_k[b] must be <= max_blocks * page_size = {max_blocks * page_size}, got {len_hi}"
        )
    if any_bad:
        raise ValueError(f"{_NAME}: block_table entries of used pages must be block ids in [0, {num_blocks})")
    if max_seqlen_q is not None and max_seqlen_q < n_hi:
        raise ValueError(f"{_NAME}: max_seqlen_q={max_seqlen_q} must be >= the largest n_b ({n_hi})")
    if max_seqlen_k is not None and max_seqlen_k < len_hi:
        raise ValueError(f"{_NAME}: max_seqlen_k={max_seqlen_k} must be >= the largest seq_lens_k ({len_hi})")
    return n_hi, len_hi


# --------------------------------------------------------------------------------------------------
# Public function and torch ops
# --------------------------------------------------------------------------------------------------


def _paged_tree_attention_impl(
    q,
    k_cache,
    v_cache,
    cu_seqlens_q,
    seq_lens_k,
    block_table,
    tree_mask,
    sm_scale,
    out,
    backend,
    check,
    max_seqlen_q,
    max_seqlen_k,
    num_splits,
    window=None,
    softcap=None,
    sinks=None,
) -> torch.Tensor:
    _check_inputs(q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask, sm_scale, out)
    check_features(window, softcap, sinks, q.shape[1], q.device, _NAME)
    impl = resolve_backend(backend, q.device, _NAME)
    _check_hint("max_seqlen_q", max_seqlen_q)
    _check_hint("max_seqlen_k", max_seqlen_k)
    _check_hint("num_splits", num_splits)
    if check is not None and not isinstance(check, bool):
        raise TypeError(f"{_NAME}: check must be True, False or None, got {check!r}")
    n_max = tree_mask.shape[-2]
    if check or (check is None and q.device.type == "cpu"):
        n_hi, len_hi = _check_values(
            q, k_cache, cu_seqlens_q, seq_lens_k, block_table, n_max, max_seqlen_q, max_seqlen_k
        )
        max_seqlen_q = max(n_hi, 1) if max_seqlen_q is None else max_seqlen_q
        max_seqlen_k = max(len_hi, 1) if max_seqlen_k is None else max_seqlen_k
    scale = 1.0 / math.sqrt(q.shape[2]) if sm_scale is None else float(sm_scale)
    if impl == "reference":
        return paged_tree_attention_reference(
            q,
            k_cache,
            v_cache,
            cu_seqlens_q,
            seq_lens_k,
            block_table,
            tree_mask,
            sm_scale=scale,
            out=out,
            window=window,
            softcap=softcap,
            sinks=sinks,
        )
    depth = None
    if window is not None:  # the window's ancestor limit folded into the mask, depths for the prefix
        packed, depth = windowed_tree_mask(tree_mask, n_max, window)
    else:
        packed = tree_mask if tree_mask.dtype == torch.int32 else trees.pack_mask(tree_mask)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    capacity = block_table.shape[1] * k_cache.shape[1]
    max_q = n_max if max_seqlen_q is None else min(max_seqlen_q, n_max)
    max_k = capacity if max_seqlen_k is None else min(max_seqlen_k, capacity)
    features = AttentionFeatures(window, softcap, sinks, depth)
    return _paged_tree_attention_triton(
        q,
        k_cache,
        v_cache,
        cu_seqlens_q,
        seq_lens_k,
        block_table,
        packed,
        scale,
        out,
        max_q,
        max_k,
        num_splits,
        features,
    )


def paged_tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens_k: torch.Tensor,
    block_table: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    backend: str | None = None,
    check: bool | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    num_splits: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tree attention of a ragged batch of token trees against a paged KV cache.

    Parameters
    ----------
    q : Tensor
        Queries, fp16/bf16/fp32, any strides. Request b's ``n_b`` tree nodes, in topological order (node 0
        its root), are rows ``cu_seqlens_q[b] : cu_seqlens_q[b + 1]``. Shape: ``[T, Hq, D]``.
    k_cache, v_cache : Tensor
        Paged cache, q's dtype, any strides (e.g. ``kv_cache[0]`` of a ``[2, num_blocks, ...]`` buffer).
        ``Hq % Hkv == 0``. Shape: ``[num_blocks, page_size, Hkv, D]``.
    cu_seqlens_q : Tensor
        int32/int64, ``0 = cu[0] <= cu[1] <= ... <= cu[B] = T``. Shape: ``[B + 1]``.
    seq_lens_k : Tensor
        int32/int64, valid cache positions of request b, its n_b tree nodes included (their K/V written at
        the last n_b positions): ``n_b <= seq_lens_k[b] <= max_blocks * page_size``. Shape: ``[B]``.
    block_table : Tensor
        int32/int64: position p of request b is slot ``p % page_size`` of block
        ``block_table[b, p // page_size]``; entries of pages past ``seq_lens_k[b]`` are never read.
        Shape: ``[B, max_blocks]``.
    tree_mask : Tensor
        bool: ``[b, i, j]`` True where node i of request b sees node j (only ``i, j < n_b`` are read; bits
        above the diagonal are ignored), or the same packed to int32 words (:func:`trees.pack_mask`). The
        prefix before the tree is always visible. A 2-D mask is shared by all requests.
        Shape: ``[B, Nmax, Nmax]`` (bool) or ``[B, Nmax, ceil(Nmax / 32)]`` (int32); ``n_b <= Nmax``.
    sm_scale : float, optional
        Softmax scale, finite and > 0; default ``1 / sqrt(D)``.
    out : Tensor, optional
        Written in place (any strides) and returned. Shape: ``[T, Hq, D]``.
    backend : {None, "auto", "triton", "reference"}
        None/"auto": Triton on CUDA tensors, the reference on CPU; "triton" on CPU runs the interpreter.
    check : bool, optional
        Check the index *values* (the rules above, used block ids in ``[0, num_blocks)``) at the cost of
        one host read. Default None: on CPU tensors (free there), not on CUDA (no host sync). Unchecked bad
        values give wrong results but the kernel clamps them and never reads or writes outside the given
        tensors. The reference backend always checks. Shapes, dtypes and devices are always checked.
    max_seqlen_q, max_seqlen_k : int, optional
        Upper bounds of ``n_b`` and ``seq_lens_k`` (grid size and split-K heuristic) so nothing is read
        back; default ``Nmax`` and ``max_blocks * page_size``. A max_seqlen_q below a real n_b leaves that
        request's last rows unwritten (with check they raise instead).
    num_splits : int, optional
        Force the number of KV splits of the Triton kernel (tuning and tests).
    window, softcap, sinks : optional
        Sliding window, logit soft-capping and attention sinks exactly as in
        :func:`specdec_kernels.tree_attention` (node i of request b at position ``prefix_b + depth_i``).

    Returns
    -------
    Tensor
        q's dtype (``out`` when given). Rows of a node that can attend to nothing are zeros.
        Shape: ``[T, Hq, D]``.

    Raises
    ------
    TypeError, ValueError
        On bad input, naming the argument, before any kernel launches.

    Also registered as ``torch.ops.specdec.paged_tree_attention`` (functional) and
    ``torch.ops.specdec.paged_tree_attention_out`` (writes ``out``); under ``torch.compile`` this
    function calls them, so the kernel is one opaque node of the graph.
    """
    args = (q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask)
    if torch.compiler.is_compiling():
        opts = dict(
            sm_scale=sm_scale,
            backend=backend,
            check=check,
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            num_splits=num_splits,
            window=window,
            softcap=softcap,
            sinks=sinks,
        )
        if out is None:
            return torch.ops.specdec.paged_tree_attention(*args, **opts)
        torch.ops.specdec.paged_tree_attention_out(*args, out, **opts)
        return out
    return _paged_tree_attention_impl(
        *args, sm_scale, out, backend, check, max_seqlen_q, max_seqlen_k, num_splits, window, softcap, sinks
    )


# torch.ops.specdec.paged_tree_attention / paged_tree_attention_out: the public function's arguments, the
# options after the tensors (as the public function passes them). Registered as every Python-defined op is
# (specdec_kernels._ops.define_op: plain dispatcher registration, no custom_op wrapper).
_PAGED_TENSORS = (
    "Tensor q, Tensor k_cache, Tensor v_cache, Tensor cu_seqlens_q, Tensor seq_lens_k, Tensor block_table, "
    "Tensor tree_mask"
)
_PAGED_OPTIONS = (
    "float? sm_scale=None, str? backend=None, bool? check=None, int? max_seqlen_q=None, int? max_seqlen_k=None, "
    "int? num_splits=None, int? window=None, float? softcap=None, Tensor? sinks=None"
)
# _paged_tree_attention_impl's arguments after (tensors, sm_scale, out), in its order
_PAGED_OPTION_NAMES = ("backend", "check", "max_seqlen_q", "max_seqlen_k", "num_splits", "window", "softcap", "sinks")


def _paged_op(
    q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask, out=None, *, sm_scale=None, **features
):
    """Both ops' kernel: the public function's implementation, into ``out`` when given (then returns None)."""
    args = (q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask, sm_scale, out)
    res = _paged_tree_attention_impl(*args, *(features.get(n) for n in _PAGED_OPTION_NAMES))
    return None if out is not None else res


def _paged_op_fake(
    q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask, out=None, *, sm_scale=None, **features
):
    _check_inputs(q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_table, tree_mask, sm_scale, out)
    check_features(features.get("window"), features.get("softcap"), features.get("sinks"), q.shape[1], q.device, _NAME)
    return None if out is not None else q.new_empty(q.shape)


_ops.define_op(f"paged_tree_attention({_PAGED_TENSORS}, *, {_PAGED_OPTIONS}) -> Tensor", _paged_op, _paged_op_fake)
_ops.define_op(
    f"paged_tree_attention_out({_PAGED_TENSORS}, Tensor(a!) out, *, {_PAGED_OPTIONS}) -> ()", _paged_op, _paged_op_fake
)


__all__ = ["paged_tree_attention", "paged_tree_attention_reference", "gather_pages"]
