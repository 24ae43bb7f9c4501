"""Rejection sampling (chain_verify / tree_verify): greedy exactness, output invariants, losslessness,
determinism, batch invariance, logits == probs, ragged chains, bad inputs.

The Triton kernel runs under the CPU interpreter, one program per row at roughly 10 ms a row, so the
statistical tests use far fewer rows for "triton" than for "reference". The two backends draw the same
Philox numbers, and test_triton_matches_reference checks they take the same decisions row for row;
the large-sample statistics on the reference therefore hold for the kernel as well.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

import specdec_kernels as sk
from conftest import compile_ahead_of_time
from specdec_kernels import verify as rs
from specdec_kernels.philox import philox_2x32_tl
from specdec_kernels.trees import chain_parents

BACKENDS = ["reference", "triton"]
ALPHA = 1e-3  # chi-square significance; every statistical test uses a fixed seed, so it cannot flake
# rows per losslessness test, and the vocabulary (small for the interpreter so cells stay well filled)
LOSSLESS = {"reference": dict(n=40_000, V=6), "triton": dict(n=400, V=3)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch for this module: the reference runs many small elementwise ops, which an
    oversubscribed CPU (several test processes on 2 cores) slows down by two orders of magnitude when
    the intra-op pool spins."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def _dist(*shape, gen, floor=0.3):
    """Random distributions along the last dim, mixed with uniform so no cell is tiny (float64)."""
    d = torch.rand(*shape, generator=gen, dtype=torch.float64) ** 3
    d = d / d.sum(-1, keepdim=True)
    return (1 - floor) * d + floor / shape[-1]


def toy_lm(V, gen):
    """Two-step target and draft models: p1[V] then p2[a] after token a; q1, q2 likewise."""
    return _dist(V, gen=gen), _dist(V, V, gen=gen), _dist(V, gen=gen), _dist(V, V, gen=gen)


def _uniform_rows(n, V):
    return torch.full((n, V), 1.0 / V, dtype=torch.float64)


def two_step_chisquare(y1, y2, p1, p2):
    """p-value that (y1, y2) ~ p1(y1) p2(y2 | y1)."""
    V = p1.shape[0]
    n = y1.numel()
    obs = torch.bincount(y1 * V + y2, minlength=V * V).double()
    exp = n * (p1[:, None] * p2).flatten()
    return chisquare(obs.numpy(), exp.numpy()).pvalue


def complete(res_tokens, num_emitted, p2, gen):
    """First two emitted tokens; the second drawn from the target where only one was emitted."""
    y1 = res_tokens[:, 0]
    fill = torch.multinomial(p2[y1], 1, generator=gen).squeeze(1)
    y2 = torch.where(num_emitted >= 2, res_tokens[:, 1], fill)
    return y1, y2


def check_chain_invariants(res, draft_tokens, draft_lens=None):
    B, K = draft_tokens.shape
    tokens, n_emit, n_acc, nxt = res
    assert tokens.shape == (B, K + 1) and tokens.dtype == torch.int64
    assert torch.equal(n_emit, n_acc + 1)
    assert torch.equal((tokens != rs.PAD_TOKEN).sum(1), n_emit)
    pos = torch.arange(K + 1)
    assert bool(((tokens != rs.PAD_TOKEN) == (pos[None, :] < n_emit[:, None])).all())  # padding at the end
    lens = draft_lens if draft_lens is not None else torch.full((B,), K)
    assert bool((n_acc <= lens).all()) and bool((n_acc >= 0).all())
    acc_mask = pos[None, :K] < n_acc[:, None]
    assert torch.equal(tokens[:, :K][acc_mask], draft_tokens[acc_mask])  # accepted = the drafts
    assert torch.equal(tokens.gather(1, n_acc[:, None]).squeeze(1), nxt)


def check_tree_invariants(res, tokens, parents):
    path, n_acc, nxt, out, n_emit = res
    B, N = tokens.shape
    par = parents.expand(B, N)
    assert path.shape == (B, N) and out.shape == (B, N)
    assert torch.equal(n_emit, n_acc + 1)
    assert torch.equal((out != rs.PAD_TOKEN).sum(1), n_emit)
    assert torch.equal((path != rs.PAD_TOKEN).sum(1), n_acc + 1)
    assert bool((path[:, 0] == 0).all())
    for b in range(B):
        k = int(n_acc[b])
        assert bool((path[b, k + 1 :] == rs.PAD_TOKEN).all()) and bool((out[b, k + 1 :] == rs.PAD_TOKEN).all())
        for i in range(1, k + 1):  # a root path: each node's parent is the previous path node
            assert int(par[b, path[b, i]]) == int(path[b, i - 1])
            assert int(out[b, i - 1]) == int(tokens[b, path[b, i]])
        assert int(out[b, k]) == int(nxt[b])


def _same(r1, r2):
    """Per-row equality of two results (all fields)."""
    eq = torch.ones(r1[0].shape[0], dtype=torch.bool)
    for a, b in zip(r1, r2):
        eq &= (a == b).all(-1) if a.dim() > 1 else (a == b)
    return eq


# ---------------------------------------------------------------------------------------------------
# random numbers
# ---------------------------------------------------------------------------------------------------


def test_philox_known_answer():
    # Random123 known-answer vector for Philox4x32-10: key 0, counter 0 -> 6627e8d5 e169c58d ...
    z = torch.zeros(1, dtype=torch.int64)
    w0, w1 = rs.philox_2x32(z, z, z, 0, 0)
    assert (int(w0), int(w1)) == (0x6627E8D5, 0xE169C58D)


@triton.jit
def _philox_probe(k_ptr, c_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    k0 = tl.load(k_ptr + i * 2).to(tl.uint32)
    k1 = tl.load(k_ptr + i * 2 + 1).to(tl.uint32)
    c0 = tl.load(c_ptr + i * 3).to(tl.uint32)
    c1 = tl.load(c_ptr + i * 3 + 1).to(tl.uint32)
    c2 = tl.load(c_ptr + i * 3 + 2).to(tl.uint32)
    w0, w1 = philox_2x32_tl(k0, k1, c0, c1, c2)
    tl.store(out_ptr + i * 2, w0.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + i * 2 + 1, w1.to(tl.int64) & 0xFFFFFFFF)


def test_philox_device_function_matches_the_reference_bit_for_bit():
    """The kernels' Philox (Triton's rounds) and the reference's int64 Philox give the same words, on the
    known answer (row 0) and on 15 random 32-bit keys and counters, through the interpreter."""
    g = torch.Generator().manual_seed(7)
    n = 16
    key = torch.randint(0, 2**32, (n, 2), generator=g, dtype=torch.int64)
    ctr = torch.randint(0, 2**32, (n, 3), generator=g, dtype=torch.int64)
    key[0], ctr[0] = 0, 0
    out = torch.empty(n, 2, dtype=torch.int64)
    _philox_probe[(1,)](key, ctr, out, N=n)
    w0, w1 = rs.philox_2x32(key[:, 0], key[:, 1], ctr[:, 0], ctr[:, 1], ctr[:, 2])
    assert (int(out[0, 0]), int(out[0, 1])) == (0x6627E8D5, 0xE169C58D)
    assert torch.equal(out[:, 0], w0) and torch.equal(out[:, 1], w1)


# ---------------------------------------------------------------------------------------------------
# greedy: exact, hand-checked walks
# ---------------------------------------------------------------------------------------------------


def _peaked(argmaxes, V):
    """Probability rows [.., V] whose argmax is `argmaxes`."""
    a = torch.as_tensor(argmaxes)
    p = torch.full((*a.shape, V), 0.5 / (V - 1))
    p.scatter_(-1, a[..., None], 0.5)
    return p


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_chain_exact(backend):
    V = 5
    target = _peaked([[2, 4, 1, 3]] * 4, V)  # argmax after prefix, x1, x2, x3
    drafts = torch.tensor([[2, 4, 1], [2, 0, 1], [3, 4, 1], [2, 4, 0]])
    res = sk.chain_verify(drafts, target, greedy=True, backend=backend)
    assert res.tokens.tolist() == [[2, 4, 1, 3], [2, 4, -1, -1], [2, -1, -1, -1], [2, 4, 1, -1]]
    assert res.num_emitted.tolist() == [4, 2, 1, 3]
    assert res.num_accepted.tolist() == [3, 1, 0, 2]
    assert res.next_token.tolist() == [3, 4, 2, 1]
    # ragged: sequence 0 has one valid draft, sequence 3 none; later rows of target are ignored
    lens = torch.tensor([1, 3, 3, 0])
    res = sk.chain_verify(drafts, target, greedy=True, draft_lens=lens, backend=backend)
    assert res.tokens.tolist() == [[2, 4, -1, -1], [2, 4, -1, -1], [2, -1, -1, -1], [2, -1, -1, -1]]
    # logits with temperature 0 are greedy too
    res2 = sk.chain_verify(drafts, target_logits=target.log(), temperature=0.0, backend=backend)
    assert res2.tokens.tolist() == [[2, 4, 1, 3], [2, 4, -1, -1], [2, -1, -1, -1], [2, 4, 1, -1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_tree_exact(backend):
    #        0
    #      / | \
    #     1  2  3        tokens 7 5 5
    #    /\   \
    #   4  5   6         tokens 1 2 9
    #          |
    #          7         token 4
    V = 10
    parents = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 6])
    tokens = torch.tensor([[0, 7, 5, 5, 1, 2, 9, 4]] * 3)
    amax = torch.tensor(
        [
            [5, 0, 9, 0, 0, 0, 4, 8],  # 0 -> 2 (first child with token 5) -> 6 -> 7, bonus 8
            [7, 2, 0, 0, 0, 3, 0, 0],  # 0 -> 1 -> 5, bonus 3
            [3, 0, 0, 0, 0, 0, 0, 0],  # nothing accepted, bonus 3
        ]
    )
    res = sk.tree_verify(tokens, parents, _peaked(amax, V), greedy=True, backend=backend)
    assert res.path.tolist() == [
        [0, 2, 6, 7, -1, -1, -1, -1],
        [0, 1, 5, -1, -1, -1, -1, -1],
        [0, -1, -1, -1, -1, -1, -1, -1],
    ]
    assert res.num_accepted.tolist() == [3, 2, 0]
    assert res.next_token.tolist() == [8, 3, 3]
    assert res.tokens[:, :4].tolist() == [[5, 9, 4, 8], [7, 2, 3, -1], [3, -1, -1, -1]]
    check_tree_invariants(res, tokens, parents)
    # per-sequence parents give the same answer
    res_b = sk.tree_verify(tokens, parents.expand(3, 8), _peaked(amax, V), greedy=True, backend=backend)
    assert torch.equal(res_b.path, res.path)


# ---------------------------------------------------------------------------------------------------
# invariants and agreement of the two backends
# ---------------------------------------------------------------------------------------------------

TREE = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 4, 4, 6])  # 10 nodes, depth 3


def _random_chain(B, K, V, gen, sharp=2.0):
    p = torch.softmax(torch.randn(B, K + 1, V, generator=gen) * sharp, -1)
    q = torch.softmax(torch.randn(B, K, V, generator=gen) * sharp, -1)
    x = torch.multinomial(q.flatten(0, 1), 1, generator=gen).view(B, K)
    return x, p, q


def _random_tree(B, parents, V, gen, sharp=2.0):
    N = parents.shape[-1]
    p = torch.softmax(torch.randn(B, N, V, generator=gen) * sharp, -1)
    q = torch.softmax(torch.randn(B, N, V, generator=gen) * sharp, -1)
    tok = torch.zeros(B, N, dtype=torch.int64)
    for u in range(N):  # children of u drawn from q[:, u] without replacement, in node order
        kids = (parents == u).nonzero().squeeze(1)
        if kids.numel():
            tok[:, kids] = torch.multinomial(q[:, u], kids.numel(), replacement=False, generator=gen)
    return tok, p, q


CASES = [  # (kind, mode, logits)
    ("chain", "greedy", False),
    ("chain", "det", False),
    ("chain", "sampled", False),
    ("chain", "sampled", True),
    ("chain", "det", True),
    ("tree", "greedy", False),
    ("tree", "det", False),
    ("tree", "sampled", False),
    ("tree", "sampled", True),
    ("tree", "det", True),
]


def _verify(kind, mode, logits, data, backend, seed=11, **kw):
    tok, p, q = data
    target = dict(target_logits=torch.log(p) * 0.8, temperature=0.8) if logits else dict(target_probs=p)
    dq = q if mode == "sampled" else None
    if kind == "chain":
        return sk.chain_verify(tok, draft_probs=dq, greedy=mode == "greedy", seed=seed, backend=backend, **target, **kw)
    return sk.tree_verify(
        tok, TREE, draft_probs=dq, greedy=mode == "greedy", seed=seed, backend=backend, **target, **kw
    )


@pytest.mark.parametrize("kind,mode,logits", CASES)
def test_triton_matches_reference(kind, mode, logits, monkeypatch):
    """Same seed, same decisions: the kernel (interpreted) against the reference, row for row.
    Vocabulary tiles of 32 over V = 111, so every pass runs over several tiles with a ragged last one."""
    monkeypatch.setattr(rs.launch, "MAX_BLOCK_V", 32)
    gen = torch.Generator().manual_seed(5)
    B, V = 24, 111
    data = _random_chain(B, 4, V, gen) if kind == "chain" else _random_tree(B, TREE, V, gen)
    ref = _verify(kind, mode, logits, data, "reference")
    tri = _verify(kind, mode, logits, data, "triton")
    same = _same(ref, tri)
    # identical up to float rounding at a decision boundary (probability ~1e-7 per decision)
    assert int(same.sum()) >= B - 1, f"rows differ: {(~same).nonzero().squeeze(1).tolist()}"
    if kind == "chain":
        check_chain_invariants(tri, data[0])
    else:
        check_tree_invariants(tri, data[0], TREE)


@settings(derandomize=True, max_examples=20, deadline=None)
@given(data=st.data())
def test_random_trees(data):
    """Random topological trees, sizes, modes and seeds: invariants hold and both backends agree."""
    N = data.draw(st.integers(1, 12), label="N")
    V = data.draw(st.integers(N, 40), label="V")
    B = data.draw(st.integers(1, 5), label="B")
    parents = torch.tensor([-1] + [data.draw(st.integers(0, i - 1)) for i in range(1, N)], dtype=torch.int64)
    mode = data.draw(st.sampled_from(["greedy", "det", "sampled"]), label="mode")
    logits = data.draw(st.booleans(), label="logits")
    seed = data.draw(st.integers(0, 2**63 - 1), label="seed")
    gen = torch.Generator().manual_seed(seed % 2**32)
    tok, p, q = _random_tree(B, parents, V, gen, sharp=data.draw(st.sampled_from([0.5, 2.0, 6.0])))
    kw = dict(target_logits=p.log() * 0.5, temperature=0.5) if logits else dict(target_probs=p)
    res = [
        sk.tree_verify(
            tok,
            parents,
            draft_probs=q if mode == "sampled" else None,
            greedy=mode == "greedy",
            seed=seed,
            backend=be,
            **kw,
        )
        for be in BACKENDS
    ]
    for r in res:
        check_tree_invariants(r, tok, parents)
    assert int(_same(*res).sum()) >= B - 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,mode", [("chain", "sampled"), ("chain", "det"), ("tree", "sampled"), ("tree", "det")])
def test_invariants(kind, mode, backend):
    gen = torch.Generator().manual_seed(7)
    B = 300 if backend == "reference" else 40
    V = 7
    if kind == "chain":
        data = _random_chain(B, 5, V, gen, sharp=1.0)
        lens = torch.randint(0, 6, (B,), generator=gen)
        res = _verify(kind, mode, False, data, backend, draft_lens=lens)
        check_chain_invariants(res, data[0], lens)
    else:
        data = _random_tree(B, TREE, V, gen, sharp=1.0)
        res = _verify(kind, mode, False, data, backend)
        check_tree_invariants(res, data[0], TREE)
    assert int(res.num_accepted.max()) >= 2  # the walks do go deep


# ---------------------------------------------------------------------------------------------------
# losslessness: the emitted tokens follow the target's two-step joint distribution
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled-draft", "deterministic-draft"])
def test_lossless_chain(backend, sampled):
    """K = 2 drafts from the draft model (ragged: 0, 1 or 2 valid per row); chi-square over V*V cells
    of the first two emitted tokens against p1(a) p2(b | a)."""
    n, V = LOSSLESS[backend]["n"], LOSSLESS[backend]["V"]
    gen = torch.Generator().manual_seed(100 + sampled)
    p1, p2, q1, q2 = toy_lm(V, gen)
    x1 = torch.multinomial(q1.expand(n, V), 1, replacement=True, generator=gen).squeeze(1)
    x2 = torch.multinomial(q2[x1], 1, generator=gen).squeeze(1)
    target = torch.stack([p1.expand(n, V), p2[x1], _uniform_rows(n, V)], 1).float()
    draft = torch.stack([q1.expand(n, V), q2[x1]], 1).float() if sampled else None
    lens = torch.randint(0, 3, (n,), generator=gen)
    res = sk.chain_verify(torch.stack([x1, x2], 1), target, draft, draft_lens=lens, seed=3, backend=backend)
    check_chain_invariants(res, torch.stack([x1, x2], 1), lens) if backend == "reference" else None
    y1, y2 = complete(res.tokens, res.num_emitted, p2, gen)
    assert two_step_chisquare(y1, y2, p1, p2) > ALPHA


def _two_level_tree(n, V, k_root, gen, q1=None, q2=None):
    """Root with k_root children, child 1 with two children, child 2 with one; tokens either drawn
    without replacement from (q1, q2) or, when those are None, random distinct tokens (deterministic
    drafting: any choice made independently of the verification)."""
    parents = torch.tensor([-1] + [0] * k_root + [1, 1, 2])
    N = parents.numel()
    tok = torch.zeros(n, N, dtype=torch.int64)
    if q1 is not None:
        tok[:, 1 : k_root + 1] = torch.multinomial(q1.expand(n, V), k_root, replacement=False, generator=gen)
        tok[:, k_root + 1 : k_root + 3] = torch.multinomial(q2[tok[:, 1]], 2, replacement=False, generator=gen)
        tok[:, k_root + 3] = torch.multinomial(q2[tok[:, 2]], 1, generator=gen).squeeze(1)
    else:
        perm = lambda k: torch.rand(n, V, generator=gen).argsort(1)[:, :k]  # noqa: E731
        tok[:, 1 : k_root + 1] = perm(k_root)
        tok[:, k_root + 1 : k_root + 3] = perm(2)
        tok[:, k_root + 3] = perm(1).squeeze(1)
    return parents, tok


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled-children", "deterministic-children"])
def test_lossless_tree(backend, sampled):
    """Tree with several children per node; children sampled from q without replacement, or fixed."""
    n, V = LOSSLESS[backend]["n"], LOSSLESS[backend]["V"]
    gen = torch.Generator().manual_seed(200 + sampled)
    p1, p2, q1, q2 = toy_lm(V, gen)
    k_root = 3 if V > 3 else 2
    parents, tok = _two_level_tree(n, V, k_root, gen, q1 if sampled else None, q2)
    N = parents.numel()
    target = _uniform_rows(n, V)[:, None].repeat(1, N, 1)
    target[:, 0] = p1
    target[:, 1 : k_root + 1] = p2[tok[:, 1 : k_root + 1]]
    draft = None
    if sampled:
        draft = _uniform_rows(n, V)[:, None].repeat(1, N, 1)
        draft[:, 0] = q1
        draft[:, 1 : k_root + 1] = q2[tok[:, 1 : k_root + 1]]
        draft = draft.float()
    res = sk.tree_verify(tok, parents, target.float(), draft, seed=4, backend=backend)
    y1, y2 = complete(res.tokens, res.num_emitted, p2, gen)
    assert two_step_chisquare(y1, y2, p1, p2) > ALPHA
    if backend == "reference":
        check_tree_invariants(type(res)(*(t[:200] for t in res)), tok[:200], parents)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lossless_all_tokens_drafted(backend):
    """Every token of the vocabulary is a root child (q's mass is used up): still exactly p1."""
    n = 20_000 if backend == "reference" else 300
    V = 3
    gen = torch.Generator().manual_seed(300)
    p1, p2, q1, _ = toy_lm(V, gen)
    parents = torch.tensor([-1, 0, 0, 0])
    tok = torch.zeros(n, 4, dtype=torch.int64)
    tok[:, 1:] = torch.multinomial(q1.expand(n, V), V, replacement=False, generator=gen)
    target = torch.stack([p1.expand(n, V)] + [_uniform_rows(n, V)] * 3, 1).float()
    draft = torch.stack([q1.expand(n, V)] + [_uniform_rows(n, V)] * 3, 1).float()
    res = sk.tree_verify(tok, parents, target, draft, seed=9, backend=backend)
    obs = torch.bincount(res.tokens[:, 0], minlength=V).double()
    assert chisquare(obs.numpy(), (n * p1).numpy()).pvalue > ALPHA


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_draft_acceptance_rate(backend):
    """P(accept the first draft) = sum_x min(p(x), q(x)); bound: 5 binomial standard deviations."""
    n = 40_000 if backend == "reference" else 400
    V = 6
    gen = torch.Generator().manual_seed(400)
    p1, p2, q1, q2 = toy_lm(V, gen)
    x1 = torch.multinomial(q1.expand(n, V), 1, replacement=True, generator=gen)
    target = torch.stack([p1.expand(n, V), p2[x1.squeeze(1)]], 1).float()
    res = sk.chain_verify(x1, target, q1.expand(n, 1, V).float(), seed=5, backend=backend)
    alpha = float(torch.minimum(p1, q1).sum())
    rate = res.num_accepted.double().mean().item()
    assert abs(rate - alpha) < 5 * math.sqrt(alpha * (1 - alpha) / n), (rate, alpha)


# ---------------------------------------------------------------------------------------------------
# determinism, batch invariance, seeds, logits
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_determinism_and_batch_invariance(backend):
    gen = torch.Generator().manual_seed(8)
    tok, p, q = _random_tree(20, TREE, 9, gen, sharp=1.0)
    small = sk.tree_verify(tok[:6], TREE, p[:6], q[:6], seed=123, backend=backend)
    again = sk.tree_verify(tok[:6], TREE, p[:6], q[:6], seed=123, backend=backend)
    big = sk.tree_verify(tok, TREE, p, q, seed=123, backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(small, again))
    assert all(torch.equal(a, b[:6]) for a, b in zip(small, big))  # rows 0..5 unchanged by more rows
    other = sk.tree_verify(tok, TREE, p, q, seed=124, backend=backend)
    assert not all(torch.equal(a, b) for a, b in zip(big, other))
    # per-sequence seeds: a row's result depends on its own seed and data only (permutation)
    seeds = torch.arange(1000, 1020, dtype=torch.int64) * 7919
    res = sk.tree_verify(tok, TREE, p, q, seed=seeds, backend=backend)
    perm = torch.randperm(20, generator=gen)
    res_p = sk.tree_verify(tok[perm], TREE, p[perm], q[perm], seed=seeds[perm], backend=backend)
    assert all(torch.equal(a[perm], b) for a, b in zip(res, res_p))
    # seed=None draws from torch's default generator: reproducible under torch.manual_seed
    torch.manual_seed(0)
    r1 = sk.tree_verify(tok, TREE, p, q, backend=backend)
    torch.manual_seed(0)
    r2 = sk.tree_verify(tok, TREE, p, q, backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampled", [True, False])
def test_logits_equal_probs(backend, sampled):
    """target_logits with a temperature give the same result as softmax(logits / T) as target_probs."""
    gen = torch.Generator().manual_seed(9)
    B, V, T = (200 if backend == "reference" else 24), 50, 0.7
    tok, _, q = _random_tree(B, TREE, V, gen)
    logits = torch.randn(B, TREE.numel(), V, generator=gen) * 2
    probs = torch.softmax(logits / T, -1)
    dq = q if sampled else None
    a = sk.tree_verify(tok, TREE, probs, dq, seed=77, backend=backend)
    b = sk.tree_verify(tok, TREE, None, dq, target_logits=logits, temperature=T, seed=77, backend=backend)
    # same up to float rounding at a decision boundary: allow 1 row in 200
    assert int(_same(a, b).sum()) >= B - max(1, B // 200)
    # bf16 logits are accepted as they come from a model
    c = sk.tree_verify(tok, TREE, None, dq, target_logits=logits.bfloat16(), temperature=T, seed=77, backend=backend)
    check_tree_invariants(c, tok, TREE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_vocab(backend):
    """Vocabulary 128256 in 63 tiles: the kernel agrees with the reference; the greedy walk is exact."""
    gen = torch.Generator().manual_seed(10)
    B, K, V = 2, 3, 128256
    x, p, q = _random_chain(B, K, V, gen, sharp=4.0)
    res = sk.chain_verify(x, p, q, seed=1, backend=backend)
    check_chain_invariants(res, x)
    if backend == "triton":
        ref = sk.chain_verify(x, p, q, seed=1, backend="reference")
        assert all(torch.equal(a, b) for a, b in zip(res, ref))
    amax = p.argmax(-1)
    g = sk.chain_verify(amax[:, :K], p, greedy=True, backend=backend)  # drafts = the target's argmax
    assert g.num_accepted.tolist() == [K] * B and torch.equal(g.next_token, amax[:, K])


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_sizes(backend):
    gen = torch.Generator().manual_seed(12)
    # a tree of the root only, a chain of no drafts: one token from p
    p = torch.softmax(torch.randn(3, 1, 5, generator=gen), -1)
    r = sk.tree_verify(torch.zeros(3, 1, dtype=torch.int64), torch.tensor([-1]), p, seed=1, backend=backend)
    assert r.num_accepted.tolist() == [0, 0, 0] and r.path.tolist() == [[0]] * 3
    c = sk.chain_verify(torch.zeros(3, 0, dtype=torch.int64), p, torch.zeros(3, 0, 5), seed=1, backend=backend)
    assert c.num_emitted.tolist() == [1, 1, 1] and torch.equal(c.tokens[:, 0], r.next_token)
    # an empty batch
    e = sk.chain_verify(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 3, 5), seed=1, backend=backend)
    assert e.tokens.shape == (0, 3)
    # a one-hot target: the residual after a rejection is exactly the target
    p = torch.zeros(4, 2, 5)
    p[:, :, 3] = 1.0
    x = torch.tensor([[0], [1], [3], [4]])
    c = sk.chain_verify(x, p, torch.full((4, 1, 5), 0.2), seed=2, backend=backend)
    assert c.tokens[:, 0].tolist() == [3, 3, 3, 3] and c.num_accepted.tolist() == [0, 0, 1, 0]


# ---------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------


def _chain_ok(B=2, K=3, V=7):
    gen = torch.Generator().manual_seed(0)
    return _random_chain(B, K, V, gen)


BAD_CHAIN = [
    ("draft_tokens float", lambda x, p, q: dict(draft_tokens=x.float()), TypeError, "draft_tokens"),
    ("target rows", lambda x, p, q: dict(target_probs=p[:, :3]), ValueError, "K\\+1"),
    ("draft_probs shape", lambda x, p, q: dict(draft_probs=q[:, :2]), ValueError, "draft_probs"),
    ("draft_probs int", lambda x, p, q: dict(draft_probs=q.long()), TypeError, "draft_probs"),
    ("token >= V", lambda x, p, q: dict(draft_tokens=x + 7), ValueError, "draft_tokens out of range"),
    ("token < 0", lambda x, p, q: dict(draft_tokens=x - 7), ValueError, "draft_tokens out of range"),
    ("negative prob", lambda x, p, q: dict(target_probs=p - 0.01), ValueError, "target_probs has a negative"),
    (
        "NaN prob",
        lambda x, p, q: dict(draft_probs=q.masked_fill(q > 0.1, float("nan"))),
        ValueError,
        "draft_probs has a negative or NaN",
    ),
    ("sum != 1", lambda x, p, q: dict(target_probs=p * 1.1), ValueError, "does not sum to 1"),
    (
        "logits NaN",
        lambda x, p, q: dict(target_probs=None, target_logits=p.log().masked_fill(p > 0.2, float("nan"))),
        ValueError,
        "target_logits",
    ),
    ("both targets", lambda x, p, q: dict(target_logits=p.log()), ValueError, "exactly one"),
    (
        "temperature < 0",
        lambda x, p, q: dict(target_probs=None, target_logits=p.log(), temperature=-1.0),
        ValueError,
        "temperature",
    ),
    ("temperature with probs", lambda x, p, q: dict(temperature=0.5), ValueError, "temperature"),
    ("draft_lens > K", lambda x, p, q: dict(draft_lens=torch.tensor([1, 4])), ValueError, "draft_lens"),
    ("draft_lens shape", lambda x, p, q: dict(draft_lens=torch.tensor([1, 2, 3])), ValueError, "draft_lens"),
    ("seed type", lambda x, p, q: dict(seed=1.5), TypeError, "seed"),
    ("seed range", lambda x, p, q: dict(seed=-1), ValueError, "seed"),
    ("seed tensor shape", lambda x, p, q: dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed"),
    ("seed tensor negative", lambda x, p, q: dict(seed=torch.tensor([1, -2])), ValueError, "seed"),
    ("backend", lambda x, p, q: dict(backend="cuda"), ValueError, "backend"),
    ("device", lambda x, p, q: dict(draft_lens=torch.tensor([1, 2], device="meta")), ValueError, "device|meta"),
]


@pytest.mark.parametrize("name,edit,exc,match", BAD_CHAIN, ids=[c[0] for c in BAD_CHAIN])
def test_bad_chain_inputs(name, edit, exc, match):
    x, p, q = _chain_ok()
    kw = dict(draft_tokens=x, target_probs=p, draft_probs=q, seed=0)
    kw.update(edit(x, p, q))
    with pytest.raises(exc, match=match):
        sk.chain_verify(**kw)


def test_bad_tree_inputs():
    gen = torch.Generator().manual_seed(0)
    tok, p, q = _random_tree(2, TREE, 7, gen)
    with pytest.raises(ValueError, match="topological"):
        sk.tree_verify(tok, torch.tensor([-1, 0, 0, 0, 1, 1, 2, 4, 9, 6]), p, q, seed=0)
    with pytest.raises(ValueError, match="-1"):
        sk.tree_verify(tok, TREE.clamp(min=0), p, q, seed=0)
    with pytest.raises(ValueError, match="parents must have shape"):
        sk.tree_verify(tok, TREE[:5], p, q, seed=0)
    with pytest.raises(ValueError, match="tokens must have shape"):
        sk.tree_verify(tok[:, :5], TREE, p, q, seed=0)
    with pytest.raises(ValueError, match="tokens out of range"):
        sk.tree_verify(tok + 7, TREE, p, q, seed=0)
    with pytest.raises(TypeError, match="parents"):
        sk.tree_verify(tok, TREE.float(), p, q, seed=0)
    with pytest.raises(ValueError, match=f"N <= {rs.MAX_NODES}"):
        n = rs.MAX_NODES + 1
        sk.tree_verify(torch.zeros(1, n, dtype=torch.int64), chain_parents(n), torch.full((1, n, 2), 0.5))
    # draft rows of leaves are not read, so they need not be distributions; inner rows must be
    q_leaf = q.clone()
    q_leaf[:, 9] = 0.0
    sk.tree_verify(tok, TREE, p, q_leaf, seed=0)
    q_bad = q.clone()
    q_bad[:, 4] = 0.0
    with pytest.raises(ValueError, match="draft_probs row \\(batch, node\\) = \\(0, 4\\)"):
        sk.tree_verify(tok, TREE, p, q_bad, seed=0)


def test_validate_false_skips_value_checks():
    x, p, q = _chain_ok()
    sk.chain_verify(x, p * 1.1, q, seed=0, validate=False)  # runs; the result is then unspecified
    with pytest.raises(ValueError):
        sk.chain_verify(x, p * 1.1, q, seed=0)


# ---------------------------------------------------------------------------------------------------
# the kernel compiles for CUDA (no GPU needed): the interpreter is more lenient than the compiler
# ---------------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from specdec_kernels import verify as rs

def sig(tgt):
    s = {name: "i32" for name in rs.kernel.verify_kernel.arg_names}
    for name in ("tok_ptr", "par_ptr", "lens_ptr", "seeds_ptr", "path_ptr", "out_tok_ptr", "num_acc_ptr",
                 "num_emit_ptr", "next_ptr"):
        s[name] = "*i64"
    s.update(tgt_ptr="*" + tgt, drf_ptr="*fp32", inv_temp="fp32")
    for name in ("IS_CHAIN", "HAS_LENS", "MODE", "LOGITS", "SEED_PER_ROW", "WRITE_PATH", "BLOCK_V", "BLOCK_N"):
        s[name] = "constexpr"
    return s

for is_chain, mode, logits in [(True, 2, False), (True, 0, True), (False, 1, True), (False, 2, False)]:
    consts = dict(IS_CHAIN=is_chain, HAS_LENS=is_chain, MODE=mode, LOGITS=logits, SEED_PER_ROW=not is_chain,
                  WRITE_PATH=not is_chain, BLOCK_V=2048, BLOCK_N=64)
    src = ASTSource(fn=rs.kernel.verify_kernel, signature=sig("bf16" if logits else "fp32"), constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert k.asm.get("cubin"), "no cubin"
print("COMPILED")
"""


def test_kernel_compiles_for_cuda(tmp_path):
    """Compile four variants of the kernel to sm_90 cubin in a fresh process without the interpreter."""
    pytest.importorskip("triton.backends.nvidia")
    compile_ahead_of_time(_COMPILE_SCRIPT, "COMPILED", timeout=600, cache_dir=tmp_path)
