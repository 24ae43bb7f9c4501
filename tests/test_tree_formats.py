"""Tree format converters (specdec_kernels.tree_formats) against naive definitions and round trips.

Random trees are hypothesis-drawn with ``parents[i]`` uniform in ``[0, i - 1]`` (every topologically
ordered tree is reachable). Expected values come from naive pointer walks written here, never from the
module under test.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.strategies.trees import DEFAULT_STATIC_PATHS, close_paths
from specdec_kernels import tree_formats as tf
from specdec_kernels import trees

FAST = settings(derandomize=True, deadline=None, max_examples=60)


def tree_of(n: int):
    """Strategy: one random topologically ordered tree of n nodes as a python list."""
    return st.tuples(*[st.integers(0, i - 1) for i in range(1, n)]).map(lambda t: [-1, *t])


random_tree = st.integers(1, 40).flatmap(tree_of)
random_batch = st.tuples(st.integers(1, 4), st.integers(1, 24)).flatmap(
    lambda bn: st.lists(tree_of(bn[1]), min_size=bn[0], max_size=bn[0])
)
ragged_batch = st.lists(st.integers(1, 20).flatmap(tree_of), min_size=1, max_size=4)


def naive_children(parents: list[int]) -> list[list[int]]:
    kids = [[] for _ in parents]
    for i, p in enumerate(parents[1:], start=1):
        kids[p].append(i)
    return kids


def naive_paths(parents: list[int]) -> list[tuple[int, ...]]:
    """Rank path of each node (root included), ranking siblings by node index."""
    kids = naive_children(parents)
    paths = [()] * len(parents)
    for i in range(1, len(parents)):
        p = parents[i]
        paths[i] = paths[p] + (kids[p].index(i),)
    return paths


def is_canonical(parents: list[int]) -> bool:
    paths = naive_paths(parents)
    keys = [(len(q), q) for q in paths]
    return keys == sorted(keys)


def naive_bits_little(bits: list[bool]) -> list[int]:
    """numpy.packbits(bitorder="little") by hand: bit k goes to byte k // 8, bit position k % 8."""
    out = [0] * ((len(bits) + 7) // 8)
    for k, b in enumerate(bits):
        if b:
            out[k // 8] |= 1 << (k % 8)
    return out


# --------------------------------------------------------------------------------------------------
# Rank paths: vLLM speculative_token_tree, TensorRT-LLM choices
# --------------------------------------------------------------------------------------------------


@FAST
@given(random_tree)
def test_paths_match_naive_and_round_trip_to_canonical(par):
    p = torch.tensor(par)
    paths = tf.parents_to_paths(p)
    assert paths == naive_paths(par)[1:]
    assert tf.sibling_ranks(p).tolist() == [0] + [q[-1] for q in paths]

    perm = tf.canonical_order(p)
    canon = tf.permute_tree(p, perm)
    assert sorted(perm.tolist()) == list(range(len(par))) and int(perm[0]) == 0
    assert is_canonical(canon.tolist())
    # renumbering keeps the shape: the canonical tree's mask is the original's, rows and columns permuted
    assert torch.equal(trees.ancestor_mask(canon), trees.ancestor_mask(p)[perm][:, perm])

    # parents -> paths -> parents: the identity up to the canonical order (exactly for canonical trees)
    for back in (
        tf.paths_to_parents(paths),
        tf.from_vllm_token_tree(tf.to_vllm_token_tree(p)),
        tf.from_vllm_token_tree(str(tf.to_vllm_token_tree(p))),
        tf.from_trtllm_choices(tf.to_trtllm_choices(p)),
        tf.from_trtllm_choices(tf.to_trtllm_choices(p), sort=False),
    ):
        assert back.dtype == torch.int64
        assert torch.equal(back, canon)
    assert torch.equal(tf.paths_to_parents(paths, sort=False), p)  # list order = our node order
    if is_canonical(par):
        assert torch.equal(tf.from_vllm_token_tree(tf.to_vllm_token_tree(p)), p)
    # canonical trees are fixed points and the vLLM list is sorted as vLLM sorts it
    vt = tf.to_vllm_token_tree(p)
    assert vt == sorted(vt, key=lambda q: (len(q), q))
    assert tf.to_trtllm_choices(p) == [list(q) for q in vt]
    assert torch.equal(tf.permute_tree(canon, tf.canonical_order(canon)), canon)


@pytest.mark.parametrize("name", sorted(DEFAULT_STATIC_PATHS))
def test_default_static_paths_convert_to_runtime_choices_and_back(name):
    closed = close_paths(DEFAULT_STATIC_PATHS[name])  # the node order StaticTree drafts in (+1, root 0)
    index = {(): 0, **{q: k for k, q in enumerate(closed, start=1)}}
    parents = torch.tensor([-1] + [index[q[:-1]] for q in closed])  # built here by dictionary lookup
    # the shapes use ranks 0..k-1 at every node, so rank paths survive the trip unchanged
    assert tf.to_vllm_token_tree(parents) == closed
    assert tf.to_trtllm_choices(parents) == [list(q) for q in closed]
    assert torch.equal(tf.from_vllm_token_tree(str(closed)), parents)
    assert torch.equal(tf.from_trtllm_choices([list(q) for q in closed]), parents)
    assert torch.equal(tf.from_trtllm_choices(DEFAULT_STATIC_PATHS[name]), parents)  # as listed


def test_vllm_default_chain_and_unsorted_choices():
    # vLLM's default tree for k speculative tokens is the chain [(0,), (0, 0), ...]
    assert torch.equal(tf.from_vllm_token_tree(str([(i + 1) * (0,) for i in range(4)])), trees.chain_parents(5))
    # Medusa-style lists are in probability order; sorting numbers them by (depth, path)
    choices = [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0]]
    assert tf.from_trtllm_choices(choices).tolist() == [-1, 0, 0, 0, 1, 1, 2, 4]
    assert tf.from_trtllm_choices(choices, sort=False).tolist() == [-1, 0, 1, 0, 1, 0, 2, 3]
    # gaps in ranks (top-2 token without the top-1) keep the shape; ranks come back renumbered
    assert tf.to_vllm_token_tree(tf.from_vllm_token_tree([(1,), (1, 3)])) == [(0,), (0, 0)]


@pytest.mark.parametrize(
    "paths, match",
    [
        ([(0,), (0,)], "listed twice"),
        ([(0, 0)], "prefix"),
        ([()], "root is implicit"),
        ([(0,), (-1,)], "ints >= 0"),
        ([(0,), (True,)], "ints >= 0"),
        ([(0,), (0.5,)], "ints >= 0"),
    ],
)
def test_bad_paths_raise(paths, match):
    with pytest.raises(ValueError, match=match):
        tf.paths_to_parents(paths)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="listed before its parent"):
        tf.from_trtllm_choices([[0, 0], [0]], sort=False)
    with pytest.raises(TypeError, match="list of rank paths"):
        tf.paths_to_parents("[(0,)]")
    with pytest.raises(ValueError, match="Python literal"):
        tf.from_vllm_token_tree("[(0,), (0,")
    with pytest.raises(ValueError, match="one tree of shape"):
        tf.to_vllm_token_tree(torch.tensor([[-1, 0], [-1, 0]]))
    with pytest.raises(ValueError, match="topological"):
        tf.to_trtllm_choices(torch.tensor([-1, 2, 0]))
    with pytest.raises(ValueError, match="permutation"):
        tf.permute_tree(torch.tensor([-1, 0, 0]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="topological"):  # moves a child before its parent
        tf.permute_tree(torch.tensor([-1, 0, 1]), torch.tensor([0, 2, 1]))


# --------------------------------------------------------------------------------------------------
# SGLang retrive_index / retrive_next_token / retrive_next_sibling
# --------------------------------------------------------------------------------------------------


@FAST
@given(random_batch)
def test_sglang_lists_match_naive_and_round_trip(batch):
    p = torch.tensor(batch)
    B, n = p.shape
    index, nxt, sib = tf.to_sglang_tree(p)
    for t in (index, nxt, sib):
        assert t.dtype == torch.int64 and t.shape == (B, n)
    assert index.tolist() == [[b * n + i for i in range(n)] for b in range(B)]
    for b, par in enumerate(batch):
        # walking the lists the way verify_tree_greedy walks them finds every node's children, in order
        kids = naive_children(par)
        for i in range(n):
            walked, c = [], int(nxt[b, i])
            while c != -1 and len(walked) <= n:  # bounded: a broken list may cycle
                walked.append(c)
                c = int(sib[b, c])
            assert walked == kids[i]
        assert int(sib[b, 0]) == -1
    assert torch.equal(tf.from_sglang_tree(nxt, sib, index), p)
    if B == 1:  # a single tree [N] is one request
        assert all(torch.equal(x, y) for x, y in zip(tf.to_sglang_tree(p[0]), (index, nxt, sib)))


def test_sglang_decreasing_sibling_order_keeps_the_shape():
    # root -> 1, 2, 3 linked 3 -> 2 -> 1 (not how SGLang builds them, but one tree all the same)
    nxt = torch.tensor([[3, -1, -1, -1]])
    sib = torch.tensor([[-1, -1, 1, 2]])
    assert tf.from_sglang_tree(nxt, sib).tolist() == [[-1, 0, 0, 0]]


@pytest.mark.parametrize(
    "nxt, sib, match",
    [
        ([[1, -1, -1]], [[-1, -1, -1]], "exactly once"),  # node 2 unreachable
        ([[1, 2, -1]], [[-1, 2, -1]], "exactly once"),  # node 2 pointed at twice
        ([[1, -1, -1]], [[2, -1, -1]], "root has no siblings"),
        ([[1, 0, -1]], [[-1, -1, -1]], "never point at node 0"),
        ([[1, 5, -1]], [[-1, -1, -1]], r"\[0, 2\]"),
        ([[1, -1, -1, -1]], [[-1, -1, 3, 2]], "sibling cycle"),  # 2 <-> 3 siblings of nobody
        ([[2, -1, 1]], [[-1, -1, -1]], "topological"),  # node 1 is a child of node 2
    ],
)
def test_sglang_bad_lists_raise(nxt, sib, match):
    with pytest.raises(ValueError, match=match):
        tf.from_sglang_tree(torch.tensor(nxt), torch.tensor(sib))


def test_sglang_bad_index_and_types_raise():
    _, nxt, sib = tf.to_sglang_tree(torch.tensor([[-1, 0], [-1, 0]]))
    with pytest.raises(ValueError, match="b \\* N \\+ i"):
        tf.from_sglang_tree(nxt, sib, torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(TypeError, match="integer"):
        tf.from_sglang_tree(nxt, sib.float())
    with pytest.raises(ValueError, match="shape"):
        tf.from_sglang_tree(nxt, sib[:1])
    with pytest.raises(TypeError, match="torch.Tensor"):
        tf.from_sglang_tree(nxt.tolist(), sib)


# --------------------------------------------------------------------------------------------------
# FlashInfer custom masks
# --------------------------------------------------------------------------------------------------


@FAST
@given(ragged_batch, st.data())
def test_flashinfer_masks_match_ancestor_mask_plus_prefix(batch, data):
    prefix = data.draw(st.lists(st.integers(0, 40), min_size=len(batch), max_size=len(batch)))
    ps = [torch.tensor(par) for par in batch]
    flat = tf.to_flashinfer_mask(ps, prefix)
    packed, indptr = tf.to_flashinfer_packed_mask(ps, torch.tensor(prefix))
    assert flat.dtype == torch.bool and packed.dtype == torch.uint8 and indptr.dtype == torch.int32
    # expected layout, request by request: row i = the whole prefix, then i's ancestors (naive walk)
    start, byte = 0, 0
    assert int(indptr[0]) == 0
    for b, (par, plen) in enumerate(zip(batch, prefix)):
        n = len(par)
        rows = torch.zeros(n, plen + n, dtype=torch.bool)
        rows[:, :plen] = True
        for i in range(n):
            j = i
            while j >= 0:
                rows[i, plen + j] = True
                j = par[j]
        assert torch.equal(flat[start : start + rows.numel()], rows.reshape(-1))
        start += rows.numel()
        seg = naive_bits_little(rows.reshape(-1).tolist())  # segments start on byte boundaries
        assert int(indptr[b + 1]) - int(indptr[b]) == len(seg)
        assert packed[byte : byte + len(seg)].tolist() == seg
        byte += len(seg)
    assert start == flat.numel() and byte == packed.numel() == int(indptr[-1])
    # back: tree blocks are the ancestor masks, and the masks give the trees back
    blocks = tf.from_flashinfer_packed_mask(packed, [len(par) for par in batch], prefix)
    for p, block in zip(ps, blocks):
        assert torch.equal(block, trees.ancestor_mask(p))
        assert torch.equal(tf.ancestor_mask_to_parents(block), p)


def test_flashinfer_uniform_batch_and_scalar_prefix():
    p = torch.tensor([[-1, 0, 0, 1, 1, 2, 0, 6, 7], [-1, 0, 1, 2, 3, 4, 5, 6, 7]])
    flat = tf.to_flashinfer_mask(p, 5)
    assert torch.equal(flat, tf.to_flashinfer_mask(list(p), [5, 5]))
    packed, indptr = tf.to_flashinfer_packed_mask(p, 5)
    assert indptr.tolist() == [0, 9 * 14 // 8 + 1, 2 * (9 * 14 // 8 + 1)]  # 126 bits -> 16 bytes each
    blocks = tf.from_flashinfer_packed_mask(packed, [9, 9], 5)
    assert torch.equal(torch.stack(blocks), trees.ancestor_mask(p))
    assert torch.equal(tf.ancestor_mask_to_parents(torch.stack(blocks)), p)


def test_flashinfer_bad_inputs_raise():
    p = torch.tensor([-1, 0, 1])
    packed, _ = tf.to_flashinfer_packed_mask(p, 3)
    with pytest.raises(ValueError, match="bytes"):
        tf.from_flashinfer_packed_mask(packed[:-1], [3], 3)
    with pytest.raises(TypeError, match="uint8"):
        tf.from_flashinfer_packed_mask(packed.to(torch.int32), [3], 3)
    with pytest.raises(ValueError, match="every request"):
        tf.from_flashinfer_packed_mask(packed, 3, 3)
    hole = packed.clone()
    hole[0] &= 0xFE  # node 0 no longer sees prefix entry 0
    with pytest.raises(ValueError, match="whole prefix"):
        tf.from_flashinfer_packed_mask(hole, [3], 3)
    with pytest.raises(ValueError, match="prefix_lens"):
        tf.to_flashinfer_mask(p, -1)
    with pytest.raises(ValueError, match="prefix_lens"):
        tf.to_flashinfer_mask(torch.stack([p, p]), [1, 2, 3])
    with pytest.raises(ValueError, match="topological"):
        tf.to_flashinfer_mask([p, torch.tensor([-1, 1])], 0)
    not_tree = trees.ancestor_mask(p)
    not_tree[2, 0] = False  # sees its parent but not its grandparent
    with pytest.raises(ValueError, match="ancestor mask"):
        tf.ancestor_mask_to_parents(not_tree)
