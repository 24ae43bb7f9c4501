"""Chains: static lookahead (:class:`Chain`) and dynamic lookahead policies (:class:`DynamicLookahead`).

A chain strategy answers three questions per step, per sequence: the most drafts to try (``budget``),
whether to keep drafting after each draft token (``keep_going``, from the draft's own distribution),
and how to adapt after verification (``update``). Batch rows keep their own state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import ClassVar

import torch

from specdec.proposer import MAX_TREE_NODES, DraftContext, DraftTree, Proposer, choose
from specdec.runner import chain_mask
from specdec.validation import check_int, check_real

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# DISCO's draft-index feature is the 1-based index scaled into about [0, 1] over a typical lookahead
DRAFT_INDEX_SCALE = 8.0


class ChainStrategy(Proposer):
    """Drafts one chain per row; subclasses say how long (``k_cap``, ``budget``, ``keep_going``,
    ``update``)."""

    needs_drafter = True
    verifies_stop = True  # a draft after which keep_going said stop is still verified

    @property
    def max_nodes(self) -> int:
        return self.k_cap + 1

    @property
    def max_fed(self) -> int:
        return 2

    def draft_forward_sizes(self) -> list[int]:
        return [2] + [1] * (self.k_cap - 1)

    def propose(self, ctx: DraftContext) -> DraftTree:
        """Draft up to ``budget`` tokens per row, one drafter forward per token after the root's."""
        rows, drafter, temperature = ctx.rows, ctx.drafter, ctx.temperature
        budget = self.budget()
        lens = (budget if isinstance(budget, torch.Tensor) else torch.full_like(rows.ctx, budget)).clamp(max=self.k_cap)
        k = max(1, min(int(lens.max()), int(ctx.limit.max())))
        alive = torch.ones_like(lens, dtype=torch.bool)
        tokens, probs = [], []
        logits = drafter.begin(rows)
        for j in range(1, k + 1):
            d, q = choose(logits, temperature, ctx.gen)
            tokens.append(d)
            probs.append(q)
            go = self.keep_going(j, q if q is not None else torch.softmax(logits, -1))
            if go is not None:
                # the draft that said stop is verified too, unless the policy drops drafts it is unsure of
                stop = j if self.verifies_stop else j - 1
                lens = torch.where(alive & ~go, torch.full_like(lens, stop), lens)
                alive &= go
            alive &= lens > j
            if j == k or not bool(alive.any()):
                break
            pos = (rows.ctx - 1 + j)[:, None]
            logits = drafter.forward(d[:, None], pos, chain_mask(1, d.device), rows.ctx - 1 + j)[:, 0]
        drafts = torch.stack(tokens, 1)
        lens = torch.minimum(lens.clamp(max=drafts.shape[1]), ctx.limit.clamp(min=0))  # not past max_new_tokens
        # the target's forward is only as wide as the longest chain kept: K = 0 is a one-token step
        K = int(lens.max())
        drafts = drafts[:, :K]
        parents = torch.arange(-1, K, device=drafts.device).expand(drafts.shape[0], K + 1)
        return DraftTree(
            torch.cat([rows.root[:, None], drafts], 1),
            parents,
            torch.stack(probs, 1)[:, :K] if temperature > 0 else None,
            None,
            lens=lens,
        )

    def observe(self, tree: DraftTree, result) -> None:
        self.update(tree.lens, result.num_emitted - 1)

    def update(self, drafted: torch.Tensor, accepted: torch.Tensor) -> None:
        """Adapt per row after a step (``drafted`` and ``accepted`` drafts, [B]); stateless by default.
        ``start`` and ``select`` are Proposer's no-ops unless a policy keeps per-row state."""


@dataclasses.dataclass
class Chain(ChainStrategy):
    """Static lookahead: draft ``k`` tokens every step."""

    k: int = 4

    def __post_init__(self):
        # k drafts + the root make the verify forward's tree: at most MAX_TREE_NODES nodes
        self.k = check_int("Chain", "k", self.k, 1, MAX_TREE_NODES - 1)

    @property
    def k_cap(self) -> int:
        return self.k

    def budget(self) -> torch.Tensor | int:
        return self.k

    def keep_going(self, step: int, draft_probs: torch.Tensor) -> torch.Tensor | None:
        return None  # never stops early


def heuristic_lookahead(k, drafted, accepted, k_max: int):
    """transformers' assisted-generation schedule: the next lookahead is ``k + 2`` after a step whose
    drafts were all accepted, else ``k - 1`` (not below 1), at most ``k_max``. Ints or [B] tensors."""
    if isinstance(k, torch.Tensor):
        return torch.where(accepted >= drafted, k + 2, (k - 1).clamp(min=1)).clamp(max=k_max)
    return min(k + 2, k_max) if accepted >= drafted else max(k - 1, 1)


_NUM_FEATURES = 6  # columns of draft_features: the length of DISCO's weight vector


def draft_features(step: int, probs: torch.Tensor) -> torch.Tensor:
    """Features DISCO decides on, from the draft's distribution for the token just drafted.

    probs: [B, V] -> [B, 6]: top-1, top-2, top-3 probabilities, entropy (nats), draft index in this
    step (1-based, divided by DRAFT_INDEX_SCALE), and a constant 1 (bias).
    """
    top = probs.topk(3, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1, keepdim=True)
    idx = torch.full_like(entropy, step / DRAFT_INDEX_SCALE)
    return torch.cat([top, entropy, idx, torch.ones_like(entropy)], dim=-1)


