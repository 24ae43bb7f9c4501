"""Layers shared by the draft model (:mod:`specdec.models`) and the EAGLE heads (:mod:`specdec.eagle`)."""

from __future__ import annotations

import torch


class SubsetLMHead(torch.nn.Module):
    """Output head that scores only ``token_ids`` (rows of a shared embedding matrix) and returns
    full-vocabulary logits with ``OUTSIDE`` everywhere else.

    A frequency-ranked vocabulary subset (FR-Spec, Zhao et al. 2025) makes a small draft's head several
    times cheaper; the draft then never proposes a token outside the subset. That keeps speculative
    decoding exact: greedy verification compares with the target's argmax, and for sampling the draft's
    q is exactly 0 there (exp(-1e4) underflows to 0 in every float type), which rejection sampling
    handles like any other q. -1e4 rather than -inf keeps p * log p and divisions by a temperature finite.
    """

    OUTSIDE = -1.0e4

    def __init__(self, embedding: torch.Tensor, token_ids: torch.Tensor):
        super().__init__()
        self.vocab_size = self.out_features = int(embedding.shape[0])  # out_features as in nn.Linear
        self.register_buffer("token_ids", token_ids.to(torch.long), persistent=True)
        self.register_buffer("weight", embedding.detach()[self.token_ids].clone(), persistent=False)

    def subset_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        sub = self.subset_logits(hidden)
        out = sub.new_full((*sub.shape[:-1], self.out_features), self.OUTSIDE)
        return out.index_copy_(-1, self.token_ids, sub)


__all__ = ["SubsetLMHead"]
