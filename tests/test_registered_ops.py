"""The kernels as registered torch ops (torch.ops.specdec.*): schemas, opcheck, op == Python function,
int32 index tensors, no host reads on the unchecked fast paths, and a whole verify step under
torch.compile(fullgraph=True).

Shapes are small (the Triton cases run under the CPU interpreter).
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import specdec_kernels as sk
from conftest import requires_cuda
from specdec_kernels.trees import ancestor_mask, pack_mask

OPS = torch.ops.specdec
PARENTS = [-1, 0, 0, 1, 2]  # root, two children, a grandchild under each: N = 5
B, HQ, HKV, N, D, S, V = 2, 4, 2, 5, 16, 11, 13


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------


def attention_case(gen, kv_lens=(9, 5), dtype=torch.float32):
    """q [B, Hq, N, D], k/v [B, Hkv, S, D] (GQA, one prefix 4 and one empty prefix), kv_lens, bool mask.
    The cache slots past kv_lens hold NaN: a correct op never lets them into the result."""
    q = torch.randn(B, HQ, N, D, generator=gen).to(dtype)
    k = torch.randn(B, HKV, S, D, generator=gen).to(dtype)
    v = torch.randn(B, HKV, S, D, generator=gen).to(dtype)
    lens = torch.tensor(kv_lens)
    for b, n in enumerate(kv_lens):
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("nan")
    return q, k, v, lens, ancestor_mask(torch.tensor(PARENTS))


def verify_case(gen):
    """Tree and chain inputs: tokens [B, N], draft tokens [B, N-1], target/draft probs [B, N, V]."""
    p = torch.softmax(torch.randn(B, N, V, generator=gen), -1)
    q = torch.softmax(torch.randn(B, N, V, generator=gen), -1)
    tokens = torch.multinomial(q.flatten(0, 1), 1, generator=gen).view(B, N)
    return tokens, p, q


def _same(a, b):
    """Element-wise equal tuples of tensors (NaN nowhere expected)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y), (x, y)


# ---------------------------------------------------------------------------------------------------
# registration and opcheck
# ---------------------------------------------------------------------------------------------------


def test_ops_share_the_extension_namespace():
    """The Python ops sit in the C++ extension's `specdec` library, next to compact_kv_cache, and the
    schemas mark exactly the mutated arguments."""
    written = {}
    for name in ("tree_attention", "tree_attention_out", "chain_verify", "tree_verify", "compact_kv_cache"):
        schema = getattr(OPS, name).default._schema
        written[name] = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert written == {
        "tree_attention": [],
        "tree_attention_out": ["out"],
        "chain_verify": [],
        "tree_verify": [],
        "compact_kv_cache": ["cache"],
    }


def test_opcheck_tree_attention(rng):
    q, k, v, lens, mask = attention_case(rng)
    torch.library.opcheck(OPS.tree_attention, (q, k, v, lens, mask), {"sm_scale": 0.3})
    out = torch.empty(B, N, HQ, D).transpose(1, 2)  # the [B, N, Hq, D] layout o_proj reads
    torch.library.opcheck(OPS.tree_attention_out, (q, k, v, lens, pack_mask(mask), out), {"check": False})
    torch.library.opcheck(OPS.tree_attention, (q, k, v, lens.int(), mask), {"backend": "triton", "check": False})


def test_opcheck_tree_attention_window_softcap_sinks(rng):
    q, k, v, lens, mask = attention_case(rng)
    feat = {"window": 2, "softcap": 1.5, "sinks": torch.randn(HQ, generator=rng).bfloat16()}
    torch.library.opcheck(OPS.tree_attention, (q, k, v, lens, mask), feat)
    out = torch.empty(B, N, HQ, D).transpose(1, 2)
    torch.library.opcheck(OPS.tree_attention_out, (q, k, v, lens, pack_mask(mask), out), dict(feat, backend="triton"))
    want = sk.tree_attention(q, k, v, lens, mask, **feat)
    assert not torch.equal(want, sk.tree_attention(q, k, v, lens, mask))  # the features reach the op
    assert torch.equal(OPS.tree_attention(q, k, v, lens, mask, **feat), want)
    with pytest.raises(ValueError, match="window must be >= 1"):
        OPS.tree_attention(q, k, v, lens, mask, window=0)


