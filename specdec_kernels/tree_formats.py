"""Converters between our ``parents`` trees and the tree formats of serving runtimes.

Our convention (:mod:`specdec_kernels.trees`): ``parents`` ``[N]`` or ``[B, N]``, node 0 the root with
parent -1, topologically ordered (``parents[i] < i``). The runtimes:

- **vLLM** ``speculative_token_tree`` and **TensorRT-LLM** ``medusa_choices`` / ``eagle_choices``: one
  static tree as a list of *rank paths*, one per non-root node (the root is implicit and never listed);
  a path lists, from the root down, each node's rank (the top-k rank of its token in its parent's
  draft distribution), e.g. ``[(0,), (1,), (0, 0)]``. Every proper prefix of a path must be listed
  too. vLLM parses the config string with ``ast.literal_eval``, sorts it by ``(len(path), path)`` and
  makes ``sorted[k]`` node ``k + 1``; Medusa's ``generate_medusa_buffers`` sorts ``medusa_choices``
  the same way; TRT-LLM's PyTorch ``SpecTreeManager`` makes ``eagle_choices[k]`` node ``k + 1`` in
  the order given.
- **SGLang** EAGLE tree verification (``build_tree_kernel_efficient`` / ``verify_tree_greedy``): per
  request ``[B, N]`` int64 ``retrive_index`` (flat token index ``b * N + i`` of node i),
  ``retrive_next_token`` (node i's first child) and ``retrive_next_sibling`` (node i's next sibling),
  -1 for none; node 0 is the root (the last verified token). SGLang links the children of a node in
  increasing node index.
- **FlashInfer** custom masks for ``BatchPrefillWithPagedKVCacheWrapper.plan``: ``custom_mask`` is the
  concatenation over requests of the row-major flattened bool ``[qo_len, kv_len]`` mask (True =
  attend); ``packed_custom_mask`` is that bit-packed per request (``segment_packbits``,
  ``bitorder="little"``: bit k of a segment is bit ``k % 8`` of its byte ``k // 8``), each request's
  segment starting on a byte boundary. The kernel reads request b's bits from byte offset
  ``mask_indptr[b]``.

Sibling rank (the ranks we write for our trees, which carry no token ranks): the rank of node i is
the number of earlier nodes with the same parent, i.e. siblings are ranked in node-index order.
``parents`` keeps only the tree's shape, so rank paths with gaps (a rank-1 node without a rank-0
sibling, which the runtimes allow) come back with ranks renumbered 0, 1, ...

Canonical order: nodes sorted by ``(depth, rank path)``, the order vLLM and Medusa number nodes in.
Trees built from paths with ``sort=True`` are canonical; :func:`canonical_order` gives the permutation
that makes any tree canonical, and parents -> vLLM tree / TRT-LLM choices -> parents is the identity
exactly for canonical trees (for others it is that permutation; :func:`parents_to_paths` and
``paths_to_parents(sort=False)`` keep our node order for any tree).
"""

from __future__ import annotations

import ast
import numbers
from collections.abc import Sequence

import torch

from specdec_kernels import trees

Path = tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------


def _one_tree(parents: torch.Tensor, what: str) -> torch.Tensor:
    """``parents`` as a validated int64 ``[N]``: the static-tree formats describe one tree for all requests."""
    trees.validate_parents(parents, "parents")
    if parents.dim() != 1:
        raise ValueError(
            f"{what}: parents must be one tree of shape [N] (the runtime's static tree is shared "
            f"by all requests), got shape {tuple(parents.shape)}"
        )
    return parents.to(torch.int64)


