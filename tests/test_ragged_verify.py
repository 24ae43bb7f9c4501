"""ragged_verify (flattened batches for serving runtimes) and torch.ops.specdec.ragged_verify.

The padded entries chain_verify / tree_verify define the semantics; a ragged batch with per-request
seeds (offset 0) draws the same Philox numbers as a padded batch with the same per-sequence seeds, so
the two must agree exactly, request for request, on both backends. Losslessness is checked by a seeded
chi-square on a tiny vocabulary, many requests in one launch (reference backend; the kernel is held to
the reference row for row by test_triton_matches_reference).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import specdec_kernels as sk
from conftest import compile_ahead_of_time
from specdec_kernels import verify as rs

BACKENDS = ["reference", "triton"]
ALPHA = 1e-3  # chi-square significance; seeded, so the test cannot flake
KS = [2, 0, 3, 1, 0, 3]  # drafts per request: ragged, with empty requests
M = 4  # max_spec_len of the output buffers (> max(KS): spare columns stay -1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: the reference runs many small ops, which an oversubscribed intra-op pool
    slows down badly on a 2-core machine shared by several test processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def make_batch(ks, V, gen, *, tree=False, sharp=2.0):
    """A ragged batch: flat drafts, cu, parents (node indices, 0 = root), node rows p [T + B, V] in the
    inline layout, per-node draft distributions q_node [T + B, V] (near p, so that drafts get accepted)
    and per-draft rows q [T, V] (each draft drawn from its row)."""
    B, T = len(ks), sum(ks)
    cu = torch.tensor([0] + torch.tensor(ks, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int64)
    par = [int(torch.randint(0, i + 1, (), generator=gen)) if tree else i for k in ks for i in range(k)]
    par = torch.tensor(par, dtype=torch.int64)
    logit = torch.randn(T + B, V, generator=gen) * sharp
    p = torch.softmax(logit, -1)
    q_node = torch.softmax(logit + torch.randn(T + B, V, generator=gen), -1)  # near p: walks go deep
    req = torch.repeat_interleave(torch.arange(B), torch.tensor(ks, dtype=torch.int64))
    q = q_node[cu[req] + req + par] if T else torch.zeros(0, V)  # draft t was drawn from its parent's q
    tok = torch.multinomial(q, 1, generator=gen).squeeze(1) if T else torch.zeros(0, dtype=torch.int64)
    return dict(tok=tok, cu=cu, par=par, p=p, q_node=q_node, q=q)


def split_bonus(x, cu):
    """Inline rows [T + B, V] -> (draft rows [T, V], bonus rows [B, V]) in vLLM's layout: draft i's row
    is node i's (the distribution it is verified against), the bonus row the last node's."""
    B = cu.numel() - 1
    last = cu[1:] + torch.arange(B)  # each request's last row
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[last] = False
    return x[keep], x[last]


def run(
    data,
    backend,
    *,
    mode,
    logits=False,
    layout="inline",
    tree=False,
    idx_dtype=torch.int64,
    out_dtype=torch.int64,
    scale=0.8,
    **kw,
):
    """Call ragged_verify on a make_batch batch (logits: log(p) * scale at temperature scale, unless kw
    has a temperature); returns (tokens [B, M+1], accept_length, accept_index, next_token) as int64."""
    B = data["cu"].numel() - 1
    target = torch.log(data["p"]) * scale if logits else data["p"]
    args = {}
    if layout == "bonus":
        t, bonus = split_bonus(target, data["cu"])
        args["target_logits" if logits else "target_probs"] = t
        args["bonus_logits" if logits else "bonus_probs"] = bonus
    else:
        args["target_logits" if logits else "target_probs"] = target
    if logits and "temperature" not in kw:
        args["temperature"] = torch.full((B,), scale, dtype=torch.float64)
    if mode == "sampled":
        args["draft_probs"] = data["q"]
    if tree:
        args["parents"] = data["par"].to(idx_dtype)
    if mode == "greedy":
        args["greedy"] = True
    out = torch.full((B, M + 1), 77, dtype=out_dtype)
    acc = torch.full((B,), 77, dtype=out_dtype)
    aidx = torch.full((B, M + 1), 77, dtype=out_dtype)
    nxt = torch.full((B,), 77, dtype=out_dtype)
    args.update(kw)
    sk.ragged_verify(
        data["tok"].to(idx_dtype),
        data["cu"].to(idx_dtype),
        output_token_ids=out,
        accept_length=acc,
        accept_index=aidx,
        next_token=nxt,
        backend=backend,
        **args,
    )
    return out.long(), acc.long(), aidx.long(), nxt.long()


def check_layout(res, data):
    """Output invariants: -1 placeholders after accept_length + 1 tokens; accept_index is a root path
    of flat node rows whose tokens are the emitted ones; next_token ends the emitted tokens."""
    out, acc, aidx, nxt = res
    cu, tok, par = data["cu"], data["tok"], data["par"]
    B = cu.numel() - 1
    pos = torch.arange(M + 1)
    assert torch.equal(out >= 0, pos < acc[:, None] + 1) and torch.equal(aidx >= 0, pos < acc[:, None] + 1)
    assert torch.equal(out.gather(1, acc[:, None]).squeeze(1), nxt)
    for b in range(B):
        base, k = int(cu[b]) + b, int(cu[b + 1] - cu[b])
        assert 0 <= int(acc[b]) <= k and int(aidx[b, 0]) == base
        for i in range(1, int(acc[b]) + 1):
            node = int(aidx[b, i]) - base
            assert 1 <= node <= k and int(par[int(cu[b]) + node - 1]) == int(aidx[b, i - 1]) - base
            assert int(out[b, i - 1]) == int(tok[int(cu[b]) + node - 1])


def padded_chain(data, backend, *, mode, logits=False, seeds, temperature=0.8, **kw):
    """The same batch through chain_verify (padded to K = M, draft_lens = k_b)."""
    cu, V = data["cu"], data["p"].shape[1]
    B = cu.numel() - 1
    tok = torch.zeros(B, M, dtype=torch.int64)
    p = torch.full((B, M + 1, V), 1.0 / V)
    q = torch.full((B, M, V), 1.0 / V)
    for b in range(B):
        t0, k = int(cu[b]), int(cu[b + 1] - cu[b])
        tok[b, :k] = data["tok"][t0 : t0 + k]
        p[b, : k + 1] = data["p"][t0 + b : t0 + b + k + 1]
        q[b, :k] = data["q"][t0 : t0 + k]
    target = dict(target_logits=torch.log(p) * temperature, temperature=temperature) if logits else dict(target_probs=p)
    return sk.chain_verify(
        tok,
        draft_probs=q if mode == "sampled" else None,
        draft_lens=cu[1:] - cu[:-1],
        greedy=mode == "greedy",
        seed=seeds,
        backend=backend,
        **target,
        **kw,
    )


def padded_tree(data, backend, b, *, mode, logits=False, seed, temperature=0.8):
    """Request b alone through tree_verify (root included: parents [-1] + its parents)."""
    cu = data["cu"]
    t0, k = int(cu[b]), int(cu[b + 1] - cu[b])
    tok = torch.cat([torch.zeros(1, dtype=torch.int64), data["tok"][t0 : t0 + k]])[None]
    parents = torch.cat([torch.tensor([-1]), data["par"][t0 : t0 + k]])
    p = data["p"][t0 + b : t0 + b + k + 1][None]
    q = data["q_node"][t0 + b : t0 + b + k + 1][None]
    target = dict(target_logits=torch.log(p) * temperature, temperature=temperature) if logits else dict(target_probs=p)
    return sk.tree_verify(
        tok,
        parents,
        draft_probs=q if mode == "sampled" else None,
        greedy=mode == "greedy",
        seed=torch.tensor([seed]),
        backend=backend,
        **target,
    )


SEEDS = torch.tensor([3, 2**40 + 5, 17, 2**63 - 1, 9, 123456789], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------
# the padded entries define the result: same data, same Philox numbers -> the same tokens
# ---------------------------------------------------------------------------------------------------

CHAIN_CASES = [("greedy", False), ("det", True), ("sampled", False), ("sampled", True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,logits", CHAIN_CASES)
def test_chain_matches_chain_verify(mode, logits, backend, monkeypatch):
    """Chains in both target layouts (inline [T + B] rows; vLLM's [T] rows + bonus rows) equal chain_verify
    with draft_lens and per-sequence seeds, exactly; vocabulary tiles of 16 over V = 37."""
    monkeypatch.setattr(rs.launch, "MAX_BLOCK_V", 16)
    data = make_batch(KS, 37, torch.Generator().manual_seed(1))
    ref = padded_chain(data, backend, mode=mode, logits=logits, seeds=SEEDS)
    for layout in ("inline", "bonus"):
        res = run(data, backend, mode=mode, logits=logits, layout=layout, seed=SEEDS)
        check_layout(res, data)
        out, acc, aidx, nxt = res
        assert torch.equal(out, ref.tokens), layout
        assert torch.equal(acc, ref.num_accepted) and torch.equal(nxt, ref.next_token)
    if mode != "greedy":
        assert int(ref.num_accepted.max()) >= 1  # the walks do accept drafts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mode,logits,idx_dtype",
    [("greedy", False, torch.int32), ("det", False, torch.int64), ("sampled", True, torch.int32)],
)
def test_tree_matches_tree_verify(mode, logits, idx_dtype, backend):
    """Ragged trees (int32 or int64 indices and outputs) equal tree_verify run request by request with
    the request's seed; accept_index is tree_verify's path shifted to flat node rows."""
    data = make_batch(KS, 13, torch.Generator().manual_seed(2), tree=True, sharp=1.0)
    seeds = SEEDS if idx_dtype == torch.int64 else SEEDS % 2**31  # int32 seeds: values that fit
    out, acc, aidx, nxt = res = run(
        data,
        backend,
        mode=mode,
        logits=logits,
        tree=True,
        idx_dtype=idx_dtype,
        out_dtype=idx_dtype,
        seed=seeds.to(idx_dtype),
    )
    check_layout(res, data)
    for b in range(len(KS)):
        r = padded_tree(data, backend, b, mode=mode, logits=logits, seed=int(seeds[b]))
        n = int(r.num_accepted[0])
        assert int(acc[b]) == n and int(nxt[b]) == int(r.next_token[0])
        assert out[b, : n + 1].tolist() == r.tokens[0, : n + 1].tolist()
        assert (aidx[b, : n + 1] - (int(data["cu"][b]) + b)).tolist() == r.path[0, : n + 1].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_greedy_and_sampled(backend):
    """One launch, per-request rules: is_greedy flags and temperature 0 give the greedy result, the other
    requests the sampled one at their own temperature, each equal to chain_verify on its own."""
    data = make_batch(KS, 19, torch.Generator().manual_seed(3), sharp=1.0)
    B = len(KS)
    is_greedy = torch.tensor([True, False, False, False, True, False])
    temps = torch.tensor([0.7, 0.9, 0.0, 1.3, 0.5, 0.6], dtype=torch.float64)  # request 2: temperature 0
    out, acc, _, nxt = run(
        data, backend, mode="sampled", logits=True, scale=1.0, is_greedy=is_greedy, temperature=temps, seed=SEEDS
    )
    greedy_rows = is_greedy | (temps == 0)
    for b in range(B):
        t = float(temps[b])
        one = make_padded_request(data, b)
        if bool(greedy_rows[b]):
            r = sk.chain_verify(
                one["tok"], target_logits=one["logp"], greedy=True, draft_lens=one["lens"], backend=backend
            )
        else:
            r = sk.chain_verify(
                one["tok"],
                None,
                one["q"],
                target_logits=one["logp"],
                temperature=t,
                draft_lens=one["lens"],
                seed=SEEDS[b : b + 1],
                backend=backend,
            )
        assert out[b].tolist() == r.tokens[0].tolist() and int(nxt[b]) == int(r.next_token[0]), b


def make_padded_request(data, b):
    cu, V = data["cu"], data["p"].shape[1]
    t0, k = int(cu[b]), int(cu[b + 1] - cu[b])
    tok = torch.zeros(1, M, dtype=torch.int64)
    tok[0, :k] = data["tok"][t0 : t0 + k]
    logp = torch.zeros(1, M + 1, V)
    logp[0, : k + 1] = torch.log(data["p"][t0 + b : t0 + b + k + 1])
    q = torch.full((1, M, V), 1.0 / V)
    q[0, :k] = data["q"][t0 : t0 + k]
    return dict(tok=tok, logp=logp, q=q, lens=torch.tensor([k]))


def test_no_drafts_and_empty_batch():
    """T = 0 (every request k_b = 0): one token from each request's row; B = 0 writes nothing."""
    data = make_batch([0, 0, 0], 5, torch.Generator().manual_seed(4))
    for be in BACKENDS:
        out, acc, aidx, nxt = run(data, be, mode="sampled", seed=SEEDS[:3])
        r = sk.tree_verify(
            torch.zeros(3, 1, dtype=torch.int64), torch.tensor([-1]), data["p"][:, None], seed=SEEDS[:3], backend=be
        )
        assert acc.tolist() == [0, 0, 0] and torch.equal(nxt, r.next_token)
        assert aidx[:, 0].tolist() == [0, 1, 2] and bool((out[:, 1:] == -1).all())
    empty = torch.zeros(0, 3, dtype=torch.int64)
    sk.ragged_verify(
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
        output_token_ids=empty,
        accept_length=torch.zeros(0, dtype=torch.int64),
        target_probs=torch.zeros(0, 5),
        seed=torch.zeros(0, dtype=torch.int64),
        backend="triton",
    )


# ---------------------------------------------------------------------------------------------------
# kernel == reference; the two randomness sources
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["tree-sampled-logits-offsets", "chain-det-bonus-uniforms", "tree-det-mixed"])
def test_triton_matches_reference(case, monkeypatch):
    """The interpreted kernel takes the reference's decisions row for row on random ragged batches
    (awkward V = 29 over tiles of 8), across layouts, randomness sources and per-request rules."""
    monkeypatch.setattr(rs.launch, "MAX_BLOCK_V", 8)
    gen = torch.Generator().manual_seed(5)
    ks = [3, 0, 1, 4, 2, 4, 0, 2, 3, 1]
    B, V = len(ks), 29
    tree = case.startswith("tree")
    data = make_batch(ks, V, gen, tree=tree, sharp=1.5)
    kw = dict(mode="sampled" if "sampled" in case else "det", tree=tree)
    if "logits" in case:
        kw.update(logits=True, scale=0.7)
    if "offsets" in case:
        kw.update(
            seed=torch.randint(0, 2**62, (B,), generator=gen), offset=torch.randint(0, 2**40, (B,), generator=gen)
        )
    elif "uniforms" in case:
        kw.update(
            uniform_accept=torch.rand(sum(ks), generator=gen, dtype=torch.float64),
            uniform_sample=torch.rand(B, generator=gen),
        )
    else:
        kw.update(seed=SEEDS.repeat(2)[:B])
    if "bonus" in case:
        kw.update(layout="bonus")
    if "mixed" in case:
        kw.update(is_greedy=torch.arange(B) % 3 == 0)
    ref = run(data, "reference", **kw)
    tri = run(data, "triton", **kw)
    same = torch.ones(B, dtype=torch.bool)
    for a, b in zip(ref, tri):
        same &= (a == b).all(-1) if a.dim() > 1 else a == b
    # identical up to float rounding at a decision boundary (probability ~1e-7 per decision)
    assert int(same.sum()) >= B - 1, f"rows differ: {(~same).nonzero().squeeze(1).tolist()}"
    check_layout(tri, data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniforms_equal_seed_numbers(backend):
    """uniform_accept / uniform_sample holding the Philox numbers of (seed, offset) reproduce the seed
    path exactly; offset 0 is the no-offset stream, another offset changes results."""
    gen = torch.Generator().manual_seed(6)
    data = make_batch(KS, 11, gen, tree=True, sharp=0.5)
    B, T = len(KS), sum(KS)
    seed = torch.randint(0, 2**63 - 1, (B,), generator=gen)
    offset = torch.randint(0, 2**50, (B,), generator=gen)
    kw = dict(mode="sampled", tree=True)
    base = run(data, backend, seed=seed, offset=offset, **kw)
    M32 = 0xFFFFFFFF
    req = torch.repeat_interleave(torch.arange(B), torch.tensor(KS))
    node = torch.arange(T) - data["cu"][req] + 1
    w0, _ = rs.philox_2x32(seed[req] & M32, (seed[req] >> 32) & M32, offset[req] & M32, node, (offset[req] >> 32) & M32)
    u_acc = ((w0 >> 8).double() + 0.5) * 2.0**-24
    last = base[2].gather(1, base[1][:, None]).squeeze(1) - (data["cu"][:-1] + torch.arange(B))  # final node
    _, w1 = rs.philox_2x32(seed & M32, (seed >> 32) & M32, offset & M32, last, (offset >> 32) & M32)
    u_smp = (w1 >> 8).float() * 2.0**-24
    again = run(data, backend, uniform_accept=u_acc, uniform_sample=u_smp, **kw)
    assert all(torch.equal(a, b) for a, b in zip(base, again))
    zero = run(data, backend, seed=seed, offset=torch.zeros(B, dtype=torch.int64), **kw)
    plain = run(data, backend, seed=seed, **kw)
    assert all(torch.equal(a, b) for a, b in zip(zero, plain))
    assert not all(torch.equal(a, b) for a, b in zip(base, plain))


# ---------------------------------------------------------------------------------------------------
# losslessness
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled-drafts", "deterministic-drafts"])
def test_lossless_ragged_batch(sampled):
    """n = 8000 requests in one launch (reference), V = 6: each request is a random shape (no drafts; a
    chain of 1 or 2; two siblings and a grandchild) and every 5th is greedy. Over the sampled requests,
    the first two emitted tokens (the second drawn from the target where only one was emitted) must
    follow p1(a) p2(b | a): chi-square over 36 cells, significance 1e-3."""
    n, V = 8000, 6
    gen = torch.Generator().manual_seed(700 + sampled)
    mix = lambda d: 0.7 * d / d.sum(-1, keepdim=True) + 0.3 / V  # noqa: E731  (no tiny cells)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64) ** 3  # noqa: E731
    p1, q1, p2, q2 = mix(rand(V)), mix(rand(V)), mix(rand(V, V)), mix(rand(V, V))
    shapes = [[], [0], [0, 1], [0, 0, 1]]  # parents of each shape's drafts (node indices)
    kind = torch.randint(0, 4, (n,), generator=gen)
    tok, par, rows, qrows, ks = [], [], [], [], []
    for s in kind.tolist():
        pa = shapes[s]
        x = []
        for i, u in enumerate(pa):  # draft i's token: from q of its parent node, siblings without replacement
            dist = q1 if u == 0 else q2[x[u - 1]]
            if not sampled:
                dist = torch.full((V,), 1.0 / V)
            sib = [x[j] for j in range(i) if pa[j] == u]
            w = dist.clone()
            w[sib] = 0.0
            x.append(int(torch.multinomial(w, 1, generator=gen)))
            qrows.append(dist)
        node_p = [p1] + [p2[x[i]] if pa[i] == 0 else torch.full((V,), 1.0 / V) for i in range(len(pa))]
        tok += x
        par += pa
        rows += node_p
        ks.append(len(pa))
    cu = torch.tensor([0] + torch.tensor(ks).cumsum(0).tolist())
    B = n
    out = torch.empty(B, 4, dtype=torch.int32)
    acc = torch.empty(B, dtype=torch.int32)
    is_greedy = torch.arange(B) % 5 == 0
    sk.ragged_verify(
        torch.tensor(tok, dtype=torch.int32),
        cu.int(),
        output_token_ids=out,
        accept_length=acc,
        target_probs=torch.stack(rows).float(),
        parents=torch.tensor(par, dtype=torch.int32),
        draft_probs=torch.stack(qrows).float() if sampled else None,
        is_greedy=is_greedy,
        seed=torch.arange(B, dtype=torch.int64) * 7919 + 1,
        backend="reference",
    )
    out, emit = out.long(), acc.long() + 1
    y1 = out[:, 0]
    fill = torch.multinomial(p2[y1], 1, generator=gen).squeeze(1)
    y2 = torch.where(emit >= 2, out[:, 1], fill)
    keep = ~is_greedy
    obs = torch.bincount((y1 * V + y2)[keep], minlength=V * V).double()
    exp = (p1[:, None] * p2).flatten()
    exp = exp / exp.sum() * obs.sum()
    assert chisquare(obs.numpy(), exp.numpy()).pvalue > ALPHA
    g1 = out[is_greedy & (acc.long() == 0) & (kind == 0), 0]  # greedy requests without drafts: argmax p1
    assert bool((g1 == p1.argmax()).all()) and g1.numel() > 0


# ---------------------------------------------------------------------------------------------------
# the torch op
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_op_opcheck(backend):
    """torch.ops.specdec.ragged_verify: schema (declared mutations), fake kernel, autograd registration
    and AOT dispatch, via torch.library.opcheck; and it writes what the function writes."""
    data = make_batch([2, 0, 1], 7, torch.Generator().manual_seed(8), tree=True)
    B = 3
    bufs = lambda: (
        torch.empty(B, 3, dtype=torch.int32),
        torch.empty(B, dtype=torch.int64),  # noqa: E731
        torch.empty(B, 3, dtype=torch.int64),
        torch.empty(B, dtype=torch.int32),
    )
    args = (data["tok"], data["cu"].int(), *bufs()[:2])
    kwargs = dict(
        target_logits=torch.log(data["p"]),
        draft_probs=data["q"],
        parents=data["par"],
        temperature=torch.tensor([0.5, 1.0, 0.0]),
        seed=SEEDS[:B],
        offset=SEEDS[:B] // 3,
        accept_index=bufs()[2],
        next_token=bufs()[3],
        backend=backend,
    )
    torch.library.opcheck(torch.ops.specdec.ragged_verify.default, args, kwargs)
    a, b = bufs(), bufs()
    torch.ops.specdec.ragged_verify(
        data["tok"], data["cu"].int(), a[0], a[1], **dict(kwargs, accept_index=a[2], next_token=a[3])
    )
    sk.ragged_verify(
        data["tok"],
        data["cu"].int(),
        output_token_ids=b[0],
        accept_length=b[1],
        **dict(kwargs, accept_index=b[2], next_token=b[3]),
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------
# bad inputs: a ValueError/TypeError naming the argument, before anything is written
# ---------------------------------------------------------------------------------------------------


def _ok():
    data = make_batch([2, 0, 1], 7, torch.Generator().manual_seed(9), tree=True)
    kw = dict(
        draft_token_ids=data["tok"],
        cu_num_draft_tokens=data["cu"],
        output_token_ids=torch.full((3, 3), 55),
        accept_length=torch.full((3,), 55),
        target_probs=data["p"],
        draft_probs=data["q"],
        parents=data["par"],
        seed=SEEDS[:3],
    )
    return data, kw


BAD = [
    (
        "cu[0] != 0",
        lambda d: dict(cu_num_draft_tokens=torch.tensor([1, 2, 2, 3])),
        ValueError,
        r"cu_num_draft_tokens\[0\]",
    ),
    ("cu decreasing", lambda d: dict(cu_num_draft_tokens=torch.tensor([0, 2, 1, 3])), ValueError, "nondecreasing"),
    (
        "cu[B] != T",
        lambda d: dict(cu_num_draft_tokens=torch.tensor([0, 1, 1, 2])),
        ValueError,
        r"cu_num_draft_tokens\[B\]",
    ),
    ("k > max_spec_len", lambda d: dict(output_token_ids=torch.full((3, 2), 55)), ValueError, "max_spec_len"),
    ("token >= V", lambda d: dict(draft_token_ids=d["tok"] + 7), ValueError, "draft_token_ids out of range"),
    ("parent > i", lambda d: dict(parents=torch.tensor([0, 2, 0])), ValueError, "parents"),
    ("parent < 0", lambda d: dict(parents=torch.tensor([-1, 0, 0])), ValueError, "parents"),
    ("cu float", lambda d: dict(cu_num_draft_tokens=d["cu"].float()), TypeError, "cu_num_draft_tokens"),
    ("output float", lambda d: dict(output_token_ids=torch.full((3, 3), 55.0)), TypeError, "output_token_ids"),
    ("output rows", lambda d: dict(output_token_ids=torch.full((2, 3), 55)), ValueError, "output_token_ids"),
    ("accept_length shape", lambda d: dict(accept_length=torch.full((4,), 55)), ValueError, "accept_length"),
    (
        "accept_index shape",
        lambda d: dict(accept_index=torch.zeros(3, 2, dtype=torch.int64)),
        ValueError,
        "accept_index",
    ),
    ("target rows", lambda d: dict(target_probs=d["p"][:-1]), ValueError, r"target_probs .*\[T \+ B, V\]"),
    ("both targets", lambda d: dict(target_logits=d["p"].log()), ValueError, "exactly one"),
    ("bonus kind", lambda d: dict(bonus_logits=d["p"][:3]), ValueError, "bonus"),
    ("bonus with tree", lambda d: dict(target_probs=d["p"][:3], bonus_probs=d["p"][3:]), ValueError, "chains"),
    (
        "bonus dtype",
        lambda d: dict(parents=None, target_probs=d["p"][:3], bonus_probs=d["p"][3:].double()),
        TypeError,
        "bonus_probs",
    ),
    ("draft_probs shape", lambda d: dict(draft_probs=d["q"][:2]), ValueError, "draft_probs"),
    ("draft_probs not normalised", lambda d: dict(draft_probs=d["q"] * 1.5), ValueError, "draft_probs"),
    ("target negative", lambda d: dict(target_probs=d["p"] - 0.5), ValueError, "target_probs has a negative"),
    ("no randomness", lambda d: dict(seed=None), ValueError, "randomness"),
    (
        "two randomness sources",
        lambda d: dict(uniform_accept=torch.rand(3), uniform_sample=torch.rand(3)),
        ValueError,
        "not both",
    ),
    ("uniform alone", lambda d: dict(seed=None, uniform_accept=torch.rand(3)), ValueError, "uniform"),
    (
        "uniform range",
        lambda d: dict(seed=None, uniform_accept=torch.rand(3) + 1, uniform_sample=torch.rand(3)),
        ValueError,
        "uniform_accept must be in",
    ),
    ("offset alone", lambda d: dict(seed=None, offset=SEEDS[:3]), ValueError, "offset"),
    ("seed shape", lambda d: dict(seed=SEEDS[:2]), ValueError, "seed"),
    ("greedy tensor", lambda d: dict(greedy=torch.ones(3, dtype=torch.bool)), TypeError, "is_greedy"),
    ("is_greedy int", lambda d: dict(is_greedy=torch.ones(3, dtype=torch.int64)), TypeError, "is_greedy"),
    ("temperature with probs", lambda d: dict(temperature=torch.ones(3)), ValueError, "temperature"),
    (
        "temperature negative",
        lambda d: dict(target_probs=None, target_logits=d["p"].log(), temperature=torch.tensor([1.0, -1.0, 1.0])),
        ValueError,
        "temperature",
    ),
    ("device", lambda d: dict(seed=SEEDS[:3].to("meta")), ValueError, "seed is on meta"),
    ("backend", lambda d: dict(backend="cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize("name,edit,exc,match", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs(name, edit, exc, match):
    data, kw = _ok()
    kw.update(edit(data))
    with pytest.raises(exc, match=match):
        sk.ragged_verify(**kw)
    assert bool((kw["output_token_ids"] == 55).all()) and bool((kw["accept_length"] == 55).all())  # untouched


def test_greedy_rows_need_no_distribution():
    """A greedy request's rows are only argmaxed: unnormalised rows pass validation there, not for a
    sampled request of the same batch."""
    data, kw = _ok()
    p = data["p"].clone()
    p[:3] *= 3.0  # request 0's rows
    kw.update(target_probs=p, is_greedy=torch.tensor([True, False, False]))
    sk.ragged_verify(**kw)
    with pytest.raises(ValueError, match=r"target_probs flat row \(0,\) does not sum to 1"):
        sk.ragged_verify(**dict(kw, is_greedy=torch.tensor([False, True, True])))


@pytest.mark.parametrize("backend", BACKENDS)
def test_validate_false_bad_offsets_stay_in_bounds(backend, monkeypatch):
    """validate=False with offsets past T and more drafts than columns: no error, no host read (item,
    tolist and bool on tensors raise during the Triton call), and only well-formed rows are written."""
    data, kw = _ok()
    kw.update(
        cu_num_draft_tokens=torch.tensor([0, 9, 2, -5]),
        output_token_ids=torch.full((3, 2), 55),
        validate=False,
        backend=backend,
    )
    if backend == "triton":

        def refuse(*a, **k):
            raise AssertionError("host read in the validate=False path")

        for name in ("item", "tolist", "__bool__"):
            monkeypatch.setattr(torch.Tensor, name, refuse)
    sk.ragged_verify(**kw)
    monkeypatch.undo()
    out, acc = kw["output_token_ids"], kw["accept_length"]
    assert bool(((acc >= 0) & (acc <= 1)).all())
    assert torch.equal(out >= 0, torch.arange(2) < acc[:, None] + 1)


# ---------------------------------------------------------------------------------------------------
# the ragged kernel compiles for CUDA (no GPU needed): the interpreter is more lenient than the compiler
# ---------------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from specdec_kernels import verify as rs

CONST = ("IS_CHAIN", "MODE", "LOGITS", "SEP_BONUS", "ROW_GREEDY", "ROW_TEMP", "SEED_PER_ROW", "RNG_OFFSET",
         "UNIFORMS", "WRITE_PATH", "BLOCK_V", "BLOCK_N")

def sig(tgt, idx, out):
    s = {name: "i32" for name in rs.kernel.ragged_verify_kernel.arg_names}
    s.update(tok_ptr=idx, par_ptr=idx, cu_ptr=idx, tgt_ptr="*" + tgt, bonus_ptr="*" + tgt, drf_ptr="*fp32",
             greedy_ptr="*i1", inv_temp_ptr="*fp32", seeds_ptr="*i64", offset_ptr="*i64", uacc_ptr="*fp64",
             usmp_ptr="*fp32", out_tok_ptr=out, path_ptr=out, num_acc_ptr=out, next_ptr="*i64")
    s.update({name: "constexpr" for name in CONST})
    return s

variants = [  # chain, vLLM layout, mixed rules, offsets, logits; tree, uniforms, sampled, int32 outputs
    (dict(IS_CHAIN=True, MODE=1, LOGITS=True, SEP_BONUS=True, ROW_GREEDY=True, ROW_TEMP=True, SEED_PER_ROW=True,
          RNG_OFFSET=True, UNIFORMS=False, WRITE_PATH=False), "bf16", "*i64", "*i64"),
    (dict(IS_CHAIN=False, MODE=2, LOGITS=False, SEP_BONUS=False, ROW_GREEDY=True, ROW_TEMP=False,
          SEED_PER_ROW=False, RNG_OFFSET=False, UNIFORMS=True, WRITE_PATH=True), "fp32", "*i32", "*i32"),
]
for consts, tgt, idx, out in variants:
    consts.update(BLOCK_V=2048, BLOCK_N=8)
    src = ASTSource(fn=rs.kernel.ragged_verify_kernel, signature=sig(tgt, idx, out), constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert k.asm.get("cubin"), "no cubin"
print("COMPILED")
"""


def test_ragged_kernel_compiles_for_cuda(tmp_path):
    """Compile two variants of the ragged kernel to sm_90 cubin in a fresh process without the interpreter."""
    pytest.importorskip("triton.backends.nvidia")
    compile_ahead_of_time(_COMPILE_SCRIPT, "COMPILED", timeout=600, cache_dir=tmp_path)
