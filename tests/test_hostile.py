"""Hostile input: malformed trees, non-finite numbers, out-of-range indices and parameters.

Every public entry point must either compute the documented result or refuse the input with an error
that names the argument; it must never hang, crash the process, or let garbage in unused memory leak
into a result. Calls that used to hang run under a timeout (a thread), the call that used to crash
runs in a subprocess, so a regression fails one test instead of taking pytest down.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specdec
import specdec_kernels as sk
from conftest import run_isolated
from specdec.strategies import Chain, DynamicLookahead, DynamicTree, LookupOrChain, PromptLookup, StaticTree
from specdec.strategies.chains import ASSETS
from specdec_kernels import trees
from specdec_kernels.tree_attention import MAX_TREE_NODES, tree_attention_reference

HOSTILE = settings(derandomize=True, deadline=None, max_examples=20)
FEW = settings(derandomize=True, deadline=None, max_examples=6)  # Triton interpreter cases: slower


def _within(fn, timeout: float = 20.0):
    """fn() in a daemon thread: its result, or its exception re-raised; fails if it runs past timeout
    (a hang is left behind in the daemon thread instead of blocking the test run)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"call did not return within {timeout} s (hangs on this input)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------------------------------
# 1. Tree helpers: anything but a topologically ordered tree is refused, never looped over forever
# ---------------------------------------------------------------------------------------------------

PARENT_HELPERS = {
    "ancestor_mask": trees.ancestor_mask,
    "tree_depths": trees.tree_depths,
    "packed_ancestor_mask": trees.packed_ancestor_mask,
    "tree_position_ids": lambda p: trees.tree_position_ids(p, 3),
}


def _is_tree(parents: list[int]) -> bool:
    return parents[0] == -1 and all(0 <= p < i for i, p in enumerate(parents) if i > 0)


def _naive_depths(parents: list[int]) -> list[int]:
    depth = []
    for i, p in enumerate(parents):
        depth.append(0 if i == 0 else depth[p] + 1)
    return depth


@pytest.mark.parametrize("helper", sorted(PARENT_HELPERS))
@pytest.mark.parametrize(
    "parents",
    [[-1, 2, 1], [-1, 1], [-1, 0, 2], [0, 0], [3, -1, 0], [-1, -1], [-1, 0, 7]],
    ids=["cycle", "self-parent", "self-parent-late", "root-not-minus-1", "root-forward", "two-roots", "out-of-range"],
)
def test_tree_helpers_refuse_non_trees(helper, parents):
    with pytest.raises(ValueError, match=r"parents.*(topological|must be -1)"):
        _within(lambda: PARENT_HELPERS[helper](torch.tensor(parents)))
    batched = torch.stack([trees.chain_parents(len(parents)), torch.tensor(parents)])  # one bad row
    with pytest.raises(ValueError, match="parents"):
        _within(lambda: PARENT_HELPERS[helper](batched))


@HOSTILE
@given(parents=st.lists(st.integers(-3, 8), min_size=1, max_size=8))
def test_tree_helpers_on_arbitrary_parent_lists(parents):
    p = torch.tensor(parents)
    if not _is_tree(parents):
        for fn in PARENT_HELPERS.values():
            with pytest.raises(ValueError, match="parents"):
                _within(lambda: fn(p))
        return
    assert _within(lambda: trees.tree_depths(p)).tolist() == _naive_depths(parents)
    assert _within(lambda: trees.tree_position_ids(p, 3)).tolist() == [[3 + d for d in _naive_depths(parents)]]


# ---------------------------------------------------------------------------------------------------
# 2. Greedy verification refuses non-finite target rows (the backends would disagree on the argmax)
# ---------------------------------------------------------------------------------------------------