def _check_paths(paths, what: str) -> list[Path]:
    """Rank paths as tuples of ints; TypeError/ValueError naming ``what`` for anything else."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence):
        raise TypeError(
            f"{what}: expected a list of rank paths such as [(0,), (1,), (0, 0)], got {type(paths).__name__}"
        )
    out = []
    for p in paths:
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
            raise TypeError(f"{what}: each path must be a tuple/list of int ranks >= 0, got {p!r}")
        if len(p) == 0:
            raise ValueError(f"{what}: the root is implicit and must not be listed; got an empty path")
        for r in p:
            # bool is an int subclass, but True as a rank is a mistake, not rank 1
            if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
                raise ValueError(f"{what}: ranks must be ints >= 0, got {r!r} in path {tuple(p)!r}")
        out.append(tuple(int(r) for r in p))
    return out


# --------------------------------------------------------------------------------------------------
# Rank paths (vLLM speculative_token_tree, TensorRT-LLM / Medusa choices)
# --------------------------------------------------------------------------------------------------


def sibling_ranks(parents: torch.Tensor) -> torch.Tensor:
    """Rank of every node among its siblings, ``[N]`` or ``[B, N]`` int64: the number of earlier nodes
    with the same parent (the root, the only node without a parent, gets 0)."""
    trees.validate_parents(parents, "parents")
    p = parents.to(torch.int64)
    n = p.shape[-1]
    same = p.unsqueeze(-1) == p.unsqueeze(-2)  # [.., i, j]: i and j share a parent
    j = torch.arange(n, device=p.device)
    earlier = j.view(1, n) < j.view(n, 1)  # [i, j]: j < i (a comparison: tril cost ~10 ms a call on CPU here)
    return (same & earlier).sum(-1)


def parents_to_paths(parents: torch.Tensor) -> list[Path]:
    """Rank path of every non-root node of one tree ``[N]``, in node order: ``paths[i - 1]`` is node i's.

    Ranks are sibling ranks (:func:`sibling_ranks`). A node's path is its parent's path plus its rank,
    built in one pass because parents come before their children.
    """
    p = _one_tree(parents, "parents_to_paths")
    ranks = sibling_ranks(p).tolist()
    out: list[Path] = [()]
    for i, par in enumerate(p.tolist()[1:], start=1):
        out.append(out[par] + (ranks[i],))
    return out[1:]


def paths_to_parents(paths, *, sort: bool = True) -> torch.Tensor:
    """Tree ``[N]`` int64 (``N = len(paths) + 1``) from rank paths that list every non-root node once.

    ``sort=True`` numbers nodes like vLLM and Medusa: ``sorted(paths, key=(len, path))[k]`` is node
    ``k + 1`` (the result is canonical). ``sort=False`` keeps the list order (``paths[k]`` is node
    ``k + 1``, as TensorRT-LLM's ``SpecTreeManager`` numbers ``eagle_choices``) and then needs every
    path's parent listed before it. ValueError for a duplicate, a missing prefix, or (``sort=False``) a
    parent listed after its child; the root is implicit and may not be listed.
    """
    ps = _check_paths(paths, "paths_to_parents")
    if sort:
        ps = sorted(ps, key=lambda q: (len(q), q))
    index: dict[Path, int] = {(): 0}
    for k, q in enumerate(ps, start=1):
        if q in index:
            raise ValueError(f"paths_to_parents: path {q!r} is listed twice")
        index[q] = k
    parents = [-1]
    for k, q in enumerate(ps, start=1):
        par = index.get(q[:-1])
        if par is None:
            raise ValueError(
                f"paths_to_parents: path {q!r} has no parent: its prefix {q[:-1]!r} is not listed "
                f"(every prefix of a path is a node and must be listed)"
            )
        if par >= k:  # only reachable with sort=False: sorting puts shorter paths first
            raise ValueError(
                f"paths_to_parents: path {q!r} is listed before its parent {q[:-1]!r}; list "
                f"parents first or pass sort=True"
            )
        parents.append(par)
    return torch.tensor(parents, dtype=torch.int64)


def canonical_order(parents: torch.Tensor) -> torch.Tensor:
    """Permutation ``perm`` ``[N]`` int64 sorting the nodes of one tree by ``(depth, rank path)``:
    canonical node k is node ``perm[k]``. ``perm[0] == 0`` and parents stay before their children."""
    paths = [()] + parents_to_paths(parents)
    order = sorted(range(len(paths)), key=lambda i: (len(paths[i]), paths[i]))
    return torch.tensor(order, dtype=torch.int64, device=parents.device)


def permute_tree(parents: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The tree with its nodes renumbered: new node k is old node ``perm[k]``, ``[N]`` int64.

    ``perm`` must be a permutation of ``0..N-1`` that keeps the root first and parents before their
    children (e.g. :func:`canonical_order`), else ValueError.
    """
    p = _one_tree(parents, "permute_tree")
    n = p.shape[0]
    if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.shape[0] != n or perm.is_floating_point():
        raise ValueError(
            f"permute_tree: perm must be an integer tensor [N={n}], got {getattr(perm, 'shape', type(perm).__name__)}"
        )
    perm = perm.to(device=p.device, dtype=torch.int64)
    if not torch.equal(perm.sort().values, torch.arange(n, device=p.device)):
        raise ValueError("permute_tree: perm must be a permutation of 0..N-1")
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=p.device)
    old_par = p[perm]
    out = torch.where(old_par >= 0, inv[old_par.clamp(min=0)], old_par)
    trees.validate_parents(out, "permute_tree(parents, perm)")  # perm kept the root first, parents first
    return out


