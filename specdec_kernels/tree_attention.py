"""Tree attention: N speculated tokens, arranged as a token tree, attend to a KV cache and their ancestors.

Terms (docs/design.md, "Trees"). Sequence b holds ``kv_lens[b]`` valid cache entries; the last N of them are
the tree's own keys/values (node j at cache position ``prefix_b + j``, ``prefix_b = kv_lens[b] - N``).
Node i attends to every prefix entry and to tree node j iff ``tree_mask[i, j]`` (j is i or an ancestor
of i). Nodes are in topological order, so an ancestor always precedes its descendant: bits above the
diagonal (j > i) are ignored by every implementation. A row that may attend to nothing at all (prefix 0
and an all-False mask row) outputs zeros. SpecInfer (Miao et al., 2023) and Medusa (Cai et al., 2024)
introduced this "tree attention"; the kernel is FlashAttention-2 (Dao, 2023) with flash-decoding split-K.

Kernel layout. One program handles one (batch, KV head) pair, a tile of BLOCK_M query rows and one
split of the prefix. The G = Hq / Hkv query heads that share a KV head are stacked with the N nodes as
the M dimension (row r = node * G + g), so each K/V tile is read once for the whole group. The prefix is
attended without any mask in full BLOCK_N tiles (divided among the splits); the prefix's ragged tail and
the N x N tree block are handled by the last split, the tree block masked from the bit-packed mask (one
int32 word per 32 nodes, loaded once per tile). With several splits every split writes its normalised
partial output and log-sum-exp, and a small combine kernel merges them.

Score modifications (constexpr-specialised, free when off): a sliding ``window`` (node i at position
``prefix + depth_i`` sees prefix entries ``s > prefix + depth_i - window``; the prefix loop starts at the
first tile any row of the program can see, and the limit on ancestors is folded into the packed mask on
the host), ``softcap`` (``softcap * tanh(score / softcap)`` after scaling) and per-head ``sinks`` (one
more logit in the softmax denominator; with splits the combine kernel adds it once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from specdec_kernels import (
    _ops,  # noqa: F401  (loads specdec_kernels._C: the `specdec` op library, before ours)
    trees,
)
from specdec_kernels._backend import interpreter_enabled, resolve_backend

MAX_TREE_NODES = 1024  # N limit of the kernel (grid and mask sizes are not the bound; testing is)
MAX_HEAD_DIM = 256  # head_dim limit (one K/V tile of [BLOCK_N, head_dim] in registers)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # fp32 accumulation. IEEE: fp32 inputs without TF32 rounding. UPCAST: the Triton interpreter multiplies
    # bf16 bit patterns in tl.dot (triton-lang/triton#11584), so there the bf16 operands are widened first,
    # which is exact and computes what the bf16 tensor-core dot computes.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _tanh(x):
    # tanh from exp2 (libdevice.tanh has no interpreter implementation). (1 - e) / (1 + e) with
    # e = exp(-2|x|) never overflows; near 0 it loses absolute accuracy to cancellation, so small |x|
    # takes the odd Taylor series (next term 62/2835 x^9 < 2e-10 at |x| = 0.125).
    a = tl.abs(x)
    e = tl.math.exp2(a * -2.8853900817779268)  # exp(-2|x|) = exp2(-2 log2(e) |x|)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    return tl.where(a < 0.125, small, tl.where(x < 0, -t, t))


@triton.jit
def tile_scores(q, k, qk_scale, cap_scale, SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # [BLOCK_M, BLOCK_N] scores in log2 units. Without SOFTCAP qk_scale = sm_scale * log2(e); with it
    # (Gemma 2's order: scale, then cap) qk_scale = sm_scale / softcap and cap_scale = softcap * log2(e).
    s = _dot(q, tl.trans(k), IEEE, UPCAST)
    if SOFTCAP:
        return _tanh(s * qk_scale) * cap_scale
    return s * qk_scale


@triton.jit
def window_start(lo, row_ok, prefix):
    # First prefix entry any row of the program can see (lo: [BLOCK_M] first visible entry of each row),
    # in [0, prefix]: the prefix loops start there, so entries before every row's window are never loaded.
    return tl.maximum(tl.min(tl.where(row_ok, lo, prefix), 0), 0)


@triton.jit
def add_sink(m_i, l_i, acc, sink):
    # Fold the per-row sink logit (log2 units) into the softmax denominator only: l += exp2(sink - m),
    # rescaled to the new running maximum. A row with nothing visible then outputs acc / l = 0.
    m_f = tl.maximum(m_i, sink)
    m_sub = tl.where(m_f == float("-inf"), 0.0, m_f)
    alpha = tl.math.exp2(m_i - m_sub)
    return l_i * alpha + tl.math.exp2(sink - m_sub), acc * alpha[:, None]


@triton.jit
def online_softmax_step(qk, v, m_i, l_i, acc, MAY_BE_EMPTY: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # qk: [BLOCK_M, BLOCK_N] scores in log2 units (-inf where masked); v: [BLOCK_N, BLOCK_D]
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    if MAY_BE_EMPTY:  # a row with nothing allowed so far keeps m = -inf; subtract 0 instead (exp2(-inf) = 0)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_sub = m_new
    p = tl.math.exp2(qk - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE, UPCAST)
    return m_new, l_i, acc


@triton.jit
def load_tile(ptrs, row_ok, d_ok, EVEN_D: tl.constexpr):
    # ptrs: [BLOCK_N, BLOCK_D] pointers of a K or V tile; row_ok: [BLOCK_N] positions that exist
    if EVEN_D:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    return tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def load_full_tile(ptrs, d_ok, EVEN_D: tl.constexpr):
    # A K or V tile whose positions all exist: no mask unless head_dim was padded to a power of two
    if EVEN_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=d_ok[None, :], other=0.0)


@triton.jit
def tree_mask_tile(mask_rows, stride_mw, num_words, row_ok, node, j0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # [BLOCK_M, BLOCK_N] bool: may the row's tree node attend to tree node j = j0 + column? mask_rows:
    # [BLOCK_M, 1] pointers to each row's packed mask words; j0 a multiple of 32. One int32 word per 32
    # nodes, loaded once per (row, word) and expanded to the tile's columns.
    WORDS: tl.constexpr = BLOCK_N // 32
    offs_n = tl.arange(0, BLOCK_N)
    w_idx = j0 // 32 + tl.arange(0, WORDS)
    words = tl.load(
        mask_rows + w_idx[None, :] * stride_mw, mask=row_ok[:, None] & (w_idx < num_words)[None, :], other=0
    )  # [BLOCK_M, WORDS]
    words = tl.reshape(tl.broadcast_to(words[:, :, None], (BLOCK_M, WORDS, 32)), (BLOCK_M, BLOCK_N))
    allowed = ((words >> (offs_n % 32)[None, :]) & 1) != 0
    return allowed & ((j0 + offs_n)[None, :] <= node[:, None])  # topological order: ancestors precede


@triton.jit(do_not_specialize=["N", "S", "num_splits", "window"])
def _tree_attention_fwd_kernel(
    Q,  # [B, Hq, N, D] any strides
    K,  # [B, Hkv, S, D] any strides
    V,  # [B, Hkv, S, D] any strides
    KV_LENS,  # [B] int32/int64, valid entries per sequence, tree included
    MASK,  # [B or 1, N, W] int32 packed ancestor mask (window applied), W = ceil(N / 32); stride_mb 0: shared
    DEPTH,  # [B or 1, N] int32 tree depth of each node (read when WINDOW); stride_db = 0 when shared
    SINKS,  # [Hq] any float dtype, sink logit per query head (read when SINKS_ON and not SPLIT)
    OUT,  # [B, Hq, N, D] any strides (written when SPLIT is False)
    MID_O,  # [B * Hkv, num_splits, G * N, D] fp32 contiguous (written when SPLIT is True)
    MID_LSE,  # [B * Hkv, num_splits, G * N] fp32 contiguous, log2-sum-exp2 of the split
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_vd,
    stride_mb,
    stride_mi,
    stride_mw,
    stride_db,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    N,
    S,
    num_words,
    num_splits,
    window,  # sliding window (read when WINDOW)
    qk_scale,  # sm_scale * log2(e); with SOFTCAP sm_scale / softcap
    cap_scale,  # softcap * log2(e) (read when SOFTCAP)
    H_KV: tl.constexpr,
    GROUP: tl.constexpr,
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
    pid_m = tl.program_id(0)  # tile of G * N query rows
    pid_bh = tl.program_id(1)  # b * H_KV + kv head
    pid_s = tl.program_id(2)  # split of the prefix
    b = pid_bh // H_KV
    hkv = pid_bh % H_KV
    b64 = b.to(tl.int64)

    kv_len = tl.load(KV_LENS + b).to(tl.int32)
    kv_len = tl.minimum(tl.maximum(kv_len, N), S)  # memory safety only: the host checks N <= kv_len <= S
    prefix = kv_len - N

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    num_rows = N * GROUP
    row_ok = rows < num_rows
    node = rows // GROUP  # tree node of the row
    head = hkv * GROUP + rows % GROUP  # query head of the row
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)

    q_ptrs = (
        Q
        + b64 * stride_qb
        + head.to(tl.int64)[:, None] * stride_qh
        + node.to(tl.int64)[:, None] * stride_qn
        + offs_d[None, :] * stride_qd
    )
    q = load_tile(q_ptrs, row_ok, d_ok, EVEN_D)  # [BLOCK_M, BLOCK_D]
    k_base = K + b64 * stride_kb + hkv.to(tl.int64) * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b64 * stride_vb + hkv.to(tl.int64) * stride_vh + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    num_full = prefix // BLOCK_N
    t_first = 0
    lo_min = 0
    if WINDOW:
        # Row at logical position prefix + depth sees prefix entries s >= prefix + depth - window + 1,
        # i.e. s - prefix + window - 1 >= depth (so only the depths stay live, not a second row vector).
        depth = tl.load(DEPTH + b64 * stride_db + node, mask=row_ok, other=0)
        lo_min = window_start(prefix + depth - window + 1, row_ok, prefix)
        t_first = tl.minimum(lo_min // BLOCK_N, num_full)

    # 1. Full prefix tiles (from the first one any row's window reaches); split-K divides them among the
    #    programs of axis 2. No mask unless a window cuts them.
    per_split = tl.cdiv(num_full - t_first, num_splits)
    t_lo = t_first + pid_s * per_split
    t_hi = tl.minimum(t_lo + per_split, num_full)
    for t in range(t_lo, t_hi):
        cols = (t * BLOCK_N + offs_n).to(tl.int64)
        k = load_full_tile(k_base + cols[:, None] * stride_ks, d_ok, EVEN_D)
        v = load_full_tile(v_base + cols[:, None] * stride_vs, d_ok, EVEN_D)
        qk = tile_scores(q, k, qk_scale, cap_scale, SOFTCAP, IEEE, UPCAST)
        if WINDOW:
            qk = tl.where((t * BLOCK_N + offs_n - prefix + window - 1)[None, :] >= depth[:, None], qk, float("-inf"))
        m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, WINDOW, IEEE, UPCAST)

    if pid_s == num_splits - 1:
        # 2. The prefix's ragged tail: fewer than BLOCK_N entries, bounds-masked.
        tail_start = num_full * BLOCK_N
        if (tail_start < prefix) & (lo_min < prefix):  # (a window may exclude the whole tail)
            cols = tail_start + offs_n
            col_ok = cols < prefix
            k = load_tile(k_base + cols.to(tl.int64)[:, None] * stride_ks, col_ok, d_ok, EVEN_D)
            v = load_tile(v_base + cols.to(tl.int64)[:, None] * stride_vs, col_ok, d_ok, EVEN_D)
            qk = tile_scores(q, k, qk_scale, cap_scale, SOFTCAP, IEEE, UPCAST)
            visible = col_ok[None, :]
            if WINDOW:
                visible = visible & ((cols - prefix + window - 1)[None, :] >= depth[:, None])
            qk = tl.where(visible, qk, float("-inf"))
            m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, True, IEEE, UPCAST)

        # 3. The tree block: node j sits at prefix + j; only j <= the tile's last node can be an ancestor.
        #    (A window's limit on ancestors is already in the mask: see windowed_tree_mask.)
        last_node = tl.minimum(N - 1, (pid_m * BLOCK_M + BLOCK_M - 1) // GROUP)
        mask_rows = MASK + b64 * stride_mb + node.to(tl.int64)[:, None] * stride_mi
        for j0 in range(0, last_node + 1, BLOCK_N):
            j = j0 + offs_n
            j_ok = j <= last_node
            cols = (prefix + j).to(tl.int64)
            k = load_tile(k_base + cols[:, None] * stride_ks, j_ok, d_ok, EVEN_D)
            v = load_tile(v_base + cols[:, None] * stride_vs, j_ok, d_ok, EVEN_D)
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
        mid_row = (pid_bh * num_splits + pid_s).to(tl.int64) * num_rows + rows
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(MID_LSE + mid_row, lse, mask=row_ok)
        o_ptrs = MID_O + mid_row[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(o_ptrs, out, mask=row_ok[:, None] & d_ok[None, :])
    else:
        o_ptrs = (
            OUT
            + b64 * stride_ob
            + head.to(tl.int64)[:, None] * stride_oh
            + node.to(tl.int64)[:, None] * stride_on
            + offs_d[None, :] * stride_od
        )
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["N", "num_splits"])
def tree_attention_combine_kernel(
    MID_O,  # [B * Hkv, num_splits, G * N, D] fp32 contiguous
    MID_LSE,  # [B * Hkv, num_splits, G * N] fp32 contiguous
    SINKS,  # [Hq] any float dtype (read when SINKS_ON)
    OUT,  # [B, Hq, N, D] any strides
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    N,
    num_splits,
    H_KV: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SINKS_ON: tl.constexpr,
):
    pid = tl.program_id(0)  # one query row of one (batch, kv head)
    num_rows = N * GROUP
    row = pid % num_rows
    pid_bh = pid // num_rows
    b = pid_bh // H_KV
    head = (pid_bh % H_KV) * GROUP + row % GROUP
    node = row // GROUP

    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    mid_row = (pid_bh * num_splits + offs_s).to(tl.int64) * num_rows + row  # [BLOCK_S]
    lse = tl.load(MID_LSE + mid_row, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    if SINKS_ON:  # the sink joins the denominator once, here (log2 units like lse)
        sink = tl.load(SINKS + head).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m, sink)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m)  # 0 for empty splits
    o = tl.load(MID_O + mid_row[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    den = tl.sum(w, 0)
    if SINKS_ON:
        den += tl.math.exp2(sink - m)
    den = tl.where(den == 0.0, 1.0, den)
    out = tl.sum(w[:, None] * o, 0) / den
    o_ptrs = (
        OUT
        + b.to(tl.int64) * stride_ob
        + head.to(tl.int64) * stride_oh
        + node.to(tl.int64) * stride_on
        + offs_d * stride_od
    )
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=d_ok)


# --------------------------------------------------------------------------------------------------
# Sliding windows, logit soft-capping, attention sinks
# --------------------------------------------------------------------------------------------------


def tree_depths(tree_mask: torch.Tensor, n: int) -> torch.Tensor:
    """int32 ``[B or 1, N]``: depth of every node, ``(number of j <= i with tree_mask[i, j]) - 1`` (the root
    0; a chain's node i: i). Node i's logical position is ``prefix_b + depth_i``, which the window uses."""
    return (dense_tree_mask(tree_mask, n).sum(-1) - 1).to(torch.int32)


def check_features(window, softcap, sinks, q_heads: int, device: torch.device, what: str) -> None:
    """TypeError/ValueError naming ``window``, ``softcap`` or ``sinks`` (shapes and types only: no sync)."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"{what}: window must be an int or None, got {type(window).__name__}")
        if window < 1:
            raise ValueError(f"{what}: window must be >= 1 (transformers' sliding_window) or None, got {window}")
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            raise TypeError(f"{what}: softcap must be a float or None, got {type(softcap).__name__}")
        if not (math.isfinite(softcap) and softcap > 0):
            raise ValueError(f"{what}: softcap must be a finite float > 0 or None, got {softcap!r}")
    if sinks is not None:
        if not isinstance(sinks, torch.Tensor):
            raise TypeError(f"{what}: sinks must be a torch.Tensor or None, got {type(sinks).__name__}")
        if not sinks.is_floating_point():
            raise TypeError(f"{what}: sinks must be a floating-point tensor, got {sinks.dtype}")
        if tuple(sinks.shape) != (q_heads,):
            raise ValueError(f"{what}: sinks must have shape [Hq={q_heads}], got {tuple(sinks.shape)}")
        if sinks.device != device:
            raise ValueError(f"{what}: sinks is on {sinks.device} but q is on {device}")


class AttentionFeatures:
    """The optional score modifications of one call, and how the kernels receive them.

    ``window``: node i (position ``prefix + depth_i``) sees prefix entries ``s > prefix + depth_i - window``
    and ancestors j with ``depth_i - depth_j < window``. ``softcap``: scores ``softcap * tanh(score /
    softcap)`` after the scaling, before the mask. ``sinks [Hq]``: a logit per query head that joins the
    softmax denominator only.
    """

    def __init__(self, window=None, softcap=None, sinks=None, depth=None):
        self.window = window
        self.softcap = None if softcap is None else float(softcap)
        self.sinks = sinks
        self.depth = depth  # [B or 1, N] int32 tree depths when window is set (windowed_tree_mask)

    def depth_arg(self, dummy: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(DEPTH pointer, its batch stride): the depths, or any tensor the kernel never reads."""
        if self.window is None:
            return dummy, 0
        return self.depth, self.depth.stride(0) if self.depth.shape[0] > 1 else 0

    def sinks_arg(self, dummy: torch.Tensor) -> torch.Tensor:
        return dummy if self.sinks is None else self.sinks

    def score_scales(self, sm_scale: float) -> tuple[float, float]:
        """(qk_scale, cap_scale) of the kernels' ``tile_scores``: scores in log2 units either way."""
        if self.softcap is None:
            return sm_scale * _LOG2E, 1.0
        return sm_scale / self.softcap, self.softcap * _LOG2E


def windowed_tree_mask(tree_mask: torch.Tensor, n: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int32 mask with the window's ancestor limit ``depth_i - depth_j < window`` applied, depths).

    The limit depends on the tree alone (not on the prefix), so the kernels get it folded into the mask
    once per call and only the prefix part of the window costs them anything (one depth per row).
    """
    dense = dense_tree_mask(tree_mask, n)
    depth = dense.sum(-1) - 1  # [B or 1, N]
    dense = dense & (depth.unsqueeze(-1) - depth.unsqueeze(-2) < window)
    packed = trees.pack_mask(dense if tree_mask.dim() == 3 else dense[0])  # a shared tree stays shared
    return packed, depth.to(torch.int32)


def memo_windowed_tree_mask(tree_mask, n: int, window: int, mask_memo: dict | None):
    """windowed_tree_mask, built once per model forward and window when the caller passes its
    ``mask_memo`` dict (the layers of one forward share the tree; sliding and full layers alternate)."""
    key = ("window", n, window)
    got = mask_memo.get(key) if mask_memo is not None else None
    if got is None:
        got = windowed_tree_mask(tree_mask, n, window)
        if mask_memo is not None:
            mask_memo[key] = got
    return got


# --------------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------------

_MIN_TILES_PER_SPLIT = 4  # a split reads at least this many full KV tiles, or splitting is not worth it
_MAX_SPLITS = 64


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: any small number exercises the same code


def pick_config(num_rows: int, head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for G*N query rows and this head_dim.

    Registers per thread compiled for sm_80 / sm_90 at head_dim 128, fp16/bf16, 4 warps unless said
    (bench/results/gpu_static.md; tests/test_gpu_static.py fails on any spill at these tiles):
    - <= 16 rows: BLOCK_M 16, the smallest MMA tile: ~160 registers, no spill, 3 programs per SM.
    - 17-127 rows: BLOCK_M 32: ~210 registers, no spill, 2 programs per SM. BLOCK_M 64 spills on
      sm_80 (255 registers + 208 bytes at 64 rows: each warp holds 16 rows x 128 fp32 accumulators,
      the scores and its Q fragments), and with 8 warps it fits only one program per SM. The M tiles of
      one head are adjacent on grid axis 0, so they read the same K/V tiles at about the same time
      (the second read from L2).
    - >= 128 rows: BLOCK_M 128, 8 warps (wgmma on sm_90): 174 / 254 registers (sm_90 / sm_80), no
      spill, one program per SM. The tile does not allow two: its 128 x 128 fp32 accumulator alone is
      64 registers per thread over 256 threads, and two programs would need <= 128. These sizes are
      compute-bound (4*N FLOP per K/V byte), where one large tile per SM is the efficient shape.
    """
    block_m = 16 if num_rows <= 16 else 32 if num_rows <= 32 else 64
    if head_dim <= 128 and dtype != torch.float32:  # 16-bit tiles; fp32 and head_dim > 128 as before
        block_m = 16 if num_rows <= 16 else 32 if num_rows < 128 else 128
    # fp32 tiles and head_dim > 128 take twice the shared memory: narrower K/V tiles (fits sm_80's 163 KB)
    wide = dtype == torch.float32 and head_dim > 64 or head_dim > 128
    block_n = 32 if wide else 64
    num_warps = 8 if block_m == 128 else 4
    return block_m, block_n, num_warps, 2


def pick_num_splits(base_programs: int, max_prefix: int, block_n: int, device: torch.device) -> int:
    """Flash-decoding split-K: enough programs to fill the GPU, each with a worthwhile share of tiles."""
    full_tiles = max_prefix // block_n
    target = 2 * _num_sms(device)
    if base_programs >= target or full_tiles < 2 * _MIN_TILES_PER_SPLIT:
        return 1
    return max(1, min(triton.cdiv(target, base_programs), full_tiles // _MIN_TILES_PER_SPLIT, _MAX_SPLITS))


def _tree_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_lens: torch.Tensor,
    packed: torch.Tensor,
    sm_scale: float,
    out: torch.Tensor,
    max_kv_len: int,
    num_splits: int | None,
    features: AttentionFeatures | None = None,
) -> torch.Tensor:
    features = features or AttentionFeatures()
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    num_rows = G * N
    block_m, block_n, num_warps, num_stages = pick_config(num_rows, D, q.dtype)
    block_d = max(16, triton.next_power_of_2(D))
    m_tiles = triton.cdiv(num_rows, block_m)
    if num_splits is None:
        num_splits = pick_num_splits(m_tiles * B * Hkv, max(max_kv_len - N, 0), block_n, q.device)
    split = num_splits > 1
    if split:
        mid_o = torch.empty(B * Hkv, num_splits, num_rows, D, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(B * Hkv, num_splits, num_rows, dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out  # unused
    stride_mb = packed.stride(0) if packed.dim() == 3 else 0
    depth, stride_db = features.depth_arg(packed)
    qk_scale, cap_scale = features.score_scales(sm_scale)
    grid = (m_tiles, B * Hkv, num_splits)
    _tree_attention_fwd_kernel[grid](
        q,
        k,
        v,
        kv_lens,
        packed,
        depth,
        features.sinks_arg(packed),
        out,
        mid_o,
        mid_lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        stride_mb,
        packed.stride(-2),
        packed.stride(-1),
        stride_db,
        *out.stride(),
        N,
        k.shape[2],
        packed.shape[-1],
        num_splits,
        features.window or 0,
        qk_scale,
        cap_scale,
        H_KV=Hkv,
        GROUP=G,
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
    if split:
        tree_attention_combine_kernel[(B * Hkv * num_rows,)](
            mid_o,
            mid_lse,
            features.sinks_arg(out),
            out,
            *out.stride(),
            N,
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


def dense_tree_mask(tree_mask: torch.Tensor, n: int) -> torch.Tensor:
    """Bool ``[B or 1, N, N]`` from a bool or packed int32 mask, bits above the diagonal cleared."""
    dense = trees.unpack_mask(tree_mask, n) if tree_mask.dtype == torch.int32 else tree_mask
    if dense.dim() == 2:
        dense = dense.unsqueeze(0)
    return dense & torch.ones(n, n, dtype=torch.bool, device=dense.device).tril()


def tree_attention_mask(
    kv_lens: torch.Tensor, tree_mask: torch.Tensor, n: int, s: int, window: int | None = None
) -> torch.Tensor:
    """The dense boolean mask the tree attention applies, ``[B, N, S]``: True where node i sees entry s.

    Entry s of sequence b is visible to node i iff ``s < prefix_b`` (the prefix) or it is tree node
    ``j = s - prefix_b`` with ``0 <= j <= i`` and ``tree_mask[b, i, j]``. With a ``window``, node i sits at
    position ``p_i = prefix_b + depth_i`` (:func:`tree_depths`) and additionally needs ``s > p_i - window``
    for a prefix entry and ``depth_i - depth_j < window`` for a tree node. For tests and the reference
    only: the kernel never builds it.
    """
    dense = dense_tree_mask(tree_mask, n)  # [B or 1, N, N]
    b = kv_lens.shape[0]
    prefix = (kv_lens.to(torch.int64) - n).unsqueeze(1)  # [B, 1]
    pos = torch.arange(s, device=kv_lens.device).unsqueeze(0)  # [1, S]
    j = pos - prefix  # [B, S] tree index of each cache entry
    in_tree = (j >= 0) & (j < n)
    idx = j.clamp(0, n - 1).unsqueeze(1).expand(b, n, s)
    tree_part = torch.gather(dense.expand(b, n, n), 2, idx) & in_tree.unsqueeze(1)
    prefix_part = (pos < prefix).unsqueeze(1)  # [B, 1, S]
    if window is not None:
        depth = (dense.sum(-1) - 1).expand(b, n)  # [B, N]
        depth_j = torch.gather(depth, 1, j.clamp(0, n - 1))  # [B, S] depth of the tree node at entry s
        tree_part = tree_part & (depth.unsqueeze(2) - depth_j.unsqueeze(1) < window)
        prefix_part = prefix_part & (pos.unsqueeze(1) > (prefix + depth - window).unsqueeze(2))
    return tree_part | prefix_part


def tree_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_lens: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    mask_memo: dict | None = None,
    max_kv_len: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch tree attention, computed in fp32; same arguments and result as :func:`tree_attention`.

    ``mask_memo``: a dict that lives for one model forward (every layer sees the same kv_lens and tree);
    the dense mask is built by the first layer and reused by the others.

    ``max_kv_len``: host int, an upper bound of ``kv_lens``; only the first ``max(max_kv_len, N)`` cache
    entries are read (a bound below ``max(kv_lens)`` gives wrong results, no error). Default: all of
    them on CUDA, ``max(kv_lens)`` read from the tensor on CPU.

    Vectorised: GQA by viewing q as ``[B, Hkv, G * N, D]`` (no K/V repeat), one dense ``[B, N, S]`` mask
    from ``kv_lens`` and the tree mask, one fused ``scaled_dot_product_attention`` call; the cache is cut
    at ``max_kv_len`` as above. With ``softcap`` or ``sinks`` the softmax is written out (SDPA has
    neither), like transformers' eager attention of Gemma 2 and gpt-oss.
    """
    check_features(window, softcap, sinks, q.shape[1], q.device, "tree_attention_reference")
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    s = k.shape[2]
    if max_kv_len is not None:  # the caller's bound: nothing read back (unchecked fast path)
        s = min(s, max(int(max_kv_len), N))
    elif kv_lens.device.type == "cpu" and B > 0:  # free to read; skip the unused tail of the buffer
        s = min(s, int(kv_lens.max()))
    check_sm_scale(sm_scale)
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    key = (N, s, G, window)
    mask = mask_memo.get(key) if mask_memo is not None else None
    if mask is None:
        mask = tree_attention_mask(kv_lens, tree_mask, N, s, window)  # [B, N, S]
        mask = mask.unsqueeze(1).unsqueeze(1).expand(B, 1, G, N, s).reshape(B, 1, G * N, s)
        if mask_memo is not None:
            mask_memo[key] = mask
    qf = q.float().reshape(B, Hkv, G * N, D)  # head h = hkv * G + g: rows g * N + i
    # Entries at or past kv_lens[b] are garbage (a shorter row's unused cache slots may hold NaN/inf):
    # replace them by zeros before the matmuls, since masking the scores alone still lets 0 * NaN = NaN
    # through (NaN scores before the -inf mask, NaN values times a 0 probability).
    live = (torch.arange(s, device=k.device)[None, :] < kv_lens.to(k.device, torch.int64)[:, None])[:, None, :, None]
    kf = torch.where(live, k[:, :, :s].float(), 0.0)
    vf = torch.where(live, v[:, :, :s].float(), 0.0)
    if softcap is None and sinks is None:
        o = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale)
    else:
        o = _explicit_attention(qf, kf, vf, mask, scale, softcap, sinks, N)
    o = torch.where(mask.any(-1, keepdim=True), o, 0.0)  # rows with nothing to attend to: zeros, not NaN
    o = o.reshape(B, Hq, N, D)
    if out is None:
        return o.to(q.dtype)
    out.copy_(o)
    return out


def _explicit_attention(qf, kf, vf, mask, scale, softcap, sinks, n) -> torch.Tensor:
    """fp32 attention written out: scale, soft-cap, mask, softmax with the sink column, PV.

    qf ``[B, Hkv, G * N, D]`` (row g * N + i is head hkv * G + g), kf/vf ``[B, Hkv, S, D]``, mask
    broadcastable to ``[B, Hkv, G * N, S]``. As transformers' gpt-oss eager attention: the sink logit is
    appended as one more column, the softmax taken over all, the sink's probability dropped.
    """
    scores = (qf @ kf.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        b, hkv, rows, _ = scores.shape
        col = sinks.float().view(hkv, rows // n, 1).expand(hkv, rows // n, n).reshape(1, hkv, rows, 1)
        scores = torch.cat([scores, col.expand(b, hkv, rows, 1)], dim=-1)
        p = torch.softmax(scores, dim=-1)[..., :-1]
    else:
        p = torch.softmax(scores, dim=-1)
    return p @ vf


# --------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------


def check_sm_scale(sm_scale) -> None:
    """None, or a finite float > 0: a NaN, infinite or non-positive scale turns every score into NaN or
    makes the softmax meaningless (a negative scale attends to the least similar keys)."""
    if sm_scale is None:
        return
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"tree_attention: sm_scale must be a float or None, got {type(sm_scale).__name__}")
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"tree_attention: sm_scale must be a finite float > 0 or None, got {sm_scale!r}")


def _check_inputs(q, k, v, kv_lens, tree_mask, sm_scale, out) -> None:
    """Shapes, dtypes and devices (no host sync). Raises TypeError/ValueError naming the argument."""
    for name, t in (("q", q), ("k", k), ("v", v), ("kv_lens", kv_lens), ("tree_mask", tree_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tree_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"tree_attention: {name} must be 4-D, got shape {tuple(t.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"tree_attention: q must be float16, bfloat16 or float32, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"tree_attention: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    for name, t in (("k", k), ("v", v), ("kv_lens", kv_lens), ("tree_mask", tree_mask)):
        if t.device != q.device:
            raise ValueError(f"tree_attention: {name} is on {t.device} but q is on {q.device}")
    B, Hq, N, D = q.shape
    if N < 1 or N > MAX_TREE_NODES:
        raise ValueError(f"tree_attention: q must have 1 <= N <= {MAX_TREE_NODES} tree nodes in dim 2, got {N}")
    if D < 1 or D > MAX_HEAD_DIM:
        raise ValueError(f"tree_attention: head_dim must be in [1, {MAX_HEAD_DIM}], got {D}")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"tree_attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"tree_attention: k, v must be [B={B}, Hkv, S, D={D}] to match q [B, Hq, N, D], got {tuple(k.shape)}"
        )
    Hkv = k.shape[1]
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"tree_attention: q heads ({Hq}) must be a multiple of k/v heads ({Hkv})")
    if k.shape[2] < N:
        raise ValueError(f"tree_attention: k, v must hold at least N={N} entries in dim 2, got S={k.shape[2]}")
    if kv_lens.dtype not in (torch.int32, torch.int64) or tuple(kv_lens.shape) != (B,):
        raise TypeError(
            f"tree_attention: kv_lens must be an int32/int64 tensor of shape [B={B}], "
            f"got {kv_lens.dtype} {tuple(kv_lens.shape)}"
        )
    trees.validate_tree_mask(tree_mask, N, B, name="tree_attention: tree_mask")
    check_sm_scale(sm_scale)
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"tree_attention: out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"tree_attention: out must be {tuple(q.shape)} {q.dtype} on {q.device}, "
                f"got {tuple(out.shape)} {out.dtype} on {out.device}"
            )


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_lens: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    sm_scale: float | None = None,
    backend: str | None = None,
    out: torch.Tensor | None = None,
    check: bool = True,
    mask_memo: dict | None = None,
    max_kv_len: int | None = None,
    num_splits: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of N token-tree nodes against each sequence's KV cache and their own ancestors.

    Parameters
    ----------
    q : Tensor
        Queries of the tree nodes in topological order (node 0 the root). Shape: ``[B, Hq, N, D]``.
    k, v : Tensor
        Cache, same dtype as q (fp16, bf16 or fp32), any strides (e.g. per-layer views of one big
        ``[L, 2, B, Hkv, S_max, D]`` buffer). ``Hq % Hkv == 0``; S may exceed ``max(kv_lens)``.
        Sequence b's tree keys/values are its last N valid entries. Shape: ``[B, Hkv, S, D]``.
    kv_lens : Tensor
        int32/int64, valid entries of sequence b, tree included: its prefix is ``kv_lens[b] - N`` (may be
        0). Shape: ``[B]``.
    tree_mask : Tensor
        bool, True where node i may attend to node j (see :func:`specdec_kernels.trees.ancestor_mask`);
        or the same packed to int32 words (:func:`specdec_kernels.trees.pack_mask`). Bits above the
        diagonal are ignored. One tree for the batch or one per sequence.
        Shape: ``[N, N]`` / ``[B, N, N]`` (bool) or ``[N, ceil(N/32)]`` / ``[B, N, ceil(N/32)]`` (int32).
    sm_scale : float, optional
        Softmax scale; default ``1 / sqrt(D)``.
    backend : {None, "auto", "triton", "reference"}
        None/"auto": the Triton kernel on CUDA, the PyTorch reference on CPU.
    out : Tensor, optional
        Where to write the result (any strides, e.g. a transposed ``[B, N, Hq, D]`` buffer).
        Shape: ``[B, Hq, N, D]``.
    mask_memo : dict, optional
        Reference path only: a dict living for one model forward, so that the layers after the first
        reuse the dense mask instead of rebuilding it (the HF hook passes the model call's ``mask_memo``).
    check : bool
        Also check the *values* of kv_lens (``N <= kv_lens[b] <= S``): one device-to-host sync on CUDA.
        Shapes, dtypes and devices are always checked. Unchecked out-of-range values give wrong results
        (the kernel clamps them to ``[N, S]`` so it never reads outside k/v) but no error. With
        ``check=False`` no backend reads any tensor value back to the host.
    max_kv_len : int, optional
        Host int, upper bound of ``kv_lens``: the split-K heuristic's input, and the reference path reads
        only that many cache entries when ``check=False`` (with the check it uses the checked maximum).
        Default: from the check, else S. Nothing is read back from the device for it.
    num_splits : int, optional
        Force the number of KV splits of the Triton kernel (tuning and tests); default: heuristic.
    window : int, optional
        Sliding window (>= 1), transformers' ``sliding_window``: node i at logical position
        ``p_i = prefix_b + depth_i`` (``depth_i`` = number of tree nodes j <= i with ``tree_mask[i, j]``,
        minus 1) sees prefix entry s iff ``s > p_i - window`` and ancestor j iff ``depth_i - depth_j <
        window``; a chain is the model's sliding-window causal attention (FlashInfer's
        ``window_left = window - 1``). Prefix tiles before every row's window are skipped, not read.
    softcap : float, optional
        Logit soft-capping (> 0, finite): scores ``softcap * tanh(q.k * sm_scale / softcap)`` (Gemma 2).
    sinks : Tensor, optional
        Attention sinks (gpt-oss ``s_aux``), any float dtype: a logit per query head, in the units of the
        (capped) scores, that joins the softmax denominator only. Shape: ``[Hq]``.

    Returns
    -------
    Tensor
        Attention output in q's dtype (``out`` when given). Shape: ``[B, Hq, N, D]``.

    Raises
    ------
    TypeError, ValueError
        On bad input, naming the argument, before any kernel launches.

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> parents = torch.tensor([-1, 0, 0, 1])                 # root, two children, one grandchild
    >>> q = torch.randn(1, 4, 4, 64); k = v = torch.randn(1, 2, 16, 64)
    >>> out = sk.tree_attention(q, k, v, torch.tensor([16]), sk.trees.ancestor_mask(parents))
    >>> out.shape
    torch.Size([1, 4, 4, 64])
    """
    _check_inputs(q, k, v, kv_lens, tree_mask, sm_scale, out)
    check_features(window, softcap, sinks, q.shape[1], q.device, "tree_attention")
    N = q.shape[2]
    S = k.shape[2]
    impl = resolve_backend(backend, q.device, "tree_attention")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"tree_attention: num_splits must be a positive int or None, got {num_splits!r}")
    ref_len = S if max_kv_len is None else max_kv_len  # cache entries the reference reads: no read-back
    if check and q.shape[0] > 0:
        lo, hi = torch.stack([kv_lens.min(), kv_lens.max()]).tolist()
        if lo < N or hi > S:
            raise ValueError(
                f"tree_attention: kv_lens must satisfy N={N} <= kv_lens[b] <= S={S} (the tree is the last N "
                f"valid entries), got values in [{lo}, {hi}]"
            )
        ref_len = hi  # the checked maximum: exact whatever the hint says
        max_kv_len = hi if max_kv_len is None else min(max_kv_len, hi)
    scale = 1.0 / math.sqrt(q.shape[3]) if sm_scale is None else float(sm_scale)
    if impl == "reference" or q.numel() == 0:
        return tree_attention_reference(
            q,
            k,
            v,
            kv_lens,
            tree_mask,
            sm_scale=scale,
            out=out,
            mask_memo=mask_memo,
            max_kv_len=ref_len,
            window=window,
            softcap=softcap,
            sinks=sinks,
        )
    depth = None
    if window is not None:
        packed, depth = memo_windowed_tree_mask(tree_mask, N, window, mask_memo)
    else:
        packed = tree_mask if tree_mask.dtype == torch.int32 else trees.pack_mask(tree_mask)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    features = AttentionFeatures(window, softcap, sinks, depth)
    return _tree_attention_triton(
        q, k, v, kv_lens, packed, scale, out, S if max_kv_len is None else int(max_kv_len), num_splits, features
    )


__all__ = ["tree_attention", "tree_attention_reference", "tree_attention_mask", "tree_depths", "MAX_TREE_NODES"]


# --------------------------------------------------------------------------------------------------
# Registered torch ops: torch.ops.specdec.tree_attention, torch.ops.specdec.tree_attention_out
# --------------------------------------------------------------------------------------------------
# For serving runtimes and torch.compile (opaque to the compiler: no graph break, the fake kernels give
# the shapes). The ops run :func:`tree_attention` (reference on CPU, Triton on CUDA by default), which
# stays the public Python entry: it also takes ``mask_memo`` and costs no dispatcher overhead
# (bench/results/dispatch_cpu.md). An op may not return one of its inputs, hence two ops: the functional
# one allocates the contiguous result, the ``_out`` one writes into ``out`` (marked mutated, any strides,
# e.g. a transposed ``[B, N, Hq, D]`` buffer) and returns nothing.

_OP_KWARGS = (
    "float? sm_scale=None, bool check=True, int? max_kv_len=None, int? num_splits=None, str? backend=None, "
    "int? window=None, float? softcap=None, Tensor? sinks=None"
)
_OP_DEFAULTS = dict(sm_scale=None, check=True, max_kv_len=None, num_splits=None, backend=None)
_FEATURE_DEFAULTS = dict(window=None, softcap=None, sinks=None)


def _tree_attention_op(q, k, v, kv_lens, tree_mask, **kwargs):
    return tree_attention(q, k, v, kv_lens, tree_mask, **kwargs)


def _tree_attention_fake(q, k, v, kv_lens, tree_mask, **kwargs):
    _check_op_args(q, k, v, kv_lens, tree_mask, None, kwargs)  # shapes, dtypes, devices: no data needed
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _tree_attention_out_op(q, k, v, kv_lens, tree_mask, out, **kwargs):
    tree_attention(q, k, v, kv_lens, tree_mask, out=out, **kwargs)


def _tree_attention_out_fake(q, k, v, kv_lens, tree_mask, out, **kwargs):
    _check_op_args(q, k, v, kv_lens, tree_mask, out, kwargs)


def _check_op_args(q, k, v, kv_lens, tree_mask, out, kwargs) -> None:
    opts = {**_OP_DEFAULTS, **_FEATURE_DEFAULTS, **kwargs}
    _check_inputs(q, k, v, kv_lens, tree_mask, opts["sm_scale"], out)
    check_features(opts["window"], opts["softcap"], opts["sinks"], q.shape[1], q.device, "tree_attention")


_ops.define_op(
    f"tree_attention(Tensor q, Tensor k, Tensor v, Tensor kv_lens, Tensor tree_mask, *, {_OP_KWARGS}) -> Tensor",
    _tree_attention_op,
    _tree_attention_fake,
)
_ops.define_op(
    f"tree_attention_out(Tensor q, Tensor k, Tensor v, Tensor kv_lens, Tensor tree_mask, "
    f"Tensor(a!) out, *, {_OP_KWARGS}) -> ()",
    _tree_attention_out_op,
    _tree_attention_out_fake,
)
