"""KV-cache compaction: move the accepted tree nodes' keys/values to contiguous cache positions.

Two ops, C++ on CPU and CUDA on GPU, each one launch for every layer:

- :func:`compact_kv_cache` for this package's own dense cache ``[L, 2, B, H, S, D]``;
- :func:`move_kv_slots` for serving runtimes' paged / slot caches (vLLM, SGLang layouts), with
  :func:`accepted_path_slots` turning accepted paths and block tables into the slots to move.

Index tensors may be int32 or int64, each independently (mixed is allowed): the kernels widen every
entry to int64 as they read it.

compact_kv_cache
----------------

After verification, sequence b keeps ``counts[b]`` accepted nodes whose K/V sit at cache positions
``src_pos[b, :counts[b]]`` (strictly ascending). Compaction writes them, for every layer, K and V and
head, to ``dst_pos[b] + 0 .. counts[b]-1``. Because ``src_pos[b, i] >= dst_pos[b] + i`` the copy runs in
place: an in-order sequential copy never reads a slot it already overwrote, and the parallel kernels
stage each chunk of rows before writing it (see csrc/).

The op is ``torch.ops.specdec.compact_kv_cache(Tensor(a!) cache, Tensor src_pos, Tensor dst_pos,
Tensor counts, bool check=True) -> ()``: C++ on CPU, CUDA on GPU, one launch for all layers.
``check=True`` validates the index *values* too; on CUDA that costs one device-to-host sync, so a
decoding loop that builds the indices itself may pass ``check=False`` (shapes, dtypes and devices are
always checked).

move_kv_slots
-------------

Serving runtimes address their caches by flat slot (``block * page_size + offset``); the moves are
lists of slots, applied in index order, for every buffer (layer, K and V) in one launch. See
:func:`move_kv_slots` for the layouts and the ordering contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specdec_kernels._ops import check_same_device  # also loads specdec_kernels._C and registers the ops

INDEX_DTYPES = (torch.int32, torch.int64)


def compact_kv_cache_reference(
    cache: torch.Tensor, src_pos: torch.Tensor, dst_pos: torch.Tensor, counts: torch.Tensor
) -> None:
    """Plain PyTorch definition of the op (sequential, in place). Shapes as in :func:`compact_kv_cache`."""
    for b in range(cache.shape[2]):
        n = int(counts[b])
        d = int(dst_pos[b])
        for i in range(n):  # in ascending order: a source is never a slot written before it
            s = int(src_pos[b, i])
            cache[:, :, b, :, d + i, :] = cache[:, :, b, :, s, :]


def compact_kv_cache(
    cache: torch.Tensor,
    src_pos: torch.Tensor,
    dst_pos: torch.Tensor,
    counts: torch.Tensor,
    *,
    check: bool = True,
) -> None:
    """Compact the accepted K/V entries of every layer in place, in one launch.

    Parameters
    ----------
    cache : Tensor
        The model's whole cache, contiguous, any dtype. Shape: ``[L, 2, B, H, S, D]`` (2 = key, value).
    src_pos : Tensor
        int32 or int64, cache positions of the kept entries, strictly ascending in the first
        ``counts[b]`` entries of row b (the rest is ignored). Shape: ``[B, M]``.
    dst_pos : Tensor
        int32 or int64, where sequence b's kept entries go (usually its prefix length). Shape: ``[B]``.
    counts : Tensor
        int32 or int64, number of kept entries per sequence, ``0 <= counts[b] <= M``. Shape: ``[B]``.
        The three index tensors may mix int32 and int64.
    check : bool
        Validate index values (range, order, ``src_pos[b, i] >= dst_pos[b] + i``) before writing.

    Raises
    ------
    ValueError, TypeError
        On bad input, naming the argument, before anything is written: the cache is left unchanged.

    Examples
    --------
    >>> cache = torch.randn(2, 2, 1, 4, 16, 8)
    >>> compact_kv_cache(cache, torch.tensor([[10, 12]]), torch.tensor([10]), torch.tensor([2]))
    """
    check_same_device(cache, src_pos=src_pos, dst_pos=dst_pos, counts=counts)
    torch.ops.specdec.compact_kv_cache(cache, src_pos, dst_pos, counts, check)


# ---------------------------------------------------------------------------------------------------
# move_kv_slots: serving runtimes' caches, addressed by flat slot (block * page_size + offset)
# ---------------------------------------------------------------------------------------------------


def _buffer_list(caches: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One stacked tensor or a list/tuple of per-layer buffers, as the op's list of buffers."""
    if isinstance(caches, torch.Tensor):
        return [caches]
    if isinstance(caches, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in caches):
        return list(caches)
    raise TypeError(f"move_kv_slots: caches must be a tensor or a list/tuple of tensors, got {type(caches).__name__}")


