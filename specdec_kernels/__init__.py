"""specdec_kernels: kernels for speculative decoding.

- :func:`tree_attention` (Triton): N tree nodes attend to the KV cache and their own ancestors;
  :func:`paged_tree_attention`: the same over a paged cache, ragged across the batch.
- :func:`chain_verify`, :func:`tree_verify` (Triton): fused, lossless rejection sampling;
  :func:`ragged_verify`: the same on a serving runtime's flattened drafts.
- :func:`compact_kv_cache` (C++/CUDA torch op ``torch.ops.specdec.compact_kv_cache``): accepted nodes'
  K/V to contiguous slots, every layer in one launch; :func:`move_kv_slots`: the same for paged slots.
- :mod:`trees` (masks, positions) and :mod:`tree_formats` (vLLM, SGLang, TensorRT-LLM, FlashInfer).

Every Triton kernel function takes ``backend=None`` (auto: Triton on CUDA tensors, reference on CPU),
``"triton"`` (on CPU tensors it runs under the Triton interpreter) or ``"reference"``; the C++/CUDA ops
run by their tensors' device.
"""

from specdec_kernels import tree_formats, trees  # tree_formats: converters to serving-runtime tree formats
from specdec_kernels.kv_compaction import (
    accepted_path_slots,
    compact_kv_cache,
    compact_kv_cache_reference,
    move_kv_slots,
    move_kv_slots_reference,
)
from specdec_kernels.paged_tree_attention import paged_tree_attention, paged_tree_attention_reference
from specdec_kernels.tree_attention import tree_attention, tree_attention_reference
from specdec_kernels.verify import chain_verify, ragged_verify, tree_verify

__all__ = [
    "trees",
    "tree_formats",
    "compact_kv_cache",
    "compact_kv_cache_reference",
    "move_kv_slots",
    "move_kv_slots_reference",
    "accepted_path_slots",
    "tree_attention",
    "tree_attention_reference",
    "paged_tree_attention",
    "paged_tree_attention_reference",
    "chain_verify",
    "tree_verify",
    "ragged_verify",
]
