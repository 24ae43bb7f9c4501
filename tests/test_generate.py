"""The decoding loop against plain decoding: greedy exactness, acceptance, lossless sampling, errors."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import specdec
from specdec import Chain, DynamicLookahead, DynamicTree, StaticTree

# A DISCO classifier with fixed weights (continue while the draft's top-1 probability is high), so the
# policy is exercised without depending on the trained asset.
DISCO_TEST = dict(weights=[6.0, 0.0, 0.0, 0.0, 0.0, -3.0], threshold=0.5)

POLICIES = {
    "chain1": lambda: Chain(1),
    "chain4": lambda: Chain(4),
    "heuristic": lambda: DynamicLookahead("heuristic", k=2, k_max=6),
    "confidence": lambda: DynamicLookahead("confidence", k_max=5, threshold=0.3),
    "gate": lambda: DynamicLookahead("gate", k_max=5, threshold=0.3),
    "disco": lambda: DynamicLookahead("disco", k_max=5, **DISCO_TEST),
    "static-tree": lambda: StaticTree("wide16"),
    "eagle2": lambda: DynamicTree("eagle2", budget=10, top_k=3, depth=4),
    "dyspec": lambda: DynamicTree("dyspec", budget=12, width=4),
    "ddd": lambda: DynamicTree("ddd", budget=10, top_k=3, depth=5, log_mass_floor=-3.0),
}


def tiny_model(arch: str, layers: int, hidden: int, seed: int, vocab: int = 97):
    """Random small model; a large init scale gives peaked logits, so argmax ties are vanishingly rare."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request):
    target = tiny_model(request.param, 2, 64, seed=0)
    draft = tiny_model(request.param, 1, 32, seed=1)
    return target, draft


def plain_greedy(target, ids, mask, n):
    out = target.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out


def ragged_batch(vocab, lens, seed):
    g = torch.Generator().manual_seed(seed)
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.int64)
    mask = torch.zeros(len(lens), T, dtype=torch.int64)
    for b, n in enumerate(lens):
        ids[b, T - n :] = torch.randint(0, vocab, (n,), generator=g)
        mask[b, T - n :] = 1
    return ids, mask


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("lens", [[9], [5, 12, 1]], ids=["batch1", "ragged3"])
def test_greedy_equals_plain_greedy(pair, policy, lens):
    target, draft = pair
    ids, mask = ragged_batch(97, lens, seed=len(lens))
    expected = plain_greedy(target, ids, mask, 24)
    out = specdec.generate(target, draft, ids, attention_mask=mask, max_new_tokens=24, strategy=POLICIES[policy]())
    assert torch.equal(out.sequences, expected)
    s = out.stats
    assert s["new_tokens"] == 24 * len(lens)
    assert 1.0 <= s["tau"]
    assert sum(s["acceptance_histogram"]) > 0


def test_identical_draft_accepts_everything(pair):
    target, _ = pair
    ids, mask = ragged_batch(97, [6, 11], seed=3)
    k = 4
    out = specdec.generate(target, target, ids, attention_mask=mask, max_new_tokens=31, strategy=Chain(k))
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 31))
    # 1 token from the prefill, then 30 = 6 steps of k + 1: every draft accepted every step
    assert out.stats["acceptance_histogram"][k] == out.stats["steps"] * 2
    assert out.stats["tau"] == k + 1


@pytest.mark.parametrize(
    "strategy",
    [StaticTree([(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0), (1,)]), DynamicTree("eagle2", budget=4, top_k=1, depth=4)],
    ids=["static", "eagle2"],
)
def test_identical_draft_accepts_full_tree_depth(pair, strategy):
    target, _ = pair
    ids, mask = ragged_batch(97, [4, 9], seed=8)
    out = specdec.generate(target, target, ids, attention_mask=mask, max_new_tokens=25, strategy=strategy)
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 25))
    hist = out.stats["acceptance_histogram"]
    assert hist[4] == out.stats["steps"] * 2 and out.stats["tau"] == 5  # 1 + 4 steps x 6 tokens per row


