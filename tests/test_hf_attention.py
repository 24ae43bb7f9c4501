"""The "specdec_tree" attention hook on stock transformers models (tiny random configs, no download).

A prompt is prefilled, a random token tree is forwarded in one call with positions prefix + depth, and
the logits at every node must equal those of running that node's root-to-node path causally with the
model's own eager attention.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from specdec import hf_attention  # noqa: E402
from specdec_kernels import trees  # noqa: E402

VOCAB = 97
ATOL = RTOL = 2e-5  # fp32 end to end; the two paths differ only in summation order


def tiny_model(family: str, attn: str = "eager"):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation=attn))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation=attn, use_sliding_window=False))
    return model.eval()


def random_tree(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)])


def path(parents: torch.Tensor, i: int) -> list[int]:
    """Node indices from the root to node i."""
    out = []
    while i >= 0:
        out.append(i)
        i = int(parents[i])
    return out[::-1]


@torch.no_grad()
def path_logits(model, prompt: list[int], tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """[N, V]: for each node, the last logits of prompt + root..node run causally without a cache."""
    model.set_attn_implementation("eager")
    rows = []
    for i in range(parents.shape[0]):
        ids = torch.tensor([prompt + [int(tokens[j]) for j in path(parents, i)]])
        rows.append(model(ids).logits[0, -1])
    return torch.stack(rows)


class BufferCache:
    """A minimal cache over one ``[L, 2, B, H, S_max, D]`` buffer (the project's layout).

    ``update`` writes the new tokens of sequence b at ``write_pos[b] + 0 .. n-1`` and returns the layer's
    whole strided views, so ragged batches keep each tree right after its own prefix.
    """

    def __init__(self, layers, batch, heads, max_len, head_dim):
        self.buf = torch.zeros(layers, 2, batch, heads, max_len, head_dim)
        self.write_pos = torch.zeros(batch, dtype=torch.int64)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        b, h, n, d = key_states.shape
        idx = (self.write_pos[:, None] + torch.arange(n))[:, None, :, None].expand(b, h, n, d)
        self.buf[layer_idx, 0].scatter_(2, idx, key_states)
        self.buf[layer_idx, 1].scatter_(2, idx, value_states)
        return self.buf[layer_idx, 0], self.buf[layer_idx, 1]


@pytest.fixture(scope="module", autouse=True)
def _registered():
    assert hf_attention.register() == "specdec_tree"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.no_grad()
def test_tree_logits_equal_path_logits_dynamic_cache(family):
    # Same-length prompts, a different random tree per sequence, transformers' DynamicCache.
    gen = torch.Generator().manual_seed(1)
    model = tiny_model(family, attn="sdpa")
    B, P, N = 2, 11, 9
    prompts = torch.randint(0, VOCAB, (B, P), generator=gen)
    parents = torch.stack([random_tree(N, gen) for _ in range(B)])
    tokens = torch.randint(0, VOCAB, (B, N), generator=gen)

    cache = DynamicCache(config=model.config)
    model(prompts, past_key_values=cache, use_cache=True)  # prefill with the stock sdpa attention
    model.set_attn_implementation("specdec_tree")
    out = model(
        tokens,
        position_ids=trees.tree_position_ids(parents, torch.full((B,), P)),
        past_key_values=cache,
        use_cache=True,
        tree_mask=trees.ancestor_mask(parents),
        kv_lens=torch.full((B,), P + N, dtype=torch.int64),
    )
    for b in range(B):
        expect = path_logits(model, prompts[b].tolist(), tokens[b], parents[b])
        torch.testing.assert_close(out.logits[b], expect, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.no_grad()
def test_ragged_batch_buffer_cache_packed_mask(family):
    # Ragged prompts in one preallocated buffer; prefill through the hook itself with a chain mask
    # (right-padded), then one shared tree with a packed mask, Triton kernel through the interpreter.
    gen = torch.Generator().manual_seed(2)
    model = tiny_model(family, attn="specdec_tree")
    cfg = model.config
    lens = [5, 12]
    B, P_max, N = len(lens), max(lens), 7
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lens]
    padded = torch.tensor([p + [0] * (P_max - len(p)) for p in prompts])
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    cache = BufferCache(cfg.num_hidden_layers, B, cfg.num_key_value_heads, 40, head_dim)

    model(
        padded,
        position_ids=torch.arange(P_max).expand(B, -1),
        past_key_values=cache,
        use_cache=True,
        tree_mask=trees.ancestor_mask(trees.chain_parents(P_max)),
        kv_lens=torch.full((B,), P_max, dtype=torch.int64),
    )

    parents = random_tree(N, gen)
    tokens = torch.randint(0, VOCAB, (B, N), generator=gen)
    prefix = torch.tensor(lens)
    cache.write_pos = prefix.clone()  # each tree right after its own prompt (over the padding)
    out = model(
        tokens,
        position_ids=trees.tree_position_ids(parents, prefix),
        past_key_values=cache,
        use_cache=True,
        tree_mask=trees.packed_ancestor_mask(parents),
        kv_lens=prefix + N,
        tree_attention_backend="triton",
    )
    for b in range(B):
        expect = path_logits(model, prompts[b], tokens[b], parents)
        torch.testing.assert_close(out.logits[b], expect, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_missing_kwargs_raise_clear_error():
    model = tiny_model("llama", attn="specdec_tree")
    ids = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="tree_mask and kv_lens"):
        model(ids)
    with pytest.raises(ValueError, match="kv_lens"):
        model(ids, tree_mask=torch.ones(4, 4, dtype=torch.bool).tril())


@torch.no_grad()
def test_bad_tree_mask_named():
    model = tiny_model("llama", attn="specdec_tree")
    ids = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="tree_mask"):
        model(ids, tree_mask=torch.ones(3, 3, dtype=torch.bool), kv_lens=torch.tensor([4]))


# ---------------------------------------------------------------------------------------------------
# Sliding windows, soft-capping, sinks: what each model passes reaches the kernel
# ---------------------------------------------------------------------------------------------------

WINDOW = 5
WINDOW_FAMILIES = {  # config class name, extra config, what the layers use
    "mistral": ("MistralConfig", dict(sliding_window=WINDOW), ("window",)),
    "gemma2": (
        "Gemma2Config",
        # Gemma's scaled, tied embeddings settle on one repeated token at std 0.3; at 0.1 (and the cap
        # well inside the scores' range) the output depends on both the window and the cap.
        dict(sliding_window=WINDOW, attn_logit_softcapping=1.0, query_pre_attn_scalar=1, initializer_range=0.1),
        ("window", "softcap"),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"], initializer_range=0.1),
        ("window",),
    ),
    "qwen2": ("Qwen2Config", dict(sliding_window=WINDOW, use_sliding_window=True, max_window_layers=1), ("window",)),
    "gpt_oss": (
        "GptOssConfig",
        dict(sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2),
        ("window", "sinks"),
    ),
    # These two pass no sliding_window keyword: the hook reads the module (Qwen2-MoE) or the config (PhiMoE).
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            sliding_window=WINDOW,
            use_sliding_window=True,
            max_window_layers=1,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        ("window",),
    ),
    "phimoe": ("PhimoeConfig", dict(sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2), ("window",)),
}


def window_model(family: str):
    """Tiny random model of a family with a sliding window (eager attention), head_dim 16 = hidden / heads.
    Init std 0.3 (Gemma 0.1) so that tokens far back change the logits: the window matters, which
    test_dropping_a_feature_changes_the_output checks."""
    cls, extra, _ = WINDOW_FAMILIES[family]
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    config = getattr(transformers, cls)(**{**common, **extra})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def perturbed(model, scale=0.05, seed=1):
    """A draft that mostly agrees with the target: its weights plus small noise."""
    import copy

    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return draft


@pytest.fixture(scope="module")
def window_models():
    return {}


def cached_window_model(cache, family):
    if family not in cache:
        cache[family] = window_model(family)
    return cache[family]


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3", "qwen2", "gpt_oss"])
def test_window_models_greedy_generate_equals_transformers(family, window_models):
    # Prompt 9 + 16 new tokens, window 5: a chain, an EAGLE-2 tree with a perturbed draft and prompt lookup
    # all reproduce transformers' greedy decoding (fp32, the reference kernel on CPU).
    import specdec
    from specdec import Chain, DynamicTree, PromptLookup

    target = cached_window_model(window_models, family)
    draft = perturbed(target)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    expected = target.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    strategies = {
        "chain": (Chain(3), draft),
        "eagle2": (DynamicTree("eagle2", budget=6, top_k=2, depth=3), draft),
        "lookup": (PromptLookup(k=4), None),
    }
    for name, (strategy, d) in strategies.items():
        out = specdec.generate(target, d, ids, max_new_tokens=16, strategy=strategy)
        assert torch.equal(out.sequences, expected), f"{family} {name}"


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3", "qwen2", "gpt_oss"])
def test_dropping_a_feature_changes_the_output(family, window_models, monkeypatch):
    # The models above depend on what the hook passes: with any one feature dropped before the kernel,
    # greedy decoding departs from transformers' (so the test above would catch a dropped argument).
    import specdec
    from specdec import PromptLookup

    target = cached_window_model(window_models, family)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    expected = target.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    real = hf_attention.tree_attention
    for feature in WINDOW_FAMILIES[family][2]:

        def dropping(*args, feature=feature, **kwargs):
            kwargs[feature] = None
            return real(*args, **kwargs)

        monkeypatch.setattr(hf_attention, "tree_attention", dropping)
        out = specdec.generate(target, None, ids, max_new_tokens=6, strategy=PromptLookup(k=4))
        assert not torch.equal(out.sequences, expected), f"{family} does not depend on {feature}"
    monkeypatch.setattr(hf_attention, "tree_attention", real)


@pytest.mark.parametrize(
    "family,backend",
    [("qwen2_moe", "reference"), ("phimoe", "triton"), ("gemma2", "triton"), ("gpt_oss", "triton")],
)
@torch.no_grad()
def test_window_tree_logits_equal_path_logits(family, backend, window_models):
    # Prefill 11 tokens through the hook (chain mask), then a random tree of 8 nodes: every node's logits
    # equal the model's own eager attention over its root-to-node path (window 5 < prompt and < depth).
    gen = torch.Generator().manual_seed(4)
    model = cached_window_model(window_models, family)
    cfg = model.config
    P, N = 11, 8
    prompt = torch.randint(0, VOCAB, (1, P), generator=gen)
    cache = BufferCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 32, 16)  # head_dim 16
    model.set_attn_implementation("specdec_tree")
    try:
        model(
            prompt,
            position_ids=torch.arange(P)[None],
            past_key_values=cache,
            use_cache=True,
            tree_mask=trees.ancestor_mask(trees.chain_parents(P)),
            kv_lens=torch.tensor([P]),
            tree_attention_backend=backend,
        )
        parents = torch.tensor([-1, 0, 1, 2, 3, 1, 5, 4])  # depth up to 5: past the window inside the tree
        tokens = torch.randint(0, VOCAB, (1, N), generator=gen)
        cache.write_pos = torch.tensor([P])
        out = model(
            tokens,
            position_ids=trees.tree_position_ids(parents, torch.tensor([P])),
            past_key_values=cache,
            use_cache=True,
            tree_mask=trees.packed_ancestor_mask(parents),
            kv_lens=torch.tensor([P + N]),
            tree_attention_backend=backend,
        )
        expect = path_logits(model, prompt[0].tolist(), tokens[0], parents)
    finally:
        model.set_attn_implementation("eager")
    torch.testing.assert_close(out.logits[0], expect, atol=ATOL, rtol=RTOL)


def test_window_of_each_layer():
    # keyword > module attribute > layer_types > config.sliding_window (models without layer types)
    class Module(torch.nn.Module):
        def __init__(self, layer_idx, **config):
            super().__init__()
            self.layer_idx = layer_idx
            self.config = type("Config", (), config)()

    types = dict(layer_types=["sliding_attention", "full_attention"], sliding_window=7)
    assert hf_attention.layer_window(Module(0, **types), {"sliding_window": 3}) == 3
    assert hf_attention.layer_window(Module(0, **types), {"sliding_window": None}) is None
    assert hf_attention.layer_window(Module(0, **types), {}) == 7
    assert hf_attention.layer_window(Module(1, **types), {}) is None
    assert hf_attention.layer_window(Module(1, sliding_window=9), {}) == 9
    assert hf_attention.layer_window(Module(1), {}) is None
    with_attr = Module(1, **types)
    with_attr.sliding_window = 4
    assert hf_attention.layer_window(with_attr, {}) == 4
    chunked = dict(layer_types=["chunked_attention", "full_attention"], attention_chunk_size=8192)
    with pytest.raises(ValueError, match="chunked attention"):
        hf_attention.layer_window(Module(0, **chunked), {})
    assert hf_attention.layer_window(Module(1, **chunked), {}) is None


@torch.no_grad()
def test_unknown_attention_kwargs_are_refused_by_name():
    model = tiny_model("llama", attn="specdec_tree")
    ids = torch.randint(0, VOCAB, (1, 4))
    base = dict(tree_mask=torch.ones(4, 4, dtype=torch.bool).tril(), kv_lens=torch.tensor([4]))
    model(ids, **base, output_attentions=False)  # harmless
    for name, value in (("attention_chunk_size", 2), ("is_causal", False), ("output_attentions", True)):
        with pytest.raises(ValueError, match=f"attention argument {name}="):
            model(ids, **base, **{name: value})