def to_vllm_token_tree(parents: torch.Tensor) -> list[Path]:
    """vLLM ``speculative_token_tree`` of one tree ``[N]``: its rank paths sorted as vLLM sorts them
    (``(len, path)``), so vLLM's node ``k + 1`` is our node ``canonical_order(parents)[k + 1]`` (ours
    itself for a canonical tree). vLLM's config takes ``str(...)`` of this list.

    Note: vLLM's tree attention takes any tree, but its EAGLE tree proposer (in the sources we read)
    drafts ``count[d] // count[d - 1]`` children per node at depth d - 1, i.e. assumes every node of a
    level has the same number of children.
    """
    return sorted(parents_to_paths(parents), key=lambda q: (len(q), q))


def from_vllm_token_tree(tree) -> torch.Tensor:
    """Tree ``[N]`` int64 of a vLLM ``speculative_token_tree`` (the config string or the list of path
    tuples), numbered as vLLM numbers it: sorted by ``(len, path)``, root implicit as node 0."""
    if isinstance(tree, str):
        try:
            tree = ast.literal_eval(tree)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"from_vllm_token_tree: tree string is not a Python literal list of tuples: {e}") from None
    return paths_to_parents(tree, sort=True)


def to_trtllm_choices(parents: torch.Tensor) -> list[list[int]]:
    """TensorRT-LLM ``medusa_choices`` / ``eagle_choices`` of one tree ``[N]``: rank paths as lists, root
    not listed, in canonical order (the order Medusa sorts into, so list order and sorted order agree)."""
    return [list(q) for q in to_vllm_token_tree(parents)]


def from_trtllm_choices(choices, *, sort: bool = True) -> torch.Tensor:
    """Tree ``[N]`` int64 of TensorRT-LLM ``medusa_choices`` / ``eagle_choices`` (lists of ranks, root not
    listed). ``sort=True`` numbers nodes in sorted ``(len, path)`` order (Medusa); ``sort=False`` in list
    order (TRT-LLM's PyTorch ``SpecTreeManager``); see :func:`paths_to_parents`."""
    return paths_to_parents(choices, sort=sort)


# --------------------------------------------------------------------------------------------------
# SGLang first-child / next-sibling lists
# --------------------------------------------------------------------------------------------------


def _first_index(mask: torch.Tensor) -> torch.Tensor:
    """Smallest j with ``mask[..., j]`` True, else -1 (int64, one dim less)."""
    n = mask.shape[-1]
    j = torch.arange(n, device=mask.device)
    first = torch.where(mask, j, n).amin(-1)
    return torch.where(first == n, -1, first)


def to_sglang_tree(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SGLang ``(retrive_index, retrive_next_token, retrive_next_sibling)`` of ``parents`` ``[N]`` or
    ``[B, N]`` (``[N]`` is one request): each ``[B, N]`` int64, -1 for none.

    ``retrive_index[b, i] = b * N + i``; ``retrive_next_token[b, i]`` is node i's first child (its
    lowest-index child); ``retrive_next_sibling[b, i]`` the next higher-index node with the same
    parent, so children are linked in increasing index, as ``build_tree_kernel_efficient`` links them.
    Vectorised over ``[B, N, N]`` comparisons; no host sync beyond validation.
    """
    trees.validate_parents(parents, "parents")
    p = parents.to(torch.int64).reshape(-1, parents.shape[-1])
    B, n = p.shape
    j = torch.arange(n, device=p.device)
    child = p.unsqueeze(1) == j.view(1, n, 1)  # [B, i, j]: j is a child of i
    next_token = _first_index(child)
    later_sibling = (p.unsqueeze(2) == p.unsqueeze(1)) & (j.view(1, 1, n) > j.view(1, n, 1))  # [B, i, j]
    next_sibling = _first_index(later_sibling)
    index = torch.arange(B, device=p.device).unsqueeze(1) * n + j
    return index, next_token, next_sibling


def _check_sglang_links(name: str, t, shape, n: int) -> torch.Tensor:
    """One SGLang link tensor as int64 ``shape``, every value -1 or a non-root node index; else Type/ValueError."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"from_sglang_tree: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"from_sglang_tree: {name} must be an integer tensor (SGLang uses int64), got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"from_sglang_tree: {name} must have shape [B, N] = {tuple(shape)}, got {tuple(t.shape)}")
    t = t.to(torch.int64)
    if bool(((t < -1) | (t >= n)).any()):
        raise ValueError(f"from_sglang_tree: {name} values must be -1 (none) or node indices in [0, {n - 1}]")
    if bool((t == 0).any()):
        raise ValueError(f"from_sglang_tree: {name} must never point at node 0 (the root is nobody's child or sibling)")
    return t