def test_opcheck_verify_ops(rng):
    tokens, p, q = verify_case(rng)
    seed = torch.tensor(7)
    torch.library.opcheck(OPS.chain_verify, (tokens[:, 1:], p, q[:, 1:]), {"seed": seed})
    torch.library.opcheck(OPS.chain_verify, (tokens[:, 1:], p, q[:, 1:]), {"seed": seed, "backend": "triton"})
    torch.library.opcheck(
        OPS.chain_verify,
        (tokens[:, 1:],),
        {"target_logits": p.log(), "greedy": True, "draft_lens": torch.tensor([4, 2])},
    )
    torch.library.opcheck(
        OPS.tree_verify,
        (tokens, torch.tensor(PARENTS), None, q),
        {"seed": torch.tensor([3, 4]), "target_logits": p.log(), "temperature": 0.7},
    )


# ---------------------------------------------------------------------------------------------------
# op == Python function
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [None, "triton"])
def test_tree_attention_op_equals_function(rng, backend):
    q, k, v, lens, mask = attention_case(rng)
    want = sk.tree_attention(q, k, v, lens, mask, backend=backend)
    assert not want.isnan().any()
    assert torch.equal(OPS.tree_attention(q, k, v, lens, mask, backend=backend), want)
    out = torch.full((B, N, HQ, D), float("nan")).transpose(1, 2)
    assert OPS.tree_attention_out(q, k, v, lens, mask, out, backend=backend) is None
    assert torch.equal(out, want)


def test_tree_attention_op_cpu_default_is_reference(rng):
    q, k, v, lens, mask = attention_case(rng)
    want = sk.tree_attention_reference(q, k, v, lens, mask)
    assert torch.equal(OPS.tree_attention(q, k, v, lens, mask), want)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_verify_ops_equal_functions(rng, backend):
    """A 0-d seed tensor draws what the same int seed draws; a [B] tensor what the function does with it."""
    tokens, p, q = verify_case(rng)
    par = torch.tensor(PARENTS)
    got = OPS.chain_verify(tokens[:, 1:], p, q[:, 1:], seed=torch.tensor(2**40 + 5), backend=backend)
    _same(got, sk.chain_verify(tokens[:, 1:], p, q[:, 1:], seed=2**40 + 5, backend=backend))
    seeds = torch.tensor([11, 2**35])
    got = OPS.tree_verify(tokens, par, p, None, seed=seeds, backend=backend)
    _same(got, sk.tree_verify(tokens, par, p, None, seed=seeds, backend=backend))
    got = OPS.tree_verify(tokens, par, None, None, target_logits=p.log(), greedy=True, backend=backend)
    _same(got, sk.tree_verify(tokens, par, target_logits=p.log(), greedy=True, backend=backend))


def test_scalar_seed_tensor_differs_from_per_row_and_between_seeds(rng):
    """The seed reaches the kernel: other seeds give other draws (so the equalities above can fail)."""
    p = torch.softmax(torch.randn(64, 2, 50, generator=rng), -1)
    x = torch.zeros(64, 1, dtype=torch.int64)
    a = OPS.chain_verify(x, p, None, seed=torch.tensor(1), backend="reference")[0]
    b = OPS.chain_verify(x, p, None, seed=torch.tensor(2), backend="reference")[0]
    c = OPS.chain_verify(x, p, None, seed=torch.ones(64, dtype=torch.int64), backend="reference")[0]
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_op_needs_a_seed_tensor_unless_greedy(rng):
    tokens, p, q = verify_case(rng)
    with pytest.raises(ValueError, match="seed"):
        OPS.chain_verify(tokens[:, 1:], p, q[:, 1:])
    with pytest.raises(ValueError, match="seed"):
        OPS.tree_verify(tokens, torch.tensor(PARENTS), p)


