"""One preallocated KV buffer per model, presented to a Hugging Face model as its ``Cache``.

Layout (docs/design.md, "KV cache"): ``buffer [layers, 2, batch, kv_heads, capacity, head_dim]``. Layer l's
keys and values are the views ``buffer[l, 0]`` and ``buffer[l, 1]``. Before each forward the loop says
where sequence b's new tokens go (``begin_forward``); every layer's ``update`` then writes there in
place and returns the whole per-layer view, which the tree-attention hook reads up to ``kv_lens``.
Nothing is cropped per step: rejected entries are simply overwritten later, and accepted tree nodes
are moved with ``compact_kv_cache`` over all layers at once.

The buffer grows with the output: it starts at ``capacity`` positions and doubles (up to ``max_len``)
when a forward would write past it, so memory and start-up time follow what is generated, not the
``max_new_tokens`` the caller allowed (amortised: each position is copied at most once on average).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

import specdec_kernels as sk
from specdec.model_support import KVLayout


class CacheFullError(RuntimeError):
    """Raised before a forward would write past the preallocated length."""


def grown(t: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """``t`` extended with zeros along ``dim`` to ``length`` entries (a new tensor; ``t`` is unchanged)."""
    shape = list(t.shape)
    shape[dim] = length
    out = t.new_zeros(shape)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


def next_capacity(capacity: int, needed: int, max_len: int) -> int:
    """Doubling growth: at least ``needed``, at most ``max_len``."""
    return min(max_len, max(needed, 2 * capacity))


# The smallest capacity of a fixed-shape (compiled) cache. Each capacity is a graph of its own (~1.5 min
# to compile for SmolLM2 on 2 cores): at 256, chat prompts of 30-200 tokens with 96 new tokens landed on
# both 256 and 512 and compiled every width twice; reading 512 entries instead of 256 adds 6 MB (~2%) to a
# SmolLM2 forward's 270 MB of bf16 weights.
MIN_FIXED_CAPACITY = 512


def power_of_two_at_least(n: int, floor: int = MIN_FIXED_CAPACITY) -> int:
    """The smallest power of two >= max(n, floor): the capacities a compiled forward sees (few graphs)."""
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


class _BufferLayer(CacheLayerMixin):
    """Per-layer view of the shared buffer; writes at the positions set by ``SpecCache.begin_forward``."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: SpecCache, layer: int):
        super().__init__()
        self.owner = owner
        self.point(layer)
        self.is_initialized = True

    def point(self, layer: int) -> None:
        """(Re)bind to the owner's buffer, after it was allocated, grown or batch-selected."""
        self.layer = layer
        self.layer_index = torch.tensor(layer, device=self.owner.buffer.device)  # (fixed-shape writes)
        self.keys = self.owner.buffer[layer, 0]
        self.values = self.owner.buffer[layer, 1]

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated up front
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states: [B, H, n, D] for the n tokens of this forward
        if self.owner.write_pos is not None:  # fixed shapes (compiled): the buffer is the graph's one input
            # One index_put_ into the whole buffer, every index a tensor. Compiled, a write into a view
            # (buffer[layer, 0].scatter_) is functionalised into a copy of the entire buffer per layer
            # (SmolLM2, cache 512: 30 x 12 MB, 40 ms a forward); a write into the base is done in place.
            B, H, n, _ = key_states.shape
            kv, b, h = self.owner.kv_index(B, H)
            pos = self.owner.write_pos.view(1, B, 1, n)
            self.owner.buffer.index_put_((self.layer_index, kv, b, h, pos), torch.stack([key_states, value_states]))
            return self.owner.buffer[self.layer, 0], self.owner.buffer[self.layer, 1]
        start, index = self.owner.write_start, self.owner.write_index
        if index is None:  # every sequence writes at the same offset: a plain slice copy
            n = key_states.shape[2]
            self.keys[:, :, start : start + n].copy_(key_states)
            self.values[:, :, start : start + n].copy_(value_states)
        else:
            self.keys.scatter_(2, index, key_states)
            self.values.scatter_(2, index, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.capacity, 0

    def get_seq_length(self) -> int:
        return int(self.owner.lens.max())

    def get_max_length(self) -> int:
        return self.owner.max_len


def layout_from_config(config) -> KVLayout:
    """The K/V layout a config describes, for a caller without the model at hand (the loop reads it
    from the model's actual keys and values instead: :func:`specdec.model_support.check_model_support`).
    The KV head count goes by several names: ``num_key_value_heads``, ``num_kv_heads`` (Falcon), or
    ``multi_query`` (one KV head)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None)
    if kv_heads is None and getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", 0):
        kv_heads = 1  # (Falcon keeps num_kv_heads but ignores it for multi-query without the new layout)
    kv_heads = kv_heads or getattr(text, "num_kv_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return KVLayout(int(text.num_hidden_layers), int(kv_heads), int(head_dim))


class SpecCache(Cache):
    """KV cache of one model for a batch of sequences with their own lengths.

    ``lens[b]`` is the number of valid entries of sequence b (positions ``0 .. lens[b]-1``).
    ``max_len`` bounds the positions a forward may write; ``capacity`` (default ``max_len``) is how many
    are allocated up front, grown by doubling as forwards need more. ``layout``: the layers, KV heads and
    head size to allocate (default: read from ``config``, :func:`layout_from_config`).
    """

    def __init__(
        self,
        config,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int | None = None,
        layout: KVLayout | None = None,
    ):
        layout = layout_from_config(config) if layout is None else layout
        kv_heads, head_dim = layout.kv_heads, layout.head_dim
        self.num_layers = layout.num_layers
        self.max_len = max_len
        self.capacity = max_len if capacity is None else min(capacity, max_len)
        self.buffer = torch.zeros(
            self.num_layers, 2, batch_size, kv_heads, self.capacity, head_dim, dtype=dtype, device=device
        )
        self.lens = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.write_start = 0
        self.write_index: torch.Tensor | None = None
        self.write_pos: torch.Tensor | None = None  # [B, n] write positions, fixed-shape mode only
        self.fixed = False
        super().__init__(layers=[_BufferLayer(self, layer) for layer in range(self.num_layers)])

    def kv_index(self, B: int, H: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Index tensors over (K/V, batch row, KV head), broadcastable to [2, B, H, 1]."""
        dev = self.buffer.device
        return (
            torch.arange(2, device=dev).view(2, 1, 1, 1),
            torch.arange(B, device=dev).view(1, B, 1, 1),
            torch.arange(H, device=dev).view(1, 1, H, 1),
        )

    @property
    def batch_size(self) -> int:
        return self.buffer.shape[2]

    def fixed_shapes(self) -> None:
        """Switch to what a compiled forward needs: capacities are powers of two (a long output adds one
        graph per doubling, not one per prompt length), and every forward writes by a scatter at tensor
        positions (a slice at a Python offset would be a new graph every step)."""
        self.fixed = True
        self._resize(power_of_two_at_least(self.capacity))

    def begin_forward(self, n: int, start: torch.Tensor | int | None = None) -> torch.Tensor:
        """Prepare a forward of n tokens per sequence written at ``start[b] + 0..n-1`` (default: ``lens``).

        Returns ``kv_lens`` for tree attention: valid entries of each sequence once they are written.
        """
        start = self.lens if start is None else start
        if isinstance(start, int):  # every sequence at one offset, known on the host: no read-back
            lo = self.max_end = start + n
            start = torch.full_like(self.lens, start)
        else:  # the one read-back of a forward: sizes the buffer, bounds split-K, picks the write path
            lo, self.max_end = (torch.stack([start.min(), start.max()]) + n).tolist()
        if self.max_end > self.max_len:
            raise CacheFullError(
                f"KV cache full: a forward of {n} tokens needs {self.max_end} positions, the cache holds "
                f"{self.max_len}; pass a larger max_len (prompt + max_new_tokens + lookahead)"
            )
        self.reserve(self.max_end)
        if self.fixed:
            self.write_pos = start[:, None] + torch.arange(n, device=start.device)
        elif lo == self.max_end:  # one offset for all: a plain slice copy per layer
            self.write_start, self.write_index = self.max_end - n, None
        else:
            _, _, B, H, _, D = self.buffer.shape
            pos = start[:, None] + torch.arange(n, device=start.device)  # [B, n]
            self.write_start, self.write_index = 0, pos.view(B, 1, n, 1).expand(B, H, n, D)
        return start + n

    def reserve(self, needed: int) -> None:
        """Make room for positions ``0 .. needed-1`` (at most ``max_len``), doubling the buffer if short."""
        if needed <= self.capacity:
            return
        capacity = next_capacity(self.capacity, needed, self.max_len)
        self._resize(power_of_two_at_least(capacity) if self.fixed else capacity)

    def _resize(self, capacity: int) -> None:
        if capacity != self.capacity:
            self.capacity = capacity
            self.buffer = grown(self.buffer, 4, capacity)
            self._rebind()

    def _rebind(self) -> None:
        for layer, cache_layer in enumerate(self.layers):
            cache_layer.point(layer)

    def compact(self, src_pos: torch.Tensor, dst_pos: torch.Tensor, counts: torch.Tensor) -> None:
        """Keep ``counts[b]`` entries at ``src_pos[b]`` as positions ``dst_pos[b] + i``, all layers at once."""
        sk.compact_kv_cache(self.buffer, src_pos, dst_pos, counts, check=False)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (finished sequences stop consuming work)."""
        self.buffer = self.buffer.index_select(2, rows).contiguous()
        self.lens = self.lens.index_select(0, rows)
        self._rebind()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.lens.max())
