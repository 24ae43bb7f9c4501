"""The contract between the decoding loop, the strategies that propose drafts, and the drafters.

This module is a leaf: the loop (:mod:`specdec.decoder`), every strategy (:mod:`specdec.strategies`)
and every drafter (:mod:`specdec.drafters`, :mod:`specdec.eagle`) import it, and it imports none of them.

One step, per sequence still generating (docs/strategies.md walks through an example)::

    rows     = Rows(prev, root, ctx)              # root: chosen, not yet run through the target
    tree     = strategy.propose(DraftContext(rows, drafter, ...))      # a DraftTree, root at node 0
    result   = verify(target forward over tree)   # ChainVerifyResult or TreeVerifyResult
    drafter.accept(rows, tree, result); strategy.observe(tree, result)
    rows     = rows.advance(result)               # the last emitted token is the next root

Positions: the committed context has ``ctx`` tokens, the root included, so the root sits at position
``ctx - 1`` and the target's cache holds ``ctx - 1`` entries (everything but the root). A node at
depth d below the root (the root has depth 0) is at position ``ctx - 1 + d``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from specdec_kernels.tree_attention import MAX_TREE_NODES


@dataclasses.dataclass
class Rows:
    """Per-sequence state of the rows still generating; index i of every tensor is the same row."""

    ids: torch.Tensor  # [Ba] the row's index in the caller's batch
    prev: torch.Tensor  # [Ba] the committed token before the root
    root: torch.Tensor  # [Ba] the last committed token, not yet in the target's cache
    ctx: torch.Tensor  # [Ba] committed length: the real prompt + generated tokens (root included)

    def select(self, keep: torch.Tensor) -> Rows:
        """The rows ``keep`` (indices into this batch), in that order."""
        return Rows(*(t.index_select(0, keep) for t in (self.ids, self.prev, self.root, self.ctx)))

    def advance(self, result) -> Rows:
        """After verification: the last emitted token becomes the root, the one before it ``prev``, and
        ctx grows by the number emitted (accepted drafts + the correction or bonus token)."""
        n = result.num_emitted
        emitted = torch.cat([self.root[:, None], result.tokens.clamp(min=0)], 1)
        idx = torch.arange(n.numel(), device=n.device)
        return Rows(self.ids, emitted[idx, n - 1], emitted[idx, n], self.ctx + n)


@dataclasses.dataclass
class DraftTree:
    """One step's proposal: node 0 is the root, nodes are in topological order (parents first).

    A chain is the tree with ``parents = [-1, 0, 1, ..]`` and ``lens`` set; it is verified by
    ``chain_verify`` (rows may verify fewer drafts than were drafted), anything else by ``tree_verify``.
    """

    tokens: torch.Tensor  # [B, N] int64, node 0 = the root
    parents: torch.Tensor  # [B, N] int64, topological, -1 for the root
    # Trees: [B, N, V], the q that node i's children were drawn from. Chains: [B, K, V], the q that
    # draft j + 1 was drawn from. None for deterministic drafts (verified with the deterministic rule).
    draft_probs: torch.Tensor | None
    # [B, N] where each node's K/V sits in the drafter's cache, as an offset from the root's position
    # (ctx - 1); -1 for a node the drafter never ran. None when no drafter ran (prompt lookup).
    draft_slot: torch.Tensor | None
    lens: torch.Tensor | None = None  # chains only: [B] drafts to verify per row (<= N - 1)

    @property
    def is_chain(self) -> bool:
        return self.lens is not None

    @property
    def width(self) -> int:
        """Nodes in the target's verify forward, the root included."""
        return self.tokens.shape[1]


