"""EAGLE-3 draft heads: draft from the target's own hidden states at the cost of one decoder layer.

A head (Li et al., EAGLE 2024; EAGLE-3 2025) predicts the token after position p+1 from token x_{p+1}
and a feature of position p, in EAGLE-3's exact layout (the one vLLM and SGLang serve as
``LlamaForCausalLMEagle3``, the one SpecForge and speculators train):

* the feature is ``fc(cat(aux_1, aux_2, aux_3))``: the target's hidden states at position p after a low,
  a middle and a high decoder layer (``feature_layers``: id k = the residual stream entering the
  target's 0-indexed layer k, i.e. ``output_hidden_states[k]``, before the final norm), projected to the
  head's width; past the root it is the head's own pre-norm output at the parent node instead (the
  target has not run the drafted tokens yet);
* ``midlayer``: q/k/v read ``cat(input_layernorm(embed(x_{p+1})), hidden_norm(feature))`` (width
  2 * hidden); the residual stream starts from the feature itself (``norm_before_residual=False``; True:
  from ``hidden_norm(feature)``), then o_proj, the post-attention norm and the MLP add to it;
* ``norm`` and the head's own ``lm_head`` over ``draft_vocab_size`` target tokens (draft id i is target
  id ``i + d2t[i]``); the pre-norm hidden state is what the next draft step reads.

The entry for (x_{p+1}, feature of p) sits at rotary position p, as in vLLM (token 0 has no entry: no
feature precedes it). The module is plain torch; its forward takes token ids, positions, features and
a KV buffer and returns logits and its hidden state. :func:`export` writes a head in vLLM's or SGLang's
format, :func:`load_head` reads either (and heads trained elsewhere).

:class:`HeadDrafter` runs a head inside :func:`specdec.generate`. Its cache holds, for every committed
position, the entry computed from the target's true feature: each step first *catches up* over the
tokens emitted since the last step (their features come from the verify forward that already ran,
never from an extra target forward), which yields the root's distribution, then drafts from its own
hidden states. Draft entries past the root are rewritten by the next catch-up, so the head's cache
needs no compaction (EAGLE re-runs accepted tokens with the target's features the same way).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

import specdec_kernels as sk
from specdec.cache import grown, next_capacity

CATCH_UP_CHUNK = 512  # tokens per catch-up forward (the tree-attention kernel takes up to 1024 nodes)
ARCHITECTURE = "LlamaForCausalLMEagle3"  # what vLLM and SGLang map to their EAGLE-3 Llama draft model
RUNTIMES = ("vllm", "sglang")
OUTSIDE = -1.0e4  # logit of target tokens outside the draft vocabulary (as specdec.layers.SubsetLMHead)


@dataclasses.dataclass
class EagleConfig:
    """A head's shape and what it reads from its target (the fields of an EAGLE-3 ``config.json``)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_parameters: dict
    vocab_size: int  # the target's vocabulary
    target_layers: int  # the target's decoder layer count
    feature_layers: tuple  # aux ids, sorted: k = output_hidden_states[k] of the target (0 < k < target_layers)
    draft_vocab_size: int = 0  # rows of the head's lm_head (0: vocab_size)
    max_position_embeddings: int = 8192
    norm_before_residual: bool = False

    def __post_init__(self):
        self.feature_layers = tuple(int(i) for i in self.feature_layers)
        self.draft_vocab_size = int(self.draft_vocab_size or self.vocab_size)

    @classmethod
    def for_target(cls, target, feature_layers, draft_vocab_size: int = 0) -> EagleConfig:
        c = target.config.get_text_config()
        heads = c.num_attention_heads
        return cls(
            c.hidden_size,
            c.intermediate_size,
            heads,
            getattr(c, "num_key_value_heads", None) or heads,
            getattr(c, "head_dim", None) or c.hidden_size // heads,
            c.rms_norm_eps,
            _rope_parameters(c),
            c.vocab_size,
            c.num_hidden_layers,
            tuple(feature_layers),
            draft_vocab_size,
            getattr(c, "max_position_embeddings", 8192),
        )

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=dict(self.rope_parameters),
            vocab_size=self.vocab_size,
            num_hidden_layers=1,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
        )


