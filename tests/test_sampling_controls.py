"""Sampling controls (top-k, top-p, min-p, repetition penalty, GenerationConfig): the output follows
the *warped* target distribution exactly. The reference distribution is computed with transformers'
own logits processors (an independent implementation of the same definitions), by enumeration over a
5-token vocabulary."""

import math

import pytest
import torch
from test_generate import (
    POLICIES,
    SAMPLING_STRATEGIES,
    chi_square_merged,
    pair,  # noqa: F401  (a fixture)
    plain_greedy,
    ragged_batch,
    tiny_model,
)
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import specdec
from specdec import Chain
from specdec.sampling import Sampling

V = 5
PROMPT = torch.tensor([[1, 3, 0, 2]])

CONTROLS = {  # each alone, then combined; values chosen so that each one changes the distribution
    "top_k": dict(top_k=2),
    "top_p": dict(top_p=0.6),
    "min_p": dict(min_p=0.35),
    "repetition_penalty": dict(repetition_penalty=2.5),
    "combined": dict(top_k=4, top_p=0.9, min_p=0.1, repetition_penalty=1.7),
}


def _hf_processors(temperature, top_k=None, top_p=None, min_p=None, repetition_penalty=None):
    procs = LogitsProcessorList()
    if repetition_penalty:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        procs.append(TopPLogitsWarper(top_p))
    if min_p is not None:
        procs.append(MinPLogitsWarper(min_p))
    return procs