def test_eos_stops_a_sequence_and_pads(pair):
    target, draft = pair
    ids, mask = ragged_batch(97, [7, 7], seed=4)
    free = plain_greedy(target, ids, mask, 12)
    eos = int(free[0, 7 + 3])  # the 4th token of row 0 becomes EOS
    out = specdec.generate(target, draft, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    row0 = out.sequences[0, 7:].tolist()
    stop = row0.index(eos)
    assert row0[: stop + 1] == free[0, 7 : 7 + stop + 1].tolist()
    assert all(t == 0 for t in row0[stop + 1 :])


def test_long_ragged_prompts_prefill_in_chunks(pair, monkeypatch):
    # Prompts longer than a prefill chunk (shrunk to 8 here) go through several chunked forwards.
    import specdec.runner

    monkeypatch.setattr(specdec.runner, "PREFILL_CHUNK", 8)
    target, draft = pair
    ids, mask = ragged_batch(97, [21, 8, 3], seed=12)
    out = specdec.generate(target, draft, ids, attention_mask=mask, max_new_tokens=16, strategy=Chain(3))
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 16))


def test_eos_list_is_honoured(pair):
    target, draft = pair
    ids, mask = ragged_batch(97, [7], seed=4)
    free = plain_greedy(target, ids, mask, 12)
    eos = int(free[0, 7 + 2])
    out = specdec.generate(target, draft, ids, max_new_tokens=12, eos_token_id=[96 if eos != 96 else 95, eos])
    assert out.sequences[0, 7:].tolist() == free[0, 7 : 7 + 3].tolist()


