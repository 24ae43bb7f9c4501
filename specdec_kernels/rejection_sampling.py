"""Fused rejection sampling: lossless verification of draft tokens, chain or tree, in one launch.

Terms (docs/design.md, "Verification"). A *node* u of the token tree carries the target's
distribution ``p_u`` for the token after it and, when its children were sampled, the draft's
distribution ``q_u`` they were drawn from. Verification walks from the root: at node u the children
are tried in node order; an *accepted* child becomes the new u. When every child of u is rejected
(or u has none) one more token is drawn: the *correction* token from the residual distribution left
after the rejections, or the *bonus* token from ``p_u`` when nothing was rejected at u. So a sequence
always emits ``num_accepted + 1`` tokens.

- Greedy: accept the (first) child whose token is ``argmax p_u``; the bonus is ``argmax p_u``.
- Sampled children, one per node (chain; Leviathan et al. 2023, Chen et al. 2023): accept x with
  probability ``min(1, p(x)/q(x))``; on rejection sample from ``norm(max(0, p - q))``.
- Sampled children, several per node (tree; SpecInfer's multi-step speculative sampling with the
  draws taken without replacement, as in Jeon et al. 2024, "Recursive Speculative Decoding"): after
  each rejected child x, ``p <- norm(max(0, p - q))`` and then ``q <- q`` without x, renormalised.
- Deterministic children (``draft_probs=None``, e.g. top-k): q is one-hot at each child, i.e. accept
  x with probability p(x), else ``p <- p`` without x, renormalised.

All three are exactly lossless: the emitted tokens follow the target's distribution.

How the kernel keeps the residual small. With sampled children, after k rejections at node u the
residual is ``P_k = max(0, p_u - A_k q_u)`` for a single scalar ``A_k`` (``max(0, max(0, a - s) - t)
= max(0, a - s - t)`` for ``t >= 0``, and a rejected token's residual is already 0, so removing it from
q changes nothing there). The state per node is therefore three scalars: ``A`` (how much q has been
subtracted), ``Z = sum P`` (the residual's normaliser, one pass over the vocabulary per rejection)
and ``S`` (q's mass left after removing the rejected children); a rejection of x does
``A += Z / S``, ``Z = sum max(0, p_u - A q_u)``, ``S -= q_u(x)``. The accept test for the next child
x is ``u * q_u(x) * Z < P(x) * S`` with ``u`` uniform in (0, 1) on a 2**-24 grid: strict, so a
zero-probability token is never accepted and a ratio >= 1 always is. The scalars are fp64, the
vocabulary passes fp32. With deterministic children the residual is ``p_u`` with the rejected tokens
masked out and ``Z`` is updated by a subtraction, no pass per rejection.

Sampling from an unnormalised residual is two passes over vocabulary tiles: the sum (skipped when a
rejection pass already computed it), then an inverse-CDF scan that stops at the tile holding the
token. Randomness is counter-based (Philox4x32-10, :mod:`specdec_kernels.philox`): key = seed, counter =
(sequence index, node, 0), or key = seed[b] and counter = (0, node, 0) with per-sequence seeds; output
word 0 is node j's accept test, word 1 the correction/bonus draw at node u. A fixed seed reproduces the
result and a row's result does not depend on the other rows. A decoding loop must pass a new seed every
step.
:func:`ragged_verify` (flattened batches of serving runtimes) uses key = seed[b] and counter
(offset[b] low word, node, offset[b] high word), or uniforms the caller supplies.
The PyTorch reference draws the same numbers (philox.py's bit-exact reference), so the two
backends agree up to float rounding at decision boundaries.

Target logits with a temperature can replace target probabilities: the softmax is fused (one online
max/sum pass per visited node), temperature 0 means greedy.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from specdec_kernels._backend import resolve_backend
from specdec_kernels.philox import (
    MASK32,
    UNIFORM_SHIFT,
    UNIFORM_STEP,
    philox_2x32,
    philox_2x32_tl,
    uniform_closed_open,
    uniform_open,
)
from specdec_kernels.trees import validate_parents

__all__ = [
    "ChainVerifyResult",
    "TreeVerifyResult",
    "chain_verify",
    "tree_verify",
    "ragged_verify",
    "philox_2x32",
]

PAD_TOKEN = -1  # padding in tokens / path outputs
MAX_NODES = 1024  # per-program vectors of next_pow2(N) entries
MAX_BLOCK_V = 2048  # vocabulary tile

# Verification modes, the kernels' MODE: tl.constexpr so that the kernels test them by name (they compare
# and hash as the ints; launches pass int(mode)).
MODE_GREEDY = tl.constexpr(0)
MODE_DETERMINISTIC = tl.constexpr(1)  # draft_probs=None: q one-hot at each child
MODE_SAMPLED = tl.constexpr(2)  # children drawn from draft_probs without replacement

_NO_INDEX = tl.constexpr(2147483647)  # int32 max: "no token here" in min-reductions over token indices
_MIN_Q_MASS = tl.constexpr(1e-30)  # floor of S (q's mass left), so that Z / S stays finite

_PROB_SUM_TOL = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


class ChainVerifyResult(NamedTuple):
    """Result of :func:`chain_verify` (all int64)."""

    tokens: torch.Tensor  # [B, K+1] accepted drafts then the correction/bonus token, padded with -1
    num_emitted: torch.Tensor  # [B] accepted + 1
    num_accepted: torch.Tensor  # [B] accepted drafts
    next_token: torch.Tensor  # [B] the correction or bonus token (tokens[b, num_accepted[b]])


class TreeVerifyResult(NamedTuple):
    """Result of :func:`tree_verify` (all int64)."""

    path: torch.Tensor  # [B, N] accepted node indices, path[:, 0] = 0 (the root), padded with -1
    num_accepted: torch.Tensor  # [B] accepted draft nodes (path holds num_accepted + 1 nodes)
    next_token: torch.Tensor  # [B] the correction or bonus token
    tokens: torch.Tensor  # [B, N] tokens of the accepted draft nodes then next_token, padded with -1
    num_emitted: torch.Tensor  # [B] num_accepted + 1


# ----------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------
# Few nested @triton.jit calls on purpose: the CPU interpreter re-patches triton.language on every
# device-function call (about a millisecond each), so the helpers are what runs once per sequence (its
# tree, its random numbers) or once per vocabulary pass, and the per-child work is inlined in the walk;
# reductions call tl.reduce with Triton's own combine functions (what tl.sum / tl.max / tl.min do), which
# the interpreter maps to numpy.


def _combine_fn(name, fallback):
    fn = getattr(tl.standard, name, None)
    return fn if fn is not None else fallback


@triton.jit
def _add_combine(a, b):
    return a + b


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


_SUM = _combine_fn("_sum_combine", _add_combine)
_MAX = _combine_fn("_elementwise_max", _max_combine)
_MIN = _combine_fn("_elementwise_min", _min_combine)


@triton.jit
def _row_argmax(row, V, BLOCK_V: tl.constexpr):
    """First index of the maximum of a row (probabilities or logits), tile by tile."""
    offs0 = tl.arange(0, BLOCK_V)
    best_v = tl.reduce(tl.full([BLOCK_V], float("-inf"), tl.float32), 0, _MAX)
    best_i = tl.reduce(offs0, 0, _MIN)  # 0, int32
    for start in range(0, V, BLOCK_V):
        offs = start + offs0
        x = tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        mx = tl.reduce(x, 0, _MAX)
        take = mx > best_v  # strict: an earlier tile keeps ties
        best_i = tl.where(take, tl.reduce(tl.where(x == mx, offs, _NO_INDEX), 0, _MIN), best_i)
        best_v = tl.where(take, mx, best_v)
    return best_i


@triton.jit
def _residual_pass(
    row,
    qrow,
    V,
    m,
    inv_l,
    inv_temp,
    a32,
    use_q,
    rej,
    nrej,
    target,
    MODE: tl.constexpr,
    LOGITS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One pass over the residual of the current node, tile by tile, in token order.

    The residual is ``p`` (``softmax(logits * inv_temp)`` from the stats ``m``, ``inv_l`` when LOGITS),
    then ``max(0, p - a32 * q)`` where ``use_q`` (sampled), or ``p`` without the ``nrej`` tokens of
    ``rej`` (deterministic). Inverse CDF: stops at the first token whose running sum exceeds
    ``target`` (``u * Z``); with ``target = inf`` it is the sum pass. Returns (running sum, token or
    -1, last token with positive residual or -1)."""
    offs0 = tl.arange(0, BLOCK_V)
    ar_n = tl.arange(0, BLOCK_N)
    running = tl.reduce(tl.zeros([BLOCK_V], tl.float32), 0, _SUM)
    tok = tl.reduce(offs0, 0, _MIN) - 1
    last = tok
    start = tok + 1
    while (tok < 0) & (start < V):
        offs = start + offs0
        mask = offs < V
        if LOGITS:
            lg = tl.load(row + offs, mask=mask, other=float("-inf")).to(tl.float32)
            r = tl.exp(lg * inv_temp - m) * inv_l
        else:
            r = tl.load(row + offs, mask=mask, other=0.0).to(tl.float32)
        if MODE == MODE_SAMPLED:
            if use_q:
                q = tl.load(qrow + offs, mask=mask, other=0.0).to(tl.float32)
                r = tl.maximum(r - a32 * q, 0.0)
        elif MODE == MODE_DETERMINISTIC:
            # mask the rejected child tokens that fall in this tile (few tiles hold any)
            if tl.reduce(((rej >= start) & (rej < start + BLOCK_V)).to(tl.int32), 0, _SUM) > 0:
                for i in range(0, nrej):
                    r = tl.where(offs == tl.reduce(tl.where(ar_n == i, rej, 0), 0, _SUM), 0.0, r)
        c = running + tl.associative_scan(r, 0, _SUM)
        first = tl.reduce(tl.where((c > target) & (r > 0.0), offs, _NO_INDEX), 0, _MIN)
        tok = tl.where(first < _NO_INDEX, first, -1)
        last = tl.maximum(last, tl.reduce(tl.where(r > 0.0, offs, -1), 0, _MAX))
        running += tl.reduce(r, 0, _SUM)
        start += BLOCK_V
    return running, tok, last


@triton.jit
def _sequence_tree(
    tok_ptr,
    par_ptr,
    lens_ptr,
    cu_ptr,
    b,
    ar,
    N,
    T,
    stride_tok_b,
    stride_par_b,
    IS_CHAIN: tl.constexpr,
    HAS_LENS: tl.constexpr,
    RAGGED: tl.constexpr,
):
    """The tree of sequence b in registers, vectors over the nodes ``ar``: (node tokens, parents, which
    nodes are drafts, last node n_last, t0 = the first flat entry of its drafts when RAGGED, else 0)."""
    in_n = ar < N
    t0 = b * 0
    if RAGGED:
        # request b's drafts are the flat entries t0 .. t0 + n_last - 1 (nodes 1 .. n_last); clamped so
        # that unchecked bad offsets (validate=False) stay inside the buffers
        t0 = tl.minimum(tl.maximum(tl.load(cu_ptr + b).to(tl.int64), 0), T)
        t1 = tl.minimum(tl.maximum(tl.load(cu_ptr + b + 1).to(tl.int64), t0), T)
        n_last = tl.minimum(t1 - t0, N - 1).to(tl.int32)
        valid = (ar >= 1) & (ar <= n_last)
        tok_vec = tl.load(tok_ptr + t0 + ar - 1, mask=valid, other=-1).to(tl.int32)
        if IS_CHAIN:
            par_vec = ar - 1
        else:
            par_vec = tl.load(par_ptr + t0 + ar - 1, mask=valid, other=-2).to(tl.int32)
    elif IS_CHAIN:
        tok_vec = tl.load(tok_ptr + b * stride_tok_b + ar - 1, mask=(ar >= 1) & in_n, other=-1).to(tl.int32)
        par_vec = ar - 1
        n_last = N - 1
        if HAS_LENS:
            n_last = tl.minimum(tl.load(lens_ptr + b).to(tl.int32), N - 1)
        valid = (ar >= 1) & (ar <= n_last)
    else:
        tok_vec = tl.load(tok_ptr + b * stride_tok_b + ar, mask=in_n, other=-1).to(tl.int32)
        par_vec = tl.load(par_ptr + b * stride_par_b + ar, mask=in_n, other=-2).to(tl.int32)
        valid = (ar >= 1) & in_n
        n_last = N - 1  # (used only by RAGGED)
    return tok_vec, par_vec, valid, n_last, t0