BACKENDS = ["reference", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@HOSTILE
@given(
    kind=st.sampled_from(["chain", "tree"]),
    as_logits=st.booleans(),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    b=st.integers(0, 1),
    node=st.integers(0, 3),
    col=st.integers(0, 5),
)
def test_greedy_refuses_non_finite_targets(backend, kind, as_logits, bad, b, node, col):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, generator=gen)
    target = logits.clone() if as_logits else torch.softmax(logits, -1)
    target[b, node, col] = bad
    tokens = torch.randint(0, 6, (2, 4), generator=gen)
    parents = torch.tensor([-1, 0, 0, 1])

    def verify(validate):
        kw = dict(target_logits=target, temperature=0.0) if as_logits else dict(target_probs=target, greedy=True)
        if kind == "chain":
            return sk.chain_verify(tokens[:, 1:], validate=validate, backend=backend, **kw)
        return sk.tree_verify(tokens, parents, validate=validate, backend=backend, **kw)

    name = "target_logits" if as_logits else "target_probs"
    if as_logits and bad == -math.inf:  # a logit of -inf is a token of probability 0: allowed
        verify(True)
        return
    with pytest.raises(ValueError, match=f"{name} .*row \\(batch, node\\) = \\({b}, {node}\\)"):
        verify(True)
    verify(False)  # unchecked: some token, but no error and no hang


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_ignores_non_finite_rows_past_draft_lens(backend):
    target = torch.softmax(torch.randn(1, 4, 6), -1)
    target[0, 3] = math.nan  # row after draft 3; draft_lens = 1 uses rows 0 and 1 only
    res = sk.chain_verify(
        torch.zeros(1, 3, dtype=torch.int64), target, greedy=True, draft_lens=torch.tensor([1]), backend=backend
    )
    assert int(res.num_emitted[0]) >= 1


# ---------------------------------------------------------------------------------------------------
# 3. Tree attention: cache slots at or past kv_lens never influence the output; sm_scale is checked
# ---------------------------------------------------------------------------------------------------


def _attention_case(kv_short: int, n: int = 3, s: int = 12):
    gen = torch.Generator().manual_seed(kv_short)
    q = torch.randn(2, 2, n, 16, generator=gen)
    k = torch.randn(2, 1, s, 16, generator=gen)
    v = torch.randn(2, 1, s, 16, generator=gen)
    kv_lens = torch.tensor([s, kv_short])  # row 0 uses the whole buffer, row 1 leaves s - kv_short slots
    mask = trees.ancestor_mask(torch.tensor([-1, 0, 0]))
    return q, k, v, kv_lens, mask


@pytest.mark.parametrize("backend", BACKENDS)
@FEW
@given(
    kv_short=st.integers(3, 11),
    fill=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.sampled_from(["k", "v", "both"]),
)
def test_unused_cache_slots_do_not_leak(backend, kv_short, fill, where):
    q, k, v, kv_lens, mask = _attention_case(kv_short)
    k[1, :, kv_short:] = 0.0
    v[1, :, kv_short:] = 0.0
    clean = sk.tree_attention(q, k, v, kv_lens, mask, backend=backend)
    if where in ("k", "both"):
        k[1, :, kv_short:] = fill
    if where in ("v", "both"):
        v[1, :, kv_short:] = fill
    dirty = sk.tree_attention(q, k, v, kv_lens, mask, backend=backend)
    assert torch.isfinite(dirty).all()
    assert torch.equal(dirty, clean)


def test_reference_ignores_garbage_past_kv_lens_with_a_memo():
    q, k, v, kv_lens, mask = _attention_case(5)
    memo = {}
    clean = tree_attention_reference(q, k, v, kv_lens, mask, mask_memo=memo)
    k[1, :, 5:], v[1, :, 5:] = math.nan, math.inf
    assert torch.equal(tree_attention_reference(q, k, v, kv_lens, mask, mask_memo=memo), clean)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, 0.0, -0.5])
def test_sm_scale_must_be_finite_and_positive(scale):
    q, k, v, kv_lens, mask = _attention_case(5)
    with pytest.raises(ValueError, match="sm_scale"):
        sk.tree_attention(q, k, v, kv_lens, mask, sm_scale=scale)
    with pytest.raises(ValueError, match="sm_scale"):
        tree_attention_reference(q, k, v, kv_lens, mask, sm_scale=scale)
    with pytest.raises(TypeError, match="sm_scale"):
        sk.tree_attention(q, k, v, kv_lens, mask, sm_scale=True)
    sk.tree_attention(q, k, v, kv_lens, mask, sm_scale=0.25)  # finite and > 0: fine


# ---------------------------------------------------------------------------------------------------
# 4. compact_kv_cache(check=False) never reads or writes out of bounds
# ---------------------------------------------------------------------------------------------------

