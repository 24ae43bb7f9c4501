"""Loads the compiled extension and registers the fake (meta) kernels torch.compile needs."""

from __future__ import annotations

import torch

try:
    from specdec_kernels import _C  # noqa: F401  (TORCH_LIBRARY(specdec, m) runs on load)
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "specdec_kernels._C is not built. Install the package first: "
        "pip install --no-build-isolation -e .   (see README.md)"
    ) from e


@torch.library.register_fake("specdec::compact_kv_cache")
def _compact_kv_cache_fake(cache, src_pos, dst_pos, counts, check=True) -> None:
    # Mutates cache in place and returns nothing; only the devices can be checked without data
    # (the C++ kernels check the rest when they run).
    check_same_device(cache, src_pos=src_pos, dst_pos=dst_pos, counts=counts)
    return None


@torch.library.register_fake("specdec::move_kv_slots")
def _move_kv_slots_fake(caches, src_slots, dst_slots, num_moves, slot_dims, check=True) -> None:
    # Mutates the buffers in place and returns nothing; as above, only the devices are checked here.
    if caches:
        check_same_device(caches[0], "move_kv_slots", src_slots=src_slots, dst_slots=dst_slots, num_moves=num_moves)
    return None


def check_same_device(cache: torch.Tensor, op: str = "compact_kv_cache", /, **index_tensors) -> None:
    """ValueError naming the first index tensor that is not on the cache's device (None entries: not given).

    Done in Python because a tensor on another device (meta included) changes which kernel the
    dispatcher picks, so the C++ kernel alone cannot always report the mismatch.
    """
    for name, t in index_tensors.items():
        if t is not None and t.device != cache.device:
            raise ValueError(f"{op}: {name} must be on the cache's device {cache.device}, got {t.device}")


def has_cuda_kernels() -> bool:
    """True when the extension was built with the CUDA compaction kernel."""
    return bool(torch.ops.specdec.built_with_cuda())


# Python-defined ops (tree_attention, chain_verify, tree_verify) join the C++ extension's `specdec`
# library as a fragment: TORCH_LIBRARY(specdec) in csrc/ops.cpp owns the namespace, so a second
# definition would be refused, but fragments may add ops to it.
_PY_FRAGMENT = torch.library.Library("specdec", "FRAGMENT")


def define_op(schema: str, impl, fake) -> None:
    """Define ``torch.ops.specdec.<name>`` from a schema, ``impl`` as its kernel on every device
    (CompositeExplicitAutograd: the Python function picks Triton or the reference itself) and ``fake``
    as its fake (meta) kernel for torch.compile.

    Plain dispatcher registration rather than ``torch.library.custom_op``: custom_op wraps every call in
    Python autograd/mutation bookkeeping, 6-8 us more per eager call even on a trivial op
    (bench/results/dispatch_cpu.md). The ops are inference-only (no autograd formula).
    """
    name = schema.split("(", 1)[0]
    _PY_FRAGMENT.define(schema)
    _PY_FRAGMENT.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"specdec::{name}", fake, lib=_PY_FRAGMENT)