@triton.jit
def _sequence_uniforms(
    seeds_ptr,
    offset_ptr,
    uacc_ptr,
    usmp_ptr,
    pid,
    b,
    ar,
    valid,
    t0,
    seed_lo,
    seed_hi,
    SEED_PER_ROW: tl.constexpr,
    SEED_SCALAR: tl.constexpr,
    RNG_OFFSET: tl.constexpr,
    UNIFORMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The sequence's random numbers, vectors over the nodes ``ar``: (fp64 accept-test uniform in (0, 1) of
    node j, fp32 correction/bonus uniform in [0, 1) when the walk ends at node u). One Philox call, counter
    (c0, node, c2); or the caller's numbers (UNIFORMS)."""
    u_acc_vec = tl.zeros([BLOCK_N], tl.float64)
    u_smp_vec = tl.zeros([BLOCK_N], tl.float32)
    if UNIFORMS:  # the caller's numbers: node j's accept test, one correction/bonus draw per request
        u_acc_vec = tl.load(uacc_ptr + t0 + ar - 1, mask=valid, other=0.5).to(tl.float64)
        u_smp_vec += tl.load(usmp_ptr + b).to(tl.float32)
    else:
        if SEED_PER_ROW:
            if SEED_SCALAR:  # read on the device, not the host: same key and counter as an int seed
                s = tl.load(seeds_ptr)
                c0 = (ar * 0 + pid).to(tl.uint32)
            else:
                s = tl.load(seeds_ptr + b)
                c0 = (ar * 0).to(tl.uint32)
            k0 = s.to(tl.uint32)
            k1 = (s >> 32).to(tl.uint32)
        else:
            k0 = seed_lo.to(tl.uint32, bitcast=True)
            k1 = seed_hi.to(tl.uint32, bitcast=True)
            c0 = (ar * 0 + pid).to(tl.uint32)
        c2 = (ar * 0).to(tl.uint32)
        if RNG_OFFSET:  # counter (offset low word, node, offset high word); offset 0: the seed's numbers
            o = tl.load(offset_ptr + b)
            c0 = c0 + o.to(tl.uint32)
            c2 = c2 + (o >> 32).to(tl.uint32)
        w0, w1 = philox_2x32_tl(k0, k1, c0, ar.to(tl.uint32), c2)
        # as philox.uniform_open (0, 1) and philox.uniform_closed_open [0, 1)
        u_acc_vec = ((w0 >> UNIFORM_SHIFT).to(tl.float64) + 0.5) * UNIFORM_STEP
        u_smp_vec = (w1 >> UNIFORM_SHIFT).to(tl.float32) * UNIFORM_STEP
    return u_acc_vec, u_smp_vec


@triton.jit
def _softmax_stats(row, n, V, inv_temp, BLOCK_V: tl.constexpr):
    """Online softmax statistics of ``logits * inv_temp`` over the first n entries of a row, one pass:
    (max m, 1 / sum exp(logits * inv_temp - m))."""
    offs0 = tl.arange(0, BLOCK_V)
    m_vec = tl.full([BLOCK_V], float("-inf"), tl.float32)
    l_vec = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, n, BLOCK_V):
        offs = start + offs0
        lg = tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m_vec, lg)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_vec = l_vec * tl.exp(m_vec - m_safe) + tl.exp(lg - m_safe)
        m_vec = m_new
    m = tl.reduce(m_vec, 0, _MAX)
    return m, 1.0 / tl.reduce(l_vec * tl.exp(m_vec - m), 0, _SUM)


# The walk is one device function (inlined when compiled) behind two launch entries: _verify_kernel keeps
# the padded entries' signature, _ragged_verify_kernel maps the flattened layout onto the RAGGED paths.
@triton.jit
def _verify_program(
    tok_ptr,  # chain: [B, K] draft tokens (node j's token at column j - 1); tree: [B, N] node tokens;
    # RAGGED: [T] flattened drafts, node j >= 1 of request b at flat entry cu[b] + j - 1
    par_ptr,  # tree: [N] or [B, N] parents (stride_par_b = 0 when shared); chain: unused;
    # RAGGED tree: [T] parent node of each draft (node j's parent at flat entry cu[b] + j - 1)
    lens_ptr,  # chain with HAS_LENS: [B] valid drafts per sequence
    tgt_ptr,  # [B, N, V] target probabilities or logits (last dim contiguous)
    drf_ptr,  # MODE_SAMPLED: [B, N or K, V] draft probabilities of node u's children
    seeds_ptr,  # SEED_PER_ROW: [B] int64 per-sequence seeds, or one int64 seed when SEED_SCALAR
    path_ptr,  # WRITE_PATH: [B, N] out, accepted node indices
    out_tok_ptr,  # [B, N] out, emitted tokens
    num_acc_ptr,  # [B] out
    num_emit_ptr,  # [B] out
    next_ptr,  # [B] out
    seed_lo,
    seed_hi,  # int32 halves of the seed (SEED_PER_ROW=False)
    N,
    V,
    inv_temp,
    stride_tok_b,
    stride_par_b,
    stride_tgt_b,
    stride_tgt_n,
    stride_drf_b,
    stride_drf_n,
    IS_CHAIN: tl.constexpr,
    HAS_LENS: tl.constexpr,
    MODE: tl.constexpr,
    LOGITS: tl.constexpr,
    SEED_PER_ROW: tl.constexpr,
    WRITE_PATH: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEED_SCALAR: tl.constexpr,  # with SEED_PER_ROW: a 0-d seed tensor, the int seed's numbers
    # ragged batches (ragged_verify); each pointer is read only under its flag
    cu_ptr,  # RAGGED: [B + 1] cumulative draft counts
    bonus_ptr,  # SEP_BONUS: [B, V] row of each request's last node (tgt_ptr then holds the [T, V] draft rows)
    greedy_ptr,  # ROW_GREEDY: [B] per-request greedy flags
    inv_temp_ptr,  # ROW_TEMP: [B] fp32 per-request 1 / temperature
    offset_ptr,  # RNG_OFFSET: [B] int64 Philox counter offsets
    uacc_ptr,
    usmp_ptr,  # UNIFORMS: [T] accept-test uniforms (one per draft), [B] correction/bonus uniforms
    T,
    stride_bonus_b,
    stride_out_b,
    stride_out_n,
    stride_path_b,
    stride_path_n,
    RAGGED: tl.constexpr,
    SEP_BONUS: tl.constexpr,
    ROW_GREEDY: tl.constexpr,
    ROW_TEMP: tl.constexpr,
    RNG_OFFSET: tl.constexpr,
    UNIFORMS: tl.constexpr,
):
    """One program per sequence (request): the whole walk. Launched through :func:`_verify_kernel`
    (padded batches) and :func:`_ragged_verify_kernel` (flattened batches, RAGGED)."""
    pid = tl.program_id(0)
    b = pid.to(tl.int64)
    ar = tl.arange(0, BLOCK_N)
    in_n = ar < N

    # ---- the tree of this sequence, in registers: node tokens, parents, which nodes exist
    tok_vec, par_vec, valid, n_last, t0 = _sequence_tree(
        tok_ptr, par_ptr, lens_ptr, cu_ptr, b, ar, N, T, stride_tok_b, stride_par_b, IS_CHAIN, HAS_LENS, RAGGED
    )

    # ---- the rule of this row: MODE, or greedy where the per-request flag says so (mixed batches);
    # a greedy row skips the sampled work by running those vocabulary loops over 0 tokens, and back
    v_smp = V  # vocabulary length of the sampled passes
    v_grd = V  # vocabulary length of the argmax pass
    if ROW_GREEDY:
        g = tl.load(greedy_ptr + b) != 0
        v_smp = tl.where(g, 0, V)
        v_grd = tl.where(g, V, 0)
    if ROW_TEMP:
        inv_temp = tl.load(inv_temp_ptr + b).to(tl.float32)

    # ---- randomness: every number of the sequence up front (u_acc_vec[j]: node j's accept test,
    # u_smp_vec[u]: the correction/bonus draw when the walk ends at node u)
    u_acc_vec = tl.zeros([BLOCK_N], tl.float64)
    u_smp_vec = tl.zeros([BLOCK_N], tl.float32)
    if MODE != MODE_GREEDY:
        u_acc_vec, u_smp_vec = _sequence_uniforms(
            seeds_ptr,
            offset_ptr,
            uacc_ptr,
            usmp_ptr,
            pid,
            b,
            ar,
            valid,
            t0,
            seed_lo,
            seed_hi,
            SEED_PER_ROW,
            SEED_SCALAR,
            RNG_OFFSET,
            UNIFORMS,
            BLOCK_N,
        )

    tgt_b = tgt_ptr + b * stride_tgt_b
    drf_b = drf_ptr + b * stride_drf_b
    if RAGGED:  # rows from flat row t0 on (stride_tgt_b = stride_tgt_n: each request's last row inline)
        tgt_b += t0 * stride_tgt_n
        drf_b += t0 * stride_drf_n
    zero_i = pid * 0
    zero_d = zero_i.to(tl.float64)

    cur = zero_i  # current node
    jlast = zero_i  # last child tried (children of cur have larger indices)
    n_acc = zero_i
    pending = zero_i == 0  # per-node statistics of cur still to compute
    amax = zero_i  # greedy: argmax p_cur
    m = zero_i.to(tl.float32)  # logits: max of logits * inv_temp at cur
    inv_l = m + 1.0  # logits: 1 / sum exp(logits * inv_temp - m)
    a_sub = zero_d  # A: multiple of q subtracted from p at cur
    s_q = zero_d + 1.0  # S: q mass left at cur
    z_res = zero_d + 1.0  # Z: residual normaliser at cur
    nrej = zero_i
    rej = tl.full([BLOCK_N], -1, tl.int32)  # rejected child tokens at cur (deterministic mode)
    path_vec = tl.where(ar == 0, 0, -1)
    out_vec = tl.full([BLOCK_N], -1, tl.int32)

    searching = pid >= 0
    while searching:
        row = tgt_b + cur.to(tl.int64) * stride_tgt_n
        qrow = drf_b + cur.to(tl.int64) * stride_drf_n
        if SEP_BONUS:  # the last node's row is the request's bonus row
            row = tl.where(cur == n_last, bonus_ptr + b * stride_bonus_b, row)
        if pending:  # entering node cur
            pending = zero_i != 0
            if MODE == MODE_GREEDY:
                amax = _row_argmax(row, V, BLOCK_V)
            else:
                if ROW_GREEDY:
                    amax = _row_argmax(row, v_grd, BLOCK_V)
                if LOGITS:
                    m, inv_l = _softmax_stats(row, v_smp, V, inv_temp, BLOCK_V)
        j = tl.reduce(tl.where(valid & (par_vec == cur) & (ar > jlast), ar, BLOCK_N), 0, _MIN)  # next child
        searching = j < BLOCK_N
        if searching:
            x = tl.reduce(tl.where(ar == j, tok_vec, 0), 0, _SUM)
            x_ok = (x >= 0) & (x < V)
            if RAGGED:  # draft rows: child j's row is q of its parent, the current node
                qrow = drf_b + (j - 1).to(tl.int64) * stride_drf_n
            xs = tl.minimum(tl.maximum(x, 0), V - 1)
            qx = zero_d
            px_res = zero_d
            if MODE == MODE_GREEDY:
                accept = x == amax
            else:
                u = tl.reduce(tl.where(ar == j, u_acc_vec, 0.0), 0, _SUM)
                if LOGITS:
                    px = (tl.exp(tl.load(row + xs).to(tl.float32) * inv_temp - m) * inv_l).to(tl.float64)
                else:
                    px = tl.load(row + xs).to(tl.float64)
                if MODE == MODE_SAMPLED:
                    qx = tl.load(qrow + xs).to(tl.float64)
                    px_res = tl.maximum(px - a_sub * qx, 0.0)
                    # accept w.p. min(1, p_k(x) / q_k(x)) with p_k = P / Z, q_k = q / S
                    accept = (u * qx * z_res < px_res * s_q) & x_ok
                else:
                    dup = tl.reduce((rej == x).to(tl.int32), 0, _SUM) > 0
                    px_res = tl.where(dup, 0.0, px)
                    accept = (u * z_res < px_res) & x_ok  # accept w.p. p_k(x) = P(x) / Z
                if ROW_GREEDY:
                    accept = tl.where(g, x == amax, accept)
            if accept:
                cur = j
                n_acc += 1
                path_vec = tl.where(ar == n_acc, j, path_vec)
                out_vec = tl.where(ar == n_acc - 1, x, out_vec)
                pending = zero_i == 0
                a_sub = zero_d
                s_q = zero_d + 1.0
                z_res = zero_d + 1.0
                nrej = zero_i
                rej = tl.full([BLOCK_N], -1, tl.int32)
            else:
                if MODE == MODE_SAMPLED:
                    # p <- norm(max(0, p - q)): A += Z / S and Z from one vocabulary pass; then q loses x
                    a_sub = a_sub + z_res / s_q
                    z32, _t, _l = _residual_pass(
                        row,
                        qrow,
                        v_smp,
                        m,
                        inv_l,
                        inv_temp,
                        a_sub.to(tl.float32),
                        zero_i == 0,
                        rej,
                        nrej,
                        float("inf"),
                        MODE,
                        LOGITS,
                        BLOCK_V,
                        BLOCK_N,
                    )
                    z_res = z32.to(tl.float64)
                    s_q = tl.maximum(s_q - qx, _MIN_Q_MASS)
                elif MODE == MODE_DETERMINISTIC:
                    z_res = z_res - px_res  # p <- p without x
                    rej = tl.where(ar == nrej, x, rej)
                nrej += 1
            jlast = j

    # ---- correction / bonus token at the last accepted node
    row = tgt_b + cur.to(tl.int64) * stride_tgt_n
    qrow = drf_b + cur.to(tl.int64) * stride_drf_n
    if SEP_BONUS:
        row = tl.where(cur == n_last, bonus_ptr + b * stride_bonus_b, row)
    if RAGGED:  # q of the current node: the last rejected child's draft row (read only after a rejection)
        qrow = drf_b + tl.maximum(jlast - 1, 0).to(tl.int64) * stride_drf_n
    if MODE == MODE_GREEDY:
        nxt = amax
    else:
        u = tl.reduce(tl.where(ar == cur, u_smp_vec, 0.0), 0, _SUM)
        use_q = nrej > 0
        a32 = a_sub.to(tl.float32)
        # Z of the residual: known after a sampled rejection (the last pass computed it) and for an
        # untouched softmax row (1); otherwise one sum pass (input probabilities are normalised only
        # to a tolerance, and a masked deterministic residual is re-summed so that the scan agrees)
        z_smp = z_res.to(tl.float32)
        if MODE == MODE_SAMPLED:
            if LOGITS:
                need_sum = zero_i != 0
            else:
                need_sum = nrej == 0
        else:
            if LOGITS:
                need_sum = nrej > 0
            else:
                need_sum = zero_i == 0
        if need_sum:
            z_smp, _t, _l = _residual_pass(
                row,
                qrow,
                v_smp,
                m,
                inv_l,
                inv_temp,
                a32,
                use_q,
                rej,
                nrej,
                float("inf"),
                MODE,
                LOGITS,
                BLOCK_V,
                BLOCK_N,
            )
        _r, nxt, last = _residual_pass(
            row, qrow, v_smp, m, inv_l, inv_temp, a32, use_q, rej, nrej, u * z_smp, MODE, LOGITS, BLOCK_V, BLOCK_N
        )
        nxt = tl.where(nxt < 0, last, nxt)  # rounding left u * Z beyond the total
        if ROW_GREEDY:
            nxt = tl.where(g, amax, nxt)
        if nxt < 0:  # all-zero residual (only through rounding): fall back to argmax p
            nxt = _row_argmax(row, V, BLOCK_V)

    # outputs in the buffers' integer types (int64 for the padded entries; int32 or int64 when ragged)
    out_vec = tl.where(ar == n_acc, nxt, out_vec)
    tl.store(out_tok_ptr + b * stride_out_b + ar * stride_out_n, out_vec.to(out_tok_ptr.dtype.element_ty), mask=in_n)
    if WRITE_PATH:
        if RAGGED:  # flat node rows: node u of request b is row cu[b] + b + u
            path_vec = tl.where(path_vec >= 0, path_vec + (t0 + b), -1)
        tl.store(path_ptr + b * stride_path_b + ar * stride_path_n, path_vec.to(path_ptr.dtype.element_ty), mask=in_n)
    tl.store(num_acc_ptr + b, n_acc.to(num_acc_ptr.dtype.element_ty))
    if not RAGGED:
        tl.store(num_emit_ptr + b, (n_acc + 1).to(tl.int64))
    tl.store(next_ptr + b, nxt.to(next_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "N"])