_UNCHECKED_COMPACTION = textwrap.dedent("""
    import torch, specdec_kernels as sk
    L, B, H, S, D, M = 2, 3, 2, 16, 8, 4
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(L, 2, B, H, S, D, generator=g)
    src = torch.tensor([[4, 5, 6, 7], [8, 10, 12, 14], [3, 4, 5, 6]])
    dst = torch.tensor([2, 5, 1])
    for counts in ([M + 1, 10**6, 2**62], [-1, -(10**6), M], [M, M, 2**63 - 1]):
        counts = torch.tensor(counts)
        expected = cache.clone()
        sk.compact_kv_cache_reference(expected, src, dst, counts.clamp(0, M))  # clamped to src_pos's width
        got = cache.clone()
        sk.compact_kv_cache(got, src, dst, counts, check=False)
        assert torch.equal(got, expected), counts
    # destinations far outside the cache (d + i would overflow int64): those rows copy nothing
    far = torch.tensor([2**63 - 1, -(2**63), 1])
    expected = cache.clone()
    sk.compact_kv_cache_reference(expected, src, torch.tensor([0, 0, 1]), torch.tensor([0, 0, M]))
    got = cache.clone()
    sk.compact_kv_cache(got, src, far, torch.tensor([M, M, M]), check=False)
    assert torch.equal(got, expected)
    print("ok")
""")


def test_unchecked_compaction_clamps_counts():
    run_isolated(_UNCHECKED_COMPACTION)


def test_checked_compaction_refuses_counts_past_src_width():
    cache = torch.zeros(1, 2, 1, 1, 8, 4)
    with pytest.raises(ValueError, match="counts"):
        sk.compact_kv_cache(cache, torch.tensor([[2, 3]]), torch.tensor([0]), torch.tensor([3]))


# ---------------------------------------------------------------------------------------------------
# 5. Strategy parameters: checked at construction, explicit values never replaced
# ---------------------------------------------------------------------------------------------------

NOT_INTS = st.one_of(
    st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)
)

# (constructor of one keyword, argument name, smallest valid int, largest valid int or None)
INT_PARAMS = [
    (lambda x: Chain(x), "k", 1, MAX_TREE_NODES - 1),
    # None is DynamicLookahead's "not passed" (the default): only the other non-ints are refused
    (
        lambda x: DynamicLookahead("heuristic", k=x if x is not None else 0, k_max=MAX_TREE_NODES - 1),
        "k",
        1,
        MAX_TREE_NODES - 1,
    ),
    (lambda x: DynamicLookahead("confidence", k_max=x if x is not None else 0), "k_max", 1, MAX_TREE_NODES - 1),
    (lambda x: DynamicTree("dyspec", budget=x), "budget", 1, MAX_TREE_NODES - 1),
    (lambda x: DynamicTree("eagle2", budget=1, top_k=x, depth=1), "top_k", 1, None),
    (lambda x: DynamicTree("eagle2", budget=1, depth=x, top_k=1), "depth", 1, MAX_TREE_NODES + 1),
    (lambda x: DynamicTree("dyspec", budget=4, width=x), "width", 1, None),
    (lambda x: PromptLookup(k=x), "k", 1, MAX_TREE_NODES - 1),
    (lambda x: PromptLookup(k=2, branches=x), "branches", 1, (MAX_TREE_NODES - 1) // 2),
    (lambda x: PromptLookup(max_ngram=x, min_ngram=1), "max_ngram", 1, None),
    (lambda x: PromptLookup(max_ngram=5, min_ngram=x), "min_ngram", 1, 5),
]


@settings(derandomize=True, deadline=None, max_examples=100)  # construction only: cheap
@given(case=st.integers(0, len(INT_PARAMS) - 1), value=st.one_of(NOT_INTS, st.integers(-5, 2 * MAX_TREE_NODES)))
def test_int_parameters_are_checked(case, value):
    make, name, lo, hi = INT_PARAMS[case]
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if in_range:
        make(value)
        return
    with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b"):
        make(value)


def test_dynamic_lookahead_keeps_explicit_arguments():
    saved = json.loads((ASSETS / "disco.json").read_text())
    d = DynamicLookahead("disco", threshold=0.99, k_max=2)
    assert (d.threshold, d.k_max, d.k) == (0.99, 2, 2)  # defaulted k follows the smaller k_max
    assert d.weights == saved["weights"]
    default = DynamicLookahead("disco")  # nothing passed: the trained file's values
    assert (default.threshold, default.k_max) == (saved["threshold"], saved["k_max"])
    assert DynamicLookahead("disco", threshold=0.2).k_max == saved["k_max"]
    custom = DynamicLookahead("disco", weights=[1.0] * 6, k_max=5)
    assert custom.weights == [1.0] * 6 and custom.k_max == 5


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(policy="nope"), ValueError, "policy"),
        (dict(policy="confidence", threshold=1.5), ValueError, "threshold"),
        (dict(policy="confidence", threshold=math.nan), ValueError, "threshold"),
        (dict(policy="confidence", threshold="0.5"), TypeError, "threshold"),
        (dict(policy="heuristic", k=5, k_max=3), ValueError, "k must be an int in \\[1, k_max=3\\]"),
        (dict(policy="disco", weights=[1.0] * 5), ValueError, "weights"),
        (dict(policy="disco", weights=[1.0] * 5 + [math.nan]), ValueError, "weights"),
        (dict(policy="disco", weights="abcdef"), ValueError, "weights"),
    ],
)
def test_dynamic_lookahead_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DynamicLookahead(**kwargs)