@runtime_checkable
class Drafter(Protocol):
    """Where draft distributions come from: a draft model (:class:`specdec.drafters.ModelDrafter`) or an
    EAGLE head on the target's features (:class:`specdec.eagle.HeadDrafter`). A drafter owns its cache.

    Slot convention, shared by both kinds: a node run through the drafter at slot s (its
    ``DraftTree.draft_slot``) is written at position ``ctx - 1 + s``; the root has slot 0.
    """

    calls: int  # forwards run so far (prefill included)
    catches_up: bool  # True: a step may skip the drafter (it catches up over tokens it did not draft)
    tap: object | None  # the target's features it reads (an EAGLE head's FeatureTap), None for none

    def prefill(self, input_ids, attention_mask, first, features=None) -> None:
        """After the target's prefill: the prompts ([B, T], left padded), the first chosen token [B],
        and the target's features over the prompt when the drafter reads them (an EAGLE head)."""

    def begin(self, rows: Rows) -> torch.Tensor:
        """Bring the cache up to the committed context through the root; the root's next-token
        logits [B, V]."""

    def forward(self, tokens, positions, tree_mask, start) -> torch.Tensor:
        """Run draft nodes past the root: ``tokens`` [B, N] at ``positions`` [B, N], written at cache
        slots ``start[b] + 0..N-1``, attending to the committed prefix (root included) and to each
        other through ``tree_mask`` [B, N, N]; logits [B, N, V]."""

    def accept(self, rows: Rows, tree: DraftTree, result) -> None:
        """After verification: keep the K/V of the accepted path (compaction for trees)."""

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (rows that finished leave the batch)."""

    def release(self) -> None:
        """Undo what the drafter did to the target (an EAGLE head's feature hook); called once, last."""


@dataclasses.dataclass
class DraftContext:
    """What a proposer sees in one step (rows still generating, index i <-> batch row i)."""

    rows: Rows
    drafter: Drafter | None  # None for a model-free strategy (``needs_drafter = False``)
    temperature: float  # 0: greedy drafts; > 0: sample drafts from softmax(logits / temperature)
    gen: torch.Generator | None  # the generator every draw of this generation takes
    limit: torch.Tensor  # [Ba] the most drafts a row can still use before max_new_tokens
    history: Callable[[], list[list[int]]]  # committed tokens per row (prompt + output), built on demand


@runtime_checkable
class Proposer(Protocol):
    """A drafting strategy, as the loop sees it. Subclass it (methods with bodies below are defaults)
    or write a class with the same members; :func:`check_proposer` says which member is missing.

    Attributes (read once, before the first forward, to size buffers and check the kernels' limits):

    ``max_nodes``: the widest proposal, root included (at most ``MAX_TREE_NODES``).
    ``max_fed``: the most tokens one drafter forward runs (0 when ``needs_drafter`` is False).
    ``needs_drafter``: False when the strategy proposes from the context alone (prompt lookup); the
    loop then runs no drafter at all.
    ``top_ranks`` (optional, default 1): the most top-ranked candidates taken from one distribution;
    a strategy whose top_ranks exceeds the vocabulary is refused up front.
    """

    max_nodes: int
    max_fed: int
    needs_drafter: bool

    def start(self, batch: int, device) -> None:
        """Called once after prefill: reset per-row state for ``batch`` rows."""

    def propose(self, ctx: DraftContext) -> DraftTree:
        """This step's drafts, at most ``max_nodes`` nodes wide (root included)."""

    def observe(self, tree: DraftTree, result) -> None:
        """After verification of ``tree``: ``result`` is a ``specdec_kernels`` ``ChainVerifyResult``
        (chains) or ``TreeVerifyResult`` (trees); both have ``tokens`` [B, *] emitted, ``num_emitted``
        [B] and ``num_accepted`` [B] (``num_emitted - 1``)."""

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the rows ``rows`` (indices into the current batch) of any per-row state."""

    def draft_forward_sizes(self) -> list[int]:
        """Tokens of each drafter forward of a full step, for the cost model (:mod:`specdec.tune`)."""


PROPOSER_MEMBERS = ("max_nodes", "max_fed", "needs_drafter", "start", "propose", "observe", "select")


def check_proposer(strategy) -> None:
    """TypeError naming every member of :class:`Proposer` that ``strategy`` lacks (the sizes are checked
    against the kernels' limits by :func:`specdec.validation.check_strategy_fits`)."""
    missing = [m for m in PROPOSER_MEMBERS if not hasattr(strategy, m)]
    if missing:
        raise TypeError(
            f"strategy {type(strategy).__name__} is not a specdec.Proposer: it has no {', '.join(missing)} "
            f"(docs/strategies.md lists what a strategy implements)"
        )


def check_proposal(strategy, tree: DraftTree, batch: int) -> None:
    """ValueError when a proposal breaks the contract the verify forward relies on."""
    what = type(strategy).__name__
    if not isinstance(tree, DraftTree):
        raise TypeError(f"strategy {what}: propose must return a specdec.DraftTree, got {type(tree).__name__}")
    if tree.tokens.shape[0] != batch or tree.parents.shape != tree.tokens.shape:
        raise ValueError(
            f"strategy {what}: the proposal's tokens {tuple(tree.tokens.shape)} and parents "
            f"{tuple(tree.parents.shape)} must both be [{batch}, N]"
        )
    if tree.width > strategy.max_nodes:
        raise ValueError(
            f"strategy {what}: proposed {tree.width} nodes, more than its max_nodes = {strategy.max_nodes}"
        )


def choose(logits: torch.Tensor, temperature: float, gen: torch.Generator | None):
    """Next token from logits [B, V]: argmax (temperature 0) or a sample from softmax(logits / T); also
    the distribution it was drawn from (None when greedy)."""
    if temperature == 0:
        return logits.argmax(-1), None
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1), probs


__all__ = [
    "MAX_TREE_NODES",
    "Rows",
    "DraftTree",
    "DraftContext",
    "Drafter",
    "Proposer",
    "check_proposer",
    "check_proposal",
    "choose",
]
