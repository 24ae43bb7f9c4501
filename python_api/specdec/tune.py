"""Cost model: pick the lookahead or tree size that maximises throughput on this machine.

Following "Decoding Speculative Decoding" (Yan et al., 2024): throughput is tokens per step over time
per step, and both factors are measured separately instead of guessed:

- latency: the target's and the draft's forward time as a function of tokens per call (tree
  attention over a prefix), measured here (:func:`measure_latency`);
- acceptance: tokens per target call (tau) on a few sample prompts. For chains one greedy run with
  k_max drafts gives tau(k) = 1 + E[min(A, k)] for every k <= k_max (greedy drafts do not depend on k);
  for trees, dynamic lookahead and prompt lookup, tau -- and, where they vary per step, the draft
  rounds and the verify width -- are measured per configuration on the same sample prompts.

A step's predicted time is the sum of the forwards it makes (draft rounds + one target forward over
the tree) plus a per-step overhead measured once per family (from the chain calibration run for chains).
Prompt lookup makes no draft forwards: its step is the target forward plus the n-gram search (overhead).
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from specdec.decoder import decode
from specdec.eagle import EagleHead, time_head_forwards
from specdec.runner import time_forwards
from specdec.strategies import Chain, from_name

TOKENS_PER_CALL = (1, 2, 4, 8, 16, 32, 64, 128)
AUTO_SAMPLE_TOKENS = 64  # strategy="auto" calibrates on the last this many tokens of the first prompt


def measure_latency(model, tokens=TOKENS_PER_CALL, prefix: int = 128, reps: int = 7) -> dict[int, float]:
    """Median seconds of one forward over n tree tokens (chain mask) after a prefix, for each n, through
    the loop's own runner (so with its CPU padding of slow widths); an EAGLE head through its drafter."""
    if isinstance(model, EagleHead):
        return time_head_forwards(model, tokens, prefix=prefix, reps=reps)
    return time_forwards(model, tokens, prefix=prefix, reps=reps)


@torch.inference_mode()
def measure_rank_acceptance(
    target, draft, sample_ids: list[torch.Tensor], max_new_tokens: int = 64, ranks: int = 8
) -> list[float]:
    """P(the target's greedy token is the draft's rank-r token), r < ranks, along target continuations.

    The per-rank acceptance rates Sequoia's tree builder takes (:meth:`StaticTree.sequoia`).
    """
    if isinstance(draft, EagleHead):
        raise TypeError(
            "measure_rank_acceptance needs a draft model: an EAGLE head drafts from the target's "
            "features inside specdec.generate only"
        )
    counts = torch.zeros(ranks)
    total = 0
    for ids in sample_ids:
        seq = target.generate(
            ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
        )
        logits = draft(seq).logits[0, ids.shape[1] - 1 : -1]  # draft's prediction of each new token
        truth = seq[0, ids.shape[1] :]
        rank = (logits > logits.gather(1, truth[:, None])).sum(1)
        counts += torch.bincount(rank.clamp(max=ranks), minlength=ranks + 1)[:ranks].float()
        total += truth.numel()
    return (counts / max(total, 1)).tolist()


def interpolate(table: dict[int, float], n: int) -> float:
    """Latency at n tokens, linear between measured points (and beyond the last one)."""
    keys = sorted(table)
    lo = max([k for k in keys if k <= n], default=keys[0])
    hi = min([k for k in keys if k >= n], default=keys[-1])
    if hi == lo:
        if n > keys[-1]:
            a, b = keys[-2], keys[-1]
            return table[b] + (table[b] - table[a]) / (b - a) * (n - b)
        return table[lo]
    return table[lo] + (table[hi] - table[lo]) * (n - lo) / (hi - lo)


def draft_forward_sizes(strategy) -> list[int]:
    """Tokens per draft forward of one step (the strategy's own account, see specdec.strategies.Proposer)."""
    return strategy.draft_forward_sizes()


def verify_size(strategy) -> int:
    """Tokens of the target's verify forward (the widest one, for strategies whose width varies)."""
    return strategy.max_nodes


@dataclasses.dataclass
class Prediction:
    name: str
    strategy: object
    tau: float
    step_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tau / self.step_s


def _calibrate(target, draft, ids_list, strategy, max_new_tokens) -> dict:
    """Run a strategy on the sample prompts: tau, seconds per step, draft forwards per step."""
    emitted = steps = wall = draft_calls = verify_tokens = 0
    for ids in ids_list:
        out = decode(
            target, draft if strategy.needs_drafter else None, ids, strategy=strategy, max_new_tokens=max_new_tokens
        )
        s = out.stats
        emitted += s["new_tokens"] - 1
        steps += s["steps"]
        wall += s["wall_s"]
        draft_calls += max(s["draft_calls"] - 1, 0)  # minus the prefill
        verify_tokens += s["verify_tokens"] * s["steps"]
    steps = max(steps, 1)
    return {
        "tau": emitted / steps,
        "step_s": wall / steps,
        "draft_rounds": draft_calls / steps,
        "verify_tokens": verify_tokens / steps,
    }


def _family(strategy) -> str:
    return getattr(strategy, "method", getattr(strategy, "policy", type(strategy).__name__))


