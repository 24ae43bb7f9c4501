"""The fast path (specdec.compiled): exact greedy output, a fixed, small number of graphs, no graph shared
between models; bf16 runs part from plain decoding only at near-ties.

Counting graphs needs no inductor: with ``compiled.BACKEND = "eager"`` dynamo still traces, guards and
recompiles exactly as it does in front of inductor, without inductor's minute per shape. One test runs
the real inductor path (freezing, prepacked weights) on a tiny model.
"""

import pytest
import torch
from test_generate import plain_greedy, tiny_model

import specdec
from specdec import compiled
from specdec.bench import first_divergence


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    compiled.reset()
    torch._dynamo.utils.counters.clear()
    yield
    compiled.reset()


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", 2, 64, seed=0), tiny_model("llama", 1, 32, seed=1)


def _prompt(seed: int, length: int = 21) -> torch.Tensor:
    return torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "strategy",
    [
        "chain",
        specdec.DynamicTree("eagle2", budget=10, top_k=3, depth=4),
        specdec.PromptLookup(k=8),
    ],
    ids=["chain", "eagle2", "lookup"],
)
def test_compiled_greedy_equals_plain_with_one_graph_per_width(eager_backend, pair, strategy):
    target, draft = pair
    ids = _prompt(0)
    n = 60
    before = compiled.compile_stats()["graphs"]
    out = specdec.generate(target, draft, ids, max_new_tokens=n, strategy=strategy, compile=True)
    assert torch.equal(out.sequences, plain_greedy(target, ids, None, n))
    made = compiled.compile_stats()["graphs"] - before
    models = 1 if isinstance(strategy, specdec.PromptLookup) else 2
    assert 1 <= made <= len(compiled.WIDTHS) * models  # one cache capacity (512) in this run
    assert _graphs() == made  # every graph dynamo made is one the runner announced: no hidden recompiles
    # a second call, other prompt of the same kind, reuses every graph
    out = specdec.generate(target, draft, _prompt(1), max_new_tokens=n, strategy=strategy, compile=True)
    assert torch.equal(out.sequences, plain_greedy(target, _prompt(1), None, n))
    assert compiled.compile_stats()["graphs"] - before == made and _graphs() == made


def test_compiled_ragged_batch(eager_backend, pair):
    target, draft = pair
    ids = torch.cat([_prompt(2), _prompt(3)])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # row 1 left-padded
    out = specdec.generate(target, draft, ids, attention_mask=mask, max_new_tokens=40, strategy="eagle2", compile=True)
    plain = plain_greedy(target, ids, mask, 40)
    assert torch.equal(out.sequences, plain)


def test_prompts_prefill_without_a_graph(eager_backend, pair):
    # a prompt runs once: its chunks go through the eager forward, only the step widths get graphs
    target, _ = pair
    ids = _prompt(7, 150)  # wider than every bucket
    out = specdec.generate(target, None, ids, max_new_tokens=12, strategy=specdec.PromptLookup(k=3), compile=True)
    assert torch.equal(out.sequences, plain_greedy(target, ids, None, 12))
    widths = {key[0][1] for key in compiled.compiled_forward(target).seen}
    assert widths and widths <= {1, 4}


def test_compiled_refuses_a_non_bool(pair):
    target, draft = pair
    with pytest.raises(TypeError, match="compile"):
        specdec.generate(target, draft, _prompt(0), max_new_tokens=4, compile="yes")


def test_fixed_shape_cache_capacities_are_powers_of_two():
    # a compiled forward is a graph per cache capacity: capacities must come from a small set
    from specdec.cache import SpecCache

    config = tiny_model("llama", 1, 32, seed=0).config
    cache = SpecCache(config, 1, 5000, dtype=torch.float32, device="cpu", capacity=300)
    cache.fixed_shapes()
    seen = [cache.capacity]
    for needed in (400, 513, 1500, 4999):
        cache.reserve(needed)
        seen.append(cache.capacity)
    assert seen == [512, 512, 1024, 2048, 8192]
    assert cache.buffer.shape[4] == 8192


