"""docs/strategies.md runs as written: its code blocks define a chain and a tree strategy from the
contract alone (specdec.Proposer), and both decode exactly. Also the contract's refusals: a class missing
a member, and a proposal wider than the strategy's own max_nodes."""

import re
from pathlib import Path

import pytest
import torch
from test_generate import plain_greedy, tiny_model

import specdec

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


@pytest.fixture(scope="module")
def doc():
    """The page's python blocks, run in order in one namespace (the last one decodes with the bundled pair)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3, "docs/strategies.md: expected the chain, the tree and the run example"
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)
    return ns


@pytest.mark.parametrize("make", [lambda ns: ns["FixedChain"](3), lambda ns: ns["TwoBranches"](2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_doc_strategies_decode_exactly(doc, make, batch):
    """Greedy output of each documented strategy equals the target's own greedy decoding, ragged batch
    included; the drafts are used (some step accepts more than the bonus token)."""
    target = tiny_model("llama", 2, 64, seed=0)
    draft = tiny_model("llama", 2, 64, seed=0)  # the target's twin: greedy drafts are accepted
    ids = torch.randint(1, 97, (batch, 9), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(ids)
    mask[1:, :3] = 0  # left padding: rows of different lengths
    strategy = make(doc)
    out = specdec.generate(target, draft, ids, attention_mask=mask, max_new_tokens=20, strategy=strategy)
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 20))
    assert out.stats["tau"] > 1.0
    sampled = specdec.generate(
        target, draft, ids, attention_mask=mask, max_new_tokens=8, strategy=strategy, seed=0, temperature=0.8
    )
    assert sampled.sequences.shape[0] == batch


def test_a_strategy_missing_a_member_is_refused_by_name():
    class NoObserve:
        max_nodes, max_fed, needs_drafter = 4, 2, True

        def start(self, batch, device): ...

        def propose(self, ctx): ...

        def select(self, rows): ...

    target = tiny_model("llama", 1, 16, seed=0)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="NoObserve.*observe"):
        specdec.generate(target, target, ids, strategy=NoObserve())


def test_a_proposal_wider_than_max_nodes_is_refused(doc):
    chain = doc["FixedChain"](3)
    chain.max_nodes = 2  # claims at most 1 draft, proposes 3
    target = tiny_model("llama", 1, 16, seed=0)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="FixedChain: proposed 4 nodes, more than its max_nodes = 2"):
        specdec.generate(target, target, ids, strategy=chain, max_new_tokens=6)
