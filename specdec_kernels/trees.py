"""Token-tree helpers shared by the kernels and the decoding loop.

Conventions (docs/design.md, "Trees"): N nodes in topological order, ``parents[0] == -1`` (the root),
``parents[i] < i`` for every other node. ``depth[0] = 0`` and ``depth[i] = depth[parents[i]] + 1``.
Node i attends to node j iff j is i or an ancestor of i. The packed mask stores bit j of row i in
int32 word ``j // 32``, 32 nodes to a word.
"""

from __future__ import annotations

import torch

ROOT_PARENT = -1  # parents[] value of the root


def validate_parents(parents: torch.Tensor, name: str = "parents", n: int | None = None) -> None:
    """Raise ValueError unless ``parents`` ([N] or [B, N], integer) is a topologically ordered tree."""
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(parents).__name__}")
    if parents.dtype not in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor, got dtype {parents.dtype}")
    if parents.dim() not in (1, 2) or parents.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [N] or [B, N] with N >= 1, got {tuple(parents.shape)}")
    if n is not None and parents.shape[-1] != n:
        raise ValueError(f"{name} must have {n} nodes in its last dimension, got {parents.shape[-1]}")
    p = parents.reshape(-1, parents.shape[-1]).to(torch.int64)
    # One vectorised check (one host sync) for the valid case: node i's parent must lie in
    # [lo[i], hi[i]], i.e. exactly -1 for the root and 0 .. i-1 for the others. Only a bad tree pays
    # for a second pass that says which rule it breaks.
    idx = torch.arange(p.shape[1], device=p.device)
    lo = torch.where(idx == 0, ROOT_PARENT, 0)
    hi = torch.where(idx == 0, ROOT_PARENT, idx - 1)
    if not bool(((p < lo) | (p > hi)).any()):
        return
    if bool((p[:, 0] != ROOT_PARENT).any()):
        raise ValueError(f"{name}[..., 0] must be -1 (node 0 is the root)")
    raise ValueError(f"{name} must be in topological order with one root: 0 <= parents[i] < i for i >= 1")


def _checked_parents(parents: torch.Tensor) -> torch.Tensor:
    """``parents`` as int64 after :func:`validate_parents`: the helpers below walk parent pointers until
    they reach -1, so a cycle, a self-parent or a root whose parent is not -1 would never terminate."""
    validate_parents(parents, "parents")
    return parents.to(torch.int64)


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """Bool mask ``[..., N, N]``: True where node i may attend to node j (j is i or an ancestor of i).

    ``parents`` is ``[N]`` or ``[B, N]``; anything but a topologically ordered tree raises ValueError.
    """
    p = _checked_parents(parents)
    n = p.shape[-1]
    mask = torch.eye(n, dtype=torch.bool, device=p.device).expand(*p.shape[:-1], n, n).clone()
    # Move every node's pointer one level up per step: depth_max steps, each a scatter over [..., N].
    cur = p
    while bool((cur >= 0).any()):
        valid = cur >= 0
        mask.scatter_(
            -1, cur.clamp(min=0).unsqueeze(-1), valid.unsqueeze(-1) | mask.gather(-1, cur.clamp(min=0).unsqueeze(-1))
        )
        cur = torch.where(valid, torch.gather(p, -1, cur.clamp(min=0)), cur)
    return mask