@pytest.mark.parametrize("paths", [[], [()], [(0.7,)], [(0, 1.0)], [(True,)], [(0, -1)], ["01"], 5, [[0, "1"]]])
def test_static_tree_refuses_bad_paths(paths):
    with pytest.raises(ValueError, match="paths"):
        StaticTree(paths)


def test_tree_strategies_respect_the_attention_node_limit():
    StaticTree([(r,) for r in range(MAX_TREE_NODES - 1)])  # root + 1023 = the limit
    with pytest.raises(ValueError, match=str(MAX_TREE_NODES)):
        StaticTree([(r,) for r in range(MAX_TREE_NODES)])
    with pytest.raises(ValueError, match=str(MAX_TREE_NODES)):
        _within(lambda: StaticTree([(0,) * (10 * MAX_TREE_NODES)]))  # refused before building its prefixes
    DynamicTree("eagle2", budget=MAX_TREE_NODES - 1, top_k=32, depth=2)
    with pytest.raises(ValueError, match="budget"):
        DynamicTree("dyspec", budget=MAX_TREE_NODES)
    with pytest.raises(ValueError, match=str(MAX_TREE_NODES)):  # feeds 40 * 39 draft tokens per forward
        DynamicTree("eagle2", budget=8, top_k=40, depth=40)
    with pytest.raises(ValueError, match=str(MAX_TREE_NODES)):
        PromptLookup(k=600, branches=2)
    with pytest.raises(ValueError, match="log_mass_floor"):
        DynamicTree("ddd", log_mass_floor=math.nan)


def test_lookup_or_chain_refuses_bad_parts():
    with pytest.raises(TypeError, match="fallback"):
        LookupOrChain(fallback=3)
    with pytest.raises(TypeError, match="fallback"):
        LookupOrChain(fallback=PromptLookup())  # model-free: cannot stand in when lookup finds nothing
    with pytest.raises(TypeError, match="lookup"):
        LookupOrChain(lookup="first")
    assert LookupOrChain(fallback=Chain(2)).max_nodes == PromptLookup(k=8, min_ngram=2).max_nodes


def test_named_strategies_still_build():
    for name in (
        "chain",
        "disco",
        "heuristic",
        "confidence",
        "gate",
        "gate:3:0.25",
        "lookup",
        "hybrid",
        "static-tree",
        "eagle2",
        "dyspec",
        "ddd",
    ):
        specdec.strategies.resolve_strategy(name)