def _rope_parameters(c) -> dict:
    """A transformers config's RoPE settings as a ``rope_parameters`` dict (transformers 5 keeps them
    there; older configs have ``rope_theta`` and ``rope_scaling``)."""
    rope = getattr(c, "rope_parameters", None) if not isinstance(c, dict) else c.get("rope_parameters")
    if rope:
        return dict(rope)
    get = c.get if isinstance(c, dict) else lambda k, d=None: getattr(c, k, d)
    scaling = dict(get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    return {"rope_type": rope_type, "rope_theta": float(get("rope_theta", 10000.0)), **scaling}


def eagle3_layers(num_layers: int) -> tuple[int, ...]:
    """Low, middle and high aux layer ids: vLLM's and SGLang's default (2, L // 2, L - 3) for targets
    deep enough to have three distinct ones, else as many distinct ids in 1 .. L - 1 as fit."""
    L = num_layers
    if L >= 8:
        return (2, L // 2, L - 3)
    ids = tuple(sorted({1, L // 2, L - 1} & set(range(1, L))))
    if not ids:
        raise ValueError(f"an EAGLE-3 head needs a target with at least 2 decoder layers, got {L}")
    return ids


def check_feature_layers(layers, target_layers: int) -> None:
    """ValueError unless ``layers`` are sorted, distinct aux ids a serving engine can tap (1 .. L - 1:
    id 0 is the embedding and L the final-normed state, which vLLM's decoder loop never hands over)."""
    layers = tuple(layers)
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] > target_layers - 1:
        raise ValueError(
            f"feature_layers must be sorted distinct aux layer ids in 1..{target_layers - 1} "
            f"(the target has {target_layers} decoder layers), got {list(layers)}"
        )


class Eagle3Attention(nn.Module):
    """q/k/v over the 2 * hidden concatenation, o_proj back to hidden (no biases)."""

    def __init__(self, c: EagleConfig):
        super().__init__()
        d, D = c.hidden_size, c.head_dim
        self.q_proj = nn.Linear(2 * d, c.num_attention_heads * D, bias=False)
        self.k_proj = nn.Linear(2 * d, c.num_key_value_heads * D, bias=False)
        self.v_proj = nn.Linear(2 * d, c.num_key_value_heads * D, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * D, d, bias=False)


class Eagle3Layer(nn.Module):
    """EAGLE-3's one decoder layer (``midlayer``): its parameters; :class:`EagleHead` runs them."""

    def __init__(self, c: EagleConfig):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        d = c.hidden_size
        self.input_layernorm = LlamaRMSNorm(d, eps=c.rms_norm_eps)  # on the token embedding
        self.hidden_norm = LlamaRMSNorm(d, eps=c.rms_norm_eps)  # on the feature
        self.self_attn = Eagle3Attention(c)
        self.post_attention_layernorm = LlamaRMSNorm(d, eps=c.rms_norm_eps)
        self.mlp = LlamaMLP(c.llama_config())


class EagleHead(nn.Module):
    """An EAGLE-3 draft head. The token embedding is the target's (shared, not copied) unless the
    checkpoint brought its own; everything else is the head's, named as in the EAGLE-3 format, so
    :meth:`trained_state` is exactly what :func:`export` writes."""

    exportable = True

    def __init__(self, config: EagleConfig, embed_tokens: nn.Module, own_embedding: bool = False):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        c = self.config = config
        d = c.hidden_size
        self.fc = nn.Linear(len(c.feature_layers) * d, d, bias=False)  # target features -> width d
        self.midlayer = Eagle3Layer(c)
        self.norm = LlamaRMSNorm(d, eps=c.rms_norm_eps)
        self.lm_head = nn.Linear(d, c.draft_vocab_size, bias=False)
        # target id of draft id i = i + d2t[i]; t2d[t]: target token t is in the draft vocabulary
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.ones(c.vocab_size, dtype=torch.bool))
        self.rotary = LlamaRotaryEmbedding(c.llama_config())
        self.own_embedding = own_embedding
        if own_embedding:
            self.embed_tokens = embed_tokens
        else:  # shared with the target: kept out of this module's parameters and state_dict
            object.__setattr__(self, "embed_tokens", embed_tokens)

    # -- pieces (unrolled_forward runs them with its own attention) ------------------------------------
    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features [..., len(feature_layers) * d] -> the head's feature space [..., d]."""
        return self.fc(features)

    def attention_inputs(self, tokens: torch.Tensor, feature: torch.Tensor, positions: torch.Tensor):
        """Tokens [B, N], feature [B, N, d], positions [B, N] -> q [B, Hq, N, D], k, v [B, Hkv, N, D]
        (RoPE applied) and the residual stream [B, N, d] the attention output is added to."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer, c = self.midlayer, self.config
        emb = layer.input_layernorm(self.embed_tokens(tokens).to(feature.dtype))
        normed = layer.hidden_norm(feature)
        residual = normed if c.norm_before_residual else feature
        x = torch.cat([emb, normed], -1)
        B, N, _ = x.shape
        attn = layer.self_attn
        q = attn.q_proj(x).view(B, N, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(B, N, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(B, N, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.rotary(x, positions)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v, residual

    def finish(self, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual stream after attention ([B, Hq, N, D] output) and the MLP: the pre-norm hidden [B, N, d]."""
        layer = self.midlayer
        B, _, N, _ = attn_out.shape
        x = residual + layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(B, N, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary [..., draft_vocab_size]."""
        return self.lm_head(self.norm(hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the target's vocabulary [..., V]: the draft vocabulary's at their target ids,
        ``OUTSIDE`` elsewhere (the head never proposes those; its q there is exactly 0)."""
        sub = self.draft_logits(hidden)
        ids = torch.arange(sub.shape[-1], device=sub.device) + self.d2t
        out = sub.new_full((*sub.shape[:-1], self.config.vocab_size), OUTSIDE)
        return out.index_copy_(-1, ids, sub)

    # -- inference ------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        feature: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        start: torch.Tensor,
        tree_mask: torch.Tensor,
        logits: bool = True,
        max_kv_len: int | None = None,
    ):
        """One forward over N nodes per sequence written at cache slots ``start[b] + 0..N-1``.

        tokens, positions [B, N]; feature [B, N, d]: ``project_features`` of the target's features of each
        node's parent position, or the head's own hidden state at the parent node; k_cache, v_cache
        [B, Hkv, S, D], updated in place; tree_mask [N, N] / [B, N, N] bool (ancestors incl. self);
        max_kv_len: ``max(start) + N`` when the caller knows it (attention then reads no further).
        Returns (logits [B, N, V] fp32 or None, hidden [B, N, d]).
        """
        q, k, v, residual = self.attention_inputs(tokens, feature, positions)
        B, H, N, D = k.shape
        index = (start[:, None] + torch.arange(N, device=start.device)).view(B, 1, N, 1).expand(B, H, N, D)
        k_cache.scatter_(2, index, k)
        v_cache.scatter_(2, index, v)
        out = sk.tree_attention(q, k_cache, v_cache, start + N, tree_mask, check=False, max_kv_len=max_kv_len)
        hidden = self.finish(residual, out)
        return (self.logits(hidden).float() if logits else None), hidden

    # -- persistence ----------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The head's tensors under their EAGLE-3 names (the rotary buffers are derived, never saved)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    def save(self, path: str | Path, dtype: torch.dtype | None = None, **meta) -> None:
        """The files of :func:`export` for vLLM (what :func:`load_head` reads back), ``meta`` kept in
        config.json; unlike :func:`export`, any number of feature layers."""
        write_checkpoint(self, path, "vllm", dtype, **meta)


def shift(x: torch.Tensor, m: int) -> torch.Tensor:
    """x[:, p - m] at p (zeros for p < m), along dim 1."""
    if m == 0:
        return x
    return torch.cat([torch.zeros_like(x[:, :m]), x[:, :-m]], 1)


def unrolled_forward(head: EagleHead, tokens: torch.Tensor, g: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Training-time test (EAGLE-3 / HASS) over whole sequences: the head's hidden states [B, T, d] of
    draft steps 0..steps-1, with ``g`` [B, T, d] = ``project_features`` of the target's features.

    Index p of step s is the head's output after reading token p, drafting from anchor a = p - s: step 0
    reads the target's feature of p - 1, step s the head's step s-1 output at p - 1; it attends to step-0
    entries of tokens 1..a (the true-feature cache) and to steps 1..s at tokens a+1..p (its own draft
    entries). Token 0 has no entry (no feature precedes it), so index p of step s exists for p >= s + 1;
    the others are zeros. Exactly what :class:`HeadDrafter` computes when it drafts a chain from root a
    with the target's tokens as drafts (the property the tests check), so what is trained is what runs.
    """
    from transformers.models.llama.modeling_llama import repeat_kv

    B, T = tokens.shape
    c = head.config
    rep = c.num_attention_heads // c.num_key_value_heads
    scale = c.head_dim**-0.5
    E = T - 1  # entries: token e + 1 with the feature of e, at rotary position e
    toks = tokens[:, 1:]
    pos = torch.arange(E, device=tokens.device)[None].expand(B, E)
    idx = torch.arange(E, device=tokens.device)
    prev = g[:, :-1]
    keys, vals, outs = [], [], []
    for s in range(steps):
        q, k, v, residual = head.attention_inputs(toks, prev, pos)
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        keys.append(k)
        vals.append(v)
        s0 = (q @ keys[0].transpose(-1, -2)) * scale  # [B, H, E, E]
        s0 = s0.masked_fill(idx[None, :] > (idx[:, None] - s), float("-inf"))
        diag = [
            ((q * shift(keys[j].transpose(1, 2), s - j).transpose(1, 2)).sum(-1) * scale)[..., None]
            for j in range(1, s + 1)
        ]  # [B, H, E, 1] each
        w = torch.softmax(torch.cat([s0] + diag, -1).float(), -1).to(q.dtype)
        out = w[..., :E] @ vals[0]
        for j in range(1, s + 1):
            out = out + w[..., E + j - 1 : E + j] * shift(vals[j].transpose(1, 2), s - j).transpose(1, 2)
        h = head.finish(residual, out)
        outs.append(torch.cat([torch.zeros_like(h[:, :1]), h], 1))
        prev = shift(h, 1)
    return outs


def _decoder(model):
    """The decoder stack (embeddings, layers, final norm) of a transformers causal LM."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def new_head(target, feature_layers=None, subset: torch.Tensor | None = None) -> EagleHead:
    """An untrained head for ``target``: its layer initialised from the target's top layer (q/k/v read
    both halves of the concatenation with half the target's weights), its norm the target's final norm,
    ``fc`` picking the highest feature layer, ``lm_head`` the target's LM head rows of ``subset`` (token
    ids, default: the whole vocabulary). ``feature_layers`` default to :func:`eagle3_layers`."""
    L = target.config.get_text_config().num_hidden_layers
    layers = tuple(feature_layers) if feature_layers is not None else eagle3_layers(L)
    check_feature_layers(layers, L)
    V = target.config.get_text_config().vocab_size
    ids = torch.arange(V) if subset is None else torch.unique(subset.long().cpu())  # sorted, distinct
    if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= V:
        raise ValueError(f"subset must hold token ids in 0..{V - 1}, got {ids.numel()} ids")
    config = EagleConfig.for_target(target, layers, ids.numel())
    head = EagleHead(config, target.get_input_embeddings())
    inner = _decoder(target)
    top, m = inner.layers[L - 1], head.midlayer
    d, n = config.hidden_size, len(layers)
    with torch.no_grad():
        m.input_layernorm.weight.copy_(top.input_layernorm.weight)
        m.hidden_norm.weight.copy_(top.input_layernorm.weight)
        for name in ("q_proj", "k_proj", "v_proj"):
            w = getattr(top.self_attn, name).weight
            getattr(m.self_attn, name).weight.copy_(0.5 * torch.cat([w, w], 1))
        m.self_attn.o_proj.weight.copy_(top.self_attn.o_proj.weight)
        m.post_attention_layernorm.weight.copy_(top.post_attention_layernorm.weight)
        m.mlp.load_state_dict({k: v for k, v in top.mlp.state_dict().items() if k.endswith("weight")}, strict=False)
        head.norm.weight.copy_(inner.norm.weight)
        head.lm_head.weight.copy_(target.get_output_embeddings().weight[ids.to(head.lm_head.weight.device)])
        head.d2t.copy_(ids - torch.arange(ids.numel()))
        head.t2d.zero_()
        head.t2d[ids] = True
        head.fc.weight.zero_()
        head.fc.weight[:, (n - 1) * d :] = torch.eye(d)
    p = next(target.parameters())
    return head.to(device=p.device, dtype=p.dtype)


def shape_mismatch(config: EagleConfig, target) -> str | None:
    """Why a head of ``config`` cannot draft for ``target`` (width, vocabulary, layer count), or None."""
    t = target.config.get_text_config()
    have = (config.hidden_size, config.vocab_size, config.target_layers)
    want = (t.hidden_size, t.vocab_size, t.num_hidden_layers)
    if have == want:
        return None
    return (
        f"head built for width {have[0]}, vocabulary {have[1]}, {have[2]} layers; target has width "
        f"{want[0]}, vocabulary {want[1]}, {want[2]} layers"
    )


def check_head_fits(head, target) -> None:
    """ValueError unless ``head`` was built for a target of ``target``'s shape."""
    if not isinstance(head, EagleHead):
        raise TypeError(f"expected an EagleHead, got {type(head).__name__}")
    c = head.config
    why = shape_mismatch(c, target)
    if why:
        raise ValueError(f"the EAGLE head does not fit the target: {why}")
    check_feature_layers(c.feature_layers, c.target_layers)
    if not head.own_embedding and head.embed_tokens is not target.get_input_embeddings():
        raise ValueError(
            "the EAGLE head was built around another model's embeddings: load it with this target "
            "(specdec.eagle.load_head(target, path))"
        )


# -- the EAGLE-3 checkpoint format (vLLM / SGLang / SpecForge / speculators) ---------------------------
AUX_LAYERS = 3  # vLLM's and SGLang's EAGLE-3 Llama models size fc for exactly 3 aux hidden states


def required_tensors(c: EagleConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """Every tensor vLLM's EAGLE-3 Llama loader fills, with its shape (dtype None: any float type).

    The loader leaves a parameter that the file lacks at its initial value without a word, so the
    exporter and the importer both check a checkpoint against this list, exactly."""
    d, D, Hq, Hkv, inter = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    n = len(c.feature_layers)
    return {
        "fc.weight": ((d, n * d), None),
        "midlayer.input_layernorm.weight": ((d,), None),
        "midlayer.hidden_norm.weight": ((d,), None),
        "midlayer.self_attn.q_proj.weight": ((Hq * D, 2 * d), None),
        "midlayer.self_attn.k_proj.weight": ((Hkv * D, 2 * d), None),
        "midlayer.self_attn.v_proj.weight": ((Hkv * D, 2 * d), None),
        "midlayer.self_attn.o_proj.weight": ((d, Hq * D), None),
        "midlayer.post_attention_layernorm.weight": ((d,), None),
        "midlayer.mlp.gate_proj.weight": ((inter, d), None),
        "midlayer.mlp.up_proj.weight": ((inter, d), None),
        "midlayer.mlp.down_proj.weight": ((d, inter), None),
        "norm.weight": ((d,), None),
        "lm_head.weight": ((c.draft_vocab_size, d), None),
        "d2t": ((c.draft_vocab_size,), torch.int64),
        "t2d": ((c.vocab_size,), torch.bool),
    }


def check_tensors(state: dict[str, torch.Tensor], c: EagleConfig, where: str) -> None:
    """ValueError unless ``state`` holds exactly :func:`required_tensors` (an optional
    ``embed_tokens.weight`` of [vocab, hidden] aside), with those shapes and a consistent vocabulary map."""
    need = required_tensors(c)
    if "embed_tokens.weight" in state:
        need["embed_tokens.weight"] = ((c.vocab_size, c.hidden_size), None)
    missing = sorted(set(need) - set(state))
    unexpected = sorted(set(state) - set(need))
    wrong = [
        f"{k} {tuple(state[k].shape)} {state[k].dtype} (want {shape}{'' if dt is None else f' {dt}'})"
        for k, (shape, dt) in need.items()
        if k in state
        and (
            tuple(state[k].shape) != shape
            or (dt is not None and state[k].dtype != dt)
            or (dt is None and not state[k].is_floating_point())
        )
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{where}: not the EAGLE-3 tensors this config needs: missing {missing}, unexpected {unexpected}, "
            f"wrong shape/dtype {wrong}"
        )
    ids = torch.arange(c.draft_vocab_size) + state["d2t"].cpu()
    if int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size or ids.unique().numel() != ids.numel():
        raise ValueError(f"{where}: d2t maps draft ids outside 0..{c.vocab_size - 1} or twice onto one target id")
    t2d = state["t2d"].cpu()
    if int(t2d.sum()) != c.draft_vocab_size or not bool(t2d[ids].all()):
        raise ValueError(f"{where}: t2d does not mark exactly the target ids that d2t maps to")


def export_config(c: EagleConfig, runtime: str, dtype: torch.dtype, **meta) -> dict:
    """config.json of an EAGLE-3 head for ``runtime``: vLLM reads aux id k as the residual stream
    entering the target's 0-indexed layer k (= ``output_hidden_states[k]``); SGLang adds one to explicit
    ids (it captures before layer id + 1), so its file says k - 1 for the same layer."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    ids = list(c.feature_layers) if runtime == "vllm" else [k - 1 for k in c.feature_layers]
    rope = dict(c.rope_parameters)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    cfg = {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "target_hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if scaling.get("rope_type", "default") == "default" else scaling,
        "rope_parameters": rope,
        "vocab_size": c.vocab_size,
        "draft_vocab_size": c.draft_vocab_size,
        "tie_word_embeddings": False,
        "norm_before_residual": c.norm_before_residual,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": ids, "use_aux_hidden_state": True},
    }
    if runtime == "vllm":  # vLLM reads the top-level field first
        cfg["eagle_aux_hidden_state_layer_ids"] = ids
    cfg["specdec"] = {
        "runtime": runtime,
        "feature_layers": list(c.feature_layers),
        "target_layers": c.target_layers,
        **meta,
    }
    return cfg


def export(head: EagleHead, path: str | Path, runtime: str = "vllm", dtype: torch.dtype | None = None, **meta) -> Path:
    """Write ``head`` as an EAGLE-3 checkpoint for ``runtime`` ("vllm" or "sglang"): config.json and
    model.safetensors (``fc``, ``midlayer.*``, ``norm``, ``lm_head`` over the draft vocabulary, ``d2t``
    int64, ``t2d`` bool; floats in ``dtype``, default the head's). Serve it with vLLM as
    ``speculative_config={"method": "eagle3", "model": path, ...}``; :func:`load_head` reads it back."""
    c = head.config
    if len(c.feature_layers) != AUX_LAYERS:
        raise ValueError(
            f"vLLM and SGLang read exactly {AUX_LAYERS} aux layers; this head reads {list(c.feature_layers)} "
            f"(a target of {c.target_layers} layers): build it with {AUX_LAYERS} feature_layers to export it"
        )
    return write_checkpoint(head, path, runtime, dtype, **meta)


def write_checkpoint(head: EagleHead, path, runtime: str, dtype: torch.dtype | None, **meta) -> Path:
    """The files of :func:`export` for any number of feature layers (:meth:`EagleHead.save`: a head of
    a shallow target reads fewer than the 3 serving engines take; specdec loads it all the same)."""
    from safetensors.torch import save_file

    if not getattr(head, "exportable", False):
        raise TypeError(
            f"{type(head).__name__} is not in EAGLE-3's layout and cannot be exported: train a head "
            "(bench/models/train_eagle_head.py) or build one with specdec.eagle.new_head"
        )
    c = head.config
    dtype = dtype or next(head.parameters()).dtype
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in head.trained_state().items()
    }
    check_tensors(state, c, "export")
    cfg = export_config(c, runtime, dtype, **meta)  # checks runtime before anything is written
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    save_file(state, str(path / "model.safetensors"))
    return path


def _flat_config(raw: dict) -> dict:
    """One flat dict of an EAGLE-3 config.json: speculators nests the layer's sizes in
    ``transformer_layer_config``; vLLM's and SpecForge's layout is flat already."""
    inner = raw.get("transformer_layer_config")
    return {**inner, **{k: v for k, v in raw.items() if k != "transformer_layer_config"}} if inner else dict(raw)


def _aux_layer_ids(flat: dict, runtime: str, target_layers: int) -> tuple[int, ...]:
    """The head's feature layers in vLLM's numbering, from whatever the file says."""
    mine = (flat.get("specdec") or {}).get("feature_layers")
    if mine is not None:  # written by export: already in this numbering
        return tuple(mine)
    if flat.get("eagle_aux_hidden_state_layer_ids"):  # vLLM's and speculators' top-level field
        return tuple(flat["eagle_aux_hidden_state_layer_ids"])
    ids = (flat.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if ids:
        return tuple(int(k) + (runtime == "sglang") for k in ids)
    L = target_layers
    return (2, L // 2, L - 3)  # what vLLM and SGLang tap when the file names no layers


def read_config(raw: dict, target, runtime: str = "vllm", where: str = "config.json") -> EagleConfig:
    """EagleConfig of an EAGLE-3 config.json (vLLM / SGLang / SpecForge or speculators layout) for
    ``target``. ``runtime`` says how to read ids found only in ``eagle_config`` ("sglang": SGLang's
    numbering, one less; SpecForge writes those) when the file is not one of :func:`export`'s."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    flat = _flat_config(raw)
    archs = list(flat.get("architectures") or [])
    if ARCHITECTURE not in archs and "Eagle3Speculator" not in archs and flat.get("speculators_model_type") != "eagle3":
        raise ValueError(f"{where} is not an EAGLE-3 Llama head: architectures {archs}")
    unsupported = {
        "num_hidden_layers": (flat.get("num_hidden_layers", 1), 1),
        "hidden_act": (flat.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(flat.get("attention_bias", False)), False),
        "mlp_bias": (bool(flat.get("mlp_bias", False)), False),
    }
    bad = {k: have for k, (have, want) in unsupported.items() if have != want}
    if bad:
        raise ValueError(f"{where}: specdec runs one-layer silu EAGLE-3 heads without biases, this one has {bad}")
    t = target.config.get_text_config()
    d = flat["hidden_size"]
    if flat.get("target_hidden_size", d) != d:
        wide = flat["target_hidden_size"]
        raise ValueError(f"{where}: a head of width {d} over target width {wide} is not supported")
    heads = flat["num_attention_heads"]
    return EagleConfig(
        hidden_size=d,
        intermediate_size=flat["intermediate_size"],
        num_attention_heads=heads,
        num_key_value_heads=flat.get("num_key_value_heads") or heads,
        head_dim=flat.get("head_dim") or d // heads,
        rms_norm_eps=flat.get("rms_norm_eps", 1e-6),
        rope_parameters=_rope_parameters(flat),
        vocab_size=flat.get("vocab_size") or t.vocab_size,
        target_layers=t.num_hidden_layers,
        feature_layers=_aux_layer_ids(flat, runtime, t.num_hidden_layers),
        draft_vocab_size=flat.get("draft_vocab_size") or 0,
        max_position_embeddings=flat.get("max_position_embeddings", 8192),
        norm_before_residual=bool(flat.get("norm_before_residual", False)),
    )


def _canonical_name(name: str) -> str:
    """A tensor name in the exported form: SpecForge / speculators / vLLM's module names differ only in
    the prefix (``model.``) and the layer's (``layers.0.`` for ``midlayer.``)."""
    name = name.removeprefix("model.")
    return "midlayer." + name.removeprefix("layers.0.") if name.startswith("layers.0.") else name


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update({_canonical_name(k): v for k, v in load_file(str(f)).items()})
    return state


def is_legacy_config(raw: dict) -> bool:
    """A config.json of specdec's earlier fused head layout (no longer loaded)."""
    return "feature_layers" in raw and "architectures" not in raw


def load_head(target, path: str | Path, runtime: str = "vllm") -> EagleHead:
    """Load an EAGLE-3 head around ``target``: one written by :func:`export` (either runtime) or
    :meth:`EagleHead.save`, or one trained elsewhere in vLLM / SGLang / SpecForge / speculators layout
    (``runtime``: how to read ids given only in ``eagle_config``, see :func:`read_config`). The
    embedding is the target's unless the file brings a different one. A head in specdec's earlier fused
    layout (before EAGLE-3's) is refused with what to do instead."""
    path = Path(path)
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{path} holds no config.json and *.safetensors; train a head with "
            "`python bench/models/train_eagle_head.py` or export one with specdec.eagle.export"
        )
    raw = json.loads((path / "config.json").read_text())
    if is_legacy_config(raw):
        raise ValueError(
            f"{path} holds a head in specdec's earlier fused layout, not EAGLE-3's; that layout is no "
            "longer loaded: train one in EAGLE-3's layout with bench/models/train_eagle_head.py"
        )
    config = read_config(raw, target, runtime, where=str(path / "config.json"))
    why = shape_mismatch(config, target)
    if why:
        raise ValueError(f"the EAGLE head at {path} was trained for another target: {why}")
    check_feature_layers(config.feature_layers, config.target_layers)
    state = _read_tensors(path)
    if "d2t" not in state and config.draft_vocab_size == config.vocab_size:  # a full-vocabulary head
        state["d2t"] = torch.zeros(config.vocab_size, dtype=torch.int64)
    if "t2d" not in state and "d2t" in state:
        t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
        t2d[torch.arange(config.draft_vocab_size) + state["d2t"]] = True
        state["t2d"] = t2d
    check_tensors(state, config, str(path))
    emb = target.get_input_embeddings()
    p = next(target.parameters())
    own = state.pop("embed_tokens.weight", None)
    if own is not None and torch.equal(own.float(), emb.weight.detach().to(own.dtype).float().cpu()):
        own = None  # the target's own embedding, copied into the checkpoint: share it instead
    if own is None:
        head = EagleHead(config, emb)
    else:
        head = EagleHead(config, nn.Embedding.from_pretrained(own.to(p.dtype), freeze=True), own_embedding=True)
    head.load_state_dict({k: v.to(p.dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    return head.to(device=p.device, dtype=p.dtype).eval()


class FeatureTap:
    """Collects a model's hidden states at ``layers`` (hidden_states indices) during its forwards.

    Forward hooks on the embedding, the decoder layers and the final norm, so no forward needs
    ``output_hidden_states`` (which would keep every layer's output alive)."""

    def __init__(self, model, layers):
        inner = _decoder(model)
        L = len(inner.layers)
        self.layers = tuple(layers)
        self._out: dict[int, torch.Tensor] = {}
        self._kept: torch.Tensor | None = None  # features handed over by a compiled forward (keep)
        self._hooks = []
        for i in sorted(set(self.layers)):
            module = inner.embed_tokens if i == 0 else inner.norm if i == L else inner.layers[i - 1]
            self._hooks.append(module.register_forward_hook(self._keeper(i)))

    def _keeper(self, i):
        def hook(module, args, output):
            self._out[i] = output[0] if isinstance(output, tuple) else output
            self._kept = None

        return hook

    def keep(self, features: torch.Tensor) -> None:
        """The last forward's features, [B, N, len(layers) * d], from a forward that returned them itself
        (a compiled graph: dynamo does not guard on hooks, so the hooks may not have run in it)."""
        self._kept = features

    def features(self, n: int | None = None) -> torch.Tensor:
        """[B, N, len(layers) * d] of the last forward (first ``n`` positions)."""
        out = self._kept if self._kept is not None else torch.cat([self._out[i] for i in self.layers], -1)
        return out if n is None else out[:, :n]

    def remove(self) -> None:
        """Take the hooks off the model (idempotent); :meth:`keep` still hands features over."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


class HeadDrafter:
    """Runs an :class:`EagleHead` for :func:`specdec.generate`: its KV cache, the projected target
    features per committed position, its own hidden state per cache slot.

    Per sequence: ``tok[p]`` / ``feat[p]`` hold committed token p and fc(target features of position p).
    Cache entry e holds token e + 1 read with the feature of e, at rotary position e (as vLLM lays it
    out; token 0 has none), so the node at position P sits at slot P - 1; ``hlen`` entries were computed
    from true features.
    """

    catches_up = True  # begin() runs the head over committed tokens it never drafted (prompt-lookup steps)

    # per-position buffers and the dimension that grows with the output (as the target's SpecCache)
    _BUFFERS = {"k": 2, "v": 2, "hid": 1, "feat": 1, "tok": 1}

    def __init__(self, head: EagleHead, tap: FeatureTap, batch_size: int, max_len: int, capacity: int | None = None):
        self.head, self.tap = head, tap
        c, p = head.config, next(head.parameters())
        dev, dt = p.device, p.dtype
        self.max_len = max_len
        self.capacity = cap = max_len if capacity is None else min(capacity, max_len)
        self.k = torch.zeros(batch_size, c.num_key_value_heads, cap, c.head_dim, dtype=dt, device=dev)
        self.v = torch.zeros_like(self.k)
        self.hid = torch.zeros(batch_size, cap, c.hidden_size, dtype=dt, device=dev)
        self.feat = torch.zeros_like(self.hid)
        self.tok = torch.zeros(batch_size, cap, dtype=torch.int64, device=dev)
        self.hlen = torch.zeros(batch_size, dtype=torch.int64, device=dev)
        self.calls = 0
        self.tokens = 0

    def _reserve(self, needed: int) -> None:
        """Room for slots ``0 .. needed-1`` (at most ``max_len``): the buffers double when short."""
        if needed <= self.capacity:
            return
        self.capacity = next_capacity(self.capacity, needed, self.max_len)
        for name, dim in self._BUFFERS.items():
            setattr(self, name, grown(getattr(self, name), dim, self.capacity))

    @torch.inference_mode()
    def _run(self, tokens, slots, feature, start, tree_mask, logits: bool = True):
        """One head forward over entries ``start[b] + 0..N-1`` (rotary position = slot); keeps each
        node's hidden state at its slot. Returns (logits or None, hidden)."""
        end = int(start.max()) + tokens.shape[1]
        self._reserve(end)
        self.calls += 1
        self.tokens += tokens.shape[1]
        out, hidden = self.head(tokens, slots, feature, self.k, self.v, start, tree_mask, logits=logits, max_kv_len=end)
        at = (start[:, None] + torch.arange(tokens.shape[1], device=start.device)).clamp(max=self.capacity - 1)
        self.hid.scatter_(1, at[..., None].expand_as(hidden), hidden)
        return out, hidden

    @torch.inference_mode()
    def commit(
        self, tok_start: torch.Tensor, tokens: torch.Tensor, feat_start: torch.Tensor, features: torch.Tensor
    ) -> None:
        """Store committed tokens at ``tok_start[b] + i`` and their target features (projected) at
        ``feat_start[b] + i``. Rows may commit fewer than the width: the extra entries land past the
        committed length, where the next commit overwrites them before they are read."""
        self._reserve(max(int(tok_start.max()) + tokens.shape[1], int(feat_start.max()) + features.shape[1]))
        ar = torch.arange(tokens.shape[1], device=tokens.device)
        tp = (tok_start[:, None] + ar).clamp(max=self.capacity - 1)
        self.tok.scatter_(1, tp, tokens)
        ar = torch.arange(features.shape[1], device=tokens.device)
        fp = (feat_start[:, None] + ar).clamp(max=self.capacity - 1)
        g = self.head.project_features(features.to(self.feat.dtype))
        self.feat.scatter_(1, fp[..., None].expand_as(g), g)

    def prefill(self, input_ids, attention_mask, first, features) -> None:
        """After the target's prefill: the prompts (shifted so real tokens come first), their features
        ([B, T, F], same layout) and the first generated token (the root, at position ``len``)."""
        from specdec.runner import left_aligned

        ids, lens = left_aligned(input_ids, attention_mask)
        zero = torch.zeros_like(lens)
        self.commit(zero, ids, zero, features)
        self.commit(lens, first[:, None], lens, features[:, :0])
        self.hlen = zero.clone()

    def begin(self, rows) -> torch.Tensor:
        """Catch up over the committed tokens not yet run with true features (through the root at
        position ``ctx - 1``, entry ``ctx - 2``); returns the root's next-token logits [B, V]."""
        from specdec.runner import chain_mask

        end = rows.ctx - 1  # entries 0 .. ctx-2 once caught up
        out = None
        while True:
            todo = end - self.hlen
            W = int(todo.max())
            if W <= 0:
                break
            W = min(W, CATCH_UP_CHUNK)
            slots = (self.hlen[:, None] + torch.arange(W, device=end.device)).clamp(max=self.capacity - 2)
            toks = self.tok.gather(1, slots + 1)
            feat = self.feat.gather(1, slots[..., None].expand(-1, -1, self.feat.shape[-1]))
            # Only the root's logits are needed: the head's output layer runs on that one row per sequence.
            _, hidden = self._run(toks, slots, feat, self.hlen, chain_mask(W, end.device), logits=False)
            last = (todo - 1).clamp(0, W - 1)
            here = (todo > 0) & (todo <= W)  # rows whose root is in this chunk
            picked = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1]))
            out = picked if out is None else torch.where(here[:, None, None], picked, out)
            self.hlen = torch.minimum(self.hlen + W, end)
        if out is None:
            raise RuntimeError("HeadDrafter.begin: nothing to catch up (the root is already in the head's cache)")
        with torch.inference_mode():
            return self.head.logits(out)[:, 0].float()

    def forward(self, tokens, positions, tree_mask, start) -> torch.Tensor:
        """Draft nodes past the root (positions ``start[b] + ...``, so entries from ``start - 1``): each
        node's feature is the head's hidden state at its parent (the deepest ancestor in this forward,
        else the entry just before). Logits [B, N, V]."""
        B = tokens.shape[0]
        first = start - 1
        # each node's parent within this forward, -1 when it is the entry just before the forward
        N = tree_mask.shape[-1]
        anc = sk.trees.mask_parents(tree_mask.expand(B, N, N))
        parent_slot = torch.where(anc >= 0, first[:, None] + anc, first[:, None] - 1)
        feat = self.hid.gather(1, parent_slot[..., None].expand(-1, -1, self.hid.shape[-1]))
        return self._run(tokens, positions - 1, feat, first, tree_mask)[0]

    def accept(self, rows, tree, res, target_features: torch.Tensor | None = None) -> None:
        """After verification: the emitted tokens (positions ctx ..) and the target's features of the
        verified nodes on the accepted path (root included, positions ctx-1 ..), from the verify forward
        that just ran (read from the tap unless given)."""
        feats = self.tap.features() if target_features is None else target_features
        n = int(res.num_emitted.max())
        if tree.lens is not None:  # a chain: the path is nodes 0 .. num_accepted
            path = torch.arange(n, device=feats.device).expand(feats.shape[0], n)
        else:
            path = res.path[:, :n].clamp(min=0)
        picked = feats.gather(1, path[..., None].expand(-1, -1, feats.shape[-1]))
        self.commit(rows.ctx, res.tokens[:, :n].clamp(min=0), rows.ctx - 1, picked)

    def select(self, keep: torch.Tensor) -> None:
        for name in (*self._BUFFERS, "hlen"):
            setattr(self, name, getattr(self, name).index_select(0, keep))

    def release(self) -> None:
        """Remove the feature hooks from the target (generate calls this when it returns)."""
        self.tap.remove()


@torch.inference_mode()
def time_head_forwards(head: EagleHead, widths, prefix: int, reps: int) -> dict[int, float]:
    """Median seconds of one head forward over n chain nodes after a ``prefix``-entry cache, for each n
    in ``widths`` (B = 1; logits included): the head's counterpart of :func:`specdec.runner.time_forwards`."""
    from specdec.runner import median_forward_seconds

    widths = list(widths)
    p = next(head.parameters())
    d = HeadDrafter(head, None, 1, prefix + max(widths) + 1)
    d.k.normal_()
    d.v.normal_()
    d.hid.normal_()
    start = torch.tensor([prefix], device=p.device)
    return median_forward_seconds(
        lambda x, pos, mask: d.forward(x, pos, mask, start), head.config.vocab_size, p.device, widths, prefix, reps
    )
