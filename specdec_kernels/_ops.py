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


def check_same_device(cache: torch.Tensor, **index_tensors: torch.Tensor) -> None:
    """ValueError naming the first index tensor that is not on the cache's device.

    Done in Python because a tensor on another device (meta included) changes which kernel the
    dispatcher picks, so the C++ kernel alone cannot always report the mismatch.
    """
    for name, t in index_tensors.items():
        if t.device != cache.device:
            raise ValueError(f"compact_kv_cache: {name} must be on the cache's device {cache.device}, got {t.device}")


def has_cuda_kernels() -> bool:
    """True when the extension was built with the CUDA compaction kernel."""
    return bool(torch.ops.specdec.built_with_cuda())