@pytest.mark.parametrize(
    "argv, what",
    [
        (["demo", "--prompts", "0"], "--prompts"),
        (["bench", "--prompts", "-2"], "--prompts"),
        (["bench", "--repeats", "0"], "--repeats"),
        (["bench", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["bench", "--configs", "chain:abc"], "chain:abc"),
        (["demo", "--temperature", "nan"], "--temperature"),
        (["demo", "--temperature", "-1"], "--temperature"),
        (["demo", "--strategy", "nope"], "nope"),
    ],
)
def test_cli_refuses_bad_flags_in_one_line(argv, what, capsys):
    """Bad CLI flags end in argparse's one-line usage error (exit 2) before any model loads."""
    from specdec.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert what in err[-1] and "Traceback" not in "\n".join(err)


# ---------------------------------------------------------------------------------------------------
# 6. generate's arguments: every one checked before any forward, refused by name
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair():
    from test_generate import tiny_model

    return tiny_model("llama", 2, 64, seed=0), tiny_model("llama", 1, 32, seed=1)


def _prompt(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(n))


# (keyword arguments, exception, the argument the message must name)
BAD_GENERATE_ARGS = [
    (dict(temperature="0.5"), TypeError, "temperature"),
    (dict(temperature=[0.5]), TypeError, "temperature"),
    (dict(temperature=True), TypeError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=torch.tensor(0.5)), TypeError, "temperature"),
    (dict(seed="1"), TypeError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=False), TypeError, "seed"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=-3), ValueError, "max_new_tokens"),
    (dict(max_new_tokens="8"), TypeError, "max_new_tokens"),
    (dict(eos_token_id="2"), TypeError, "eos_token_id"),
    (dict(eos_token_id=[1, "2"]), TypeError, "eos_token_id"),
    (dict(eos_token_id=-1), ValueError, "eos_token_id"),
    (dict(eos_token_id=97), ValueError, "eos_token_id"),
    (dict(eos_token_id=[3, 500]), ValueError, "eos_token_id"),
    (dict(eos_token_id=2.0), TypeError, "eos_token_id"),
    (dict(pad_token_id="0"), TypeError, "pad_token_id"),
    (dict(pad_token_id=0.5), TypeError, "pad_token_id"),
    (dict(timing="yes"), TypeError, "timing"),
    (dict(streamer=5), TypeError, "streamer"),
    (dict(streamer="print"), TypeError, "streamer"),
    (dict(attention_mask=[[1, 1, 1, 1, 1]]), TypeError, "attention_mask"),
    (dict(attention_mask=torch.ones(1, 5)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.full((1, 5), 2)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.ones(2, 5, dtype=torch.int64)), ValueError, "attention_mask"),
    (dict(input_ids=[[1, 2, 3]]), TypeError, "input_ids"),
    (dict(input_ids=torch.ones(1, 4)), ValueError, "input_ids"),
    (dict(input_ids=torch.ones(4, dtype=torch.int64)), ValueError, "input_ids"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.int64, device="meta")), ValueError, "input_ids"),
    (dict(target="a path"), TypeError, "target"),
    (dict(target=torch.nn.Linear(2, 2)), TypeError, "target"),
    (dict(draft="a path"), TypeError, "draft"),
    (dict(draft=torch.nn.Linear(2, 2)), TypeError, "draft"),
    (dict(strategy=3), TypeError, "strategy"),
    (dict(strategy=Chain), TypeError, "strategy"),
    (dict(strategy="chain:x"), ValueError, "strategy"),  # sized names are read (chain:4), malformed ones refused
    (dict(strategy="nope:4"), ValueError, "strategy"),
    (dict(strategy=DynamicTree("eagle2", budget=8, top_k=98, depth=1)), ValueError, "vocabulary"),
    (dict(strategy=StaticTree([(0,), (120,)])), ValueError, "vocabulary"),
]


@pytest.mark.parametrize(
    "kwargs,exc,name",
    BAD_GENERATE_ARGS,
    ids=[f"{next(iter(k))}={k[next(iter(k))]!r}"[:40] for k, _, _ in BAD_GENERATE_ARGS],
)
def test_generate_refuses_bad_arguments_by_name(tiny_pair, kwargs, exc, name, monkeypatch):
    target, draft = tiny_pair
    args = {**dict(target=target, draft=draft, input_ids=_prompt(), max_new_tokens=4), **kwargs}
    calls = []
    monkeypatch.setattr(
        specdec.runner.ModelRunner,
        "forward",
        lambda *a, **k: calls.append(1) or pytest.fail("a forward ran before the arguments were checked"),
    )
    with pytest.raises(exc, match=rf"\b{name}\b"):
        specdec.generate(args.pop("target"), args.pop("draft"), args.pop("input_ids"), **args)
    assert not calls