def test_bad_inputs(pair):
    target, draft = pair
    ids = torch.randint(0, 97, (1, 5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        specdec.generate(target, draft, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="at least one token"):
        specdec.generate(target, draft, ids[:, :0])
    with pytest.raises(ValueError, match="empty prompt"):
        specdec.generate(target, draft, ids, attention_mask=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="left-padded"):
        specdec.generate(target, draft, ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="left-padded"):  # a gap inside the prompt
        specdec.generate(target, draft, ids, attention_mask=torch.tensor([[0, 1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="vocabularies differ"):
        specdec.generate(target, tiny_model("llama", 1, 32, seed=2, vocab=50), ids)
    with pytest.raises(ValueError, match="same dtype"):
        specdec.generate(target, tiny_model("llama", 1, 32, seed=2).to(torch.bfloat16), ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        specdec.generate(target, draft, ids + 97)
    with pytest.raises(ValueError, match="unknown name"):
        specdec.generate(target, draft, ids, strategy="nope")
    with pytest.raises(ValueError, match="k must be"):
        Chain(0)


def _exact_joint(target, prompt, V, temperature):
    """Target's exact distribution of the first three sampled tokens, [V, V, V]."""
    with torch.no_grad():
        p1 = torch.softmax(target(prompt).logits[0, -1].double() / temperature, -1)
        t1 = torch.arange(V)[:, None]
        seq2 = torch.cat([prompt.expand(V, -1), t1], 1)
        p2 = torch.softmax(target(seq2).logits[:, -1].double() / temperature, -1)  # [V, V]
        t12 = torch.cartesian_prod(torch.arange(V), torch.arange(V))
        seq3 = torch.cat([prompt.expand(V * V, -1), t12], 1)
        p3 = torch.softmax(target(seq3).logits[:, -1].double() / temperature, -1).view(V, V, V)
    return p1[:, None, None] * p2[:, :, None] * p3


SAMPLING_STRATEGIES = {
    "chain": lambda: Chain(3),
    "dyspec-sampled": lambda: DynamicTree("dyspec", budget=6, width=3),
    "eagle2-topk": lambda: DynamicTree("eagle2", budget=6, top_k=2, depth=3),
}


def chi_square_merged(counts: torch.Tensor, expected: torch.Tensor):
    """Pearson chi-square of observed ``counts`` against ``expected`` counts (same cells): cells expecting
    fewer than 5 are merged into one (dropped when they expect exactly 0, as cells a warping removes do).
    Returns (statistic, p, mask of the unmerged cells)."""
    from scipy.stats import chisquare

    big = expected >= 5
    parts = 1 + bool(expected[~big].sum() > 0)
    obs = torch.cat([counts[big], counts[~big].sum()[None]][:parts])
    exp = torch.cat([expected[big], expected[~big].sum()[None]][:parts])
    stat, p = chisquare(obs.numpy(), exp.numpy() * (obs.sum() / exp.sum()).item())
    return stat, p, big


def _chi_square_first_three(target, draft, strategy, V: int, n: int = 12000, temperature: float = 1.0):
    """Samples n sequences of 3 new tokens after a fixed prompt; returns (chi-square p, stats).
    Cells with expected count < 5 are merged into one."""
    prompt = torch.tensor([[1, 3, 0, 2]])
    out = specdec.generate(
        target,
        draft,
        prompt.expand(n, -1).contiguous(),
        max_new_tokens=3,
        strategy=strategy,
        temperature=temperature,
        seed=2024,
    )
    toks = out.sequences[:, 4:]
    counts = torch.bincount(toks[:, 0] * V * V + toks[:, 1] * V + toks[:, 2], minlength=V**3).double()
    assert math.isclose(float(counts.sum()), n)
    expected = _exact_joint(target, prompt, V, temperature).flatten() * n
    stat, p, big = chi_square_merged(counts, expected)
    return p, f"chi-square p = {p:.2e} (stat {stat:.1f}, {int(big.sum())} cells)", out.stats, toks


@pytest.mark.parametrize("name", list(SAMPLING_STRATEGIES))
def test_sampling_is_lossless_over_three_tokens(name):
    """Chi-square test of the joint law of the first three sampled tokens against the target's.

    V = 5 (125 cells), 12000 independent sequences in one batch, drafts from a different model, so
    tokens 2-3 come from speculative verification (accepts and residual resamples both occur): a chain
    with sampled drafts, a DySpec tree with children sampled without replacement, and an EAGLE-2 tree
    of deterministic top-k children. With a fixed seed the test is deterministic; it fails when p < 1e-4.
    """
    V = 5
    target = tiny_model("llama", 2, 32, seed=5, vocab=V)
    draft = tiny_model("llama", 1, 16, seed=6, vocab=V)
    p, msg, stats, _ = _chi_square_first_three(target, draft, SAMPLING_STRATEGIES[name](), V)
    assert stats["acceptance_histogram"][0] > 0 and sum(stats["acceptance_histogram"][1:]) > 0
    assert p > 1e-4, msg


def _subset_head_draft(draft, keep: list[int]):
    """A copy of ``draft`` whose head scores only the ``keep`` token ids (specdec.layers.SubsetLMHead)."""
    import copy

    from specdec.layers import SubsetLMHead

    d = copy.deepcopy(draft)
    d.lm_head = SubsetLMHead(d.lm_head.weight.detach(), torch.tensor(keep))
    return d.eval()


@pytest.mark.parametrize("name", ["chain", "dyspec-sampled"])
def test_sampling_with_a_subset_head_draft_is_lossless(name):
    """A draft that can only propose tokens {0, 2, 3} of V = 5 (q = 0 for 1 and 4): tokens 1 and 4 then
    come only from residual resampling, and the joint law must still be the target's. Same sample size,
    seed and threshold (p < 1e-4 fails) as above."""
    V = 5
    target = tiny_model("llama", 2, 32, seed=5, vocab=V)
    draft = _subset_head_draft(tiny_model("llama", 1, 16, seed=6, vocab=V), [0, 2, 3])
    p, msg, stats, toks = _chi_square_first_three(target, draft, SAMPLING_STRATEGIES[name](), V)
    assert sum(stats["acceptance_histogram"][1:]) > 0  # drafts were accepted, not only resampled
    assert bool(((toks[:, 1:] == 1) | (toks[:, 1:] == 4)).any())  # reached only through the residual
    assert p > 1e-4, msg


@pytest.mark.parametrize("policy", ["chain4", "heuristic", "eagle2", "dyspec"])
def test_subset_head_draft_greedy_exact(pair, policy):
    target, draft = pair
    keep = torch.randperm(97, generator=torch.Generator().manual_seed(4))[:60].tolist()
    ids, mask = ragged_batch(97, [7, 3], seed=9)
    out = specdec.generate(
        target,
        _subset_head_draft(draft, keep),
        ids,
        attention_mask=mask,
        max_new_tokens=20,
        strategy=POLICIES[policy](),
    )
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 20))


@pytest.mark.parametrize("branches", [1, 3])
def test_prompt_lookup_greedy_exact_with_no_draft_model(pair, branches):
    target, draft = pair
    from specdec import PromptLookup

    # A prompt that repeats itself: the continuation of a repeated span is a likely match.
    g = torch.Generator().manual_seed(9)
    span = torch.randint(0, 97, (12,), generator=g)
    ids = torch.cat([span, span[:6]])[None]
    ids2, mask = ragged_batch(97, [5, 18], seed=10)
    ids2[1, :] = ids[0]
    for x, m in ((ids, torch.ones_like(ids)), (ids2, mask)):
        for d in (None, draft):  # a draft model given to a model-free drafter is left idle
            out = specdec.generate(
                target, d, x, attention_mask=m, max_new_tokens=20, strategy=PromptLookup(k=5, branches=branches)
            )
            assert torch.equal(out.sequences, plain_greedy(target, x, m, 20))
            assert out.stats["draft_calls"] == 0


def test_prompt_lookup_continuations():
    from specdec import PromptLookup

    pl = PromptLookup(k=3, max_ngram=2, branches=2, search="recent")
    h = [1, 2, 3, 4, 9, 1, 2, 7, 8, 5, 1, 2]
    # last bigram (1, 2) occurs at 5 (-> 7 8 5) and at 0 (-> 3 4 9)
    assert pl.continuations(h) == [[7, 8, 5], [3, 4, 9]]
    assert PromptLookup(k=3, max_ngram=2, branches=2, search="first").continuations(h) == [[3, 4, 9], [7, 8, 5]]
    assert PromptLookup(k=2).continuations([4, 5, 6]) == []
    toks, parents = pl._trie(h)
    assert toks[0] == 2 and parents == [-1, 0, 1, 2, 0, 4, 5]
    with pytest.raises(ValueError, match="draft is None"):
        specdec.generate(tiny_model("llama", 1, 16, seed=0), None, torch.tensor([[1, 2]]), strategy="chain")


@pytest.mark.parametrize("n", [2, 3, 7])
def test_cpu_padding_of_small_forwards_changes_nothing(pair, monkeypatch, n):
    """Forwards of slow widths run padded on CPU (runner.cpu_pad_map; forced here): the real nodes'
    logits and the K/V they write equal those of the unpadded forward."""
    from specdec import runner as R
    from specdec_kernels import trees

    target, _ = pair
    ids, mask = ragged_batch(97, [5, 8], seed=12)
    lens = mask.sum(1)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 3][:n])
    x = torch.randint(0, 97, (2, n), generator=torch.Generator().manual_seed(1))
    depth = trees.ancestor_mask(parents).sum(-1) - 1

    def run():
        with R.tree_attention_enabled(target):
            r = R.ModelRunner(target, 2, 40)
            r.prefill(ids, mask)
            logits = r.forward(x, lens[:, None] + depth, trees.ancestor_mask(parents))
        kv = [r.cache.buffer[:, :, b, :, : int(lens[b]) + n] for b in range(2)]
        return logits, kv, r.tokens

    monkeypatch.setattr(R, "CPU_PADDING", True)
    monkeypatch.setattr(R, "cpu_pad_map", lambda model: {2: 5, 3: 5, 7: 8})
    padded, kv_padded, fed_padded = run()
    monkeypatch.setattr(R, "CPU_PADDING", False)
    plain, kv_plain, fed_plain = run()
    assert padded.shape == plain.shape == (2, n, 97)
    assert fed_padded > fed_plain  # the padded run did feed extra tokens
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(kv_padded, kv_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pad_map_pads_only_to_faster_wider_widths():
    from specdec.runner import pad_map_from_latency

    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        lat = {w: float(v) for w, v in zip(range(1, 9), torch.rand(8, generator=g) + 0.5)}
        m = pad_map_from_latency(lat, gain=0.9)
        for n in lat:
            faster = [w for w in lat if w > n and lat[w] < 0.9 * lat[n]]
            if n in m:
                assert m[n] > n and lat[m[n]] == min(lat[w] for w in lat if w >= n)
            else:
                assert not faster or min(lat[w] for w in lat if w >= n) >= 0.9 * lat[n]
    assert pad_map_from_latency({1: 1.0, 2: 3.0, 3: 3.0, 4: 2.0}) == {2: 4, 3: 4}


def test_cpu_pad_map_is_measured_once_per_model(pair):
    from specdec import runner as R

    target, _ = pair
    m = R.cpu_pad_map(target)
    assert all(1 <= n < w <= R.PAD_SEARCH for n, w in m.items())
    assert R.cpu_pad_map(target) is m  # cached


def test_prompt_lookup_without_a_match_runs_plain_steps(pair):
    """No n-gram match anywhere: the step verifies the root alone (a one-token forward, no dummy draft),
    and the output is still the target's greedy output; sampling still runs."""
    from specdec import PromptLookup

    target, _ = pair
    ids = torch.randperm(97, generator=torch.Generator().manual_seed(2))[:20][None]  # distinct tokens
    strategy = PromptLookup(k=4, min_ngram=3, max_ngram=3)  # a 3-gram match is unlikely in 30 tokens
    out = specdec.generate(target, None, ids, max_new_tokens=10, strategy=strategy)
    assert torch.equal(out.sequences, plain_greedy(target, ids, torch.ones_like(ids), 10))
    assert out.stats["verify_tokens"] < 2  # mostly root-only steps
    sampled = specdec.generate(target, None, ids, max_new_tokens=10, strategy=strategy, temperature=1.0, seed=1)
    assert sampled.sequences.shape == (1, 30)


@pytest.mark.parametrize("policy", ["chain4", "disco", "static-tree", "dyspec"])
def test_caches_that_grow_mid_generation_change_nothing(pair, policy, monkeypatch):
    # The KV buffers start with room for 2 new tokens (INITIAL_OUTPUT shrunk) and double several times.
    import sys

    monkeypatch.setattr(sys.modules["specdec.decoder"], "INITIAL_OUTPUT", 2)
    target, draft = pair
    ids, mask = ragged_batch(97, [6, 11, 2], seed=21)
    out = specdec.generate(target, draft, ids, attention_mask=mask, max_new_tokens=40, strategy=POLICIES[policy]())
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 40))


def test_timing_split_is_reported_or_off_when_asked(pair):
    target, draft = pair
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    on = specdec.generate(target, draft, ids, max_new_tokens=8).stats  # CPU default: on (a clock read is free)
    off = specdec.generate(target, draft, ids, max_new_tokens=8, timing=False).stats
    assert all(on[k] >= 0 for k in ("draft_s", "verify_s", "other_s"))
    assert on["draft_s"] + on["verify_s"] + on["other_s"] <= on["wall_s"] * 1.01 + 1e-3
    assert all(off[k] is None for k in ("draft_s", "verify_s", "other_s")) and off["wall_s"] > 0


def test_a_forward_at_one_host_offset_reads_nothing_back(pair, monkeypatch):
    """Prefill chunks write at an offset the host knows: the cache neither reads a device value back
    nor builds a scatter index."""
    from specdec.cache import SpecCache

    c = SpecCache(pair[0].config, 3, 64, dtype=torch.float32, device=torch.device("cpu"), capacity=8)
    for name in ("item", "tolist", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("read back to the host"))
    kv_lens = c.begin_forward(5, start=7)  # also grows the buffer to 12+
    monkeypatch.undo()
    assert kv_lens.tolist() == [12, 12, 12] and c.write_index is None and c.write_start == 7 and c.capacity >= 12
