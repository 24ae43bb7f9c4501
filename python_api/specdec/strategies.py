"""How many tokens to draft: static chains and dynamic lookahead policies.

A chain strategy answers three questions per step, per sequence: the most drafts to try
(``budget``), whether to keep drafting after each draft token (``keep_going``, from the draft's own
distribution), and how to adapt after verification (``observe``). Batch rows keep their own state.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets"


@dataclasses.dataclass
class Chain:
    """Static lookahead: draft ``k`` tokens every step."""

    k: int = 4

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"Chain: k must be an int >= 1, got {self.k!r}")

    def start(self, batch: int, device) -> None:
        pass

    def budget(self) -> torch.Tensor | int:
        return self.k

    def keep_going(self, step: int, draft_probs: torch.Tensor) -> torch.Tensor | None:
        return None  # never stops early

    def observe(self, drafted: torch.Tensor, accepted: torch.Tensor) -> None:
        pass

    def select(self, rows: torch.Tensor) -> None:
        pass


def draft_features(step: int, probs: torch.Tensor) -> torch.Tensor:
    """Features DISCO decides on, from the draft's distribution for the token just drafted.

    probs: [B, V] -> [B, 6]: top-1, top-2, top-3 probabilities, entropy (nats), draft index in this
    step (1-based, scaled by 1/8), and a constant 1 (bias).
    """
    top = probs.topk(3, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1, keepdim=True)
    idx = torch.full_like(entropy, step / 8.0)
    return torch.cat([top, entropy, idx, torch.ones_like(entropy)], dim=-1)


@dataclasses.dataclass
class DynamicLookahead:
    """Per-sequence lookahead that changes during generation.

    policy:
      ``"heuristic"``  transformers' assisted-generation schedule: k += 2 after a step whose drafts were
                       all accepted, k -= 1 (not below 1) otherwise; starts at ``k``.
      ``"confidence"`` draft until the draft's top probability falls below ``threshold`` (at most k_max).
      ``"disco"``      DISCO (Mamou et al., 2024): after each draft token a classifier over draft features
                       predicts whether to continue; trained on traces of the bundled pair
                       (bench/train_disco.py), weights in specdec/assets/disco.json.
    """

    policy: str = "disco"
    k: int = 4
    k_max: int = 12
    threshold: float = 0.5
    weights: list[float] | None = None

    def __post_init__(self):
        if self.policy not in ("heuristic", "confidence", "disco"):
            raise ValueError(f"DynamicLookahead: policy must be 'heuristic', 'confidence' or 'disco', got {self.policy!r}")
        if self.k < 1 or self.k_max < self.k:
            raise ValueError(f"DynamicLookahead: need 1 <= k <= k_max, got k={self.k}, k_max={self.k_max}")
        if self.policy == "disco" and self.weights is None:
            path = ASSETS / "disco.json"
            if not path.exists():
                raise FileNotFoundError(f"DISCO weights not found at {path}; train them with bench/train_disco.py")
            saved = json.loads(path.read_text())
            self.weights, self.threshold = saved["weights"], saved.get("threshold", self.threshold)
            self.k_max = saved.get("k_max", self.k_max)
        self._k: torch.Tensor | None = None

    def start(self, batch: int, device) -> None:
        self._k = torch.full((batch,), self.k, dtype=torch.int64, device=device)

    def budget(self) -> torch.Tensor | int:
        return self._k if self.policy == "heuristic" else self.k_max

    def keep_going(self, step: int, draft_probs: torch.Tensor) -> torch.Tensor | None:
        if self.policy == "heuristic":
            return None
        if self.policy == "confidence":
            return draft_probs.max(-1).values >= self.threshold
        w = torch.tensor(self.weights, dtype=draft_probs.dtype, device=draft_probs.device)
        logit = draft_features(step, draft_probs) @ w
        return torch.sigmoid(logit) >= self.threshold

    def observe(self, drafted: torch.Tensor, accepted: torch.Tensor) -> None:
        if self.policy == "heuristic":
            self._k = torch.where(accepted >= drafted, self._k + 2, (self._k - 1).clamp(min=1)).clamp(max=self.k_max)

    def select(self, rows: torch.Tensor) -> None:
        if self._k is not None:
            self._k = self._k.index_select(0, rows)


CHAIN_NAMES = {
    "chain": lambda: Chain(4),
    "disco": lambda: DynamicLookahead("disco"),
    "heuristic": lambda: DynamicLookahead("heuristic"),
    "confidence": lambda: DynamicLookahead("confidence"),
}


def _tree_names():
    from specdec.prompt_lookup import PromptLookup
    from specdec.tree_drafting import DynamicTree, StaticTree

    return {
        "lookup": lambda: PromptLookup(k=8),
        "static-tree": lambda: StaticTree("wide16"),
        "eagle2": lambda: DynamicTree("eagle2"),
        "dyspec": lambda: DynamicTree("dyspec"),
        "ddd": lambda: DynamicTree("ddd"),
    }


def resolve_strategy(strategy):
    """A strategy object from a name or an object; clear error for anything else."""
    if isinstance(strategy, str):
        names = {**CHAIN_NAMES, **_tree_names()}
        if strategy in names:
            return names[strategy]()
        raise ValueError(f"strategy: unknown name {strategy!r}; known: {sorted(names)}")
    if isinstance(strategy, (Chain, DynamicLookahead)) or hasattr(strategy, "draft_tree"):
        return strategy
    raise TypeError(f"strategy must be a name or a specdec strategy object, got {type(strategy).__name__}")