def _verify_kernel(
    tok_ptr,
    par_ptr,
    lens_ptr,
    tgt_ptr,
    drf_ptr,
    seeds_ptr,
    path_ptr,
    out_tok_ptr,
    num_acc_ptr,
    num_emit_ptr,
    next_ptr,
    seed_lo,
    seed_hi,
    N,
    V,
    inv_temp,
    stride_tok_b,
    stride_par_b,
    stride_tgt_b,
    stride_tgt_n,
    stride_drf_b,
    stride_drf_n,
    IS_CHAIN: tl.constexpr,
    HAS_LENS: tl.constexpr,
    MODE: tl.constexpr,
    LOGITS: tl.constexpr,
    SEED_PER_ROW: tl.constexpr,
    WRITE_PATH: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEED_SCALAR: tl.constexpr = False,
):
    """Padded batches (chain_verify, tree_verify): arguments as in :func:`_verify_program`, outputs [B, N]."""
    _verify_program(
        tok_ptr,
        par_ptr,
        lens_ptr,
        tgt_ptr,
        drf_ptr,
        seeds_ptr,
        path_ptr,
        out_tok_ptr,
        num_acc_ptr,
        num_emit_ptr,
        next_ptr,
        seed_lo,
        seed_hi,
        N,
        V,
        inv_temp,
        stride_tok_b,
        stride_par_b,
        stride_tgt_b,
        stride_tgt_n,
        stride_drf_b,
        stride_drf_n,
        IS_CHAIN,
        HAS_LENS,
        MODE,
        LOGITS,
        SEED_PER_ROW,
        WRITE_PATH,
        BLOCK_V,
        BLOCK_N,
        SEED_SCALAR,
        num_acc_ptr,
        tgt_ptr,
        num_acc_ptr,
        num_acc_ptr,
        num_acc_ptr,
        num_acc_ptr,
        num_acc_ptr,  # unused
        0,
        0,
        N,
        1,
        N,
        1,
        RAGGED=False,
        SEP_BONUS=False,
        ROW_GREEDY=False,
        ROW_TEMP=False,
        RNG_OFFSET=False,
        UNIFORMS=False,
    )