@dataclasses.dataclass
class DynamicLookahead(ChainStrategy):
    """Per-sequence lookahead that changes during generation.

    policy:
      ``"heuristic"``  transformers' assisted-generation schedule: k += 2 after a step whose drafts were
                       all accepted, k -= 1 (not below 1) otherwise; starts at ``k``.
      ``"confidence"`` draft until the draft's top probability falls below ``threshold`` (at most k_max).
      ``"gate"``       the same, but the draft below ``threshold`` is not verified: only the drafts the
                       drafter is sure of are. When it is unsure of the first, the step runs the target
                       on its own token alone (a one-token step, no verify width paid for a likely miss).
      ``"disco"``      DISCO (Mamou et al., 2024): after each draft token a classifier over draft features
                       predicts whether to continue; trained on traces of the bundled pair
                       (bench/train_disco.py), weights in specdec/assets/disco.json.

    Defaults: ``k`` 4 (at most ``k_max``), ``k_max`` 12, ``threshold`` 0.5; ``"disco"`` without ``weights``
    takes the trained weights and, unless passed, their ``threshold`` and ``k_max`` from the file.
    """

    # None = not passed: the defaults below, or for "disco" without explicit weights the trained file's
    # threshold and k_max. A value the caller passed is never replaced.
    policy: str = "disco"
    k: int | None = None
    k_max: int | None = None
    threshold: float | None = None
    weights: list[float] | None = None

    DEFAULT_K: ClassVar[int] = 4
    DEFAULT_K_MAX: ClassVar[int] = 12
    DEFAULT_THRESHOLD: ClassVar[float] = 0.5

    def __post_init__(self):
        if self.policy not in ("heuristic", "confidence", "gate", "disco"):
            raise ValueError(
                f"DynamicLookahead: policy must be 'heuristic', 'confidence', 'gate' or 'disco', got {self.policy!r}"
            )
        self.verifies_stop = self.policy != "gate"
        if self.policy == "disco" and self.weights is None:
            self._load_disco()
        if self.weights is not None:
            self.weights = _check_weights(self.weights)
        if self.threshold is None:
            self.threshold = self.DEFAULT_THRESHOLD
        self.threshold = check_real(
            "DynamicLookahead", "threshold", self.threshold, 0.0, 1.0, "a float in [0, 1] (a probability)"
        )
        if self.k_max is None:
            self.k_max = self.DEFAULT_K_MAX
        self.k_max = check_int("DynamicLookahead", "k_max", self.k_max, 1, MAX_TREE_NODES - 1)
        if self.k is None:  # the default start never exceeds a k_max the caller chose smaller
            self.k = min(self.DEFAULT_K, self.k_max)
        self.k = check_int("DynamicLookahead", "k", self.k, 1, self.k_max, "k_max")
        self._k: torch.Tensor | None = None

    def _load_disco(self) -> None:
        """The trained weights, and the threshold / k_max they were tuned with where not passed."""
        path = ASSETS / "disco.json"
        if not path.exists():
            raise FileNotFoundError(f"DISCO weights not found at {path}; train them with bench/train_disco.py")
        saved = json.loads(path.read_text())
        self.weights = saved["weights"]
        if self.threshold is None:
            self.threshold = saved.get("threshold", self.DEFAULT_THRESHOLD)
        if self.k_max is None:
            self.k_max = saved.get("k_max", self.DEFAULT_K_MAX)

    @property
    def k_cap(self) -> int:
        return self.k_max

    def start(self, batch: int, device) -> None:
        self._k = torch.full((batch,), self.k, dtype=torch.int64, device=device)

    def budget(self) -> torch.Tensor | int:
        return self._k if self.policy == "heuristic" else self.k_max

    def keep_going(self, step: int, draft_probs: torch.Tensor) -> torch.Tensor | None:
        if self.policy == "heuristic":
            return None
        if self.policy in ("confidence", "gate"):
            return draft_probs.max(-1).values >= self.threshold
        w = torch.tensor(self.weights, dtype=draft_probs.dtype, device=draft_probs.device)
        logit = draft_features(step, draft_probs) @ w
        return torch.sigmoid(logit) >= self.threshold

    def update(self, drafted: torch.Tensor, accepted: torch.Tensor) -> None:
        if self.policy == "heuristic":
            self._k = heuristic_lookahead(self._k, drafted, accepted, self.k_max)

    def select(self, rows: torch.Tensor) -> None:
        if self._k is not None:
            self._k = self._k.index_select(0, rows)


def _check_weights(weights) -> list[float]:
    """DISCO classifier weights: one finite float per feature of :func:`draft_features`."""
    rule = f"a list of {_NUM_FEATURES} finite floats (one per draft feature)"
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (list, tuple)) or len(weights) != _NUM_FEATURES:
        raise ValueError(f"DynamicLookahead: weights must be {rule}, got {weights!r}")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise ValueError(f"DynamicLookahead: weights must be {rule}, got weights[{i}] = {w!r}")
    return [float(w) for w in weights]