def test_models_on_the_meta_device_are_refused(tiny_pair):
    from test_generate import tiny_model

    target, draft = tiny_pair
    with torch.device("meta"):
        ghost = tiny_model("llama", 1, 32, seed=3)
    with pytest.raises(ValueError, match="target's weights are on the meta device"):
        specdec.generate(ghost, None, _prompt().to("meta"), strategy="lookup")
    with pytest.raises(ValueError, match="draft's weights are on the meta device"):
        specdec.generate(target, ghost, _prompt())


# Property: whatever value each argument takes, generate either runs or raises TypeError/ValueError
# naming that argument; never another exception type.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=2),
    st.lists(st.integers(-1, 120), max_size=3),
)


@settings(derandomize=True, deadline=None, max_examples=60)
@given(
    name=st.sampled_from(["temperature", "seed", "eos_token_id", "pad_token_id", "max_new_tokens", "streamer"]),
    value=ANY_VALUE,
)
def test_generate_arguments_are_used_or_refused(tiny_pair, name, value):
    target, draft = tiny_pair
    kwargs = {"max_new_tokens": 3, name: value}
    try:
        out = specdec.generate(target, draft, _prompt(), **kwargs)
    except (TypeError, ValueError) as e:
        assert name in str(e), f"{name}={value!r} refused without naming it: {e}"
        return
    assert 1 <= out.sequences.shape[1] - 5 <= (kwargs["max_new_tokens"] or 128)  # None: the default


def test_transformers_streamers_get_the_prompt_then_every_token(tiny_pair):
    target, draft = tiny_pair

    class Recorder:  # the transformers BaseStreamer interface: put(tensor), end()
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            self.ended = True

    rec, ids = Recorder(), _prompt()
    out = specdec.generate(target, draft, ids, max_new_tokens=9, strategy=Chain(3), streamer=rec)
    assert rec.puts[0] == ids[0].tolist() and rec.ended
    assert sum(rec.puts[1:], []) == out.sequences[0, 5:].tolist()


# ---------------------------------------------------------------------------------------------------
# 7. Memory follows the output, not max_new_tokens
# ---------------------------------------------------------------------------------------------------


def _record_caches(monkeypatch) -> list:
    """Every SpecCache generate builds, to read its allocated length afterwards."""
    from specdec.cache import SpecCache

    made, init = [], SpecCache.__init__

    def record(self, *a, **k):
        init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(SpecCache, "__init__", record)
    return made


@pytest.mark.parametrize("max_new_tokens", [10**6, 10**12])
def test_a_huge_max_new_tokens_allocates_for_what_is_generated(tiny_pair, monkeypatch, max_new_tokens):
    from test_generate import plain_greedy

    target, draft = tiny_pair
    ids = _prompt()
    free = plain_greedy(target, ids, torch.ones_like(ids), 6)
    eos = int(free[0, -1])  # stops after at most 6 tokens
    caches = _record_caches(monkeypatch)
    out = _within(lambda: specdec.generate(target, draft, ids, max_new_tokens=max_new_tokens, eos_token_id=eos))
    n = out.sequences.shape[1]
    assert out.sequences[0].tolist() == free[0, :n].tolist()
    assert caches and all(c.buffer.shape[4] <= 5 + sys.modules["specdec.decoder"].INITIAL_OUTPUT + 64 for c in caches)


def test_cache_reserve_doubles_and_keeps_entries():
    from test_generate import tiny_model

    from specdec.cache import SpecCache

    cfg = tiny_model("llama", 2, 64, seed=0).config
    c = SpecCache(cfg, 2, 100, dtype=torch.float32, device=torch.device("cpu"), capacity=8)
    c.buffer.normal_()
    before = c.buffer.clone()
    c.begin_forward(5, start=6)  # writes 6..10: past 8 -> 16
    assert c.capacity == 16 and c.buffer.shape[4] == 16
    assert torch.equal(c.buffer[..., :8, :], before) and not c.buffer[..., 8:, :].any()
    assert all(layer.keys.data_ptr() == c.buffer[i, 0].data_ptr() for i, layer in enumerate(c.layers))
    c.begin_forward(3, start=20)  # needs 23: doubles to 32
    assert c.capacity == 32
    c.begin_forward(3, start=70)  # needs 73, more than double: exactly what is needed
    assert c.capacity == 73
    c.begin_forward(3, start=90)  # doubling would pass max_len: capped at 100
    assert c.capacity == 100
    with pytest.raises(specdec.cache.CacheFullError):
        c.begin_forward(3, start=99)
