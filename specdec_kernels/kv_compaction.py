"""KV-cache compaction: move the accepted tree nodes' keys/values to contiguous cache positions.

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
"""
from __future__ import annotations

import torch

from specdec_kernels._ops import check_same_device  # also loads specdec_kernels._C and registers the op


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
        int64, cache positions of the kept entries, strictly ascending in the first ``counts[b]``
        entries of row b (the rest is ignored). Shape: ``[B, M]``.
    dst_pos : Tensor
        int64, where sequence b's kept entries go (usually its prefix length). Shape: ``[B]``.
    counts : Tensor
        int64, number of kept entries per sequence, ``0 <= counts[b] <= M``. Shape: ``[B]``.
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