def predict(
    target,
    draft,
    sample_ids: list[torch.Tensor],
    candidates: dict[str, object],
    *,
    k_max: int = 8,
    max_new_tokens: int = 64,
) -> list[Prediction]:
    """Predicted tokens/s of each candidate strategy (a name -> strategy mapping), best first.

    Chains: tau(k) from one k_max run's acceptance histogram. Trees, dynamic lookahead and prompt
    lookup: tau, draft rounds per step (DDD's depth, a dynamic lookahead's k) and the mean verify width,
    from a run of each configuration on the sample prompts. Step time: the forwards' latencies from the
    measured tables plus a per-step overhead (Python, verification, compaction, n-gram search) measured
    once per family (chain, static tree, each dynamic method or policy, prompt lookup) on its first
    configuration and reused for its other sizes. ``draft`` may be None when every candidate is
    model-free (prompt lookup).
    """
    lat_t = measure_latency(target)
    lat_d = measure_latency(draft) if draft is not None else None
    overhead: dict[str, float] = {}
    if draft is not None and any(isinstance(s, Chain) for s in candidates.values()):
        hist = torch.zeros(k_max + 1)
        wall = steps = 0.0
        for ids in sample_ids:
            out = decode(target, draft, ids, strategy=Chain(k_max), max_new_tokens=max_new_tokens)
            hist += torch.tensor(out.stats["acceptance_histogram"], dtype=torch.float)
            wall += out.stats["wall_s"]
            steps += out.stats["steps"]
        p_acc = hist / hist.sum()
        overhead["Chain"] = max(wall / max(steps, 1) - _step_model_s(Chain(k_max), lat_t, lat_d), 0.0)
    preds = []
    for name, strategy in candidates.items():
        if draft is None and strategy.needs_drafter:
            raise ValueError(f"candidate {name!r} needs a draft model")
        rounds = width = None
        if isinstance(strategy, Chain) and strategy.k <= k_max:
            tau = 1 + float(sum(p_acc[a] * min(a, strategy.k) for a in range(k_max + 1)))
        else:
            cal = _calibrate(target, draft, sample_ids, strategy, max_new_tokens)
            tau, rounds, width = cal["tau"], cal["draft_rounds"], cal["verify_tokens"]
            overhead.setdefault(
                _family(strategy), max(cal["step_s"] - _step_model_s(strategy, lat_t, lat_d, rounds, width), 0.0)
            )
        step = _step_model_s(strategy, lat_t, lat_d, rounds, width) + overhead[_family(strategy)]
        preds.append(Prediction(name, strategy, tau, step))
    return sorted(preds, key=lambda p: -p.tokens_per_s)


def _step_model_s(strategy, lat_t, lat_d, rounds: float | None = None, width: float | None = None) -> float:
    """Model time of one step: its draft forwards (the first ``rounds`` of them when measured) + the
    target's forward over the tree (``width`` tokens when measured, else the strategy's widest)."""
    times = [interpolate(lat_d, n) for n in draft_forward_sizes(strategy)]
    if rounds is not None and rounds < len(times):  # e.g. DDD stopped early: whole rounds + a fraction
        whole = int(rounds)
        times = times[:whole] + [times[whole] * (rounds - whole)]
    return sum(times) + interpolate(lat_t, width if width is not None else verify_size(strategy))


# What "auto" compares (registry names, specdec.strategies): chains, trees and prompt lookup; without a
# draft model only the model-free ones. Each is a new object per call (strategies keep per-row state).
CANDIDATE_NAMES = (
    *(f"chain:{k}" for k in (1, 2, 3, 4, 6, 8)),
    "static-tree",
    *(f"eagle2:{b}" for b in (16, 32, 64)),
    *(f"dyspec:{b}" for b in (16, 32, 64)),
    "lookup:8",
    "lookup:4",
)


def default_candidates(with_drafter: bool = True) -> dict[str, object]:
    """The candidates "auto" compares, by name: every one with a drafter, the model-free ones without."""
    made = {name: from_name(name) for name in CANDIDATE_NAMES}
    return {name: s for name, s in made.items() if with_drafter or not s.needs_drafter}


def auto_sample(input_ids: torch.Tensor) -> torch.Tensor:
    """The sample "auto" calibrates on: the first prompt's last AUTO_SAMPLE_TOKENS tokens, [1, <=64]."""
    return input_ids[:1, -AUTO_SAMPLE_TOKENS:]


class _NoDraft:
    """The key of model-free drafting in the per-target cache (None cannot be weakly referenced)."""


_NO_DRAFT = _NoDraft()
# target -> {draft (or _NO_DRAFT) -> strategy}, weakly on both sides: an entry goes with its models, and
# a new model can never be served the choice made for a dead one that had the same id()
_AUTO_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def auto_strategy(target, draft, sample_ids: list[torch.Tensor]):
    """The candidate with the best predicted throughput for this pair (cached per model pair), among
    :func:`default_candidates`: chains, trees and prompt lookup, or prompt lookup alone without a draft."""
    per_target = _AUTO_CACHE.setdefault(target, weakref.WeakKeyDictionary())
    key = _NO_DRAFT if draft is None else draft
    if key not in per_target:
        per_target[key] = predict(target, draft, sample_ids, default_candidates(draft is not None))[0].strategy
    return per_target[key]