# ---------------------------------------------------------------------------------------------------
# int32 index tensors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_int32_indices_tree_attention(rng, backend):
    q, k, v, lens, mask = attention_case(rng)
    want = sk.tree_attention(q, k, v, lens, mask, backend=backend)
    assert torch.equal(sk.tree_attention(q, k, v, lens.int(), mask, backend=backend, check=False), want)
    assert torch.equal(OPS.tree_attention(q, k, v, lens.int(), mask, backend=backend), want)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_int32_indices_verify(rng, backend):
    """draft tokens, draft_lens, tokens, parents and seeds (0-d and [B]) as int32: same results."""
    tokens, p, q = verify_case(rng)
    par = torch.tensor(PARENTS)
    lens = torch.tensor([4, 1])
    want = OPS.chain_verify(tokens[:, 1:], p, q[:, 1:], draft_lens=lens, seed=torch.tensor(9), backend=backend)
    got = OPS.chain_verify(
        tokens[:, 1:].int(),
        p,
        q[:, 1:],
        draft_lens=lens.int(),
        seed=torch.tensor(9, dtype=torch.int32),
        backend=backend,
    )
    _same(got, want)
    assert int(want[2][1]) <= 1  # draft_lens reached the kernel: row 1 accepts at most one draft
    seeds = torch.tensor([5, 6])
    want = sk.tree_verify(tokens, par, target_logits=p.log(), seed=seeds, backend=backend)
    _same(sk.tree_verify(tokens.int(), par.int(), target_logits=p.log(), seed=seeds.int(), backend=backend), want)


# ---------------------------------------------------------------------------------------------------
# no host reads on the fast paths
# ---------------------------------------------------------------------------------------------------

_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


class HostRead(AssertionError):
    pass


def _called_from_triton() -> bool:
    # The Triton interpreter stands in for the GPU: its copies between tensors and numpy are device work.
    f = sys._getframe(2)
    while f is not None:
        if f.f_globals.get("__name__", "").startswith("triton."):
            return True
        f = f.f_back
    return False


@contextlib.contextmanager
def no_host_reads():
    """Every way Python code reads a tensor's value (item, tolist, bool/int/float/index, cpu, numpy) raises
    HostRead inside the block, except from the Triton interpreter. On CUDA each would be a sync."""
    saved = {name: torch.Tensor.__dict__.get(name) for name in _HOST_READS}

    def guard(name, orig):
        def read(self, *args, **kwargs):
            if not _called_from_triton():
                raise HostRead(f"Tensor.{name} read a value back to the host")
            return orig(self, *args, **kwargs)

        return read

    try:
        for name in _HOST_READS:
            setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
        yield
    finally:
        for name, orig in saved.items():
            if orig is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, orig)


def test_guard_catches_reads():
    """The guard works (so the no-read tests can fail): the checked paths and seed=None do read."""
    t = torch.tensor([3])
    with no_host_reads():
        for read in (lambda: t.item(), lambda: int(t), lambda: bool(t), lambda: t.tolist(), lambda: [0, 1][t[0]]):
            with pytest.raises(HostRead):
                read()
    assert int(t) == 3 and bool(t) and t.tolist() == [3]  # restored


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_no_host_reads_unchecked_tree_attention(rng, backend):
    q, k, v, lens, mask = attention_case(rng)
    want = sk.tree_attention(q, k, v, lens, mask, backend=backend)
    with no_host_reads():
        a = sk.tree_attention(q, k, v, lens, mask, backend=backend, check=False)
        b = sk.tree_attention(q, k, v, lens.int(), pack_mask(mask), backend=backend, check=False, max_kv_len=9)
        c = OPS.tree_attention(q, k, v, lens, mask, backend=backend, check=False)
        with pytest.raises(HostRead):
            sk.tree_attention(q, k, v, lens, mask, backend=backend)  # check=True reads kv_lens
    for x in (a, b, c):
        assert torch.equal(x, want)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_no_host_reads_unvalidated_verify(rng, backend):
    tokens, p, q = verify_case(rng)
    par = torch.tensor(PARENTS)
    seed = torch.tensor(4)
    want = sk.tree_verify(tokens, par, p, q, seed=seed, backend=backend)
    with no_host_reads():
        a = sk.tree_verify(tokens, par, p, q, seed=seed, backend=backend, validate=False)
        b = OPS.chain_verify(
            tokens[:, 1:].int(),
            p,
            q[:, 1:],
            draft_lens=torch.tensor([4, 2]),
            seed=torch.tensor([1, 2]),
            validate=False,
            backend=backend,
        )
        c = OPS.tree_verify(
            tokens, par, None, None, target_logits=p.log(), greedy=True, validate=False, backend=backend
        )
        with pytest.raises(HostRead):
            sk.tree_verify(tokens, par, p, q, seed=None, backend=backend, validate=False)  # draws on the host
        with pytest.raises(HostRead):
            sk.tree_verify(tokens, par, p, q, seed=seed, backend=backend)  # validate=True reads
    _same(a, want)
    _same(
        b,
        sk.chain_verify(
            tokens[:, 1:], p, q[:, 1:], draft_lens=torch.tensor([4, 2]), seed=torch.tensor([1, 2]), backend=backend
        ),
    )
    _same(c, sk.tree_verify(tokens, par, target_logits=p.log(), greedy=True, backend=backend))