def move_kv_slots_reference(
    caches: torch.Tensor | Sequence[torch.Tensor],
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
    num_moves: torch.Tensor | int | None = None,
    *,
    slot_dims: int,
) -> None:
    """Plain PyTorch definition of :func:`move_kv_slots` (in place, no validation; arguments as there).

    The first ``n = clamp(num_moves, 0, N)`` moves run one after another in index order; a move with a
    slot outside ``[0, num_slots)`` (-1 padding, or any bad slot of an unchecked call) does nothing.
    """
    src, dst = src_slots.tolist(), dst_slots.tolist()
    n = len(src) if num_moves is None else min(max(int(num_moves), 0), len(src))
    for buf in _buffer_list(caches):
        lead = buf.dim() - slot_dims - 2
        rows = buf.flatten(lead, lead + slot_dims - 1)  # [*planes, num_slots, Hkv, D]: a view (contiguous)
        num_slots = rows.shape[lead]
        for s, d in zip(src[:n], dst[:n]):
            if 0 <= s < num_slots and 0 <= d < num_slots:
                rows.select(lead, d).copy_(rows.select(lead, s))


def move_kv_slots(
    caches: torch.Tensor | Sequence[torch.Tensor],
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
    num_moves: torch.Tensor | int | None = None,
    *,
    slot_dims: int,
    check: bool = True,
) -> None:
    """Move K/V entries between cache slots, in place, for every layer, K and V, in one launch.

    The op is ``torch.ops.specdec.move_kv_slots(Tensor(a!)[] caches, Tensor src_slots, Tensor dst_slots,
    Tensor? num_moves, int slot_dims, bool check=True) -> ()``.

    Semantics: for ``i < n`` (``n = num_moves``, or ``N`` when None) the entry ``[Hkv, D]`` at slot
    ``src_slots[i]`` is copied to slot ``dst_slots[i]`` in every plane of every buffer, the moves applied
    one after another in index order (:func:`move_kv_slots_reference`). A move whose source or destination
    is -1 is padding and does nothing; so does a move with ``src == dst``.

    Contract that makes one parallel launch equal to that sequential order (``check=True`` verifies it):
    among the real moves, destinations are distinct and no move reads a slot that an *earlier* move
    wrote. A later move may overwrite an earlier move's source: compacting an accepted path
    (``dst_slots[i] <= src_slots[i]``, both ascending within a request) is always allowed. To swap or
    rotate slots, go through a free slot.

    Parameters
    ----------
    caches : Tensor or list of Tensors
        Buffers, all of one shape, dtype and device, contiguous, shaped ``[*planes, *slots, Hkv, D]``
        (``D`` may be any trailing row width): a stacked tensor or a list of per-layer buffers. Examples:
        vLLM: per layer ``[2, num_blocks, block_size, Hkv, D]`` (a list of L, or a stacked
        ``[L, 2, num_blocks, block_size, Hkv, D]``) with ``slot_dims=2``; SGLang: ``k_buffer + v_buffer``
        (a list of 2L tensors ``[num_slots, Hkv, D]``) with ``slot_dims=1``.
    src_slots, dst_slots : Tensor
        int32 or int64 (mixed allowed), on the buffers' device. Flat slots ``block * page_size + offset``
        (with ``slot_dims=2``) or slot indices (``slot_dims=1``), or -1 for padding. Shape: ``[N]``.
    num_moves : Tensor, int or None
        How many leading moves to apply, ``0 <= num_moves <= N``. A device tensor (int32/int64, shape
        ``[]`` or ``[1]``) is read by the kernel on the device, so the host never waits for it.
    slot_dims : int
        How many dims before ``[Hkv, D]`` index the slot: 2 for ``[num_blocks, page_size]`` (paged), 1
        for ``[num_slots]``. The dims before those are planes (layers, K/V), all moved alike.
    check : bool
        Validate the index values (slot ranges, num_moves, the ordering contract) before writing. On
        CUDA that costs one device-to-host copy (a sync); a runtime that builds the slots itself (e.g.
        with :func:`accepted_path_slots`) may pass ``check=False``. Shapes, dtypes and devices are
        always checked. Unchecked calls never touch memory outside the buffers: ``num_moves`` is
        clamped to ``[0, N]`` and moves with an out-of-range slot are skipped.

    Raises
    ------
    ValueError, TypeError
        On bad input, naming the argument, before anything is written.

    Examples
    --------
    >>> kv = [torch.randn(2, 8, 16, 2, 64) for _ in range(3)]  # vLLM: 3 layers, 8 blocks of 16 slots
    >>> move_kv_slots(kv, torch.tensor([37, 39]), torch.tensor([35, 36]), slot_dims=2)
    """
    buffers = _buffer_list(caches)
    for name, t in (("src_slots", src_slots), ("dst_slots", dst_slots)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"move_kv_slots: {name} must be a tensor, got {type(t).__name__}")
    if isinstance(num_moves, bool) or not isinstance(num_moves, (int, torch.Tensor, type(None))):
        raise TypeError(f"move_kv_slots: num_moves must be None, an int or a tensor, got {type(num_moves).__name__}")
    if isinstance(num_moves, int):  # known on the host: slicing the slot lists needs no device value
        if check and not 0 <= num_moves <= src_slots.numel():
            raise ValueError(f"move_kv_slots: num_moves = {num_moves} must be in [0, N] with N = {src_slots.numel()}")
        if src_slots.dim() == 1 and dst_slots.dim() == 1:
            n = min(max(num_moves, 0), src_slots.numel())
            src_slots, dst_slots = src_slots[:n], dst_slots[:n]
        num_moves = None
    if buffers:
        check_same_device(buffers[0], "move_kv_slots", src_slots=src_slots, dst_slots=dst_slots, num_moves=num_moves)
    torch.ops.specdec.move_kv_slots(buffers, src_slots, dst_slots, num_moves, slot_dims, check)