def _warped_joint(target, temperature, controls) -> torch.Tensor:
    """[V, V, V]: the exact law of the first three tokens after PROMPT under transformers' processors."""
    procs = _hf_processors(temperature, **controls)
    seqs = [PROMPT]
    joint = torch.ones(1, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            x = torch.cat(seqs) if len(seqs) > 1 else seqs[0]
            p = torch.softmax(procs(x, target(x).logits[:, -1].double()), -1)  # [rows, V]
            joint = (joint[:, None] * p).reshape(-1)
            seqs = [torch.cat([x.repeat_interleave(V, 0), torch.arange(V).repeat(x.shape[0])[:, None]], 1)]
    return joint.view(V, V, V)


def _chi_square(target, draft, strategy, controls, n=12000, temperature=1.0):
    out = specdec.generate(
        target,
        draft,
        PROMPT.expand(n, -1).contiguous(),
        max_new_tokens=3,
        strategy=strategy,
        temperature=temperature,
        seed=7,
        **controls,
    )
    t = out.sequences[:, 4:]
    counts = torch.bincount(t[:, 0] * V * V + t[:, 1] * V + t[:, 2], minlength=V**3).double()
    expected = _warped_joint(target, temperature, controls).flatten() * n
    assert counts[expected == 0].sum() == 0, "a token the warping removes was emitted"
    _, p, _ = chi_square_merged(counts, expected)
    return p, out.stats


@pytest.fixture(scope="module")
def tiny_vocab_pair():
    return tiny_model("llama", 2, 32, seed=5, vocab=V), tiny_model("llama", 1, 16, seed=6, vocab=V)


@pytest.mark.parametrize("control", list(CONTROLS))
def test_chain_output_follows_the_warped_target(tiny_vocab_pair, control):
    """12000 sequences of 3 tokens (125 cells, cells expecting < 5 merged), sampled chain drafts from a
    different model; fails when the chi-square p < 1e-4 (seeded: deterministic). Also checks the control
    matters: the warped law is at least 0.05 in total variation from the plain one."""
    target, draft = tiny_vocab_pair
    controls = CONTROLS[control]
    tv = 0.5 * (_warped_joint(target, 1.0, controls) - _warped_joint(target, 1.0, {})).abs().sum()
    assert tv > 0.05, f"{control} barely changes the distribution (TV {tv:.3f}): the test would be weak"
    p, stats = _chi_square(target, draft, Chain(2), controls)
    assert sum(stats["acceptance_histogram"][1:]) > 0
    assert p > 1e-4, f"chi-square p = {p:.2e}"


@pytest.mark.parametrize("name", ["dyspec-sampled", "eagle2-topk"])
def test_tree_output_follows_the_warped_target(tiny_vocab_pair, name):
    """As above, all controls combined, for a sampled DySpec tree and a deterministic top-k tree."""
    target, draft = tiny_vocab_pair
    p, stats = _chi_square(target, draft, SAMPLING_STRATEGIES[name](), CONTROLS["combined"], temperature=0.8)
    assert sum(stats["acceptance_histogram"][1:]) > 0
    assert p > 1e-4, f"chi-square p = {p:.2e}"


def test_prompt_lookup_follows_the_warped_target(tiny_vocab_pair):
    """End to end without a draft model: drafts copied from the context (deterministic), warped target."""
    target, _ = tiny_vocab_pair
    p, _ = _chi_square(target, None, specdec.PromptLookup(k=2, min_ngram=1), CONTROLS["combined"])
    assert p > 1e-4, f"chi-square p = {p:.2e}"


@pytest.mark.parametrize("policy", ["chain4", "eagle2", "dyspec", "static-tree"])
def test_greedy_with_a_repetition_penalty_equals_transformers(pair, policy):  # noqa: F811
    target, draft = pair
    ids, mask = ragged_batch(97, [9, 4], seed=5)
    out = specdec.generate(
        target, draft, ids, attention_mask=mask, max_new_tokens=20, strategy=POLICIES[policy](), repetition_penalty=1.3
    )
    hf = target.generate(
        ids, attention_mask=mask, max_new_tokens=20, do_sample=False, repetition_penalty=1.3, pad_token_id=0
    )
    # transformers penalises the left padding's token ids too; compare the unpadded row exactly
    assert torch.equal(out.sequences[0], hf[0])
    assert not torch.equal(out.sequences[0], plain_greedy(target, ids, mask, 20)[0])  # the penalty mattered


def test_no_controls_leave_greedy_and_sampling_unchanged(pair):  # noqa: F811
    target, draft = pair
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    base = specdec.generate(target, draft, ids, max_new_tokens=12, temperature=0.9, seed=3).sequences
    off = specdec.generate(
        target,
        draft,
        ids,
        max_new_tokens=12,
        temperature=0.9,
        seed=3,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        repetition_penalty=1.0,
    ).sequences
    assert torch.equal(base, off)


def test_same_seed_same_output(tiny_vocab_pair):
    target, draft = tiny_vocab_pair
    run = lambda seed: (
        specdec.generate(
            target,
            draft,
            PROMPT.expand(8, -1).contiguous(),
            max_new_tokens=6,  # noqa: E731
            temperature=1.0,
            seed=seed,
            **CONTROLS["combined"],
        ).sequences
    )
    assert torch.equal(run(11), run(11)) and not torch.equal(run(11), run(12))


def test_generation_config_is_read_and_explicit_arguments_win(tiny_vocab_pair):
    target, draft = tiny_vocab_pair
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=3, repetition_penalty=1.2, max_new_tokens=5)
    a = specdec.generate(target, draft, PROMPT, generation_config=cfg, seed=4).sequences
    b = specdec.generate(
        target, draft, PROMPT, max_new_tokens=5, temperature=0.7, top_k=3, repetition_penalty=1.2, seed=4
    ).sequences
    assert a.shape[1] == 4 + 5 and torch.equal(a, b)
    greedy = specdec.generate(target, draft, PROMPT, generation_config=cfg, temperature=0.0, top_k=None).sequences
    hf = target.generate(
        PROMPT,
        attention_mask=torch.ones_like(PROMPT),
        max_new_tokens=5,
        do_sample=False,
        repetition_penalty=1.2,
        pad_token_id=0,
    )
    assert torch.equal(greedy, hf)
    assert (
        specdec.generate(
            target, draft, PROMPT, generation_config=GenerationConfig(do_sample=False, max_new_tokens=3)
        ).sequences.shape[1]
        == 7
    )


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(top_p=math.nan), ValueError, "top_p"),
        (dict(top_k=-1), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(top_k=True), TypeError, "top_k"),
        (dict(min_p=-0.1), ValueError, "min_p"),
        (dict(min_p=1.1), ValueError, "min_p"),
        (dict(min_p="0.1"), TypeError, "min_p"),
        (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
        (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
        (dict(repetition_penalty=math.inf), ValueError, "repetition_penalty"),
        (dict(generation_config={"top_k": 3}), TypeError, "generation_config"),
        (dict(generation_config=GenerationConfig(num_beams=4)), ValueError, "num_beams"),
        (dict(generation_config=GenerationConfig(no_repeat_ngram_size=3)), ValueError, "no_repeat_ngram_size"),
        (dict(generation_config=GenerationConfig(do_sample=True, typical_p=0.5)), ValueError, "typical_p"),
    ],
)
def test_bad_sampling_settings_are_refused_by_name(tiny_vocab_pair, kwargs, exc, name):
    target, draft = tiny_vocab_pair
    with pytest.raises(exc, match=name):
        specdec.generate(target, draft, PROMPT, max_new_tokens=2, temperature=1.0, **kwargs)


def test_warping_matches_transformers_on_random_logits():
    """Sampling.probs/penalise against transformers' processors on random [4, 50] logits."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g, dtype=torch.float64) * 3
    ids = torch.randint(0, 50, (4, 7), generator=g)
    for controls in CONTROLS.values():
        s = Sampling(temperature=0.8, **controls)
        seen = torch.zeros(4, 50, dtype=torch.bool).scatter_(1, ids, True)
        ours = s.probs(s.penalise(logits, seen)).double()
        theirs = torch.softmax(_hf_processors(0.8, **controls)(ids, logits.clone()), -1)
        assert torch.allclose(ours, theirs, atol=1e-6), controls
