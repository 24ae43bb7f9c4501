"""EAGLE draft heads: the drafter computes what training unrolls, every strategy stays exact with a head,
sampling stays lossless, heads are saved/loaded and refused when they do not fit."""

import pytest
import torch
from test_generate import POLICIES, _chi_square_first_three, plain_greedy, ragged_batch, tiny_model

import specdec
from specdec.eagle import FeatureTap, HeadDrafter, load_head, new_head, unrolled_forward
from specdec.runner import tree_attention_enabled


def _random_head(target, seed: int, layers=None):
    """A head around ``target`` with random weights (new_head's init, then noise): drafts that are
    sometimes right and sometimes wrong, which is what exactness tests need."""
    head = new_head(target, layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return head.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def target_and_head(request):
    target = tiny_model(request.param, 3, 64, seed=0)
    return target, _random_head(target, seed=1)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("lens", [[9], [5, 12, 1]], ids=["batch1", "ragged3"])
def test_head_greedy_equals_plain_greedy(target_and_head, policy, lens):
    target, head = target_and_head
    ids, mask = ragged_batch(97, lens, seed=len(lens) + 20)
    expected = plain_greedy(target, ids, mask, 24)
    out = specdec.generate(target, head, ids, attention_mask=mask, max_new_tokens=24, strategy=POLICIES[policy]())
    assert torch.equal(out.sequences, expected)
    assert out.stats["new_tokens"] == 24 * len(lens) and out.stats["draft_calls"] > 0


@pytest.mark.parametrize("policy", ["chain4", "eagle2"])
def test_head_buffers_that_grow_mid_generation_change_nothing(target_and_head, policy, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["specdec.decoder"], "INITIAL_OUTPUT", 2)  # several doublings in 40 tokens
    target, head = target_and_head
    ids, mask = ragged_batch(97, [7, 3], seed=31)
    out = specdec.generate(target, head, ids, attention_mask=mask, max_new_tokens=40, strategy=POLICIES[policy]())
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 40))


def test_long_prompts_catch_up_in_chunks(target_and_head, monkeypatch):
    import specdec.eagle
    import specdec.runner

    monkeypatch.setattr(specdec.runner, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(specdec.eagle, "CATCH_UP_CHUNK", 5)
    target, head = target_and_head
    ids, mask = ragged_batch(97, [21, 8, 3], seed=12)
    out = specdec.generate(target, head, ids, attention_mask=mask, max_new_tokens=16, strategy="eagle2")
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 16))


def test_feature_hooks_are_removed(target_and_head):
    target, head = target_and_head
    ids, _ = ragged_batch(97, [6], seed=3)
    specdec.generate(target, head, ids, max_new_tokens=4)
    inner = target.model
    assert all(not m._forward_hooks for m in [inner.embed_tokens, inner.norm, *inner.layers])


def test_drafter_computes_what_training_unrolls():
    """HeadDrafter (prefill, catch-up, chain drafting with its own hidden states, commit after a step)
    equals unrolled_forward, the training-time-test forward, at every step: the head runs what it was
    trained on. Drafts are the target's own tokens, as in training (teacher forcing)."""
    torch.manual_seed(0)
    target = tiny_model("llama", 3, 64, seed=3)
    head = _random_head(target, seed=4, layers=(1, 2))
    T, P = 20, 9  # the sequence and the prompt length; the root sits at position P
    x = torch.randint(0, 97, (1, T))
    tap = FeatureTap(target, head.config.feature_layers)
    with torch.no_grad():
        target(x)
        feats = tap.features()
        hs = unrolled_forward(head, x, head.project_features(feats), steps=3)
    want = [head.logits(h)[0].float() for h in hs]  # [T, V] per step

    class Rows:  # what the loop passes: committed length ctx (root included)
        def __init__(self, ctx):
            self.ctx = torch.tensor([ctx])

    with tree_attention_enabled(target):
        d = HeadDrafter(head, tap, 1, T + 8)
        d.prefill(x[:, :P], torch.ones(1, P, dtype=torch.long), x[:, P], feats[:, :P])
        root = d.begin(Rows(P + 1))
        torch.testing.assert_close(root[0], want[0][P], atol=2e-4, rtol=1e-4)
        for s in (1, 2):  # chain drafting past the root: step s at position P + s
            got = d.forward(
                x[:, P + s, None], torch.tensor([[P + s]]), torch.ones(1, 1, dtype=torch.bool), torch.tensor([P + s])
            )
            torch.testing.assert_close(got[0, 0], want[s][P + s], atol=2e-4, rtol=1e-4)
        # A verify step emitted 3 tokens (positions P+1..P+3) with the target's features of P..P+2:
        # the next catch-up rewrites the draft entries with true features, so the new root's step-0
        # logits equal training's again.
        d.commit(torch.tensor([P + 1]), x[:, P + 1 : P + 4], torch.tensor([P]), feats[:, P : P + 3])
        root = d.begin(Rows(P + 4))
        torch.testing.assert_close(root[0], want[0][P + 3], atol=2e-4, rtol=1e-4)
    tap.remove()