def _check_index_arg(name: str, t, dim: int, device: torch.device | None = None) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in INDEX_DTYPES:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"accepted_path_slots: {name} must be an int32 or int64 tensor, got {got}")
    if t.dim() != dim:
        raise ValueError(f"accepted_path_slots: {name} must have {dim} dims, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"accepted_path_slots: {name} must be on accept_index's device {device}, got {t.device}")


def _positions_to_slots(pos: torch.Tensor, block_table: torch.Tensor, page_size: int) -> torch.Tensor:
    """Slots of logical positions ``pos [B, P]`` through ``block_table [B, max_blocks]``; -1 where the
    position is negative, past the table or in a negative (unallocated) block."""
    max_blocks = block_table.shape[1]
    col = torch.div(pos, page_size, rounding_mode="floor")
    inside = (pos >= 0) & (col < max_blocks)
    block = block_table.long().gather(1, col.clamp(0, max(max_blocks - 1, 0)))  # clamped: gather stays in range
    slot = block * page_size + pos.remainder(page_size)
    return torch.where(inside & (block >= 0), slot, -1)


def accepted_path_slots(
    accept_index: torch.Tensor,
    num_accepted: torch.Tensor,
    seq_lens_before: torch.Tensor,
    block_table: torch.Tensor,
    page_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots for :func:`move_kv_slots` that compact each request's accepted path, with no host sync.

    Request b wrote its draft tree's K/V at logical positions ``seq_lens_before[b] + j`` (j = node index
    within the tree, 0..P-1) before verification. Its accepted path is ``accept_index[b, :num_accepted[b]]``
    (node indices, ascending, as a root-to-leaf path of a topologically numbered tree is). The i-th accepted
    node must move to position ``seq_lens_before[b] + i``. A logical position p lives in slot
    ``block_table[b, p // page_size] * page_size + p % page_size`` (vLLM's slot mapping; for SGLang pass
    ``req_to_token[req_pool_indices]`` as the block table with ``page_size=1``).

    Parameters
    ----------
    accept_index : Tensor
        int32/int64 ``[B, P]`` (P = K + 1 for K draft tokens), node indices, -1 padded.
    num_accepted : Tensor
        int32/int64 ``[B]``, accepted nodes per request (entries past it are ignored).
    seq_lens_before : Tensor
        int32/int64 ``[B]``, each request's cache length before the tree.
    block_table : Tensor
        int32/int64 ``[B, max_blocks]``, physical block of each logical block (negative: unallocated).
    page_size : int
        Slots per block, >= 1.

    Returns
    -------
    (src_slots, dst_slots, num_moves)
        int64 ``[B * P]``, int64 ``[B * P]``, int64 ``[]``, on accept_index's device. The real moves (not
        already in place, every slot allocated) come first, request by request in path order, and number
        ``num_moves``; the rest is -1. They satisfy :func:`move_kv_slots`' ordering contract when the
        paths ascend and the tree region of each request has its own blocks (not shared with another).
    """
    _check_index_arg("accept_index", accept_index, 2)
    device = accept_index.device
    _check_index_arg("num_accepted", num_accepted, 1, device)
    _check_index_arg("seq_lens_before", seq_lens_before, 1, device)
    _check_index_arg("block_table", block_table, 2, device)
    B, P = accept_index.shape
    for name, t in (("num_accepted", num_accepted), ("seq_lens_before", seq_lens_before), ("block_table", block_table)):
        if t.shape[0] != B:
            raise ValueError(
                f"accepted_path_slots: {name} must have {B} rows (accept_index's), got shape {tuple(t.shape)}"
            )
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"accepted_path_slots: page_size must be an int >= 1, got {page_size!r}")

    i = torch.arange(P, device=device)
    node = accept_index.long()
    base = seq_lens_before.long()[:, None]
    src = _positions_to_slots(base + node, block_table, page_size)
    dst = _positions_to_slots(base + i, block_table, page_size)
    real = (i < num_accepted.long()[:, None]) & (node >= 0) & (src >= 0) & (dst >= 0) & (src != dst)
    # Stable partition, real moves first (keeping their order, which the ordering contract needs), by a
    # permutation computed from cumulative sums: nonzero() would make the host wait.
    real = real.flatten()
    num_moves = real.sum()
    order = torch.where(real, real.cumsum(0) - 1, num_moves + (~real).cumsum(0) - 1)

    def partitioned(slots: torch.Tensor) -> torch.Tensor:
        out = torch.empty(B * P, dtype=torch.int64, device=device)
        return out.scatter_(0, order, torch.where(real, slots.flatten(), -1))

    return partitioned(src), partitioned(dst), num_moves