def from_sglang_tree(
    retrive_next_token: torch.Tensor, retrive_next_sibling: torch.Tensor, retrive_index: torch.Tensor | None = None
) -> torch.Tensor:
    """``parents`` ``[B, N]`` int64 of SGLang's first-child / next-sibling lists (``[B, N]`` each, -1 for
    none, node 0 the root). ``retrive_index``, if given, must be the layout SGLang builds, ``b * N + i``.

    ValueError unless the lists form one tree over all N nodes in topological order: no pointer to the
    root, every other node pointed at exactly once, no sibling cycle, and every parent index below its
    child's. The order of a sibling list is not kept (siblings are ranked by node index); for lists in
    increasing index, ``to_sglang_tree(from_sglang_tree(...))`` gives them back.
    """
    if not isinstance(retrive_next_token, torch.Tensor):
        raise TypeError(
            f"from_sglang_tree: retrive_next_token must be a torch.Tensor, got {type(retrive_next_token).__name__}"
        )
    if retrive_next_token.dim() != 2 or retrive_next_token.shape[1] < 1:
        raise ValueError(
            f"from_sglang_tree: retrive_next_token must be [B, N] with N >= 1, got {tuple(retrive_next_token.shape)}"
        )
    B, n = retrive_next_token.shape
    nxt = _check_sglang_links("retrive_next_token", retrive_next_token, (B, n), n)
    sib = _check_sglang_links("retrive_next_sibling", retrive_next_sibling, (B, n), n)
    dev = nxt.device
    sib = sib.to(dev)
    if retrive_index is not None:
        if not isinstance(retrive_index, torch.Tensor) or tuple(retrive_index.shape) != (B, n):
            raise ValueError(f"from_sglang_tree: retrive_index must be a tensor [B, N] = {(B, n)}")
        expect = torch.arange(B, device=dev).unsqueeze(1) * n + torch.arange(n, device=dev)
        if not torch.equal(retrive_index.to(device=dev, dtype=torch.int64), expect):
            raise ValueError(
                "from_sglang_tree: retrive_index must be b * N + i (the layout build_tree_kernel_efficient writes)"
            )
    if bool((sib[:, 0] != -1).any()):
        raise ValueError("from_sglang_tree: retrive_next_sibling[:, 0] must be -1 (the root has no siblings)")

    def pad(t: torch.Tensor) -> torch.Tensor:  # -1 (none) scatters into an extra column n, dropped after
        return torch.where(t >= 0, t, n)

    # Each non-root node has exactly one incoming pointer (from its parent or its left sibling).
    incoming = torch.zeros(B, n + 1, dtype=torch.int64, device=dev)
    incoming.scatter_add_(1, pad(nxt), torch.ones_like(nxt)).scatter_add_(1, pad(sib), torch.ones_like(sib))
    if n > 1 and bool((incoming[:, 1:n] != 1).any()):
        raise ValueError(
            "from_sglang_tree: every non-root node must be pointed at exactly once by "
            "retrive_next_token or retrive_next_sibling"
        )
    src = torch.arange(n, device=dev).expand(B, n)
    # first_of[c] = p when c is p's first child; left[s] = s's left sibling, or s itself for a first child
    first_of = torch.full((B, n + 1), -1, dtype=torch.int64, device=dev).scatter_(1, pad(nxt), src)[:, :n]
    left = torch.cat([src, torch.full((B, 1), n, device=dev)], 1).scatter_(1, pad(sib), src)[:, :n]
    # Pointer doubling to the head of every sibling list: ceil(log2 N) gathers instead of N walks.
    for _ in range(max(1, (n - 1).bit_length())):
        left = left.gather(1, left)
    parents = first_of.gather(1, left)
    if n > 1 and bool((parents[:, 1:] < 0).any()):
        raise ValueError(
            "from_sglang_tree: a sibling list is not reachable from any retrive_next_token (a sibling cycle)"
        )
    parents[:, 0] = -1
    trees.validate_parents(parents, "the tree of retrive_next_token/retrive_next_sibling (as parents)")
    return parents


