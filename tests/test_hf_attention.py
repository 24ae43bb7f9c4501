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
