"""Prompt-lookup drafting: draft tokens copied from earlier n-gram matches in the context, no draft model.

For input-grounded generation (code edits, summaries, retrieval answers) the continuation often repeats
spans of the prompt (Saxena, 2023, "prompt lookup decoding"). The last n tokens of the context (root
included) are searched for earlier in the context, longest n first; the tokens that followed a match
are the draft. ``search="first"`` takes the earliest occurrence first (for edits and summaries that is
the prompt's copy of the span, and it is what transformers' prompt lookup does), ``"recent"`` the
latest. With ``branches > 1`` several distinct continuations are merged into a trie, so one target
forward verifies them all as a tree.

Drafts are deterministic, so verification uses the deterministic rule (lossless for sampling too).
Rows of a batch get trees of different sizes; the shorter ones are padded with copies of their root's
first child placed after it, which can never be accepted (the first copy is tried first: greedy takes
the first matching child, and the sampling rule zeroes the token's probability once it is rejected).
"""

from __future__ import annotations

import dataclasses

import torch

from specdec.proposer import DraftContext, DraftTree, check_proposer
from specdec.strategies.chains import Chain
from specdec.strategies.trees import TreeStrategy
from specdec.validation import check_int, check_tree_size


@dataclasses.dataclass
class PromptLookup(TreeStrategy):
    """Draft ``k`` tokens per continuation from n-gram matches (``min_ngram`` .. ``max_ngram``)."""

    k: int = 8
    max_ngram: int = 3
    min_ngram: int = 1
    branches: int = 1
    search: str = "first"  # "first": earliest occurrence first (the prompt's copy); "recent": latest first

    needs_drafter = False

    def __post_init__(self):
        self.k = check_int("PromptLookup", "k", self.k, 1)
        self.branches = check_int("PromptLookup", "branches", self.branches, 1)
        self.max_ngram = check_int("PromptLookup", "max_ngram", self.max_ngram, 1)
        self.min_ngram = check_int("PromptLookup", "min_ngram", self.min_ngram, 1, self.max_ngram, "max_ngram")
        if self.search not in ("first", "recent"):
            raise ValueError(f"PromptLookup: search must be 'first' or 'recent', got {self.search!r}")
        self.max_nodes = 1 + self.k * self.branches
        self.max_fed = 0
        check_tree_size("PromptLookup", "1 + k * branches tree nodes", self.max_nodes)

    def draft_forward_sizes(self) -> list[int]:
        return []  # no draft forwards: the step is the target's forward plus the n-gram search

    def continuations(self, history: list[int]) -> list[list[int]]:
        """Up to ``branches`` distinct continuations of the context's last n-gram, best first."""
        found: list[list[int]] = []
        L = len(history)
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            pattern = history[L - n :]
            starts = range(L - n) if self.search == "first" else range(L - n - 1, -1, -1)
            for i in starts:
                if history[i : i + n] == pattern:
                    cont = history[i + n : i + n + self.k]
                    if cont and all(cont[0] != c[0] or cont != c[: len(cont)] for c in found):
                        found.append(cont)
                        if len(found) == self.branches:
                            return found
            if found:
                return found
        return found

    def _trie(self, history: list[int]) -> tuple[list[int], list[int]]:
        """Root + the continuations merged into a trie; just the root when the context has no match."""
        tokens, parents = [history[-1]], [-1]
        children: dict[tuple[int, int], int] = {}
        for cont in self.continuations(history):
            node = 0
            for t in cont:
                if (node, t) not in children:
                    children[(node, t)] = len(tokens)
                    tokens.append(t)
                    parents.append(node)
                node = children[(node, t)]
        return tokens, parents

    def propose(self, ctx: DraftContext) -> DraftTree:
        rows = ctx.rows
        trees = [self._trie(h) for h in ctx.history()]
        n = max(len(t) for t, _ in trees)
        if n > 1:  # some row drafts: a row without a match gets one guess (its root again) to pad after
            trees = [(t, p) if len(t) > 1 else (t + t[:1], p + [0]) for t, p in trees]
        # With no match anywhere the tree is the root alone: the step is a plain one-token forward, as
        # cheap as target-only decoding (a dummy draft would cost a wider verify forward for nothing).
        first = [t[1] if len(t) > 1 else t[0] for t, _ in trees]
        tok = torch.tensor([t + [f] * (n - len(t)) for (t, _), f in zip(trees, first)], device=rows.root.device)
        par = torch.tensor([p + [0] * (n - len(p)) for _, p in trees], device=rows.root.device)
        return DraftTree(tok, par, None, torch.full_like(tok, -1))


@dataclasses.dataclass
class LookupOrChain(TreeStrategy):
    """Prompt lookup where every row's context has an n-gram match of at least ``lookup.min_ngram``
    tokens, else a chain from the drafter (``fallback``): copies where the answer repeats the input,
    the model's own guesses elsewhere.

    Needs a drafter that catches up by itself over tokens it did not draft (an EAGLE head,
    :class:`specdec.eagle.HeadDrafter`): a draft model's cache trusts only the step before.
    """

    lookup: PromptLookup = dataclasses.field(default_factory=lambda: PromptLookup(k=8, min_ngram=2))
    fallback: object = None

    def __post_init__(self):
        if not isinstance(self.lookup, PromptLookup):
            raise TypeError(f"LookupOrChain: lookup must be a PromptLookup, got {type(self.lookup).__name__}")
        self.fallback = self.fallback if self.fallback is not None else Chain(4)
        # The fallback drafts with the drafter: a strategy object (a chain such as Chain or
        # DynamicLookahead), not a name or a number, and not another model-free lookup.
        if isinstance(self.fallback, (str, type)) or not getattr(self.fallback, "needs_drafter", False):
            raise TypeError(
                f"LookupOrChain: fallback must be None or a drafting strategy object such as "
                f"Chain(4) or DynamicLookahead('heuristic'), got {self.fallback!r}"
            )
        check_proposer(self.fallback)
        self.max_nodes = max(self.lookup.max_nodes, self.fallback.max_nodes)
        self.max_fed = self.fallback.max_fed
        self._from_fallback = False

    def draft_forward_sizes(self) -> list[int]:
        return self.fallback.draft_forward_sizes()

    def start(self, batch: int, device) -> None:
        self.fallback.start(batch, device)

    def select(self, rows: torch.Tensor) -> None:
        self.fallback.select(rows)

    def propose(self, ctx: DraftContext) -> DraftTree:
        if not getattr(ctx.drafter, "catches_up", False):
            raise ValueError(
                "LookupOrChain needs an EAGLE head as the drafter (its cache catches up over "
                "prompt-lookup steps; a draft model's does not)"
            )
        history = ctx.history()
        self._from_fallback = not all(self.lookup.continuations(h) for h in history)
        if self._from_fallback:
            return self.fallback.propose(ctx)
        return self.lookup.propose(dataclasses.replace(ctx, history=lambda: history))

    def observe(self, tree: DraftTree, result) -> None:
        if self._from_fallback:
            self.fallback.observe(tree, result)