def test_bucket():
    assert [compiled.bucket(n, (1, 4, 16)) for n in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    with pytest.raises(ValueError, match="wider than"):
        compiled.bucket(17, (1, 4, 16))


def test_inductor_frozen_models_of_one_shape_keep_their_own_weights(monkeypatch):
    # Freezing bakes a model's weights into its graph as constants: two models of identical shapes must
    # each get their own graph (a shared dynamo cache would serve one model's weights to the other).
    # One bucket keeps this to one inductor compile per model.
    monkeypatch.setattr(compiled, "WIDTHS", (16,))
    a, b = tiny_model("llama", 1, 32, seed=5), tiny_model("llama", 1, 32, seed=6)
    ids = _prompt(4, 9)
    for model in (a, b, a):
        out = specdec.generate(model, None, ids, max_new_tokens=24, strategy=specdec.PromptLookup(k=4), compile=True)
        assert torch.equal(out.sequences, plain_greedy(model, ids, None, 24))
    assert not torch.equal(plain_greedy(a, ids, None, 24), plain_greedy(b, ids, None, 24))  # the models do differ


def test_bf16_runs_part_from_plain_decoding_only_at_near_ties(pair):
    # bf16 rounding depends on the kernel path and on how many rows a matmul has, so a verify forward over
    # k+1 tokens (or the loop's fp32 attention) can order two nearly equal logits differently from plain
    # decoding. Where a bf16 speculative run parts from bf16 plain decoding, the two chosen tokens must be
    # a near-tie for the fp32 model: bf16 keeps 8 significant bits, and this 2-layer model's bf16 logits
    # are off by a few percent of the largest logit (2.6-4.4% measured), so a gap wider than 1/8 of it is
    # not rounding but a bug. 5 prompts x 32 tokens (two of them part here, at gaps of 2% and 6%).
    target32 = pair[0]
    target16 = tiny_model("llama", 2, 64, seed=0).to(torch.bfloat16)
    draft16 = tiny_model("llama", 1, 32, seed=1).to(torch.bfloat16)
    ties = []
    for seed in range(5):
        ids = _prompt(100 + seed)
        spec = specdec.generate(target16, draft16, ids, max_new_tokens=32, strategy="chain").sequences
        plain = plain_greedy(target16, ids, None, 32)
        pos = first_divergence(plain[0], spec[0], ids.shape[1])
        if pos is None:
            continue
        with torch.inference_mode():
            logits = target32(plain[:, :pos]).logits[0, -1]
        gap = float((logits[plain[0, pos]] - logits[spec[0, pos]]).abs())
        ties.append((seed, pos, gap, float(logits.abs().max())))
    assert all(gap < scale / 8 for _, _, gap, scale in ties), ties


def test_compiled_target_feeds_an_eagle_head(eager_backend):
    # the head reads the target's features through forward hooks on its layers: they must fire inside
    # the compiled forward exactly as in the eager one
    target, head, tok = specdec.load_default_pair(draft="eagle")
    ids = tok("def fibonacci(n):\n", return_tensors="pt").input_ids
    for strategy in ("chain", "eagle2"):
        out = specdec.generate(target, head, ids, max_new_tokens=40, strategy=strategy, compile=True)
        assert torch.equal(out.sequences, plain_greedy(target, ids, None, 40))
        assert out.stats["tau"] > 1.2  # the head's drafts are accepted: its features are the target's


def test_a_graph_traced_before_the_head_existed_still_feeds_it(eager_backend):
    # dynamo does not guard on forward hooks: a graph traced without the head's hooks runs without them,
    # so the features must come out of the graph itself, or the head drafts from stale ones
    target, head, tok = specdec.load_default_pair(draft="eagle")
    draft = specdec.load_default_pair()[1]
    ids = tok("def fibonacci(n):\n", return_tensors="pt").input_ids
    specdec.generate(target, draft, ids, max_new_tokens=12, strategy="chain", compile=True)  # no hooks yet
    graphs = _graphs()
    eager = specdec.generate(target, head, ids, max_new_tokens=40, strategy="chain")
    out = specdec.generate(target, head, ids, max_new_tokens=40, strategy="chain", compile=True)
    assert torch.equal(out.sequences, eager.sequences)
    assert out.stats["tau"] > 1.2 and out.stats["tau"] == pytest.approx(eager.stats["tau"], abs=0.15)
    assert _graphs() > graphs  # the tapped forward is a graph of its own
    # a new generate makes a new tap: no retrace (dynamo guards on a traced hook's code object)
    graphs = _graphs()
    again = specdec.generate(target, head, ids, max_new_tokens=40, strategy="chain", compile=True)
    assert torch.equal(again.sequences, eager.sequences) and _graphs() == graphs


def test_a_compile_failure_from_a_spaced_torch_path_is_explained(monkeypatch):
    class CppCompileError(Exception):
        pass

    monkeypatch.setattr(torch, "__file__", "/opt/my envs/torch/__init__.py")
    with pytest.raises(RuntimeError, match="path containing a space"):
        compiled._explain_compile_failure(CppCompileError("g++ failed"))
    compiled._explain_compile_failure(ValueError("unrelated"))  # other failures pass through untouched
    monkeypatch.setattr(torch, "__file__", "/opt/envs/torch/__init__.py")
    compiled._explain_compile_failure(CppCompileError("g++ failed"))  # no space: not this cause