def tree_depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of every node, ``[N]`` or ``[B, N]`` int64, the root at 0 (number of strict ancestors)."""
    return mask_depths(ancestor_mask(parents))


def mask_parents(mask: torch.Tensor) -> torch.Tensor:
    """Each node's parent from an ancestor mask ``[..., N, N]``: its highest-index strict ancestor (in
    topological order the ancestors form a chain whose last link is the parent), -1 for none. Not
    validated: :func:`specdec_kernels.tree_formats.ancestor_mask_to_parents` checks a mask from outside."""
    n = mask.shape[-1]
    j = torch.arange(n, device=mask.device)
    strict = mask & (j.view(1, n) < j.view(n, 1))  # strict ancestors: j < i
    return torch.where(strict, j, -1).amax(-1)


def mask_depths(mask: torch.Tensor) -> torch.Tensor:
    """Depth of every node from an ancestor mask ``[..., N, N]`` (:func:`ancestor_mask`): its strict
    ancestors, so a caller holding the mask does not walk the tree again."""
    return mask.sum(-1) - 1


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool mask ``[..., N, N]`` into int32 words ``[..., N, ceil(N/32)]`` (bit j%32 of word j//32)."""
    n = mask.shape[-1]
    words = (n + 31) // 32
    padded = torch.zeros(*mask.shape[:-1], words * 32, dtype=torch.int64, device=mask.device)
    padded[..., :n] = mask.to(torch.int64)
    bits = padded.view(*mask.shape[:-1], words, 32) << torch.arange(32, device=mask.device, dtype=torch.int64)
    packed = bits.sum(-1)  # < 2**32, fits int64
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: int32 words ``[..., N, W]`` to bool ``[..., N, n]``."""
    bits = (packed.to(torch.int64).unsqueeze(-1) >> torch.arange(32, device=packed.device)) & 1
    return bits.flatten(-2)[..., :n].bool()


def chain_parents(n: int, device=None) -> torch.Tensor:
    """Parents of a chain of n nodes (root + n-1 drafts): ``[-1, 0, 1, ..., n-2]``."""
    return torch.arange(-1, n - 1, device=device, dtype=torch.int64)


def packed_ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """Ancestor mask packed to int32 words, ``[..., N, ceil(N/32)]``: ``pack_mask(ancestor_mask(parents))``."""
    return pack_mask(ancestor_mask(parents))


def tree_position_ids(parents: torch.Tensor, prefix_lens: torch.Tensor | int) -> torch.Tensor:
    """Position id of every node: ``prefix_lens[b] + depth[i]``, int64 ``[B, N]``.

    ``parents`` is ``[N]`` (one tree for the batch) or ``[B, N]``; ``prefix_lens`` an int or ``[B]``
    (cache entries before the root). The root sits at position ``prefix_lens[b]``.
    """
    depth = tree_depths(parents)  # [N] or [B, N]
    if not isinstance(prefix_lens, torch.Tensor):
        prefix_lens = torch.tensor([prefix_lens], dtype=torch.int64, device=depth.device)
    prefix = prefix_lens.to(device=depth.device, dtype=torch.int64).reshape(-1, 1)  # [B or 1, 1]
    return prefix + depth.reshape(-1, depth.shape[-1])


def validate_tree_mask(mask: torch.Tensor, n: int, batch: int | None = None, name: str = "tree_mask") -> None:
    """Raise TypeError/ValueError unless ``mask`` is a tree mask for n nodes (shape and dtype only, no sync).

    Accepted: bool ``[N, N]`` / ``[B, N, N]``, or packed int32 ``[N, W]`` / ``[B, N, W]`` with
    ``W = ceil(N/32)`` (:func:`pack_mask`). ``batch=None`` accepts any B.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    words = (n + 31) // 32
    if mask.dtype == torch.bool:
        last, kind = n, "bool"
    elif mask.dtype == torch.int32:
        last, kind = words, "packed int32"
    else:
        raise TypeError(f"{name} must be bool [.., N, N] or packed int32 [.., N, ceil(N/32)], got dtype {mask.dtype}")
    ok = mask.dim() in (2, 3) and tuple(mask.shape[-2:]) == (n, last)
    if ok and mask.dim() == 3 and batch is not None and mask.shape[0] != batch:
        ok = False
    if not ok:
        b = "B" if batch is None else f"B={batch}"
        raise ValueError(f"{name} ({kind}) must be [N, {last}] or [{b}, N, {last}] with N={n}, got {tuple(mask.shape)}")
