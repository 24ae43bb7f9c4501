"""Token-tree helpers (specdec_kernels.trees) against naive parent-walking definitions."""

from __future__ import annotations

import pytest
import torch

from specdec_kernels import trees


def random_parents(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)])


def naive_ancestors(parents: torch.Tensor) -> torch.Tensor:
    n = parents.shape[0]
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            m[i, j] = True
            j = int(parents[j])
    return m


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 64, 65])
def test_masks_depths_and_packing(n, rng):
    parents = torch.stack([random_parents(n, rng), trees.chain_parents(n)])  # [2, N]
    expect = torch.stack([naive_ancestors(p) for p in parents])
    assert torch.equal(trees.ancestor_mask(parents), expect)
    assert torch.equal(trees.tree_depths(parents), expect.sum(-1) - 1)
    packed = trees.packed_ancestor_mask(parents)
    assert packed.dtype == torch.int32 and packed.shape == (2, n, (n + 31) // 32)
    assert torch.equal(packed, trees.pack_mask(expect))
    assert torch.equal(trees.unpack_mask(packed, n), expect)


def test_pack_mask_bit_layout():
    m = torch.zeros(1, 40, dtype=torch.bool)
    m[0, 0] = m[0, 31] = m[0, 33] = True
    packed = trees.pack_mask(m)
    assert packed.tolist() == [[1 - 2**31, 2]]  # bit 31 set: negative int32


def test_tree_position_ids():
    parents = torch.tensor([-1, 0, 0, 1, 3])  # depths 0 1 1 2 3
    assert trees.tree_position_ids(parents, 10).tolist() == [[10, 11, 11, 12, 13]]
    pos = trees.tree_position_ids(parents, torch.tensor([0, 7]))
    assert pos.dtype == torch.int64 and pos.tolist() == [[0, 1, 1, 2, 3], [7, 8, 8, 9, 10]]
    per_seq = torch.stack([parents, trees.chain_parents(5)])
    assert trees.tree_position_ids(per_seq, torch.tensor([3, 4])).tolist() == [[3, 4, 4, 5, 6], [4, 5, 6, 7, 8]]


def test_validate_tree_mask():
    trees.validate_tree_mask(torch.ones(5, 5, dtype=torch.bool), 5)
    trees.validate_tree_mask(torch.ones(2, 5, 5, dtype=torch.bool), 5, batch=2)
    trees.validate_tree_mask(torch.zeros(2, 33, 2, dtype=torch.int32), 33, batch=2)
    with pytest.raises(TypeError, match="my_mask must be a torch.Tensor"):
        trees.validate_tree_mask([[True]], 1, name="my_mask")
    with pytest.raises(TypeError, match="got dtype torch.int64"):
        trees.validate_tree_mask(torch.ones(5, 5, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match=r"\(bool\) must be \[N, 5\]"):
        trees.validate_tree_mask(torch.ones(5, 4, dtype=torch.bool), 5)
    with pytest.raises(ValueError, match=r"\(packed int32\) must be \[N, 2\] or \[B=3, N, 2\]"):
        trees.validate_tree_mask(torch.zeros(2, 33, 2, dtype=torch.int32), 33, batch=3)


@pytest.mark.parametrize(
    "parents,match",
    [
        (torch.tensor([0, 0]), "must be -1"),
        (torch.tensor([-1, 1]), "topological order"),
        (torch.tensor([-1, 0, 5]), "topological order"),
        (torch.tensor([[-1, 0], [-1, -1]]), "topological order"),
    ],
)
def test_validate_parents_rejects(parents, match):
    with pytest.raises(ValueError, match=match):
        trees.validate_parents(parents)
