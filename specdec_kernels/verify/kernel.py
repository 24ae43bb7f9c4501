"""The Triton verification kernel: one program per sequence walks its tree (chain, padded or ragged)."""

from __future__ import annotations

import triton
import triton.language as tl

from specdec_kernels.philox import UNIFORM_SHIFT, UNIFORM_STEP, philox_2x32_tl
from specdec_kernels.verify.common import MODE_DETERMINISTIC, MODE_GREEDY, MODE_SAMPLED

_NO_INDEX = tl.constexpr(2147483647)  # int32 max: "no token here" in min-reductions over token indices
MIN_Q_MASS = tl.constexpr(1e-30)  # floor of S (q's mass left), so that Z / S stays finite


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


# The walk is one device function (inlined when compiled) behind two launch entries: verify_kernel keeps
# the padded entries' signature, ragged_verify_kernel maps the flattened layout onto the RAGGED paths.
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
    """One program per sequence (request): the whole walk. Launched through :func:`verify_kernel`
    (padded batches) and :func:`ragged_verify_kernel` (flattened batches, RAGGED)."""
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
                    s_q = tl.maximum(s_q - qx, MIN_Q_MASS)
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
def verify_kernel(
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
def ragged_verify_kernel(
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