@triton.jit(do_not_specialize=["T"])  # T changes every serving step: no recompiles on its alignment
def _ragged_verify_kernel(
    tok_ptr,
    par_ptr,
    cu_ptr,
    tgt_ptr,
    bonus_ptr,
    drf_ptr,
    greedy_ptr,
    inv_temp_ptr,
    seeds_ptr,
    offset_ptr,
    uacc_ptr,
    usmp_ptr,
    out_tok_ptr,
    path_ptr,
    num_acc_ptr,
    next_ptr,
    T,
    N,
    V,
    stride_tgt_b,
    stride_tgt_n,
    stride_bonus_b,
    stride_drf_n,
    stride_out_b,
    stride_out_n,
    stride_path_b,
    stride_path_n,
    IS_CHAIN: tl.constexpr,
    MODE: tl.constexpr,
    LOGITS: tl.constexpr,
    SEP_BONUS: tl.constexpr,
    ROW_GREEDY: tl.constexpr,
    ROW_TEMP: tl.constexpr,
    SEED_PER_ROW: tl.constexpr,
    RNG_OFFSET: tl.constexpr,
    UNIFORMS: tl.constexpr,
    WRITE_PATH: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Flattened batches (ragged_verify): one program per request, outputs [B, N = max_spec_len + 1]."""
    _verify_program(
        tok_ptr,
        par_ptr,
        cu_ptr,
        tgt_ptr,
        drf_ptr,
        seeds_ptr,
        path_ptr,
        out_tok_ptr,
        num_acc_ptr,
        num_acc_ptr,
        next_ptr,
        0,
        0,
        N,
        V,
        1.0,
        0,
        0,
        stride_tgt_b,
        stride_tgt_n,
        0,
        stride_drf_n,
        IS_CHAIN,
        False,
        MODE,
        LOGITS,
        SEED_PER_ROW,
        WRITE_PATH,
        BLOCK_V,
        BLOCK_N,
        False,
        cu_ptr,
        bonus_ptr,
        greedy_ptr,
        inv_temp_ptr,
        offset_ptr,
        uacc_ptr,
        usmp_ptr,
        T,
        stride_bonus_b,
        stride_out_b,
        stride_out_n,
        stride_path_b,
        stride_path_n,
        RAGGED=True,
        SEP_BONUS=SEP_BONUS,
        ROW_GREEDY=ROW_GREEDY,
        ROW_TEMP=ROW_TEMP,
        RNG_OFFSET=RNG_OFFSET,
        UNIFORMS=UNIFORMS,
    )


# ----------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------


def _launch(tok, parents, lens, tgt, drf, *, is_chain, mode, logits, inv_temp, seed, write_path, block_v=None):
    """One kernel launch for the whole batch (one program per sequence). Inputs already checked."""
    B, N, V = tgt.shape
    dev = tgt.device
    out_tok = torch.empty(B, N, dtype=torch.int64, device=dev)
    path = torch.empty(B, N, dtype=torch.int64, device=dev) if write_path else out_tok
    num_acc = torch.empty(B, dtype=torch.int64, device=dev)
    num_emit = torch.empty(B, dtype=torch.int64, device=dev)
    nxt = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return out_tok, path, num_acc, num_emit, nxt
    tok = tok if tok.numel() == 0 or tok.stride(-1) == 1 else tok.contiguous()
    tgt = tgt if tgt.stride(-1) == 1 else tgt.contiguous()
    if drf is not None and drf.stride(-1) != 1:
        drf = drf.contiguous()
    if parents is not None and parents.stride(-1) != 1:
        parents = parents.contiguous()
    lens = lens.contiguous() if lens is not None else None
    per_row = isinstance(seed, torch.Tensor)
    seed_lo = seed_hi = 0
    if not per_row:
        seed_lo, seed_hi = seed & MASK32, seed >> 32
        seed_lo = seed_lo - (1 << 32) if seed_lo >= (1 << 31) else seed_lo  # as int32 bits
        seed_hi = seed_hi - (1 << 32) if seed_hi >= (1 << 31) else seed_hi
    block_v = block_v or min(triton.next_power_of_2(V), MAX_BLOCK_V)
    block_n = max(triton.next_power_of_2(N), 2)
    dummy = num_acc
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _verify_kernel[(B,)](
            tok,
            parents if parents is not None else dummy,
            lens if lens is not None else dummy,
            tgt,
            drf if drf is not None else tgt,
            seed if per_row else dummy,
            path,
            out_tok,
            num_acc,
            num_emit,
            nxt,
            seed_lo,
            seed_hi,
            N,
            V,
            float(inv_temp),
            tok.stride(0) if tok.dim() == 2 else 0,
            parents.stride(0) if parents is not None and parents.dim() == 2 else 0,
            tgt.stride(0),
            tgt.stride(1),
            drf.stride(0) if drf is not None else 0,
            drf.stride(1) if drf is not None else 0,
            IS_CHAIN=is_chain,
            HAS_LENS=lens is not None,
            MODE=int(mode),
            LOGITS=logits,
            SEED_PER_ROW=per_row,
            SEED_SCALAR=per_row and seed.dim() == 0,
            WRITE_PATH=write_path,
            BLOCK_V=block_v,
            BLOCK_N=block_n,
            num_warps=8 if block_v >= 2048 else 4,
        )
    return out_tok, path, num_acc, num_emit, nxt


# ----------------------------------------------------------------------------------------------------
# PyTorch reference (defines the semantics; the CPU path). Vectorised over the batch, a loop over nodes.
# ----------------------------------------------------------------------------------------------------


def _row_chunks(n: int, V: int):
    step = max(1, (1 << 23) // max(V, 1))  # bounded temporaries: about 8M elements per chunk
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def _verify_reference(
    tok, par, valid, tgt, drf, *, mode, logits, inv_temp, k0, k1, c0, c2=0, greedy_rows=None, uniforms=None
):
    """Walk every sequence's tree; returns (out_tokens, path, num_accepted, next_token).

    tok [B, N] node tokens (column 0 unused); par [B, N] parents; valid [B, N] which nodes exist;
    tgt [B, N, V] target probs/logits; drf [B, >=nodes with children, V] or None; inv_temp a float or
    fp32 [B]; k0, k1, c0, c2 [B] (c2 also 0) the Philox key and counter words of each sequence, or
    ``uniforms = (u_accept [B, N] indexed by node, u_sample [B])`` instead; greedy_rows [B] bool: rows
    verified by the greedy rule whatever ``mode`` says. Mirrors the kernel step for step.
    """
    B, N, V = tgt.shape
    dev = tgt.device
    i64, f64 = torch.int64, torch.float64
    it = torch.as_tensor(inv_temp, dtype=torch.float32, device=dev).expand(B)
    c2 = torch.as_tensor(c2, dtype=i64, device=dev).expand(B)
    cur = torch.zeros(B, dtype=i64, device=dev)
    n_acc = torch.zeros(B, dtype=i64, device=dev)
    path = torch.full((B, N), PAD_TOKEN, dtype=i64, device=dev)
    path[:, 0] = 0
    out = torch.full((B, N), PAD_TOKEN, dtype=i64, device=dev)
    a_sub = torch.zeros(B, dtype=f64, device=dev)
    s_q = torch.ones(B, dtype=f64, device=dev)
    z_res = torch.ones(B, dtype=f64, device=dev)
    nrej = torch.zeros(B, dtype=i64, device=dev)
    rej = torch.full((B, N), -1, dtype=i64, device=dev)
    amax = torch.zeros(B, dtype=i64, device=dev)
    m = torch.zeros(B, dtype=torch.float32, device=dev)
    inv_l = torch.ones(B, dtype=torch.float32, device=dev)

    def enter(rows, node):  # per-node statistics for the rows that just moved to `node`
        for c in _row_chunks(rows.numel(), V):
            r = rows[c]
            x = tgt[r, node].float()
            if mode == MODE_GREEDY or greedy_rows is not None:
                amax[r] = x.argmax(-1)
            if mode != MODE_GREEDY and logits:
                xs = x * it[r, None]
                mx = xs.amax(-1)
                m[r] = mx
                inv_l[r] = 1.0 / torch.exp(xs - mx[:, None]).sum(-1)

    def target_rows(r, nodes):  # p at each row's node, fp32 [R, V]
        x = tgt[r, nodes].float()
        if logits:
            x = torch.exp(x * it[r, None] - m[r, None]) * inv_l[r, None]
        return x

    def residual_rows(r, nodes, use_q):
        p = target_rows(r, nodes)
        if mode == MODE_SAMPLED and drf.shape[1] > 0:
            q = drf[r, nodes.clamp(max=drf.shape[1] - 1)].float()
            sub = torch.clamp(p - a_sub[r].float()[:, None] * q, min=0.0)
            p = torch.where(use_q[:, None], sub, p)
        elif mode == MODE_DETERMINISTIC:
            rr, cc = (rej[r] >= 0).nonzero(as_tuple=True)
            p[rr, rej[r][rr, cc]] = 0.0
        return p

    def residual_sum(rows, nodes, use_q):
        out_z = torch.empty(rows.numel(), dtype=torch.float32, device=dev)
        for c in _row_chunks(rows.numel(), V):
            out_z[c] = residual_rows(rows[c], nodes[c], use_q[c]).sum(-1)
        return out_z

    all_rows = torch.arange(B, device=dev)
    enter(all_rows, 0)
    for j in range(1, N):
        rows = (valid[:, j] & (par[:, j] == cur)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        x = tok[rows, j].to(i64)
        x_ok = (x >= 0) & (x < V)
        xs = x.clamp(0, V - 1)
        node = cur[rows]
        if mode == MODE_GREEDY:
            acc = x == amax[rows]
        else:
            if uniforms is not None:
                u = uniforms[0][rows, j].to(f64)
            else:
                r32, _ = philox_2x32(k0[rows], k1[rows], c0[rows], j, c2[rows])
                u = uniform_open(r32)
            if logits:
                px = (torch.exp(tgt[rows, node, xs].float() * it[rows] - m[rows]) * inv_l[rows]).to(f64)
            else:
                px = tgt[rows, node, xs].to(f64)
            if mode == MODE_SAMPLED:
                qx = drf[rows, node, xs].to(f64)
                px_res = torch.clamp(px - a_sub[rows] * qx, min=0.0)
                acc = (u * qx * z_res[rows] < px_res * s_q[rows]) & x_ok
            else:
                dup = (rej[rows] == x[:, None]).any(1)
                px_res = torch.where(dup, torch.zeros_like(px), px)
                acc = (u * z_res[rows] < px_res) & x_ok
            if greedy_rows is not None:
                acc = torch.where(greedy_rows[rows], x == amax[rows], acc)
        ra, rr = rows[acc], rows[~acc]
        if ra.numel():
            n_acc[ra] += 1
            cur[ra] = j
            path[ra, n_acc[ra]] = j
            out[ra, n_acc[ra] - 1] = x[acc]
            a_sub[ra], s_q[ra], z_res[ra], nrej[ra], rej[ra] = 0.0, 1.0, 1.0, 0, -1
            enter(ra, j)
        if rr.numel():
            if mode == MODE_SAMPLED:  # p <- norm(max(0, p - q)), then q loses x
                a_sub[rr] += z_res[rr] / s_q[rr]
                z_res[rr] = residual_sum(rr, cur[rr], torch.ones_like(rr, dtype=torch.bool)).to(f64)
                s_q[rr] = torch.clamp(s_q[rr] - qx[~acc], min=_MIN_Q_MASS.value)
            elif mode == MODE_DETERMINISTIC:  # p <- p without x
                z_res[rr] -= px_res[~acc]
                rej[rr, nrej[rr]] = x[~acc]
            nrej[rr] += 1

    if mode == MODE_GREEDY:
        nxt = amax.clone()
    else:
        if uniforms is not None:
            u = uniforms[1].to(torch.float32)
        else:
            _, r32 = philox_2x32(k0, k1, c0, cur, c2)
            u = uniform_closed_open(r32)
        use_q = nrej > 0
        if mode == MODE_SAMPLED:
            need_sum = torch.zeros_like(use_q) if logits else nrej == 0
        else:
            need_sum = nrej > 0 if logits else torch.ones_like(use_q)
        nxt = torch.empty(B, dtype=i64, device=dev)
        ar_v = torch.arange(V, device=dev)
        for c in _row_chunks(B, V):
            r = all_rows[c]
            res = residual_rows(r, cur[c], use_q[c])
            z = torch.where(need_sum[c], res.sum(-1).to(f64), z_res[c]).to(torch.float32)
            target = u[c] * z
            pos = res > 0
            hit = (res.cumsum(-1) > target[:, None]) & pos
            first = torch.where(hit.any(1), hit.to(torch.uint8).argmax(1), -1)
            last = torch.where(pos.any(1), torch.where(pos, ar_v, -1).amax(1), -1)
            tok_c = torch.where(first >= 0, first, last)
            # all-zero residual (rounding only): argmax p. Computed for every row rather than tested
            # for, so that the reference reads nothing back to the host (validate=False fast path).
            tok_c = torch.where(tok_c >= 0, tok_c, tgt[r, cur[c]].float().argmax(-1))
            nxt[c] = tok_c
        if greedy_rows is not None:
            nxt = torch.where(greedy_rows, amax, nxt)
    out[all_rows, n_acc] = nxt
    return out, path, n_acc, nxt


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(t, name, what, dims, floating, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what}: {name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    if not floating and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"{what}: {name} must be an integer tensor, got {t.dtype}")
    if t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{what}: {name} must be {want}, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{what}: {name} is on {t.device}, expected {device} (the target's device)")


def _parse_seed(seed, B, device, what):
    """int seed -> int in [0, 2**63); tensor -> int64 [B] per-sequence seeds, or an int64 0-d tensor
    standing for an int seed (no host read); None -> a fresh int drawn from torch's default generator
    (so torch.manual_seed makes it reproducible)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (), dtype=torch.int64))
    if isinstance(seed, torch.Tensor):
        _check_tensor(seed, "seed", what, (0, 1), floating=False, device=device)
        if seed.dim() == 1 and seed.shape[0] != B:
            raise ValueError(f"{what}: a seed tensor must have shape [B] = [{B}], got {tuple(seed.shape)}")
        return seed.to(torch.int64).contiguous()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{what}: seed must be None, an int or an int64 tensor [B], got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{what}: seed must be in [0, 2**63), got {seed}")
    return seed


def _run_value_checks(checks):
    """checks: list of (bad: bool tensor, message with {idx}). One host sync for all of them."""
    checks = [(bad, msg) for bad, msg in checks if bad is not None and bad.numel() > 0]
    if not checks:
        return
    flags = torch.stack([bad.any() for bad, _ in checks]).tolist()
    for flag, (bad, msg) in zip(flags, checks):
        if flag:
            idx = tuple(bad.nonzero()[0].tolist())
            raise ValueError(msg.format(idx=idx))


def _dist_checks(x, rows_used, name, what, logits):
    """Bad-row masks for a [B, n, V] probability (or logit) tensor, restricted to rows_used [B, n]."""
    if logits:  # NaN or +inf anywhere in a row, or no finite entry: the row's max is not finite
        bad = ~torch.isfinite(x.amax(-1))
        return [
            (bad & rows_used, f"{what}: {name} has a row (batch, node) = {{idx}} with NaN or +inf, or no finite logit")
        ]
    tol = _PROB_SUM_TOL[x.dtype]
    neg = ~(x.amin(-1) >= 0)  # NaN propagates
    off = ~((x.sum(-1, dtype=torch.float32) - 1.0).abs() <= tol)
    return [
        (neg & rows_used, f"{what}: {name} has a negative or NaN entry in row (batch, node) = {{idx}}"),
        (
            off & rows_used,
            f"{what}: {name} row (batch, node) = {{idx}} does not sum to 1 (tolerance {tol}); "
            "pass probabilities, or logits as target_logits",
        ),
    ]


