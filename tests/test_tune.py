"""The cost model: latency tables, acceptance-derived tau, and strategy='auto'."""

import torch
from test_generate import plain_greedy, tiny_model

import specdec
import specdec.tune as tune


def test_identical_draft_predicts_full_acceptance_and_ranks_longer_chains_higher_tau():
    target = tiny_model("llama", 2, 64, seed=0)
    ids = [torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(0))]
    cands = {f"chain:{k}": specdec.Chain(k) for k in (1, 2, 4)}
    preds = {p.name: p for p in tune.predict(target, target, ids, cands, k_max=4, max_new_tokens=16)}
    for k in (1, 2, 4):
        # with the target as its own draft every draft is accepted: tau(k) = k + 1 exactly
        assert abs(preds[f"chain:{k}"].tau - (k + 1)) < 1e-6
        assert preds[f"chain:{k}"].step_s > 0


def test_dynamic_lookahead_and_prompt_lookup_are_predicted_from_their_runs():
    """Identical draft: the heuristic schedule accepts everything, so every step verifies its whole
    chain (tau = rounds + 1). Prompt lookup needs no draft model; its predicted tau is the tau of the
    same run on the same prompts, and its step time has no draft forwards."""
    import pytest

    target = tiny_model("llama", 2, 64, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 7, (1, 24), generator=g)]  # few distinct tokens: n-gram matches exist
    heur = specdec.DynamicLookahead("heuristic", k=2, k_max=6)
    pred = tune.predict(target, target, ids, {"heuristic": heur}, max_new_tokens=24)[0]
    assert pred.tau > 3 and pred.step_s > 0

    lookup = specdec.PromptLookup(k=4)
    pred = tune.predict(target, None, ids, {"lookup:4": lookup}, max_new_tokens=24)[0]
    out = specdec.generate(target, None, ids[0], max_new_tokens=24, strategy=specdec.PromptLookup(k=4))
    assert abs(pred.tau - (out.stats["new_tokens"] - 1) / out.stats["steps"]) < 1e-9
    assert tune.draft_forward_sizes(lookup) == []
    with pytest.raises(ValueError, match="needs a draft model"):
        tune.predict(target, None, ids, {"chain:2": specdec.Chain(2)})


def test_latency_table_and_interpolation():
    model = tiny_model("llama", 1, 32, seed=1)
    lat = tune.measure_latency(model, tokens=(1, 4, 16), prefix=8, reps=2)
    assert set(lat) == {1, 4, 16} and all(v > 0 for v in lat.values())
    assert tune.interpolate({1: 1.0, 4: 4.0}, 2) == 2.0
    assert tune.interpolate({1: 1.0, 4: 4.0}, 8) == 8.0  # linear beyond the last measured point


def test_auto_strategy_keeps_greedy_exact():
    target, draft = tiny_model("llama", 2, 64, seed=0), tiny_model("llama", 1, 32, seed=1)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    out = specdec.generate(target, draft, ids, max_new_tokens=12, strategy="auto")
    assert torch.equal(out.sequences, plain_greedy(target, ids, torch.ones_like(ids), 12))


def test_auto_considers_prompt_lookup_and_runs_without_a_draft():
    """ "auto" compares prompt lookup with the drafting strategies, and without a draft model it picks
    among the model-free candidates alone (it used to refuse); greedy output stays exact."""
    with_draft, without = tune.default_candidates(True), tune.default_candidates(False)
    assert any(not s.needs_drafter for s in with_draft.values()) and any(s.needs_drafter for s in with_draft.values())
    assert without and all(not s.needs_drafter for s in without.values())
    target = tiny_model("llama", 2, 64, seed=0)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3)).repeat(1, 3)  # repeats: matches
    out = specdec.generate(target, None, ids, max_new_tokens=12, strategy="auto")
    assert torch.equal(out.sequences, plain_greedy(target, ids, torch.ones_like(ids), 12))


def test_sequoia_tree_is_the_best_first_set_of_paths():
    from itertools import product

    from specdec import StaticTree

    rates = [0.6, 0.2, 0.1]
    tree = StaticTree.sequoia(rates, size=6, max_depth=4)
    paths = tree._paths
    assert len(paths) == 6 and all(len(p) <= 4 for p in paths)

    def value(ps):
        total = 0.0
        for p in ps:
            v = 1.0
            for r in p:
                v *= rates[r]
            total += v
        return total

    # brute force over every ancestor-closed set of 6 paths from depth <= 4, ranks < 3
    cand = [p for d in range(1, 5) for p in product(range(3), repeat=d)]
    best = sorted(cand, key=lambda p: -value([p]))[:6]
    assert abs(value(paths) - value(best)) < 1e-12
    assert abs(tree.expected_accepted - value(paths)) < 1e-12
    # every prefix of a kept path is kept: a valid static tree
    assert all(p[:i] in set(paths) for p in paths for i in range(1, len(p)))


def test_measure_rank_acceptance_of_identical_draft_is_rank0():
    target = tiny_model("llama", 1, 32, seed=3)
    ids = [torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(1))]
    rates = tune.measure_rank_acceptance(target, target, ids, max_new_tokens=12, ranks=4)
    assert rates[0] == 1.0 and sum(rates[1:]) == 0.0


def test_auto_choice_is_cached_per_live_model_pair(monkeypatch):
    import gc
    import types

    calls = []

    def fake_predict(target, draft, sample_ids, candidates):
        calls.append(draft is None)  # (no model kept alive here)
        return [types.SimpleNamespace(strategy=f"choice {len(calls)}")]

    monkeypatch.setattr(tune, "predict", fake_predict)
    a, b, d = tiny_model("llama", 1, 16, seed=0), tiny_model("llama", 1, 16, seed=1), tiny_model("llama", 1, 8, seed=2)
    assert tune.auto_strategy(a, d, []) == tune.auto_strategy(a, d, []) == "choice 1"  # cached
    assert tune.auto_strategy(a, None, []) == "choice 2"  # model-free drafting is its own entry
    assert tune.auto_strategy(b, d, []) == "choice 3"  # another target, same draft
    assert len(calls) == 3
    del a
    gc.collect()
    assert len(tune._AUTO_CACHE) == 1  # the entries went with their target