@requires_cuda
def test_no_sync_on_cuda_fast_paths():
    """On CUDA the same calls must not synchronise (torch raises on a sync in sync-debug mode "error"),
    and the ops equal the functions there too (Triton kernels, int32 indices, 0-d seed tensor)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, lens, mask = (t.cuda() for t in attention_case(gen, dtype=torch.float16))
    tokens, p, dq = (t.cuda() for t in verify_case(gen))
    par = torch.tensor(PARENTS, device="cuda")
    seed = torch.tensor(3, device="cuda")
    packed = pack_mask(mask)

    def calls():
        return (
            OPS.tree_attention(q, k, v, lens.int(), packed, check=False, max_kv_len=S),
            OPS.tree_verify(tokens.int(), par.int(), p, dq, seed=seed, validate=False),
            OPS.chain_verify(tokens[:, 1:], p, dq[:, 1:], seed=seed, validate=False),
        )

    calls()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        att, tree, chain = calls()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(att, sk.tree_attention(q, k, v, lens, mask))
    _same(tree, sk.tree_verify(tokens, par, p, dq, seed=3))
    _same(chain, sk.chain_verify(tokens[:, 1:], p, dq[:, 1:], seed=3))


# ---------------------------------------------------------------------------------------------------
# torch.compile: a whole verify step, one graph
# ---------------------------------------------------------------------------------------------------


def verify_step(q, cache, kv_lens, tree_mask, tokens, parents, lm_head, seed):
    """Tree attention over the cache -> logits -> tree verification -> compaction of the accepted nodes'
    K/V (node path[i] at prefix + path[i] moves to prefix + i). cache: [1, 2, B, Hkv, S, D]."""
    n = q.shape[2]
    att = OPS.tree_attention(q, cache[0, 0], cache[0, 1], kv_lens, tree_mask, check=False)
    logits = att.mean(1) @ lm_head  # [B, N, V]
    path, n_acc, _, out_tokens, n_emit = OPS.tree_verify(
        tokens, parents, seed=seed, target_logits=logits, validate=False
    )
    prefix = kv_lens.to(torch.int64) - n
    src = prefix[:, None] + path[:, 1:].clamp(min=0)
    OPS.compact_kv_cache(cache, src, prefix + 1, n_acc, check=False)
    return out_tokens, n_emit


def test_compiled_verify_step_has_no_graph_break(rng):
    q, k, v, lens, mask = attention_case(rng)
    cache = torch.stack([k, v]).unsqueeze(0).nan_to_num(0.0).contiguous()  # [1, 2, B, Hkv, S, D]
    lm_head = 20 * torch.randn(D, V, generator=rng)  # a sharp target
    # draft each node's token as the target's argmax at its parent: nodes get accepted, compaction moves K/V
    logits = sk.tree_attention(q, cache[0, 0], cache[0, 1], lens, mask).mean(1) @ lm_head
    tokens = logits.argmax(-1)[:, torch.tensor(PARENTS).clamp(min=0)]
    args = (q, lens, mask, tokens, torch.tensor(PARENTS), lm_head, torch.tensor(3))
    eager_cache, compiled_cache = cache.clone(), cache.clone()
    want = verify_step(q, eager_cache, *args[1:])
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")  # AOT autograd: functionalises the cache mutation
    step = torch.compile(verify_step, fullgraph=True, backend=counter)
    got = step(q, compiled_cache, *args[1:])
    assert counter.frame_count == 1  # one graph (fullgraph=True would raise on a break) ...
    called = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"specdec.tree_attention", "specdec.tree_verify", "specdec.compact_kv_cache"} <= called  # the ops, opaque
    _same(got, want)
    assert torch.equal(compiled_cache, eager_cache)
    assert int(want[1].min()) > 1  # drafts were accepted, so the compaction moved entries:
    assert not torch.equal(eager_cache, cache)
