"""EAGLE-3 checkpoints: an exported head drafts exactly what EAGLE-3's forward, written here from the file
format alone, drafts; exports carry each runtime's layer ids and every tensor the loaders need; heads in
other trainers' layouts import and stay exact with every strategy."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_eagle import _random_head
from test_generate import POLICIES, plain_greedy, ragged_batch, tiny_model

import specdec
from specdec.eagle import FeatureTap, HeadDrafter, export, load_head, new_head, required_tensors
from specdec.runner import tree_attention_enabled

V = 97


# -- a reference of EAGLE-3's draft forward, from config.json and the tensor names only -----------------
def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    """Rotary embedding, rotate-half convention (Llama's), on x [n, H, D] at positions pos [n]."""
    D = x.shape[-1]
    inv = theta ** -(torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos[:, None].double() * inv[None]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()[:, None]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()[:, None]
    half = torch.cat([-x[..., D // 2 :], x[..., : D // 2]], -1)
    return x * cos + half * sin


class Eagle3Reference:
    """vLLM's Eagle3 Llama draft model as a plain function of the checkpoint: q/k/v of
    cat(input_layernorm(embed), hidden_norm(h)), residual h, o_proj, post-attention norm, SiLU MLP, final
    norm, lm_head over the draft vocabulary, target id = draft id + d2t. Recomputes every entry at each
    step (no cache), with causal attention over entries (token e + 1, feature of e) at position e."""

    def __init__(self, path, embedding: torch.Tensor):
        self.cfg = json.loads((path / "config.json").read_text())
        self.w = {
            k: (v.float() if v.is_floating_point() else v)
            for k, v in load_file(str(path / "model.safetensors")).items()
        }
        self.emb = embedding.float()

    def layer(self, tokens, hidden):
        c, w = self.cfg, self.w
        n, eps = len(tokens), c["rms_norm_eps"]
        Hq, Hkv, D = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        e = _rms(self.emb[torch.tensor(tokens)], w["midlayer.input_layernorm.weight"], eps)
        hn = _rms(hidden, w["midlayer.hidden_norm.weight"], eps)
        residual = hn if c["norm_before_residual"] else hidden
        x = torch.cat([e, hn], -1)
        pos = torch.arange(n)
        q = _rope((x @ w["midlayer.self_attn.q_proj.weight"].T).view(n, Hq, D), pos, c["rope_theta"])
        k = _rope((x @ w["midlayer.self_attn.k_proj.weight"].T).view(n, Hkv, D), pos, c["rope_theta"])
        v = (x @ w["midlayer.self_attn.v_proj.weight"].T).view(n, Hkv, D)
        k, v = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, Hq * D)
        h = residual + att @ w["midlayer.self_attn.o_proj.weight"].T
        m = _rms(h, w["midlayer.post_attention_layernorm.weight"], eps)
        gate, up = m @ w["midlayer.mlp.gate_proj.weight"].T, m @ w["midlayer.mlp.up_proj.weight"].T
        return h + (torch.nn.functional.silu(gate) * up) @ w["midlayer.mlp.down_proj.weight"].T

    def chain(self, target, context: list[int], k: int):
        """Greedy drafts after ``context`` (its last token the root) and the draft-vocabulary logits of each."""
        c, w = self.cfg, self.w
        with torch.no_grad():
            hs = target(torch.tensor([context[:-1]]), output_hidden_states=True).hidden_states
        aux = torch.cat([hs[i][0].float() for i in c["eagle_aux_hidden_state_layer_ids"]], -1)
        tokens, hidden = list(context[1:]), list(aux @ w["fc.weight"].T)
        drafts, logits = [], []
        for _ in range(k):
            last = self.layer(tokens, torch.stack(hidden))[-1]  # the pre-norm state feeds the next step
            z = _rms(last, w["norm.weight"], c["rms_norm_eps"]) @ w["lm_head.weight"].T
            i = int(z.argmax())
            drafts.append(i + int(w["d2t"][i]))
            logits.append(z)
            tokens.append(drafts[-1])
            hidden.append(last)
        return drafts, logits


def drafter_chain(head, target, context: list[int], k: int):
    """HeadDrafter's greedy chain after ``context``, as the loop runs it (prefill, catch-up, drafting)."""

    class Rows:
        ctx = torch.tensor([len(context)])

    x = torch.tensor([context])
    P = len(context) - 1
    tap = FeatureTap(target, head.config.feature_layers)
    ids = torch.arange(head.config.draft_vocab_size) + head.d2t
    drafts, logits = [], []
    with torch.no_grad():
        target(x[:, :P])  # the target's prefill: the tap keeps its features
    with torch.no_grad(), tree_attention_enabled(target):
        d = HeadDrafter(head, tap, 1, P + k + 4)
        d.prefill(x[:, :P], torch.ones(1, P, dtype=torch.long), x[:, P], tap.features())
        z = d.begin(Rows())[0]
        for j in range(1, k + 1):
            drafts.append(int(z.argmax()))
            logits.append(z[ids])
            if j < k:
                pos = torch.tensor([[P + j]])
                z = d.forward(torch.tensor([[drafts[-1]]]), pos, torch.ones(1, 1, dtype=torch.bool), pos[0])[0, 0]
    tap.remove()
    return drafts, logits


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def target_and_subset_head(request):
    """A 5-layer target (three aux layers in 1..4) and a random head over 61 of its 97 tokens."""
    target = tiny_model(request.param, 5, 64, seed=2)
    subset = torch.randperm(V, generator=torch.Generator().manual_seed(3))[:61]
    head = new_head(target, (1, 2, 4), subset)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return target, head.eval()


@pytest.mark.parametrize("runtime", ["vllm", "sglang"])
def test_exported_head_drafts_what_eagle3_drafts(target_and_subset_head, runtime, tmp_path):
    """Greedy chains of 5 drafts after 4 contexts (lengths 2..23): the head loaded from its export drafts
    the same tokens as the reference reading the vLLM export, with the same logits."""
    target, head = target_and_subset_head
    export(head, tmp_path / "vllm", runtime="vllm")
    export(head, tmp_path / runtime, runtime=runtime)
    loaded = load_head(target, tmp_path / runtime)
    ref = Eagle3Reference(tmp_path / "vllm", target.get_input_embeddings().weight.detach())
    g = torch.Generator().manual_seed(5)
    for n in (2, 7, 16, 23):
        context = torch.randint(0, V, (n,), generator=g).tolist()
        want, want_logits = ref.chain(target, context, 5)
        got, got_logits = drafter_chain(loaded, target, context, 5)
        assert got == want, f"context of {n}: drafts {got}, reference {want}"
        for a, b in zip(got_logits, want_logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_export_writes_each_runtimes_ids_and_every_tensor(target_and_subset_head, tmp_path):
    target, head = target_and_subset_head
    cfg = {}
    for runtime in ("vllm", "sglang"):
        export(head, tmp_path / runtime, runtime=runtime)
        cfg[runtime] = json.loads((tmp_path / runtime / "config.json").read_text())
        assert cfg[runtime]["architectures"] == ["LlamaForCausalLMEagle3"]
        assert cfg[runtime]["tie_word_embeddings"] is False and cfg[runtime]["norm_before_residual"] is False
        assert cfg[runtime]["draft_vocab_size"] == 61 and cfg[runtime]["vocab_size"] == V
        tensors = load_file(str(tmp_path / runtime / "model.safetensors"))
        assert set(tensors) == set(required_tensors(head.config))
        assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
        assert int(tensors["t2d"].sum()) == 61
        # d2t maps draft id i to the i-th smallest subset token; t2d marks exactly those
        ids = torch.arange(61) + tensors["d2t"]
        assert torch.equal(ids, torch.nonzero(tensors["t2d"])[:, 0])
        assert torch.equal(tensors["lm_head.weight"], head.lm_head.weight.detach())
    # vLLM names the layer a hidden state enters (0-indexed), SGLang the one it leaves: one less
    assert cfg["vllm"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 4]
    assert cfg["vllm"]["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 4]
    assert cfg["sglang"]["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 3]
    assert "eagle_aux_hidden_state_layer_ids" not in cfg["sglang"]
    with torch.no_grad():
        hs = target(torch.tensor([[5, 6, 7]]), output_hidden_states=True).hidden_states
        layer_out = []
        hook = target.model.layers[0].register_forward_hook(
            lambda m, a, o: layer_out.append(o[0] if isinstance(o, tuple) else o)
        )
        target(torch.tensor([[5, 6, 7]]))
        hook.remove()
    torch.testing.assert_close(hs[1], layer_out[0])  # aux id 1 (vLLM) = output of layer 0 (SGLang's id 0)


def test_export_refuses_what_the_loaders_would_fill_silently(target_and_subset_head, tmp_path, monkeypatch):
    target, head = target_and_subset_head
    state = head.trained_state()
    monkeypatch.setattr(
        head, "trained_state", lambda: {k: v for k, v in state.items() if k != "midlayer.hidden_norm.weight"}
    )
    with pytest.raises(ValueError, match=r"missing \['midlayer.hidden_norm.weight'\]"):
        export(head, tmp_path / "a")
    monkeypatch.setattr(head, "trained_state", lambda: {**state, "d2t": state["d2t"] + 1})
    with pytest.raises(ValueError, match="d2t maps draft ids outside"):
        export(head, tmp_path / "b")
    with pytest.raises(ValueError, match="runtime must be one of"):
        export(_random_head(target, 1), tmp_path / "c", runtime="tgi")
    two = new_head(tiny_model("llama", 3, 64, seed=2))  # a 3-layer target: aux ids (1, 2) only
    with pytest.raises(ValueError, match="exactly 3 aux layers"):
        export(two, tmp_path / "d")
    with pytest.raises(ValueError, match="feature_layers must be sorted distinct aux layer ids in 1..4"):
        new_head(target, (1, 2, 5))


def _renamed_tensors(src):
    """The exported tensors as speculators / SpecForge name them: ``layers.0.`` for ``midlayer.``, no t2d."""
    t = load_file(str(src / "model.safetensors"))
    return {k.replace("midlayer.", "layers.0."): v for k, v in t.items() if k != "t2d"}


@pytest.mark.parametrize("layout", ["speculators", "specforge-sglang"])
def test_heads_trained_elsewhere_import_and_stay_exact(target_and_subset_head, layout, tmp_path):
    target, head = target_and_subset_head
    export(head, tmp_path / "src", runtime="vllm")
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    del cfg["specdec"]
    (tmp_path / "dst").mkdir()
    tensors = _renamed_tensors(tmp_path / "src")
    tensors["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().clone()
    if layout == "speculators":
        layer_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
        cfg = {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "transformer_layer_config": {k: cfg.pop(k) for k in layer_keys}
            | {"vocab_size": V, "rms_norm_eps": cfg["rms_norm_eps"]},
            "draft_vocab_size": 61,
            "norm_before_residual": False,
            "eagle_aux_hidden_state_layer_ids": [1, 2, 4],
            "rope_theta": cfg["rope_theta"],
        }
        runtime = "vllm"
    else:  # SpecForge: flat, ids only in eagle_config and in SGLang's numbering, model. prefixes
        del cfg["eagle_aux_hidden_state_layer_ids"]
        cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [0, 1, 3]
        tensors = {("model." + k if k.startswith("layers.") else k): v for k, v in tensors.items()}
        runtime = "sglang"
    (tmp_path / "dst" / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(tmp_path / "dst" / "model.safetensors"))
    loaded = load_head(target, tmp_path / "dst", runtime=runtime)
    assert loaded.config.feature_layers == (1, 2, 4) and not loaded.own_embedding
    for k, v in head.trained_state().items():
        torch.testing.assert_close(loaded.trained_state()[k], v, atol=0, rtol=0)
    ids, mask = ragged_batch(V, [6, 11], seed=8)
    expected = plain_greedy(target, ids, mask, 10)
    for name, make in POLICIES.items():
        out = specdec.generate(target, loaded, ids, attention_mask=mask, max_new_tokens=10, strategy=make())
        assert torch.equal(out.sequences, expected), name


def test_foreign_heads_specdec_cannot_run_are_refused(target_and_subset_head, tmp_path):
    target, head = target_and_subset_head
    export(head, tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    (tmp_path / "h" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match="one-layer silu EAGLE-3 heads"):
        load_head(target, tmp_path / "h")
    (tmp_path / "h" / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="is not an EAGLE-3 Llama head"):
        load_head(target, tmp_path / "h")
    (tmp_path / "h" / "config.json").write_text(json.dumps(cfg))
    t = load_file(str(tmp_path / "h" / "model.safetensors"))
    del t["midlayer.mlp.up_proj.weight"]
    save_file(t, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['midlayer.mlp.up_proj.weight'\]"):
        load_head(target, tmp_path / "h")


def test_the_shipped_smollm2_head_is_eagle3_and_the_earlier_layout_is_refused(target_and_subset_head, tmp_path):
    """SmolLM2's shipped head is in EAGLE-3's layout (what vLLM serves); a file in specdec's earlier fused
    layout (``feature_layers``, no ``architectures``) is refused with what to do, not half-loaded."""
    raw = json.loads((specdec.models.head_dir("smollm2") / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLMEagle3"] and raw["draft_vocab_size"] == 8192
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"feature_layers": [1, 2, 3], "hidden_size": 64}))
    save_file({"fuse.weight": torch.zeros(2, 2)}, str(tmp_path / "old" / "model.safetensors"))
    with pytest.raises(ValueError, match="earlier fused layout.*train_eagle_head"):
        load_head(target_and_subset_head[0], tmp_path / "old")
