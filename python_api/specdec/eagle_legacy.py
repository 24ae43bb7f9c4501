"""specdec's earlier EAGLE head layout, kept only to load the shipped ``smollm2_eagle`` weights until a
head in EAGLE-3's layout is trained for SmolLM2 (``bench/models/train_eagle_head.py --target smollm2``).

Differences from :class:`specdec.eagle.EagleHead` (EAGLE-3's layout): the layer input is
``fuse(cat(embedding, feature))`` (width hidden) normed by the layer's ``input_layernorm``, the residual
stream starts from that fused input, and the LM head is the target's (or a
:class:`specdec.layers.SubsetLMHead` over the target's embedding rows). It was trained with an entry for
token 0 (with a zero feature), which :class:`specdec.eagle.HeadDrafter` no longer creates: it drafts a
little less well than it did, and speculative decoding stays exact. It cannot be exported to vLLM or
SGLang, and nothing trains it any more.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from specdec.eagle import EagleConfig, EagleHead, shape_mismatch


class LegacyEagleHead(EagleHead):
    """The fused-input head of specdec before EAGLE-3's layout (load-only)."""

    exportable = False

    def __init__(self, config: EagleConfig, embed_tokens: nn.Module, lm_head: nn.Module):
        nn.Module.__init__(self)
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

        self.config = config
        d = config.hidden_size
        lc = config.llama_config()
        self.fc = nn.Linear(len(config.feature_layers) * d, d, bias=False)
        self.fuse = nn.Linear(2 * d, d, bias=False)  # [token embedding, feature] -> the layer's input
        self.layer = LlamaDecoderLayer(lc, layer_idx=0)  # parameters only
        self.norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.rotary = LlamaRotaryEmbedding(lc)
        self.own_embedding = False
        object.__setattr__(self, "embed_tokens", embed_tokens)
        object.__setattr__(self, "lm_head", lm_head)

    def attention_inputs(self, tokens, feature, positions):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn, c = self.layer.self_attn, self.config
        x = self.fuse(torch.cat([self.embed_tokens(tokens).to(feature.dtype), feature], -1))
        h = self.layer.input_layernorm(x)
        B, N, _ = h.shape
        q = attn.q_proj(h).view(B, N, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, N, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, N, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.rotary(h, positions)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v, x

    def finish(self, residual, attn_out):
        B, _, N, _ = attn_out.shape
        x = residual + self.layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(B, N, -1))
        return x + self.layer.mlp(self.layer.post_attention_layernorm(x))

    def draft_logits(self, hidden):
        return self.logits(hidden)

    def logits(self, hidden):
        return self.lm_head(self.norm(hidden))

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}
        if getattr(self.lm_head, "token_ids", None) is not None:
            state["lm_head.token_ids"] = self.lm_head.token_ids
        return state

    def save(self, *args, **kwargs):
        raise TypeError("LegacyEagleHead is load-only: train a head in EAGLE-3's layout instead")


def load_legacy_head(target, path: Path, raw: dict) -> LegacyEagleHead:
    """A head saved in the earlier layout (config.json with ``feature_layers``, weights ``fuse``,
    ``layer.*``, optional ``lm_head.token_ids``) around ``target``'s embedding and LM head."""
    from safetensors.torch import load_file

    from specdec.layers import SubsetLMHead

    fields = {f.name for f in dataclasses.fields(EagleConfig)}
    config = EagleConfig(**{k: v for k, v in raw.items() if k in fields}, draft_vocab_size=raw.get("subset_size", 0))
    why = shape_mismatch(config, target)
    if why:
        raise ValueError(f"the EAGLE head at {path} was trained for another target: {why}")
    state = load_file(str(path / "model.safetensors"))
    emb = target.get_input_embeddings()
    token_ids = state.pop("lm_head.token_ids", None)
    lm_head = SubsetLMHead(emb.weight, token_ids) if token_ids is not None else target.get_output_embeddings()
    p = next(target.parameters())
    head = LegacyEagleHead(config, emb, lm_head)
    missing, unexpected = head.load_state_dict({k: v.to(p.dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.startswith("rotary.")]
    if missing or unexpected:
        raise ValueError(
            f"EAGLE head checkpoint {path} does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return head.to(device=p.device, dtype=p.dtype).eval()
