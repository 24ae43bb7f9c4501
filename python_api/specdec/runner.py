"""A Hugging Face causal LM plus its KV buffer, run over token trees with the tree-attention hook."""
from __future__ import annotations

import contextlib
import functools

import torch

from specdec_kernels import hf_attention, trees

from specdec.cache import SpecCache


@contextlib.contextmanager
def tree_attention_enabled(*models):
    """Switch the models to the "specdec_tree" attention for the duration, then restore theirs."""
    name = hf_attention.register()
    saved = [m.config._attn_implementation for m in models]
    try:
        for m in models:
            m.set_attn_implementation(name)
        yield
    finally:
        for m, impl in zip(models, saved):
            m.set_attn_implementation(impl)


class ModelRunner:
    """Runs one model over trees of tokens; ``cache.lens`` holds each sequence's committed length."""

    def __init__(self, model, batch_size: int, max_len: int):
        self.model = model
        p = next(model.parameters())
        self.cache = SpecCache(model.config, batch_size, max_len, dtype=p.dtype, device=p.device)
        self.calls = 0

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor,
                start: torch.Tensor | None = None) -> torch.Tensor:
        """Run N tokens per sequence written at cache positions ``start[b] + 0..N-1`` (default ``lens``).

        tokens, positions: [B, N]; tree_mask: [N, N] or [B, N, N] bool. Returns logits [B, N, V] (fp32).
        Does not move ``lens``: the caller commits what was accepted.
        """
        kv_lens = self.cache.begin_forward(tokens.shape[1], start)
        out = self.model(
            input_ids=tokens, position_ids=positions, past_key_values=self.cache, use_cache=True,
            tree_mask=tree_mask, kv_lens=kv_lens, mask_memo={},
        )
        self.calls += 1
        return out.logits.float()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run left-padded prompts; afterwards sequence b's real tokens sit at positions 0..len_b-1.

        The prompt is one forward whose "tree" is the whole padded row: causal, pads hidden from every
        real token. Compaction then moves each row's real entries to the front of its cache.
        Returns the logits after the last prompt token, [B, V].
        """
        B, T = input_ids.shape
        mask = attention_mask.bool()
        lens = mask.sum(1)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        tree_mask = (causal & mask[:, None, :]) | torch.eye(T, dtype=torch.bool, device=input_ids.device)
        logits = self.forward(input_ids, positions, tree_mask, start=torch.zeros_like(lens))
        pads = T - lens
        if bool((pads > 0).any()):
            src = pads[:, None] + torch.arange(T, device=lens.device)
            self.cache.compact(src.clamp(max=T - 1), torch.zeros_like(lens), lens)
        self.cache.lens = lens.clone()
        return logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        self.cache.select(rows)


@functools.lru_cache(maxsize=64)
def chain_mask(n: int, device) -> torch.Tensor:
    """Causal [n, n] mask (a chain is a tree); cached, the loop asks for the same few sizes every step."""
    return trees.ancestor_mask(trees.chain_parents(n, device=device))


__all__ = ["ModelRunner", "tree_attention_enabled", "chain_mask"]