# --------------------------------------------------------------------------------------------------
# FlashInfer custom masks
# --------------------------------------------------------------------------------------------------


def _check_count(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"{name} must be ints >= 0, got {v!r}")
    return int(v)


def _int_list(name: str, values, batch: int) -> list[int]:
    """``values`` (an int for every request, or a sequence / 1-D tensor of ``batch`` ints) as a list."""
    if isinstance(values, torch.Tensor) and values.dim() == 0:  # a 0-d tensor counts as one int for all
        values = values.item()
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.dim() > 1:
            raise ValueError(
                f"{name} must be an int or {batch} ints, got a {values.dtype} tensor of shape {tuple(values.shape)}"
            )
        values = values.reshape(-1).tolist()
    elif isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = [int(values)] * batch
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != batch:
        raise ValueError(f"{name} must be an int or {batch} ints (one per request), got {values!r}")
    return [_check_count(name, v) for v in values]


def _batch_of(values) -> int | None:
    """Number of requests a per-request argument lists, None for a scalar (one value for every request)."""
    if isinstance(values, torch.Tensor):
        return values.numel() if values.dim() > 0 else None
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        return len(values)
    return None


def _request_trees(parents) -> list[torch.Tensor]:
    """One int64 ``[N_b]`` tree per request from ``[N]``, ``[B, N]`` or a list of ``[N_b]`` (ragged)."""
    if isinstance(parents, torch.Tensor):
        trees.validate_parents(parents, "parents")
        return list(parents.to(torch.int64).reshape(-1, parents.shape[-1]).unbind(0))
    if isinstance(parents, (str, bytes)) or not isinstance(parents, Sequence) or len(parents) == 0:
        raise TypeError("parents must be a tensor [N] / [B, N] or a non-empty list of [N_b] tensors (ragged batch)")
    out = []
    for b, p in enumerate(parents):
        trees.validate_parents(p, f"parents[{b}]")
        if p.dim() != 1:
            raise ValueError(f"parents[{b}] must be one tree [N_b], got shape {tuple(p.shape)}")
        out.append(p.to(torch.int64))
    return out


def _packbits_little(bits: torch.Tensor) -> torch.Tensor:
    """numpy.packbits(bits, bitorder="little") of a flat bool tensor, as uint8 ``[ceil(L/8)]``.

    Reuses :func:`trees.pack_mask` (bit k in int32 word k // 32, bit k % 32): read as little-endian
    bytes (torch runs on little-endian hosts only), word w's byte c holds bits 32w + 8c .. + 7, LSB
    first, which is exactly FlashInfer's byte layout.
    """
    nbytes = (bits.numel() + 7) // 8
    return trees.pack_mask(bits.reshape(1, -1))[0].view(torch.uint8)[:nbytes]


