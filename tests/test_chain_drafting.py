"""Chain policies decide their length from the drafter's confidence: a scripted drafter whose top
probability per row and draft position is set, so each policy's chain lengths are known exactly."""

import pytest
import torch

import specdec
from specdec import DynamicLookahead
from specdec.proposer import DraftContext, Rows

VOCAB = 8


class ScriptedDrafter:
    """Drafts token j at position j with top probability ``tops[b][j-1]`` (the rest spread evenly)."""

    def __init__(self, tops: list[list[float]]):
        self.tops, self.step = torch.tensor(tops), 0

    def _logits(self) -> torch.Tensor:
        top = self.tops[:, self.step]
        probs = ((1 - top) / (VOCAB - 1))[:, None].expand(-1, VOCAB).clone()
        probs[:, 1 + self.step % (VOCAB - 1)] = top
        self.step += 1
        return probs.log()

    def begin(self, rows):
        return self._logits()

    def forward(self, tokens, positions, mask, start):
        return self._logits()[:, None]


def propose(strategy, tops, limit=64, temperature=0.0):
    B = len(tops)
    zeros = torch.zeros(B, dtype=torch.long)
    rows = Rows(torch.arange(B), zeros, zeros, torch.full((B,), 5))
    strategy.start(B, "cpu")
    ctx = DraftContext(
        rows, ScriptedDrafter(tops), temperature, torch.Generator().manual_seed(0), torch.full((B,), limit), list
    )
    return strategy.propose(ctx)


SURE, UNSURE = 0.9, 0.2
TOPS = [[SURE, SURE, UNSURE, SURE, SURE, SURE], [UNSURE, SURE, SURE, SURE, SURE, SURE]]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_confidence_verifies_the_draft_that_stopped_it_and_gate_drops_it(temperature):
    conf = propose(DynamicLookahead("confidence", k_max=5, threshold=0.5), TOPS, temperature=temperature)
    assert conf.lens.tolist() == [3, 1] and conf.tokens.shape == (2, 4)
    gate = propose(DynamicLookahead("gate", k_max=5, threshold=0.5), TOPS, temperature=temperature)
    assert gate.lens.tolist() == [2, 0]
    assert gate.tokens.shape == (2, 3)  # as wide as the longest kept chain, not the longest drafted
    assert gate.parents.tolist() == [[-1, 0, 1]] * 2
    if temperature > 0:
        assert gate.draft_probs.shape == (2, 2, VOCAB)


def test_gate_unsure_of_every_first_draft_proposes_the_root_alone():
    tree = propose(DynamicLookahead("gate", k_max=5, threshold=0.5), [[UNSURE] * 6, [UNSURE] * 6])
    assert tree.lens.tolist() == [0, 0] and tree.tokens.shape == (2, 1) and tree.parents.tolist() == [[-1]] * 2


def test_gate_never_drafts_past_k_max_or_the_token_limit():
    sure = [[SURE] * 6] * 2
    assert propose(DynamicLookahead("gate", k_max=4, threshold=0.5), sure).lens.tolist() == [4, 4]
    assert propose(DynamicLookahead("gate", k_max=4, threshold=0.5), sure, limit=2).tokens.shape == (2, 3)


def test_gate_by_name():
    s = specdec.strategies.from_name("gate:5:0.3")
    assert (s.policy, s.k_max, s.threshold) == ("gate", 5, 0.3)
    assert specdec.strategies.from_name("gate").policy == "gate"