def _greedy_checks(x, rows_used, name, what, logits):
    """Bad-row masks for greedy verification: only an argmax is taken, so the rows need not be
    normalised, but a NaN or infinite entry has no well-defined argmax (the backends would each pick a
    different token, silently). Logits are held to the sampled rule (an all -inf row has no argmax)."""
    if logits:
        return _dist_checks(x, rows_used, name, what, logits)
    bad = ~(torch.isfinite(x.amax(-1)) & torch.isfinite(x.amin(-1)))  # NaN propagates through both
    return [(bad & rows_used, f"{what}: {name} has a NaN or infinite entry in row (batch, node) = {{idx}}")]


def _seed_and_target_checks(seed, target, rows_used, tname, what, logits, mode):
    """Value checks of chain_verify / tree_verify shared by both: a seed tensor is >= 0; the target rows in
    use are finite (greedy) or distributions (the sampled rules)."""
    checks = []
    if isinstance(seed, torch.Tensor):
        checks.append((seed.reshape(-1) < 0, f"{what}: seed tensor must be >= 0; bad at batch {{idx}}"))
    if mode == MODE_GREEDY:
        return checks + _greedy_checks(target, rows_used, tname, what, logits)
    return checks + _dist_checks(target, rows_used, tname, what, logits)


def _check_draft_probs(draft_probs, shape, desc, what, device):
    """draft_probs: a float tensor on the target's device of the given shape (desc names its dims)."""
    _check_tensor(draft_probs, "draft_probs", what, (3,), floating=True, device=device)
    if tuple(draft_probs.shape) != shape:
        raise ValueError(f"{what}: draft_probs must have shape {desc} = {shape}, got {tuple(draft_probs.shape)}")


def _target_args(target_probs, target_logits, temperature, what):
    if (target_probs is None) == (target_logits is None):
        raise ValueError(f"{what}: pass exactly one of target_probs and target_logits")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{what}: temperature must be a float, got {type(temperature).__name__}")
    if not (temperature >= 0.0 and temperature < float("inf")):
        raise ValueError(f"{what}: temperature must be finite and >= 0, got {temperature}")
    if target_probs is not None:
        if temperature != 1.0:
            raise ValueError(f"{what}: temperature applies to target_logits; target_probs are used as given")
        return target_probs, "target_probs", False
    return target_logits, "target_logits", True


def _mode(greedy, logits, temperature, draft_probs):
    if greedy or (logits and temperature == 0.0):
        return MODE_GREEDY
    return MODE_DETERMINISTIC if draft_probs is None else MODE_SAMPLED


def _reference_keys(seed, B, device):
    if isinstance(seed, torch.Tensor) and seed.dim() == 0:  # one seed on the device: an int seed's numbers
        return (seed & MASK32).expand(B), (seed >> 32).expand(B), torch.arange(B, dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        return seed & MASK32, seed >> 32, torch.zeros(B, dtype=torch.int64, device=device)
    k0 = torch.full((B,), seed & MASK32, dtype=torch.int64, device=device)
    k1 = torch.full((B,), seed >> 32, dtype=torch.int64, device=device)
    return k0, k1, torch.arange(B, dtype=torch.int64, device=device)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def chain_verify(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    *,
    draft_lens: torch.Tensor | None = None,
    greedy: bool = False,
    seed: int | torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    validate: bool = True,
    backend: str | None = None,
) -> ChainVerifyResult:
    """Verify a chain of K draft tokens per sequence against the target, losslessly, in one launch.

    Accept draft k with probability ``min(1, p_k(x)/q_k(x))`` (``p_k(x)`` when ``draft_probs`` is
    None, the argmax rule when greedy); at the first rejection emit a token from
    ``norm(max(0, p_k - q_k))`` (``p_k`` without x when ``draft_probs`` is None); if all are accepted
    emit a bonus token from ``p_K``. Leviathan et al. 2023, "Fast Inference from Transformers via
    Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling".

    Parameters
    ----------
    draft_tokens : Tensor
        Integer draft tokens. Shape: ``[B, K]``.
    target_probs : Tensor, optional
        Target distribution after the prefix and after each draft. Shape: ``[B, K+1, V]``.
    draft_probs : Tensor, optional
        Distribution each draft token was sampled from, or None for a deterministic draft. Shape:
        ``[B, K, V]``.
    draft_lens : Tensor, optional
        Integer, valid drafts per sequence (ragged chains); later drafts and target rows are ignored.
        Shape: ``[B]``.
    greedy : bool
        Argmax verification (no randomness).
    seed : int, Tensor or None
        Philox seed: an int (sequence b uses counter b) or an integer ``[B]`` tensor of per-sequence
        seeds (a sequence's result then depends only on its own seed and inputs), or a 0-d integer
        tensor on the target's device that acts as that int (read by the kernel, not the host). None
        draws one from torch's default generator. A decoding loop must change it every step.
    target_logits : Tensor, optional
        Instead of ``target_probs``: logits ``[B, K+1, V]``; the softmax of ``logits / temperature``
        is fused into the kernel. ``temperature=0`` means greedy.
    temperature : float
        Only with ``target_logits``.
    validate : bool
        Check values (token range, distributions, draft_lens, seeds; greedy: no NaN/inf target entries);
        costs host syncs. Shapes, dtypes and devices are always checked. With ``validate=False`` and a
        seed tensor (or greedy) neither backend reads any value back to the host.
    backend : {None, "triton", "reference"}

    Returns
    -------
    ChainVerifyResult
        ``tokens [B, K+1]`` (accepted drafts then the correction/bonus token, padded with -1),
        ``num_emitted [B]`` (= accepted + 1), ``num_accepted [B]``, ``next_token [B]``; int64.

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> p = torch.softmax(torch.randn(2, 4, 11), -1); q = torch.softmax(torch.randn(2, 3, 11), -1)
    >>> x = torch.multinomial(q.flatten(0, 1), 1).view(2, 3)
    >>> res = sk.chain_verify(x, p, q, seed=0)
    >>> bool((res.tokens >= 0).sum(1).eq(res.num_emitted).all())
    True
    """
    what = "chain_verify"
    target, tname, logits = _target_args(target_probs, target_logits, temperature, what)
    _check_tensor(target, tname, what, (3,), floating=True)
    dev = target.device
    _check_tensor(draft_tokens, "draft_tokens", what, (2,), floating=False, device=dev)
    B, N, V = target.shape
    K = draft_tokens.shape[1]
    if draft_tokens.shape[0] != B or N != K + 1:
        raise ValueError(
            f"{what}: draft_tokens [B, K] = {tuple(draft_tokens.shape)} needs {tname} "
            f"[B, K+1, V] = [{draft_tokens.shape[0]}, {K + 1}, V], got {tuple(target.shape)}"
        )
    if V < 1 or N > MAX_NODES:
        raise ValueError(f"{what}: need V >= 1 and K + 1 <= {MAX_NODES}, got {tname} {tuple(target.shape)}")
    mode = _mode(greedy, logits, temperature, draft_probs)
    if draft_probs is not None:
        _check_draft_probs(draft_probs, (B, K, V), "[B, K, V]", what, dev)
    if draft_lens is not None:
        _check_tensor(draft_lens, "draft_lens", what, (1,), floating=False, device=dev)
        if draft_lens.shape[0] != B:
            raise ValueError(f"{what}: draft_lens must have shape [B] = [{B}], got {tuple(draft_lens.shape)}")
    seed = _parse_seed(seed, B, dev, what) if mode != MODE_GREEDY else 0
    impl = resolve_backend(backend, dev, what)

    ar = torch.arange(N, device=dev)
    if validate:
        lens = draft_lens.to(torch.int64) if draft_lens is not None else torch.full((B,), K, device=dev)
        node_ok = ar[None, :] <= lens[:, None]  # [B, K+1] target rows in use
        checks = [
            ((lens < 0) | (lens > K), f"{what}: draft_lens must be in [0, K={K}]; bad at batch {{idx}}"),
            (
                ((draft_tokens < 0) | (draft_tokens >= V)) & node_ok[:, 1:],
                f"{what}: draft_tokens out of range [0, V={V}) at (batch, k) = {{idx}}",
            ),
        ]
        checks += _seed_and_target_checks(seed, target, node_ok, tname, what, logits, mode)
        if mode == MODE_SAMPLED:
            checks += _dist_checks(draft_probs, node_ok[:, 1:], "draft_probs", what, False)
        _run_value_checks(checks)

    inv_temp = 1.0 / temperature if logits and temperature > 0 else 1.0
    drf = draft_probs if mode == MODE_SAMPLED else None
    if impl == "triton":
        out, _, n_acc, n_emit, nxt = _launch(
            draft_tokens,
            None,
            draft_lens,
            target,
            drf,
            is_chain=True,
            mode=mode,
            logits=logits,
            inv_temp=inv_temp,
            seed=seed,
            write_path=False,
        )
        return ChainVerifyResult(out, n_emit, n_acc, nxt)
    tok = torch.cat([torch.zeros(B, 1, dtype=torch.int64, device=dev), draft_tokens.to(torch.int64)], 1)
    par = (ar - 1).expand(B, N)
    valid = ar[None, :] >= 1
    if draft_lens is not None:
        valid = valid & (ar[None, :] <= draft_lens.to(torch.int64)[:, None])
    valid = valid.expand(B, N)
    k0, k1, c0 = _reference_keys(seed, B, dev)
    out, _, n_acc, nxt = _verify_reference(
        tok, par, valid, target, drf, mode=mode, logits=logits, inv_temp=inv_temp, k0=k0, k1=k1, c0=c0
    )
    return ChainVerifyResult(out, n_acc + 1, n_acc, nxt)


def tree_verify(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    *,
    greedy: bool = False,
    seed: int | torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    validate: bool = True,
    backend: str | None = None,
) -> TreeVerifyResult:
    """Verify a token tree per sequence against the target, losslessly, in one launch.

    Walk from the root; at node u try its children in node order. Greedy: accept the first child whose
    token is ``argmax p_u``. Sampled children (drawn from ``q_u`` without replacement, in node order):
    accept x with probability ``min(1, p(x)/q(x))``, else ``p <- norm(max(0, p - q))`` and ``q <- q``
    without x, renormalised. Deterministic children (``draft_probs=None``): accept x with probability
    ``p(x)``, else ``p <- p`` without x, renormalised. When every child of the last accepted node is
    rejected, or it has none, one token is drawn from the final p (SpecInfer, Miao et al. 2024;
    without replacement: Jeon et al. 2024, "Recursive Speculative Decoding").

    Parameters
    ----------
    tokens : Tensor
        Integer node tokens, node 0 = the root (its token is not used). Shape: ``[B, N]``.
    parents : Tensor
        Integer parents in topological order, ``parents[0] = -1``. Shape: ``[N]`` or ``[B, N]``.
    target_probs : Tensor, optional
        Target distribution after node i. Shape: ``[B, N, V]``.
    draft_probs : Tensor, optional
        Distribution node i's children were drawn from (rows of leaves are not read), or None for
        deterministic (top-k) children. Shape: ``[B, N, V]``.
    greedy, seed, target_logits, temperature, validate, backend
        As in :func:`chain_verify` (``target_logits`` shape ``[B, N, V]``).

    Returns
    -------
    TreeVerifyResult
        ``path [B, N]`` accepted node indices starting with the root 0, padded with -1;
        ``num_accepted [B]`` accepted draft nodes; ``next_token [B]`` the correction/bonus token;
        ``tokens [B, N]`` the accepted nodes' tokens then next_token, padded with -1;
        ``num_emitted [B]`` = num_accepted + 1; int64.

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> parents = torch.tensor([-1, 0, 0, 1])           # root, two children, a grandchild
    >>> p = torch.softmax(torch.randn(1, 4, 11), -1)
    >>> tok = torch.tensor([[5, 3, 7, 2]])
    >>> res = sk.tree_verify(tok, parents, p, seed=0)   # deterministic children
    >>> int(res.path[0, 0]), int(res.num_emitted[0]) == int(res.num_accepted[0]) + 1
    (0, True)
    """
    what = "tree_verify"
    target, tname, logits = _target_args(target_probs, target_logits, temperature, what)
    _check_tensor(target, tname, what, (3,), floating=True)
    dev = target.device
    _check_tensor(tokens, "tokens", what, (2,), floating=False, device=dev)
    _check_tensor(parents, "parents", what, (1, 2), floating=False, device=dev)
    B, N, V = target.shape
    if tuple(tokens.shape) != (B, N):
        raise ValueError(
            f"{what}: tokens must have shape [B, N] = {(B, N)} (from {tname} [B, N, V]), got {tuple(tokens.shape)}"
        )
    if parents.shape[-1] != N or (parents.dim() == 2 and parents.shape[0] != B):
        raise ValueError(
            f"{what}: parents must have shape [N] or [B, N] with N = {N}, B = {B}, got {tuple(parents.shape)}"
        )
    if V < 1 or N < 1 or N > MAX_NODES:
        raise ValueError(f"{what}: need V >= 1 and 1 <= N <= {MAX_NODES}, got {tname} {tuple(target.shape)}")
    mode = _mode(greedy, logits, temperature, draft_probs)
    if draft_probs is not None:
        _check_draft_probs(draft_probs, (B, N, V), "[B, N, V]", what, dev)
    seed = _parse_seed(seed, B, dev, what) if mode != MODE_GREEDY else 0
    impl = resolve_backend(backend, dev, what)

    if validate:
        validate_parents(parents, "parents", n=N)
        nodes_ok = torch.ones(B, N, dtype=torch.bool, device=dev)
        checks = [
            (
                ((tokens < 0) | (tokens >= V)) & (torch.arange(N, device=dev) >= 1),
                f"{what}: tokens out of range [0, V={V}) at (batch, node) = {{idx}}",
            )
        ]
        checks += _seed_and_target_checks(seed, target, nodes_ok, tname, what, logits, mode)
        if mode == MODE_SAMPLED:
            par = parents.to(torch.int64).expand(B, N)
            has_child = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
            has_child.scatter_(1, (par + (par < 0) * (N + 1)), True)  # the root's -1 -> column N
            checks += _dist_checks(draft_probs, has_child[:, :N], "draft_probs", what, False)
        _run_value_checks(checks)

    inv_temp = 1.0 / temperature if logits and temperature > 0 else 1.0
    drf = draft_probs if mode == MODE_SAMPLED else None
    if impl == "triton":
        out, path, n_acc, n_emit, nxt = _launch(
            tokens,
            parents,
            None,
            target,
            drf,
            is_chain=False,
            mode=mode,
            logits=logits,
            inv_temp=inv_temp,
            seed=seed,
            write_path=True,
        )
        return TreeVerifyResult(path, n_acc, nxt, out, n_emit)
    par = parents.to(torch.int64).expand(B, N)
    valid = (torch.arange(N, device=dev) >= 1).expand(B, N)
    k0, k1, c0 = _reference_keys(seed, B, dev)
    out, path, n_acc, nxt = _verify_reference(
        tokens.to(torch.int64),
        par,
        valid,
        target,
        drf,
        mode=mode,
        logits=logits,
        inv_temp=inv_temp,
        k0=k0,
        k1=k1,
        c0=c0,
    )
    return TreeVerifyResult(path, n_acc, nxt, out, n_acc + 1)


# ----------------------------------------------------------------------------------------------------
# Registered torch ops: torch.ops.specdec.chain_verify, torch.ops.specdec.tree_verify
# ----------------------------------------------------------------------------------------------------
# For serving runtimes and torch.compile (opaque to the compiler: no graph break, the fake kernels give
# the shapes). Same arguments as the Python functions above, which they run (reference on CPU, Triton on
# CUDA by default) and which stay the public entry (no dispatcher overhead, bench/results/dispatch_cpu.md).
# The ops return the plain tuple of tensors in the NamedTuple's field order: ChainVerifyResult(*op(...)).
# Randomness: the op takes the seed as a tensor on the target's device (int32/int64; 0-d: the numbers of
# that int seed, [B]: per-sequence seeds), so nothing is drawn or read on the host; required unless greedy.

from specdec_kernels import _ops as _specdec_ops  # noqa: E402  (loads the C++ `specdec` library first)

_VERIFY_OP_KWARGS = (
    "bool greedy=False, Tensor? seed=None, Tensor? target_logits=None, float temperature=1.0, "
    "bool validate=True, str? backend=None"
)


def _op_seed(seed, greedy, target_logits, temperature, what):
    """The seed to hand to the Python function: the tensor, or 0 where no randomness is used."""
    if seed is not None:
        return seed
    if greedy or (target_logits is not None and temperature == 0.0):
        return 0  # greedy: not read
    raise ValueError(
        f"{what} (torch op): seed must be an integer tensor, 0-d or [B], on the target's device "
        "(the op draws nothing on the host); only greedy verification may omit it"
    )


def _op_int64(*shapes, like):
    return tuple(like.new_empty(shape, dtype=torch.int64) for shape in shapes)


def _chain_verify_op(
    draft_tokens,
    target_probs=None,
    draft_probs=None,
    *,
    draft_lens=None,
    greedy=False,
    seed=None,
    target_logits=None,
    temperature=1.0,
    validate=True,
    backend=None,
):
    seed = _op_seed(seed, greedy, target_logits, temperature, "chain_verify")
    return tuple(
        chain_verify(
            draft_tokens,
            target_probs,
            draft_probs,
            draft_lens=draft_lens,
            greedy=greedy,
            seed=seed,
            target_logits=target_logits,
            temperature=temperature,
            validate=validate,
            backend=backend,
        )
    )


def _chain_verify_fake(
    draft_tokens,
    target_probs=None,
    draft_probs=None,
    *,
    draft_lens=None,
    greedy=False,
    seed=None,
    target_logits=None,
    temperature=1.0,
    validate=True,
    backend=None,
):
    target, tname, _ = _target_args(target_probs, target_logits, temperature, "chain_verify")
    _check_tensor(target, tname, "chain_verify", (3,), floating=True)
    B, N = target.shape[0], target.shape[1]
    return _op_int64((B, N), (B,), (B,), (B,), like=target)


def _tree_verify_op(
    tokens,
    parents,
    target_probs=None,
    draft_probs=None,
    *,
    greedy=False,
    seed=None,
    target_logits=None,
    temperature=1.0,
    validate=True,
    backend=None,
):
    seed = _op_seed(seed, greedy, target_logits, temperature, "tree_verify")
    return tuple(
        tree_verify(
            tokens,
            parents,
            target_probs,
            draft_probs,
            greedy=greedy,
            seed=seed,
            target_logits=target_logits,
            temperature=temperature,
            validate=validate,
            backend=backend,
        )
    )


def _tree_verify_fake(
    tokens,
    parents,
    target_probs=None,
    draft_probs=None,
    *,
    greedy=False,
    seed=None,
    target_logits=None,
    temperature=1.0,
    validate=True,
    backend=None,
):
    target, tname, _ = _target_args(target_probs, target_logits, temperature, "tree_verify")
    _check_tensor(target, tname, "tree_verify", (3,), floating=True)
    B, N = target.shape[0], target.shape[1]
    return _op_int64((B, N), (B,), (B,), (B, N), (B,), like=target)


_specdec_ops.define_op(
    "chain_verify(Tensor draft_tokens, Tensor? target_probs=None, Tensor? draft_probs=None, *, "
    f"Tensor? draft_lens=None, {_VERIFY_OP_KWARGS}) -> (Tensor tokens, Tensor num_emitted, Tensor num_accepted, "
    "Tensor next_token)",
    _chain_verify_op,
    _chain_verify_fake,
)
_specdec_ops.define_op(
    f"tree_verify(Tensor tokens, Tensor parents, Tensor? target_probs=None, Tensor? draft_probs=None, *, "
    f"{_VERIFY_OP_KWARGS}) -> (Tensor path, Tensor num_accepted, Tensor next_token, Tensor tokens, "
    "Tensor num_emitted)",
    _tree_verify_op,
    _tree_verify_fake,
)


# ----------------------------------------------------------------------------------------------------
# Ragged (flattened) batches for serving runtimes: ragged_verify and torch.ops.specdec.ragged_verify
# ----------------------------------------------------------------------------------------------------
# Same kernel (_verify_program with RAGGED), same reference (_verify_reference on the padded view built
# by _ragged_padded). Layout conventions are in ragged_verify's docstring.

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_shape(t, name, what, shape, desc):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what}: {name} must have shape {desc} = {list(shape)}, got {list(t.shape)}")


