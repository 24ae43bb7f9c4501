"""The cost model: latency tables, acceptance-derived tau, and strategy='auto'."""
import torch

import specdec
import specdec.tune as tune
from test_generate import plain_greedy, tiny_model


def test_identical_draft_predicts_full_acceptance_and_ranks_longer_chains_higher_tau():
    target = tiny_model("llama", 2, 64, seed=0)
    ids = [torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(0))]
    cands = {f"chain:{k}": specdec.Chain(k) for k in (1, 2, 4)}
    preds = {p.name: p for p in tune.predict(target, target, ids, cands, k_max=4, max_new_tokens=16)}
    for k in (1, 2, 4):
        # with the target as its own draft every draft is accepted: tau(k) = k + 1 exactly
        assert abs(preds[f"chain:{k}"].tau - (k + 1)) < 1e-6
        assert preds[f"chain:{k}"].step_s > 0


def test_latency_table_and_interpolation():
    model = tiny_model("llama", 1, 32, seed=1)
    lat = tune.measure_latency(model, tokens=(1, 4, 16), prefix=8, reps=2)
    assert set(lat) == {1, 4, 16} and all(v > 0 for v in lat.values())
    assert tune._interp({1: 1.0, 4: 4.0}, 2) == 2.0
    assert tune._interp({1: 1.0, 4: 4.0}, 8) == 8.0  # linear beyond the last measured point


def test_auto_strategy_keeps_greedy_exact():
    target, draft = tiny_model("llama", 2, 64, seed=0), tiny_model("llama", 1, 32, seed=1)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    out = specdec.generate(target, draft, ids, max_new_tokens=12, strategy="auto")
    assert torch.equal(out.sequences, plain_greedy(target, ids, torch.ones_like(ids), 12))
