"""specdec's vLLM proposer, driven the way vLLM 0.32's model runner calls a ``custom_class`` proposer
(``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)``), without vLLM installed. The run
inside vLLM itself (greedy output identical to vLLM alone) is CI's engine stage: ``make vllm-check``."""

from types import SimpleNamespace

import numpy as np
import pytest

from specdec.integrations.vllm import SpecdecProposer


def _config(k: int):
    return SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=k))


def _batch(histories: list[list[int]], width: int = 64):
    ids = np.zeros((len(histories) + 2, width), dtype=np.int32)  # vLLM's buffers have spare rows
    for i, h in enumerate(histories):
        ids[i, : len(h)] = h
    lens = np.array([len(h) for h in histories] + [0, 0], dtype=np.int32)
    return ids, lens


def test_drafts_continue_the_earliest_ngram_match():
    p = SpecdecProposer(_config(4), k_start=4)
    h = [5, 6, 7, 8, 9, 10, 11, 1, 5, 6, 7, 8, 2, 3, 6, 7]  # last 2-gram (6, 7) first occurs at 1
    ids, lens = _batch([h])
    assert p.propose([[7]], lens, ids) == [[8, 9, 10, 11]]


def test_no_match_and_prefill_rows_get_no_drafts():
    p = SpecdecProposer(_config(4))
    ids, lens = _batch([[1, 2, 3, 4, 5], [9, 9, 1]])
    assert p.propose([[5], []], lens, ids) == [[], []]  # row 1 emitted nothing: still in prefill


def test_lookahead_follows_acceptance_per_request():
    p = SpecdecProposer(_config(6), k_start=2)
    h = list(range(20, 40)) + [1] + list(range(20, 23))  # continues 23, 24, ... from the first copy
    ids, lens = _batch([h])
    first = p.propose([[22]], lens, ids)[0]
    assert first == [23, 24]
    h2 = h + first + [25]  # both accepted + bonus: the next lookahead is 2 + 2
    ids, lens = _batch([h2])
    second = p.propose([[23, 24, 25]], lens, ids)[0]
    assert second == [26, 27, 28, 29]
    h3 = h2 + [26, 99]  # one of four accepted, then a correction: 4 - 1
    ids, lens = _batch([h3])
    third = p.propose([[26, 99]], lens, ids)[0]
    assert len(third) <= 3 and list(p._state.values()) == [(3, len(third))]
    assert p.accepted == 2 + 1 and p.proposed == 2 + 4 + len(third)


def test_requests_are_recognised_after_the_batch_is_reordered():
    p = SpecdecProposer(_config(8), k_start=2)
    a = list(range(100, 130)) + [7, 100, 101]
    b = list(range(200, 230)) + [7, 200, 201]
    ids, lens = _batch([a, b])
    da, db = p.propose([[101], [201]], lens, ids)
    a2, b2 = a + da + [104], b + db[:1] + [999]  # a: all accepted (+bonus); b: one accepted, one corrected
    ids, lens = _batch([b2, a2])  # vLLM swapped the rows
    db2, da2 = p.propose([db[:1] + [999], da + [104]], lens, ids)
    assert len(da2) == 4  # 2 + 2 for a
    assert db2 == []  # b's context (…, 202, 999) has no match; its lookahead went 2 -> 1
    assert sorted(v[0] for v in p._state.values()) == [1, 4]


def test_lookahead_never_exceeds_num_speculative_tokens_and_state_is_dropped():
    p = SpecdecProposer(_config(3), k_start=8)
    assert p.k_start == 3
    h = list(range(10, 30)) + list(range(10, 14))
    ids, lens = _batch([h])
    for _ in range(4):
        d = p.propose([[13] + [0] * 3], lens, ids)[0]  # pretend everything was accepted each time
        assert len(d) <= 3
    assert p._state  # state for the live request
    ids, lens = _batch([[1, 2]])  # the request left: only a new one in prefill-like state remains
    p.propose([[]], lens, ids)
    assert not p._state


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpecdecProposer(_config(0))


def _vllm_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "vllm_bench.py"
    spec = importlib.util.spec_from_file_location("vllm_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logged_drafts_are_keyed_by_the_root_they_follow():
    # CI's EAGLE-3 check logs vLLM's proposals without their positions; the greedy output places them
    bench = _vllm_bench()
    output = [5, 1, 2, 9, 3, 4, 7]
    steps = [[1, 2, 3, 0], [3, 4, 8, 0], [7, 7, 7, 7]]  # accepts 1, 2 (+9); then 3, 4 (+7): the end
    assert bench.drafts_by_root(output, steps) == {0: [1, 2, 3, 0], 3: [3, 4, 8, 0]}
    theirs = {"outputs": [output], "proposals": [steps]}
    ours = [{"output": output, "drafts": [[1, 2, 3, 0], [3, 4, 6, 6]]}]  # the second step parts at depth 3
    cmp = bench.compare_drafts(theirs, ours, 4)
    assert (cmp["steps"], cmp["same"]) == (2, 1) and cmp["per_depth"] == [1.0, 1.0, 0.5, 0.5]
    shorter = [{"output": output, "drafts": [[1, 2], [3]]}]  # trimmed near max_new_tokens: compared as far as both go
    cmp = bench.compare_drafts(theirs, shorter, 4)
    assert (cmp["steps"], cmp["same"]) == (2, 2) and cmp["per_depth"][:2] == [1.0, 1.0]
