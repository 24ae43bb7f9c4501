"""Tree builders produce valid draft trees: topological, within budget, distinct children (hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_generate import tiny_model

from specdec import DynamicTree, StaticTree
from specdec.drafters import ModelDrafter
from specdec.proposer import DraftContext, Rows
from specdec.runner import tree_attention_enabled
from specdec_kernels import trees

VOCAB = 41
DRAFT = tiny_model("llama", 1, 32, seed=11, vocab=VOCAB)


def draft_one_tree(strategy, batch, temperature, seed):
    """Prefill a random ragged batch into the draft's cache, then draft one tree per row."""
    g = torch.Generator().manual_seed(seed)
    T = 7
    ids = torch.randint(0, VOCAB, (batch, T), generator=g)
    with tree_attention_enabled(DRAFT):
        drafter = ModelDrafter(DRAFT, batch, T + 4 + strategy.max_fed + 4)
        drafter.prefill(ids, torch.ones_like(ids), ids[:, -1])
        rows = Rows(torch.arange(batch), ids[:, -2], ids[:, -1], torch.full((batch,), T))
        ctx = DraftContext(rows, drafter, temperature, g, torch.full((batch,), 64), lambda: ids.tolist())
        return strategy.propose(ctx), ids


def check_tree(tree, ids, max_nodes):
    B, N = tree.tokens.shape
    assert N <= max_nodes
    trees.validate_parents(tree.parents, n=N)  # topological, one root
    assert torch.equal(tree.tokens[:, 0], ids[:, -1])  # node 0 is the root (the last committed token)
    for b in range(B):
        seen = set()
        for i in range(1, N):
            key = (int(tree.parents[b, i]), int(tree.tokens[b, i]))
            assert key not in seen, f"row {b}: two children of node {key[0]} carry token {key[1]}"
            seen.add(key)
    # every node fed to the draft has a slot; the slots are distinct per row
    for b in range(B):
        slots = [s for s in tree.draft_slot[b].tolist() if s >= 0]
        assert len(slots) == len(set(slots)) and tree.draft_slot[b, 0] == 0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    method=st.sampled_from(["eagle2", "ddd", "dyspec"]),
    top_k=st.integers(1, 5),
    depth=st.integers(1, 5),
    budget=st.integers(1, 20),
    width=st.integers(1, 6),
    batch=st.integers(1, 3),
    temperature=st.sampled_from([0.0, 0.8]),
    seed=st.integers(0, 10_000),
)
def test_dynamic_trees_are_valid(method, top_k, depth, budget, width, batch, temperature, seed):
    most = top_k + (depth - 1) * top_k**2
    if method != "dyspec" and budget > most:
        with pytest.raises(ValueError, match="exceeds"):
            DynamicTree(method, budget=budget, top_k=top_k, depth=depth)
        return
    strategy = DynamicTree(method, budget=budget, top_k=top_k, depth=depth, width=width)
    tree, ids = draft_one_tree(strategy, batch, temperature, seed)
    check_tree(tree, ids, strategy.max_nodes)
    if method == "dyspec":
        assert tree.tokens.shape[1] == budget + 1  # DySpec always spends its whole budget
        if temperature > 0:  # sampled children: q per node is a distribution
            assert torch.allclose(tree.draft_probs.sum(-1), torch.ones(batch, budget + 1), atol=1e-4)
    if method == "eagle2":
        assert tree.tokens.shape[1] == budget + 1
        assert int(trees.tree_depths(tree.parents).max()) <= depth


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    paths=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple), min_size=1, max_size=8),
    batch=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_static_trees_follow_their_rank_paths(paths, batch, seed):
    strategy = StaticTree(paths)
    tree, ids = draft_one_tree(strategy, batch, 0.0, seed)
    check_tree(tree, ids, strategy.max_nodes)
    # every prefix of every path is a node: node count = number of distinct prefixes + the root
    prefixes = {p[:i] for p in paths for i in range(1, len(p) + 1)}
    assert tree.tokens.shape[1] == len(prefixes) + 1


def test_static_tree_rejects_bad_paths():
    with pytest.raises(ValueError, match="ranks >= 0"):
        StaticTree([(0, -1)])
    with pytest.raises(ValueError, match="unknown shape"):
        StaticTree("nope")