def _check_out(t, name, what, shape, desc, device):
    """An integer output buffer (int32 or int64) of the given shape on the target's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{what}: {name} must be int32 or int64, got {t.dtype}")
    _check_shape(t, name, what, shape, desc)
    if t.device != device:
        raise ValueError(f"{what}: {name} is on {t.device}, expected {device} (the target's device)")


class _RaggedArgs(NamedTuple):
    target: torch.Tensor
    tname: str
    logits: bool
    bonus: torch.Tensor | None
    B: int
    T: int
    V: int
    N: int  # max_spec_len + 1
    mode: int


def _ragged_args(
    draft_token_ids,
    cu_num_draft_tokens,
    output_token_ids,
    accept_length,
    target_probs,
    target_logits,
    bonus_probs,
    bonus_logits,
    draft_probs,
    parents,
    greedy,
    is_greedy,
    temperature,
    seed,
    offset,
    uniform_accept,
    uniform_sample,
    accept_index,
    next_token,
):
    """Types, shapes and devices of ragged_verify's arguments (no data read: also the fake kernel)."""
    what = "ragged_verify"
    if (target_probs is None) == (target_logits is None):
        raise ValueError(f"{what}: pass exactly one of target_probs and target_logits")
    logits = target_logits is not None
    target, tname = (target_logits, "target_logits") if logits else (target_probs, "target_probs")
    bonus, bname = (bonus_logits, "bonus_logits") if logits else (bonus_probs, "bonus_probs")
    if (bonus_probs if logits else bonus_logits) is not None:
        raise ValueError(
            f"{what}: bonus rows come in the target's kind: bonus_probs with target_probs, "
            "bonus_logits with target_logits"
        )
    _check_tensor(target, tname, what, (2,), floating=True)
    dev = target.device
    _check_tensor(draft_token_ids, "draft_token_ids", what, (1,), floating=False, device=dev)
    _check_tensor(cu_num_draft_tokens, "cu_num_draft_tokens", what, (1,), floating=False, device=dev)
    T, B, V = draft_token_ids.shape[0], cu_num_draft_tokens.shape[0] - 1, target.shape[1]
    if B < 0:
        raise ValueError(f"{what}: cu_num_draft_tokens must have B + 1 >= 1 entries, got shape [0]")
    if V < 1:
        raise ValueError(f"{what}: need V >= 1, got {tname} {list(target.shape)}")
    if not isinstance(output_token_ids, torch.Tensor) or output_token_ids.dim() != 2:
        raise ValueError(f"{what}: output_token_ids must be a 2-D tensor [B, max_spec_len + 1]")
    N = output_token_ids.shape[1]
    if not 1 <= N <= MAX_NODES:
        raise ValueError(f"{what}: output_token_ids must have 1 <= max_spec_len + 1 <= {MAX_NODES} columns, got {N}")
    _check_out(output_token_ids, "output_token_ids", what, (B, N), "[B, max_spec_len + 1]", dev)
    _check_out(accept_length, "accept_length", what, (B,), "[B]", dev)
    if accept_index is not None:
        _check_out(accept_index, "accept_index", what, (B, N), "[B, max_spec_len + 1]", dev)
    if next_token is not None:
        _check_out(next_token, "next_token", what, (B,), "[B]", dev)
    if bonus is None:
        _check_shape(target, tname, what, (T + B, V), "[T + B, V] (no bonus rows given)")
    else:
        _check_tensor(bonus, bname, what, (2,), floating=True, device=dev)
        _check_shape(target, tname, what, (T, V), f"[T, V] (with {bname})")
        _check_shape(bonus, bname, what, (B, V), "[B, V]")
        if bonus.dtype != target.dtype:
            raise TypeError(f"{what}: {bname} must have the dtype of {tname} ({target.dtype}), got {bonus.dtype}")
    if parents is not None:
        _check_tensor(parents, "parents", what, (1,), floating=False, device=dev)
        _check_shape(parents, "parents", what, (T,), "[T]")
        if bonus is not None:
            raise ValueError(
                f"{what}: separate bonus rows ({bname}) describe chains; pass a tree's node rows "
                f"in the [T + B, V] layout of {tname}"
            )
    if draft_probs is not None:
        _check_tensor(draft_probs, "draft_probs", what, (2,), floating=True, device=dev)
        _check_shape(draft_probs, "draft_probs", what, (T, V), "[T, V]")
    if not isinstance(greedy, bool):
        raise TypeError(
            f"{what}: greedy must be a bool (per-request flags go in is_greedy), got {type(greedy).__name__}"
        )
    if is_greedy is not None:
        if not isinstance(is_greedy, torch.Tensor) or is_greedy.dtype != torch.bool:
            raise TypeError(f"{what}: is_greedy must be a bool tensor [B]")
        _check_shape(is_greedy, "is_greedy", what, (B,), "[B]")
    if temperature is not None:
        if not logits:
            raise ValueError(f"{what}: temperature applies to target_logits; target_probs are used as given")
        _check_tensor(temperature, "temperature", what, (1,), floating=True, device=dev)
        _check_shape(temperature, "temperature", what, (B,), "[B]")
    for name, t, n in (("seed", seed, B), ("offset", offset, B)):
        if t is not None:
            _check_tensor(t, name, what, (1,), floating=False, device=dev)
            _check_shape(t, name, what, (n,), "[B]")
    for name, t, n, desc in (
        ("uniform_accept", uniform_accept, T, "[T]"),
        ("uniform_sample", uniform_sample, B, "[B]"),
    ):
        if t is not None:
            _check_tensor(t, name, what, (1,), floating=True, device=dev)
            _check_shape(t, name, what, (n,), desc)
    if is_greedy is not None and is_greedy.device != dev:
        raise ValueError(f"{what}: is_greedy is on {is_greedy.device}, expected {dev} (the target's device)")
    if offset is not None and seed is None:
        raise ValueError(f"{what}: offset goes with seed")
    if (uniform_accept is None) != (uniform_sample is None):
        raise ValueError(f"{what}: pass both uniform_accept and uniform_sample, or neither")
    if seed is not None and uniform_accept is not None:
        raise ValueError(f"{what}: pass either seed (and offset) or uniform_accept and uniform_sample, not both")
    if not greedy and seed is None and uniform_accept is None:
        raise ValueError(
            f"{what}: sampled verification needs randomness on the device: seed [B] (and offset "
            "[B]) or uniform_accept [T] and uniform_sample [B]; only greedy=True may omit it"
        )
    mode = MODE_GREEDY if greedy else (MODE_DETERMINISTIC if draft_probs is None else MODE_SAMPLED)
    return _RaggedArgs(target, tname, logits, bonus, B, T, V, N, mode)


