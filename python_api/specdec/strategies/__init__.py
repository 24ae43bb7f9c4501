"""Drafting strategies and their names: the one registry that ``generate``, the CLI, the benchmarks and
the cost model read.

- :mod:`specdec.strategies.chains`: :class:`Chain` (static lookahead), :class:`DynamicLookahead`
  (transformers' heuristic schedule, a confidence threshold, DISCO);
- :mod:`specdec.strategies.trees`: :class:`StaticTree` (Medusa / Sequoia shapes), :class:`DynamicTree`
  (EAGLE-2, DySpec, Dynamic Depth Decoding), and :class:`Growth` to build new tree strategies;
- :mod:`specdec.strategies.lookup`: :class:`PromptLookup` (no draft model) and :class:`LookupOrChain`.

Every strategy is a :class:`specdec.proposer.Proposer`. A name is either plain (``"eagle2"``) or sized,
``method:size[:more]``::

    chain:k                         a k-token chain
    gate:k_max[:threshold]          a chain of the drafts whose top probability is >= threshold (0.5)
    eagle2:budget[:top_k:depth]     EAGLE-2 (ddd:... the same with a dynamic depth)
    dyspec:budget                   DySpec
    lookup:k[:branches[:search[:min_ngram]]]   prompt lookup, no draft model
    hybrid:k                        prompt lookup where the context matches, else a k-token chain
"""

from __future__ import annotations

from specdec.proposer import Proposer, check_proposer
from specdec.strategies.chains import Chain, ChainStrategy, DynamicLookahead
from specdec.strategies.lookup import LookupOrChain, PromptLookup
from specdec.strategies.trees import DEFAULT_STATIC_PATHS, DynamicTree, Growth, StaticTree, TreeStrategy

NAMES = {  # plain names -> the strategy they make (a new object per call: strategies keep per-row state)
    "chain": lambda: Chain(4),
    "disco": lambda: DynamicLookahead("disco"),
    "heuristic": lambda: DynamicLookahead("heuristic"),
    "confidence": lambda: DynamicLookahead("confidence"),
    "gate": lambda: DynamicLookahead("gate", k_max=6),
    "static-tree": lambda: StaticTree("wide16"),
    "eagle2": lambda: DynamicTree("eagle2"),
    "dyspec": lambda: DynamicTree("dyspec"),
    "ddd": lambda: DynamicTree("ddd"),
    "lookup": lambda: PromptLookup(k=8),
    "hybrid": lambda: LookupOrChain(),
}
SIZED = ("chain", "gate", "eagle2", "ddd", "dyspec", "lookup", "hybrid")


def beam_tree(method: str, budget: int) -> DynamicTree:
    """EAGLE-2 / DDD with ``budget`` nodes, the beam scaled with the budget (a quarter of it, 2 to 8 wide)
    and 8 rounds deep: the shapes the cost model and the benchmarks compare."""
    return DynamicTree(method, budget=budget, top_k=min(8, max(2, budget // 4)), depth=8)


def dyspec_tree(budget: int) -> DynamicTree:
    """DySpec with ``budget`` nodes, a quarter of them (at least 4) popped per draft forward."""
    return DynamicTree("dyspec", budget=budget, width=max(4, budget // 4))


def from_name(name: str) -> Proposer:
    """A new strategy from a plain or sized name (see the module docstring); ValueError for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"strategy name must be a str, got {type(name).__name__}")
    if ":" not in name:
        if name in NAMES:
            return NAMES[name]()
        raise ValueError(f"strategy: unknown name {name!r}; known: {sorted(NAMES)} (sized: {', '.join(SIZED)})")
    method, size, *shape = name.split(":")
    if method not in SIZED:
        raise ValueError(f"strategy {name!r}: {method!r} takes no size; sized names: {', '.join(SIZED)}")
    try:
        size = int(size)
        if method in ("eagle2", "ddd"):
            if shape:  # method:budget:top_k:depth
                return DynamicTree(method, budget=size, top_k=int(shape[0]), depth=int(shape[1]))
            return beam_tree(method, size)
        if method == "chain":
            return Chain(size)
        if method == "gate":
            return DynamicLookahead("gate", k_max=size, threshold=float(shape[0]) if shape else None)
        if method == "dyspec":
            return dyspec_tree(size)
        if method == "hybrid":
            return LookupOrChain(fallback=Chain(size))
        return PromptLookup(
            k=size,
            branches=int(shape[0]) if shape else 1,
            search=shape[1] if len(shape) > 1 else "first",
            min_ngram=int(shape[2]) if len(shape) > 2 else 1,
        )
    except (IndexError, ValueError) as e:
        raise ValueError(f"strategy {name!r}: {e}") from None


def resolve_strategy(strategy) -> Proposer:
    """A strategy object from a name or an object; a clear error for anything else."""
    if isinstance(strategy, str):
        return from_name(strategy)
    if isinstance(strategy, type):  # a class has the members but cannot run
        raise TypeError(
            f"strategy must be a strategy object, not the class {strategy.__name__}: "
            f"pass an instance such as {strategy.__name__}(...)"
        )
    check_proposer(strategy)
    return strategy


__all__ = [
    "NAMES",
    "SIZED",
    "Chain",
    "ChainStrategy",
    "DynamicLookahead",
    "StaticTree",
    "DynamicTree",
    "TreeStrategy",
    "Growth",
    "DEFAULT_STATIC_PATHS",
    "PromptLookup",
    "LookupOrChain",
    "beam_tree",
    "dyspec_tree",
    "from_name",
    "resolve_strategy",
]
