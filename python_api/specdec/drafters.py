"""A draft model as a drafter (:class:`specdec.proposer.Drafter`); the EAGLE head's drafter is
:class:`specdec.eagle.HeadDrafter`.

A drafter owns its cache and answers the strategies' two questions: ``begin(rows)`` (bring the drafter
up to the committed context through the root, at position ``ctx - 1``; the root's next-token logits)
and ``forward(tokens, positions, tree_mask, start)`` (draft nodes past the root), and the loop's:
``prefill`` after the target's prefill, ``accept`` after verification, ``select`` when rows finish,
``release`` at the end. Both kinds keep the same slot convention: node slots are positions
``ctx - 1 + slot`` (root slot 0), so a tree's accepted path is found at fixed places.
"""

from __future__ import annotations

import torch

from specdec.proposer import DraftTree, Rows
from specdec.runner import ModelRunner, chain_mask


class ModelDrafter:
    """A draft LM with its own KV cache. Its cache is trusted up to ``ctx - 2``: each step re-feeds the
    last two committed tokens (prev, root), which covers "all drafts accepted" (the last draft never ran
    through the draft) and "some rejected" in one shape; a tree's accepted path is compacted."""

    catches_up = False  # its cache is trusted only up to the step before: every step must draft
    tap = None  # reads no target features

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

    def begin(self, rows: Rows) -> torch.Tensor:
        x = torch.stack([rows.prev, rows.root], 1)
        pos = torch.stack([rows.ctx - 2, rows.ctx - 1], 1)
        return self.runner.forward(x, pos, chain_mask(2, x.device), start=rows.ctx - 2)[:, -1]

    def forward(self, tokens, positions, tree_mask, start) -> torch.Tensor:
        return self.runner.forward(tokens, positions, tree_mask, start=start)

    def accept(self, rows: Rows, tree: DraftTree, res) -> None:
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

    def release(self) -> None:
        pass  # nothing of the target's to undo


__all__ = ["ModelDrafter"]
