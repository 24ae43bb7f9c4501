"""The PyTorch reference of verification: it defines the semantics (and is the CPU path)."""

from __future__ import annotations

import torch

from specdec_kernels.philox import MASK32, philox_2x32, uniform_closed_open, uniform_open
from specdec_kernels.verify.common import MODE_DETERMINISTIC, MODE_GREEDY, MODE_SAMPLED, PAD_TOKEN
from specdec_kernels.verify.kernel import MIN_Q_MASS


def row_chunks(n: int, V: int):
    step = max(1, (1 << 23) // max(V, 1))  # bounded temporaries: about 8M elements per chunk
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def verify_reference(
    tok, par, valid, tgt, drf, *, mode, logits, inv_temp, k0, k1, c0, c2=0, greedy_rows=None, uniforms=None
):
    """Walk every sequence's tree; returns (out_tokens, path, num_accepted, next_token).

    tok [B, N] node tokens (column 0 unused); par [B, N] parents; valid [B, N] which nodes exist;
    tgt [B, N, V] target probs/logits; drf [B, >=nodes with children, V] or None; inv_temp a float or
    fp32 [B]; k0, k1, c0, c2 [B] (c2 also 0) the Philox key and counter words of each sequence, or
    ``uniforms = (u_accept [B, N] indexed by node, u_sample [B])`` instead; greedy_rows [B] bool: rows
    verified by the greedy rule whatever ``mode`` says. Mirrors the kernel step for step.
    """
    walk = _Walk(tgt, drf, mode, logits, inv_temp, greedy_rows)
    keys = (k0, k1, c0, torch.as_tensor(c2, dtype=torch.int64, device=tgt.device).expand(tgt.shape[0]))
    walk.enter(torch.arange(tgt.shape[0], device=tgt.device), 0)
    for j in range(1, tgt.shape[1]):
        rows = (valid[:, j] & (par[:, j] == walk.cur)).nonzero().squeeze(1)
        if rows.numel():
            walk.try_child(rows, j, tok[rows, j].to(torch.int64), keys, uniforms)
    nxt = walk.last_draw(keys, uniforms)
    walk.out[torch.arange(tgt.shape[0], device=tgt.device), walk.n_acc] = nxt
    return walk.out, walk.path, walk.n_acc, nxt


class _Walk:
    """The state of every sequence's walk (the kernel's per-program registers, one row per sequence):
    the node it stands on, what it accepted, and the residual scalars A, S, Z of the module docstring
    (``a_sub``, ``s_q``, ``z_res``) or the rejected tokens (deterministic children)."""

    def __init__(self, tgt, drf, mode, logits, inv_temp, greedy_rows):
        B, N, V = tgt.shape
        dev = self.dev = tgt.device
        i64, f64 = torch.int64, torch.float64
        self.tgt, self.drf, self.mode, self.logits, self.greedy_rows, self.V = tgt, drf, mode, logits, greedy_rows, V
        self.it = torch.as_tensor(inv_temp, dtype=torch.float32, device=dev).expand(B)
        self.cur = torch.zeros(B, dtype=i64, device=dev)
        self.n_acc = torch.zeros(B, dtype=i64, device=dev)
        self.path = torch.full((B, N), PAD_TOKEN, dtype=i64, device=dev)
        self.path[:, 0] = 0
        self.out = torch.full((B, N), PAD_TOKEN, dtype=i64, device=dev)
        self.a_sub = torch.zeros(B, dtype=f64, device=dev)
        self.s_q = torch.ones(B, dtype=f64, device=dev)
        self.z_res = torch.ones(B, dtype=f64, device=dev)
        self.nrej = torch.zeros(B, dtype=i64, device=dev)
        self.rej = torch.full((B, N), -1, dtype=i64, device=dev)
        self.amax = torch.zeros(B, dtype=i64, device=dev)
        self.m = torch.zeros(B, dtype=torch.float32, device=dev)
        self.inv_l = torch.ones(B, dtype=torch.float32, device=dev)

    def enter(self, rows, node) -> None:
        """Per-node statistics for the rows that just moved to ``node``: argmax, and the softmax's max and
        1 / sum when the target comes as logits."""
        for c in row_chunks(rows.numel(), self.V):
            r = rows[c]
            x = self.tgt[r, node].float()
            if self.mode == MODE_GREEDY or self.greedy_rows is not None:
                self.amax[r] = x.argmax(-1)
            if self.mode != MODE_GREEDY and self.logits:
                xs = x * self.it[r, None]
                mx = xs.amax(-1)
                self.m[r] = mx
                self.inv_l[r] = 1.0 / torch.exp(xs - mx[:, None]).sum(-1)

    def target_rows(self, r, nodes) -> torch.Tensor:
        """p at each row's node, fp32 [R, V]."""
        x = self.tgt[r, nodes].float()
        if self.logits:
            x = torch.exp(x * self.it[r, None] - self.m[r, None]) * self.inv_l[r, None]
        return x

    def target_at(self, rows, node, xs) -> torch.Tensor:
        """p(x) at each row's node, fp64 [R]."""
        if self.logits:
            return (torch.exp(self.tgt[rows, node, xs].float() * self.it[rows] - self.m[rows]) * self.inv_l[rows]).to(
                torch.float64
            )
        return self.tgt[rows, node, xs].to(torch.float64)

    def residual_rows(self, r, nodes, use_q) -> torch.Tensor:
        """The unnormalised residual at each row's node, fp32 [R, V]."""
        p = self.target_rows(r, nodes)
        drf = self.drf
        if self.mode == MODE_SAMPLED and drf.shape[1] > 0:
            q = drf[r, nodes.clamp(max=drf.shape[1] - 1)].float()
            sub = torch.clamp(p - self.a_sub[r].float()[:, None] * q, min=0.0)
            p = torch.where(use_q[:, None], sub, p)
        elif self.mode == MODE_DETERMINISTIC:
            rr, cc = (self.rej[r] >= 0).nonzero(as_tuple=True)
            p[rr, self.rej[r][rr, cc]] = 0.0
        return p

    def residual_sum(self, rows, nodes, use_q) -> torch.Tensor:
        out_z = torch.empty(rows.numel(), dtype=torch.float32, device=self.dev)
        for c in row_chunks(rows.numel(), self.V):
            out_z[c] = self.residual_rows(rows[c], nodes[c], use_q[c]).sum(-1)
        return out_z

    def try_child(self, rows, j, x, keys, uniforms) -> None:
        """Node j, a child of the node each of ``rows`` stands on, with token ``x`` [R]: accept (move to
        it) or reject (update the residual)."""
        f64 = torch.float64
        x_ok = (x >= 0) & (x < self.V)
        xs = x.clamp(0, self.V - 1)
        node = self.cur[rows]
        qx = px_res = None
        if self.mode == MODE_GREEDY:
            acc = x == self.amax[rows]
        else:
            if uniforms is not None:
                u = uniforms[0][rows, j].to(f64)
            else:
                k0, k1, c0, c2 = keys
                u = uniform_open(philox_2x32(k0[rows], k1[rows], c0[rows], j, c2[rows])[0])
            px = self.target_at(rows, node, xs)
            if self.mode == MODE_SAMPLED:
                qx = self.drf[rows, node, xs].to(f64)
                px_res = torch.clamp(px - self.a_sub[rows] * qx, min=0.0)
                acc = (u * qx * self.z_res[rows] < px_res * self.s_q[rows]) & x_ok
            else:
                dup = (self.rej[rows] == x[:, None]).any(1)
                px_res = torch.where(dup, torch.zeros_like(px), px)
                acc = (u * self.z_res[rows] < px_res) & x_ok
            if self.greedy_rows is not None:
                acc = torch.where(self.greedy_rows[rows], x == self.amax[rows], acc)
        ra, rr = rows[acc], rows[~acc]
        if ra.numel():
            self.n_acc[ra] += 1
            self.cur[ra] = j
            self.path[ra, self.n_acc[ra]] = j
            self.out[ra, self.n_acc[ra] - 1] = x[acc]
            self.a_sub[ra], self.s_q[ra], self.z_res[ra], self.nrej[ra], self.rej[ra] = 0.0, 1.0, 1.0, 0, -1
            self.enter(ra, j)
        if rr.numel():
            if self.mode == MODE_SAMPLED:  # p <- norm(max(0, p - q)), then q loses x
                self.a_sub[rr] += self.z_res[rr] / self.s_q[rr]
                every = torch.ones_like(rr, dtype=torch.bool)
                self.z_res[rr] = self.residual_sum(rr, self.cur[rr], every).to(f64)
                self.s_q[rr] = torch.clamp(self.s_q[rr] - qx[~acc], min=MIN_Q_MASS.value)
            elif self.mode == MODE_DETERMINISTIC:  # p <- p without x
                self.z_res[rr] -= px_res[~acc]
                self.rej[rr, self.nrej[rr]] = x[~acc]
            self.nrej[rr] += 1

    def last_draw(self, keys, uniforms) -> torch.Tensor:
        """The correction (after rejections) or bonus token at each sequence's last node, [B]."""
        if self.mode == MODE_GREEDY:
            return self.amax.clone()
        B = self.cur.numel()
        if uniforms is not None:
            u = uniforms[1].to(torch.float32)
        else:
            k0, k1, c0, c2 = keys
            u = uniform_closed_open(philox_2x32(k0, k1, c0, self.cur, c2)[1])
        use_q = self.nrej > 0
        if self.mode == MODE_SAMPLED:
            need_sum = torch.zeros_like(use_q) if self.logits else self.nrej == 0
        else:
            need_sum = self.nrej > 0 if self.logits else torch.ones_like(use_q)
        nxt = torch.empty(B, dtype=torch.int64, device=self.dev)
        ar_v = torch.arange(self.V, device=self.dev)
        all_rows = torch.arange(B, device=self.dev)
        for c in row_chunks(B, self.V):
            r = all_rows[c]
            res = self.residual_rows(r, self.cur[c], use_q[c])
            z = torch.where(need_sum[c], res.sum(-1).to(torch.float64), self.z_res[c]).to(torch.float32)
            target = u[c] * z
            pos = res > 0
            hit = (res.cumsum(-1) > target[:, None]) & pos
            first = torch.where(hit.any(1), hit.to(torch.uint8).argmax(1), -1)
            last = torch.where(pos.any(1), torch.where(pos, ar_v, -1).amax(1), -1)
            tok_c = torch.where(first >= 0, first, last)
            # all-zero residual (rounding only): argmax p. Computed for every row rather than tested
            # for, so that the reference reads nothing back to the host (validate=False fast path).
            nxt[c] = torch.where(tok_c >= 0, tok_c, self.tgt[r, self.cur[c]].float().argmax(-1))
        if self.greedy_rows is not None:
            nxt = torch.where(self.greedy_rows, self.amax, nxt)
        return nxt


def reference_keys(seed, B, device):
    if isinstance(seed, torch.Tensor) and seed.dim() == 0:  # one seed on the device: an int seed's numbers
        return (seed & MASK32).expand(B), (seed >> 32).expand(B), torch.arange(B, dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        return seed & MASK32, seed >> 32, torch.zeros(B, dtype=torch.int64, device=device)
    k0 = torch.full((B,), seed & MASK32, dtype=torch.int64, device=device)
    k1 = torch.full((B,), seed >> 32, dtype=torch.int64, device=device)
    return k0, k1, torch.arange(B, dtype=torch.int64, device=device)


def ragged_padded(a, tok, cu, par, drf, u_acc):
    """The ragged batch as a padded one for verify_reference: (tok, par, valid, tgt, drf, u_accept,
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