@pytest.mark.parametrize("name", ["chain", "dyspec-sampled", "eagle2-topk"])
def test_sampling_with_a_head_is_lossless(name):
    """Chi-square of the first three sampled tokens against the target's exact joint law (V = 5, 125
    cells, 12000 sequences, fixed seed; p < 1e-4 fails), drafting with a random EAGLE head."""
    from test_generate import SAMPLING_STRATEGIES

    V = 5
    target = tiny_model("llama", 2, 32, seed=5, vocab=V)
    head = _random_head(target, seed=7)
    p, msg, stats, _ = _chi_square_first_three(target, head, SAMPLING_STRATEGIES[name](), V)
    assert stats["acceptance_histogram"][0] > 0 and sum(stats["acceptance_histogram"][1:]) > 0
    assert p > 1e-4, msg


def test_save_and_load_round_trip(target_and_head, tmp_path):
    target, head = target_and_head
    head.save(tmp_path / "h")
    loaded = load_head(target, tmp_path / "h")
    assert loaded.embed_tokens is target.get_input_embeddings() and not loaded.own_embedding
    saved = head.trained_state()
    assert set(loaded.trained_state()) == set(saved)
    for k, v in loaded.trained_state().items():
        torch.testing.assert_close(v, saved[k], atol=0, rtol=0)
    ids, mask = ragged_batch(97, [7, 4], seed=6)
    out = specdec.generate(target, loaded, ids, attention_mask=mask, max_new_tokens=10, strategy="chain")
    assert torch.equal(out.sequences, plain_greedy(target, ids, mask, 10))


def test_mismatched_heads_are_refused(target_and_head, tmp_path):
    target, head = target_and_head
    ids, _ = ragged_batch(97, [5], seed=1)
    wider = tiny_model("llama", 3, 32, seed=9)
    with pytest.raises(ValueError, match="does not fit the target"):
        specdec.generate(wider, head, ids)
    deeper = tiny_model("llama", 4, 64, seed=9)
    with pytest.raises(ValueError, match="does not fit the target"):
        specdec.generate(deeper, head, ids)
    twin = tiny_model("llama", 3, 64, seed=10)  # same shape, another model's embeddings
    with pytest.raises(ValueError, match="another model's embeddings"):
        specdec.generate(twin, head, ids)
    head.save(tmp_path / "h")
    with pytest.raises(ValueError, match="trained for another target"):
        load_head(wider, tmp_path / "h")
    with pytest.raises(FileNotFoundError, match="train_eagle_head"):
        load_head(target, tmp_path / "missing")
    with pytest.raises(TypeError, match="draft must be"):
        specdec.generate(target, object(), ids)


def test_lookup_or_chain_is_exact_and_needs_a_head(target_and_head):
    """Hybrid drafting: prompt lookup on steps where the context repeats itself, the head's chain
    elsewhere; the head catches up over the lookup steps it did not draft."""
    target, head = target_and_head
    g = torch.Generator().manual_seed(9)
    span = torch.randint(0, 97, (12,), generator=g)
    ids = torch.cat([span, span[:6]])[None]
    out = specdec.generate(
        target,
        head,
        ids,
        max_new_tokens=30,
        strategy=specdec.LookupOrChain(fallback=specdec.DynamicLookahead("heuristic", k=2, k_max=5)),
    )
    assert torch.equal(out.sequences, plain_greedy(target, ids, torch.ones_like(ids), 30))
    with pytest.raises(ValueError, match="needs an EAGLE head"):
        specdec.generate(target, tiny_model("llama", 1, 32, seed=1), ids, max_new_tokens=4, strategy="hybrid")


def test_cost_model_and_auto_with_a_head(target_and_head):
    """The cost model times the head through its drafter and "auto" picks a strategy for it; greedy stays exact."""
    from specdec import tune

    target, head = target_and_head
    lat = tune.measure_latency(head, tokens=(1, 2, 4), prefix=16, reps=1)
    assert set(lat) == {1, 2, 4} and all(t > 0 for t in lat.values())
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    out = specdec.generate(target, head, ids, max_new_tokens=12, strategy="auto")
    assert torch.equal(out.sequences, plain_greedy(target, ids, torch.ones_like(ids), 12))
    with pytest.raises(TypeError, match="needs a draft model"):
        tune.measure_rank_acceptance(target, head, [ids])