def _unpackbits_little(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`_packbits_little`: the first ``length`` bits of uint8 ``packed`` as bool."""
    words = (packed.numel() + 3) // 4
    padded = torch.zeros(words * 4, dtype=torch.uint8, device=packed.device)
    padded[: packed.numel()] = packed
    return trees.unpack_mask(padded.view(torch.int32).reshape(1, -1), length)[0]


def _request_masks(parents, prefix_lens) -> list[torch.Tensor]:
    """Per request the bool ``[N_b, P_b + N_b]`` mask: every node sees the whole prefix and its ancestors."""
    ps = _request_trees(parents)
    prefix = _int_list("prefix_lens", prefix_lens, len(ps))
    out = []
    for p, plen in zip(ps, prefix):
        tree = trees.ancestor_mask(p)
        out.append(torch.cat([torch.ones(p.shape[0], plen, dtype=torch.bool, device=p.device), tree], 1))
    return out


def to_flashinfer_mask(parents, prefix_lens) -> torch.Tensor:
    """FlashInfer ``custom_mask`` for a verify step: bool ``[sum_b N_b * (P_b + N_b)]``.

    ``parents``: ``[N]`` (one request), ``[B, N]`` or a list of ``[N_b]`` trees (ragged batch);
    ``prefix_lens``: an int for every request or one int per request, the cache entries before the root
    (``qo_len = N_b``, ``kv_len = P_b + N_b``: the tree's K/V follow the prefix). Row i of request b is
    ``P_b`` Trues (the whole prefix) then node i's ancestor row; requests are concatenated.
    """
    return torch.cat([m.reshape(-1) for m in _request_masks(parents, prefix_lens)])


def to_flashinfer_packed_mask(parents, prefix_lens) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed_custom_mask, mask_indptr)``: :func:`to_flashinfer_mask` bit-packed per request as
    ``flashinfer.segment_packbits(..., bitorder="little")`` packs it. ``packed`` is uint8
    ``[sum_b ceil(N_b * (P_b + N_b) / 8)]``; ``mask_indptr`` int32 ``[B + 1]`` the byte offset of every
    request's segment, the offsets the kernel reads.

    Note: in the FlashInfer sources we read, ``plan(packed_custom_mask=...)`` recomputes
    ``mask_indptr`` from the qo/kv lengths as element (bit) counts while the kernel adds it to a byte
    pointer, which agrees with these byte offsets only for one request; for a batch, pass the bool
    :func:`to_flashinfer_mask` as ``custom_mask`` (plan packs it exactly this way).
    """
    segments = [_packbits_little(m.reshape(-1)) for m in _request_masks(parents, prefix_lens)]
    sizes = torch.tensor([0] + [s.numel() for s in segments], dtype=torch.int64)
    return torch.cat(segments), sizes.cumsum(0).to(torch.int32).to(segments[0].device)


def from_flashinfer_packed_mask(packed: torch.Tensor, tree_sizes, prefix_lens) -> list[torch.Tensor]:
    """Tree blocks of a packed FlashInfer mask (the layout of :func:`to_flashinfer_packed_mask`): one bool
    ``[N_b, N_b]`` per request (node i may see node j), as :func:`trees.ancestor_mask` gives them.

    ``tree_sizes``: N_b, one per request (a sequence or 1-D tensor; it sets the batch size);
    ``prefix_lens`` as in :func:`to_flashinfer_mask`. ValueError if ``packed`` has the wrong length or a
    node does not see the whole prefix (our kernels always attend the full prefix).
    :func:`ancestor_mask_to_parents` turns a block back into ``parents``.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(
            f"packed must be a 1-D uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)} "
            f"of shape {tuple(getattr(packed, 'shape', ()))}"
        )
    batch = _batch_of(tree_sizes)
    if batch is None:  # an int would leave the batch size to guess
        raise ValueError(f"tree_sizes must list N_b for every request (e.g. [N] for one), got {tree_sizes!r}")
    sizes = _int_list("tree_sizes", tree_sizes, batch)
    prefix = _int_list("prefix_lens", prefix_lens, batch)
    if any(s < 1 for s in sizes):
        raise ValueError(f"tree_sizes must be >= 1 (the root is a node), got {sizes}")
    nbytes = [(s * (plen + s) + 7) // 8 for s, plen in zip(sizes, prefix)]
    if packed.numel() != sum(nbytes):
        raise ValueError(
            f"packed has {packed.numel()} bytes; tree_sizes={sizes} with prefix_lens={prefix} "
            f"need sum(ceil(N_b * (P_b + N_b) / 8)) = {sum(nbytes)}"
        )
    out, start = [], 0
    for b, (s, plen, nb) in enumerate(zip(sizes, prefix, nbytes)):
        rows = _unpackbits_little(packed[start : start + nb], s * (plen + s)).view(s, plen + s)
        start += nb
        if not bool(rows[:, :plen].all()):
            raise ValueError(
                f"request {b}: a tree node does not attend the whole prefix; only prefix + tree masks "
                f"convert to our trees"
            )
        out.append(rows[:, plen:].clone())
    return out


def ancestor_mask_to_parents(mask: torch.Tensor) -> torch.Tensor:
    """``parents`` (``[N]`` / ``[B, N]`` int64) whose :func:`trees.ancestor_mask` is ``mask`` (bool
    ``[N, N]`` / ``[B, N, N]``), else ValueError. Node i's parent is its highest-index strict ancestor:
    in topological order the ancestors form a chain whose last link is the parent."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() not in (2, 3) or mask.shape[-1] != mask.shape[-2] or mask.shape[-1] < 1:
        raise ValueError(f"mask must be [N, N] or [B, N, N] with N >= 1, got {tuple(mask.shape)}")
    j = torch.arange(mask.shape[-1], device=mask.device)
    parents = trees.mask_parents(mask)
    # A non-root row without ancestors gets parent 0 so the rebuilt mask (root column set) differs from it.
    parents = torch.where((j > 0) & (parents < 0), 0, parents)
    if not torch.equal(trees.ancestor_mask(parents), mask):
        raise ValueError(
            "mask is not the ancestor mask of a topologically ordered tree (node 0 the root; each "
            "row: the node itself and exactly its ancestors)"
        )
    return parents