def _row_rules(is_greedy, temperature):
    """Per-request (greedy flags, fp32 1 / temperature) on the device; None where not per request.
    Temperature 0 means greedy, as for chain_verify."""
    inv_temp = greedy_rows = None
    if temperature is not None:
        t = temperature.to(torch.float64)
        inv_temp = torch.where(t > 0, 1.0 / t, 1.0).to(torch.float32)  # fp64 reciprocal, as chain_verify's
        greedy_rows = t <= 0
    if is_greedy is not None:
        greedy_rows = is_greedy if greedy_rows is None else greedy_rows | is_greedy
    return greedy_rows, inv_temp


def _flat_row_checks(checks):
    """_dist_checks / _greedy_checks run on [R, 1, V] rows, reworded for flat row indices."""
    return [(bad.reshape(-1), msg.replace("row (batch, node) =", "flat row")) for bad, msg in checks]


def _ragged_value_checks(
    a, draft_token_ids, cu, draft_probs, parents, greedy_rows, temperature, uniform_accept, uniform_sample
):
    """ValueError on bad values (one host sync): offsets, tokens, parents, distributions, temperatures,
    uniforms. Greedy requests' rows are held to the greedy rule, the others to the sampled one."""
    what = "ragged_verify"
    dev, B, T, N = a.target.device, a.B, a.T, a.N
    cu64 = cu.to(torch.int64)
    k = cu64[1:] - cu64[:-1]
    flat = torch.arange(T, device=dev)
    req_t = torch.searchsorted(cu64[1:].contiguous(), flat, right=True).clamp(max=max(B - 1, 0))
    checks = [
        (cu64[:1] != 0, f"{what}: cu_num_draft_tokens[0] must be 0"),
        (k < 0, f"{what}: cu_num_draft_tokens must be nondecreasing; bad at request {{idx}}"),
        (cu64[-1:] != T, f"{what}: cu_num_draft_tokens[B] must be T = len(draft_token_ids) = {T}"),
        (
            k > N - 1,
            f"{what}: a request has more drafts than output_token_ids holds (max_spec_len = {N - 1}); "
            "bad at request {idx}",
        ),
        (
            (draft_token_ids < 0) | (draft_token_ids >= a.V),
            f"{what}: draft_token_ids out of range [0, V={a.V}) at flat entry {{idx}}",
        ),
    ]
    if parents is not None and B > 0:
        pos = flat - cu64[req_t]  # the draft's index i within its request: its node is i + 1
        checks.append(
            (
                (parents < 0) | (parents > pos),
                f"{what}: parents of a request's i-th draft must be in [0, i] (0 = the root, j = the "
                "node of draft j - 1); bad at flat entry {idx}",
            )
        )
    if temperature is not None:
        checks.append(
            (
                ~((temperature >= 0) & torch.isfinite(temperature)),
                f"{what}: temperature must be finite and >= 0; bad at request {{idx}}",
            )
        )
    for name, u in (("uniform_accept", uniform_accept), ("uniform_sample", uniform_sample)):
        if u is not None:
            checks.append((~((u >= 0) & (u < 1)), f"{what}: {name} must be in [0, 1); bad at {{idx}}"))
    # which request each target row belongs to: its greedy flag picks the rule
    if a.bonus is None:
        ends = cu64[1:] + torch.arange(B, device=dev)  # the last row of request b
        req_rows = [torch.searchsorted(ends.contiguous(), torch.arange(T + B, device=dev)).clamp(max=max(B - 1, 0))]
        rows = [a.target]
    else:
        req_rows, rows = [req_t, torch.arange(B, device=dev)], [a.target, a.bonus]
    names = [a.tname] if a.bonus is None else [a.tname, "bonus_logits" if a.logits else "bonus_probs"]
    for x, req, name in zip(rows, req_rows, names):
        g = (
            torch.ones_like(req, dtype=torch.bool)
            if a.mode == MODE_GREEDY
            else (greedy_rows[req] if greedy_rows is not None and B > 0 else torch.zeros_like(req, dtype=torch.bool))
        )
        checks += _flat_row_checks(_greedy_checks(x[:, None], g[:, None], name, what, a.logits))
        if a.mode != MODE_GREEDY:
            checks += _flat_row_checks(_dist_checks(x[:, None], ~g[:, None], name, what, a.logits))
    if a.mode == MODE_SAMPLED:
        g = greedy_rows[req_t] if greedy_rows is not None and B > 0 else torch.zeros(T, dtype=torch.bool, device=dev)
        checks += _flat_row_checks(_dist_checks(draft_probs[:, None], ~g[:, None], "draft_probs", what, False))
    _run_value_checks(checks)


def _ragged_padded(a, tok, cu, par, drf, u_acc):
    """The ragged batch as a padded one for _verify_reference: (tok, par, valid, tgt, drf, u_accept,
    t0), nodes [B, N] with node 0 the root, offsets clamped as in the kernel. Node u's draft row is
    its first child's (siblings share one by contract)."""
    B, T, N, dev = a.B, a.T, a.N, a.target.device
    i64 = torch.int64
    cu64 = cu.to(i64)
    t0 = cu64[:-1].clamp(0, T)
    k = torch.maximum(cu64[1:].clamp(max=T), t0) - t0
    k = k.clamp(max=N - 1)
    ar = torch.arange(N, device=dev)
    b_idx = torch.arange(B, device=dev)[:, None]
    valid = (ar >= 1) & (ar <= k[:, None])
    flat = torch.where(valid, t0[:, None] + ar - 1, T)  # T: a padding entry appended below

    def padded(x, fill):
        return torch.cat([x, x.new_full((1, *x.shape[1:]), fill)])[flat]

    tok_p = padded(tok.to(i64), 0)
    par_p = (ar - 1).expand(B, N) if par is None else torch.where(valid, padded(par.to(i64), -1), -1)
    if a.bonus is None:
        tgt_p = a.target[t0[:, None] + b_idx + torch.minimum(ar, k[:, None])]
    else:
        tgt_p = torch.cat([a.target, a.bonus])[torch.where(ar < k[:, None], t0[:, None] + ar, T + b_idx)]
    drf_p = None
    if drf is not None:
        col = torch.where(valid & (par_p >= 0) & (par_p < N), par_p, N)  # column N: a dump
        first = torch.full((B, N + 1), T, dtype=i64, device=dev).scatter_reduce(1, col, flat, "amin")
        drf_p = torch.cat([drf, drf.new_zeros(1, drf.shape[1])])[first[:, :N]]
    ua = None if u_acc is None else torch.where(valid, padded(u_acc.to(torch.float64), 0.5), 0.5)
    return tok_p, par_p, valid, tgt_p, drf_p, ua, t0


def _launch_ragged(
    a,
    tok,
    cu,
    par,
    drf,
    out_tok,
    acc_len,
    acc_idx,
    nxt,
    *,
    greedy_rows,
    inv_temp,
    seed,
    offset,
    u_acc,
    u_smp,
    block_v=None,
):
    """One launch, one program per request; reads nothing back to the host. Inputs already checked."""
    if a.B == 0:
        return
    tgt = a.target if a.target.stride(-1) == 1 else a.target.contiguous()
    bonus = a.bonus
    if bonus is not None and bonus.stride(-1) != 1:
        bonus = bonus.contiguous()
    if drf is not None and drf.stride(-1) != 1:
        drf = drf.contiguous()
    vecs = [
        t.contiguous() if t is not None else None
        for t in (tok, cu, par, greedy_rows, inv_temp, seed, offset, u_acc, u_smp)
    ]
    tok, cu, par, greedy_rows, inv_temp, seed, offset, u_acc, u_smp = vecs
    dummy = acc_len
    nxt = nxt if nxt is not None else torch.empty(a.B, dtype=torch.int64, device=tgt.device)
    block_v = block_v or min(triton.next_power_of_2(a.V), MAX_BLOCK_V)
    block_n = max(triton.next_power_of_2(a.N), 2)
    with torch.cuda.device(tgt.device) if tgt.device.type == "cuda" else contextlib.nullcontext():
        _ragged_verify_kernel[(a.B,)](
            tok,
            par if par is not None else dummy,
            cu,
            tgt,
            bonus if bonus is not None else tgt,
            drf if drf is not None else tgt,
            greedy_rows if greedy_rows is not None else dummy,
            inv_temp if inv_temp is not None else dummy,
            seed if seed is not None else dummy,
            offset if offset is not None else dummy,
            u_acc if u_acc is not None else dummy,
            u_smp if u_smp is not None else dummy,
            out_tok,
            acc_idx if acc_idx is not None else out_tok,
            acc_len,
            nxt,
            a.T,
            a.N,
            a.V,
            0 if bonus is not None else tgt.stride(0),
            tgt.stride(0),
            bonus.stride(0) if bonus is not None else 0,
            drf.stride(0) if drf is not None else 0,
            out_tok.stride(0),
            out_tok.stride(1),
            acc_idx.stride(0) if acc_idx is not None else 0,
            acc_idx.stride(1) if acc_idx is not None else 0,
            IS_CHAIN=par is None,
            MODE=int(a.mode),
            LOGITS=a.logits,
            SEP_BONUS=bonus is not None,
            ROW_GREEDY=greedy_rows is not None,
            ROW_TEMP=inv_temp is not None,
            SEED_PER_ROW=seed is not None,
            RNG_OFFSET=offset is not None,
            UNIFORMS=u_acc is not None,
            WRITE_PATH=acc_idx is not None,
            BLOCK_V=block_v,
            BLOCK_N=block_n,
            num_warps=8 if block_v >= 2048 else 4,
        )


