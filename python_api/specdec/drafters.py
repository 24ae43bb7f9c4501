"""Where draft distributions come from: a draft model, or an EAGLE head on the target's features.

A drafter owns its cache and answers the strategies' two questions (:class:`specdec.strategies.Proposer`):

* ``begin(rows)``: bring the drafter up to the committed context, through the root (the last committed
  token, at position ``ctx - 1``); return the root's next-token logits [B, V].
* ``forward(tokens, positions, tree_mask, start)``: run draft nodes past the root, written at cache
  slots ``start[b] + 0..N-1`` with a tree mask over them (the committed prefix, root included, is
  visible to all); logits [B, N, V].

and the loop's: ``prefill`` after the target's prefill, ``accept`` after verification, ``select`` when
rows finish. Both kinds keep the same slot convention: node slots are positions ``ctx - 1 + slot``
(root slot 0), so a tree's accepted path is found at fixed places.
"""

from __future__ import annotations

import torch

from specdec.runner import ModelRunner, chain_mask


class ModelDrafter:
    """A draft LM with its own KV cache. Its cache is trusted up to ``ctx - 2``: each step re-feeds the
    last two committed tokens (prev, root), which covers "all drafts accepted" (the last draft never ran
    through the draft) and "some rejected" in one shape; a tree's accepted path is compacted."""

    kind = "model"

    def __init__(self, model, batch_size: int, max_len: int, capacity: int | None = None, compile: bool = False):
        self.model = model
        self.runner = ModelRunner(model, batch_size, max_len, capacity=capacity, compile=compile)

    @property
    def calls(self) -> int:
        return self.runner.calls

    @property
    def tokens(self) -> int:
        return self.runner.tokens

    def prefill(self, input_ids, attention_mask, first, features=None) -> None:
        self.runner.prefill(input_ids, attention_mask)

    def begin(self, rows) -> torch.Tensor:
        x = torch.stack([rows.prev, rows.root], 1)
        pos = torch.stack([rows.ctx - 2, rows.ctx - 1], 1)
        return self.runner.forward(x, pos, chain_mask(2, x.device), start=rows.ctx - 2)[:, -1]

    def forward(self, tokens, positions, tree_mask, start) -> torch.Tensor:
        return self.runner.forward(tokens, positions, tree_mask, start=start)

    def accept(self, rows, tree, res, target_features=None) -> None:
        """Trees: move the fed nodes of the accepted path to contiguous positions after the committed
        context, except its last node (the cache is trusted up to ctx' - 2). Chains need nothing: the
        accepted drafts already sit there."""
        if tree.lens is not None or tree.draft_slot is None:
            return
        slots = tree.draft_slot.gather(1, res.path.clamp(min=0)).clamp(min=0)
        base = rows.ctx - 1
        self.runner.cache.compact(base[:, None] + slots, base, res.num_accepted)

    def select(self, keep: torch.Tensor) -> None:
        self.runner.select(keep)


def make_drafter(draft, target, batch_size: int, max_len: int, capacity: int | None = None, compile: bool = False):
    """The drafter for ``draft``: an :class:`specdec.eagle.EagleHead` or a causal LM (None: no drafter).
    ``max_len`` bounds its cache positions; ``capacity`` is what is allocated up front (it grows);
    ``compile``: a draft model's forwards are compiled (:mod:`specdec.compiled`)."""
    from specdec.eagle import EagleHead, FeatureTap, HeadDrafter

    if draft is None:
        return None
    if isinstance(draft, EagleHead):
        return HeadDrafter(draft, FeatureTap(target, draft.config.feature_layers), batch_size, max_len, capacity)
    return ModelDrafter(draft, batch_size, max_len, capacity, compile=compile)


__all__ = ["ModelDrafter", "make_drafter"]