def ragged_verify(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    *,
    output_token_ids: torch.Tensor,
    accept_length: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    bonus_probs: torch.Tensor | None = None,
    bonus_logits: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    parents: torch.Tensor | None = None,
    greedy: bool = False,
    is_greedy: torch.Tensor | None = None,
    temperature: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    uniform_accept: torch.Tensor | None = None,
    uniform_sample: torch.Tensor | None = None,
    accept_index: torch.Tensor | None = None,
    next_token: torch.Tensor | None = None,
    validate: bool = True,
    backend: str | None = None,
) -> None:
    """Verify a flattened (ragged) batch of draft chains or trees in one launch, into caller buffers.

    The same lossless rules as :func:`chain_verify` / :func:`tree_verify`, in the layouts serving
    runtimes hold: no padding, per-request rules and randomness as device tensors, outputs written in
    place. With ``validate=False`` and the Triton backend nothing is read back to the host (CUDA-graph
    friendly); bad values then give unspecified results but no access outside the given tensors.
    Registered as ``torch.ops.specdec.ragged_verify`` (same arguments).

    Layout. B requests, T drafts in all. Request b's drafts are the flat entries
    ``cu_num_draft_tokens[b] : cu_num_draft_tokens[b + 1]`` (``k_b`` of them, possibly 0). As in
    :func:`tree_verify`, request b has nodes ``0 .. k_b``: node 0 is the root (the last token already
    emitted, not passed) and node ``i + 1`` is its draft i (flat entry ``cu[b] + i``).

    Parameters
    ----------
    draft_token_ids : Tensor
        int32/int64 ``[T]``.
    cu_num_draft_tokens : Tensor
        int32/int64 ``[B + 1]``: 0, then cumulative draft counts (``cu[B] = T``).
    output_token_ids : Tensor, out
        int32/int64 ``[B, max_spec_len + 1]`` (vLLM's layout): row b gets the accepted drafts, then the
        correction/bonus token, then -1 placeholders. Its width sets ``max_spec_len >= max k_b``.
    accept_length : Tensor, out
        int32/int64 ``[B]``: accepted drafts (request b emits ``accept_length[b] + 1`` tokens).
    target_probs, target_logits : Tensor
        Exactly one; float ``[T + B, V]``: node u of request b at row ``cu[b] + b + u``, i.e. each request's
        ``k_b + 1`` rows contiguous (SGLang's and this repository's loop's layout); row of node u = the
        target's distribution after it. Or, for chains with ``bonus_probs`` / ``bonus_logits``
        ``[B, V]`` (vLLM's layout): ``[T, V]`` with draft i's row ``cu[b] + i`` = the target after node
        i (the distribution draft i is verified against) and the bonus row = after the last node.
        Logits are softmaxed with the request's temperature inside the kernel.
    bonus_probs, bonus_logits : Tensor, optional
        ``[B, V]``, same kind and dtype as the target; chains only (``parents=None``).
    draft_probs : Tensor, optional
        float ``[T, V]``: row t = the distribution draft t was sampled from (its parent's ``q``; in a tree
        siblings share it, the walk reads each child's own row). None: deterministic drafts (n-gram,
        top-k; accept x with probability ``p(x)``, the rule of ``draft_probs=None`` in tree_verify).
    parents : Tensor, optional
        int32/int64 ``[T]``, trees: ``parents[cu[b] + i]`` is the parent node of draft i, in
        ``[0, i]`` (0 = the root, j = draft j - 1's node), i.e. tree_verify's ``parents[1:]`` per request;
        children are tried in flat order. None: chains (draft i's parent is node i).
    greedy : bool
        Every request greedy (argmax rule; no randomness needed, ``is_greedy``/``temperature`` unused).
    is_greedy : Tensor, optional
        bool ``[B]``: per-request greedy flags (mixed batches).
    temperature : Tensor, optional
        float ``[B]``, with target logits only: per-request temperature, 0 = greedy (None: 1).
    seed, offset : Tensor, optional
        Integer ``[B]``: Philox key ``seed[b]`` (64 bits) and counter ``(offset[b] low word, node,
        offset[b] high word)`` (offset None: 0). ``seed[b]`` with offset 0 draws exactly chain_verify's /
        tree_verify's numbers for a per-sequence seed ``seed[b]``. Advance seed or offset every step.
    uniform_accept, uniform_sample : Tensor, optional
        Instead of seed: float ``[T]`` (draft t's accept test) and ``[B]`` (the correction/bonus draw),
        uniforms in [0, 1). One of the two sources is required unless ``greedy=True``.
    accept_index : Tensor, out, optional
        int32/int64 ``[B, max_spec_len + 1]`` (SGLang's layout): the accepted path's flat node rows
        ``cu[b] + b + u``, root first (``accept_length[b] + 1`` entries), then -1.
    next_token : Tensor, out, optional
        int32/int64 ``[B]``: the correction/bonus token.
    validate : bool
        Check values (offsets, tokens, parents, distributions, temperatures, uniforms): one host sync.
        Types, shapes and devices are always checked (no sync).
    backend : {None, "triton", "reference"}

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> cu = torch.tensor([0, 2, 2])                          # request 0: 2 drafts, request 1: none
    >>> p = torch.softmax(torch.randn(2 + 2, 7), -1)          # rows: req 0 nodes 0-2, req 1 node 0
    >>> out = torch.empty(2, 3, dtype=torch.int32); n = torch.empty(2, dtype=torch.int32)
    >>> sk.ragged_verify(torch.tensor([3, 5]), cu, output_token_ids=out, accept_length=n, target_probs=p,
    ...                  seed=torch.tensor([7, 8]))
    >>> bool((out >= 0).sum(1).eq(n + 1).all())
    True
    """
    a = _ragged_args(
        draft_token_ids,
        cu_num_draft_tokens,
        output_token_ids,
        accept_length,
        target_probs,
        target_logits,
        bonus_probs,
        bonus_logits,
        draft_probs,
        parents,
        greedy,
        is_greedy,
        temperature,
        seed,
        offset,
        uniform_accept,
        uniform_sample,
        accept_index,
        next_token,
    )
    impl = resolve_backend(backend, a.target.device, "ragged_verify")
    greedy_rows, inv_temp = _row_rules(is_greedy, temperature) if a.mode != MODE_GREEDY else (None, None)
    if validate:
        _ragged_value_checks(
            a,
            draft_token_ids,
            cu_num_draft_tokens,
            draft_probs,
            parents,
            greedy_rows,
            temperature,
            uniform_accept,
            uniform_sample,
        )
    drf = draft_probs if a.mode == MODE_SAMPLED else None
    rng = a.mode != MODE_GREEDY
    seed = seed.to(torch.int64) if rng and seed is not None else None
    offset = offset.to(torch.int64) if seed is not None and offset is not None else None
    u_acc, u_smp = (uniform_accept, uniform_sample) if rng and seed is None else (None, None)
    if impl == "triton":
        _launch_ragged(
            a,
            draft_token_ids,
            cu_num_draft_tokens,
            parents,
            drf,
            output_token_ids,
            accept_length,
            accept_index,
            next_token,
            greedy_rows=greedy_rows,
            inv_temp=inv_temp,
            seed=seed,
            offset=offset,
            u_acc=u_acc,
            u_smp=u_smp,
        )
        return
    if a.B == 0:
        return
    tok, par, valid, tgt, drf_p, ua, t0 = _ragged_padded(a, draft_token_ids, cu_num_draft_tokens, parents, drf, u_acc)
    M = MASK32
    zeros = torch.zeros(a.B, dtype=torch.int64, device=tgt.device)
    s = seed if seed is not None else zeros
    o = offset if offset is not None else zeros
    out, path, n_acc, nxt = _verify_reference(
        tok,
        par,
        valid,
        tgt,
        drf_p,
        mode=a.mode,
        logits=a.logits,
        inv_temp=inv_temp if inv_temp is not None else 1.0,
        k0=s & M,
        k1=(s >> 32) & M,
        c0=o & M,
        c2=(o >> 32) & M,
        greedy_rows=greedy_rows,
        uniforms=None if ua is None else (ua, u_smp),
    )
    output_token_ids.copy_(out)
    accept_length.copy_(n_acc)
    if accept_index is not None:
        accept_index.copy_(torch.where(path >= 0, path + (t0 + torch.arange(a.B, device=tgt.device))[:, None], -1))
    if next_token is not None:
        next_token.copy_(nxt)


from specdec_kernels import _ops as _specdec_ops_ragged  # noqa: E402,F401  (the C++ `specdec` library first)

# The op's arguments are ragged_verify's, in its order, with the tensors positional (custom ops take no
# keyword-only tensors) and the flags keyword-only; the schema is written out from ragged_verify's
# signature so that the argument list is kept in one place.
_RAGGED_OP_FLAGS = "*, bool greedy=False, bool validate=True, str? backend=None"
_RAGGED_OP_OUTPUTS = ("output_token_ids", "accept_length", "accept_index", "next_token")


def _ragged_op_tensors() -> tuple[str, ...]:
    """ragged_verify's tensor arguments in order: all of its parameters but the flags."""
    return tuple(n for n in inspect.signature(ragged_verify).parameters if n not in ("greedy", "validate", "backend"))


def _ragged_op_schema(names) -> str:
    """``(Tensor draft_token_ids, ..., Tensor(a2!) output_token_ids, ..., Tensor? target_probs=None, ...,
    *, flags) -> ()``: a tensor without a default in ragged_verify is required, an output is marked mutated."""
    params = inspect.signature(ragged_verify).parameters
    args = []
    for i, name in enumerate(names):
        alias = f"(a{i}!)" if name in _RAGGED_OP_OUTPUTS else ""
        required = params[name].default is inspect.Parameter.empty
        args.append(f"Tensor{alias} {name}" if required else f"Tensor{alias}? {name}=None")
    return "(" + ", ".join(args + [_RAGGED_OP_FLAGS]) + ") -> ()"


_RAGGED_OP_TENSORS = _ragged_op_tensors()


@torch.library.custom_op(
    "specdec::ragged_verify", mutates_args=_RAGGED_OP_OUTPUTS, schema=_ragged_op_schema(_RAGGED_OP_TENSORS)
)
def _ragged_verify_op(*tensors, greedy=False, validate=True, backend=None) -> None:
    """:func:`ragged_verify` as a torch op (writes its output buffers, returns nothing). Same arguments;
    the tensors may also be passed by position, in ragged_verify's order."""
    ragged_verify(**dict(zip(_RAGGED_OP_TENSORS, tensors)), greedy=greedy, validate=validate, backend=backend)


@_ragged_verify_op.register_fake
def _ragged_verify_fake(*tensors, greedy=False, validate=True, backend=None):
    # outputs are written in place: only the argument metadata can be checked
    _ragged_args(**dict(zip(_RAGGED_OP_TENSORS, tensors)), greedy=greedy)
    return None
