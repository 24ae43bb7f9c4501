"""EAGLE draft heads: draft from the target's own hidden states at the cost of one decoder layer.

A head (Li et al., EAGLE 2024; EAGLE-3 2025) predicts the token after position p from the embedding
of token x_p and a feature of position p-1:

* from the target (``feature_layers``): the target's hidden states of position p-1 at a few layers,
  concatenated and projected to the model width by ``fc`` (EAGLE-3 fuses a low, a middle and a high
  layer; EAGLE-1 is the one-layer case with the final, normed hidden state);
* from the head itself, when drafting past the root: the head's own output hidden state at the parent
  node (the target has not run the drafted tokens yet).

``fuse(cat(embedding, feature))`` enters one Llama decoder layer (the target's architecture, its own
small KV cache), then the final norm and the target's LM head, shared and never copied (or a
:class:`specdec.models.SubsetLMHead` over the target's embedding rows). The module is plain torch; its
forward takes token ids, positions, features and a KV buffer and returns logits and its hidden state,
so a serving engine that hands a proposer the target's hidden states can run it without this loop.

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


@dataclasses.dataclass
class EagleConfig:
    """What a head needs to know about its target, saved next to the weights as ``config.json``."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_parameters: dict
    vocab_size: int
    target_layers: int  # the target's decoder layer count (feature indices refer to it)
    feature_layers: (
        tuple  # indices into the target's hidden_states: 0 = embeddings, i = layer i's output, L = final norm
    )
    subset_size: int = 0  # 0: the target's full LM head; else a SubsetLMHead over this many token ids
    max_position_embeddings: int = 8192

    @classmethod
    def for_target(cls, target, feature_layers, subset_size: int = 0) -> EagleConfig:
        c = target.config.get_text_config()
        heads = c.num_attention_heads
        rope = dict(
            getattr(c, "rope_parameters", None)
            or {"rope_type": "default", "rope_theta": getattr(c, "rope_theta", 10000.0)}
        )
        return cls(
            c.hidden_size,
            c.intermediate_size,
            heads,
            getattr(c, "num_key_value_heads", None) or heads,
            getattr(c, "head_dim", None) or c.hidden_size // heads,
            c.rms_norm_eps,
            rope,
            c.vocab_size,
            c.num_hidden_layers,
            tuple(int(i) for i in feature_layers),
            subset_size,
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
        )


def eagle3_layers(num_layers: int) -> tuple[int, ...]:
    """Low, middle and high feature layers (hidden_states indices: i = output of decoder layer i) in
    EAGLE-3's proportions; fewer for targets too shallow to have three distinct ones."""
    L = num_layers
    if L > 4:
        return (3, L // 2 + 1, L - 3)
    return tuple(sorted({1, max(1, L // 2), max(1, L - 1)}))


class EagleHead(nn.Module):
    """An EAGLE draft head around a target's embedding and LM head (shared modules, not copies)."""

    def __init__(self, config: EagleConfig, embed_tokens: nn.Module, lm_head: nn.Module):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

        self.config = config
        d = config.hidden_size
        lc = config.llama_config()
        self.fc = nn.Linear(len(config.feature_layers) * d, d, bias=False)  # target features -> width d
        self.fuse = nn.Linear(2 * d, d, bias=False)  # [token embedding, feature] -> the layer's input
        self.layer = LlamaDecoderLayer(lc, layer_idx=0)  # parameters only: forward below runs its pieces
        self.norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.rotary = LlamaRotaryEmbedding(lc)
        # Shared with the target: kept out of this module's parameters and state_dict.
        object.__setattr__(self, "embed_tokens", embed_tokens)
        object.__setattr__(self, "lm_head", lm_head)

    # -- pieces (the training script runs them with its own attention) -------------------------------
    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features [..., len(feature_layers) * d] -> the head's feature space [..., d]."""
        return self.fc(features)

    def layer_input(self, tokens: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.embed_tokens(tokens).to(feature.dtype), feature], -1))

    def qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """Normed layer input [B, N, d] -> q [B, Hq, N, D], k, v [B, Hkv, N, D], RoPE applied."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn, c = self.layer.self_attn, self.config
        h = self.layer.input_layernorm(x)
        B, N, _ = h.shape
        q = attn.q_proj(h).view(B, N, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, N, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, N, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.rotary(h, positions)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual stream after attention ([B, Hq, N, D] output) and the MLP: the head's hidden [B, N, d]."""
        B, _, N, _ = attn_out.shape
        x = x + self.layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(B, N, -1))
        return x + self.layer.mlp(self.layer.post_attention_layernorm(x))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

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
        x = self.layer_input(tokens, feature)
        q, k, v = self.qkv(x, positions)
        B, H, N, D = k.shape
        index = (start[:, None] + torch.arange(N, device=start.device)).view(B, 1, N, 1).expand(B, H, N, D)
        k_cache.scatter_(2, index, k)
        v_cache.scatter_(2, index, v)
        out = sk.tree_attention(q, k_cache, v_cache, start + N, tree_mask, check=False, max_kv_len=max_kv_len)
        hidden = self.finish(x, out)
        return (self.logits(hidden).float() if logits else None), hidden

    # -- persistence ----------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The head's own weights (shared embedding / LM head excluded; the rotary buffers are derived)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}
        if getattr(self.lm_head, "token_ids", None) is not None:
            state["lm_head.token_ids"] = self.lm_head.token_ids
        return state

    def save(self, path: str | Path, **meta) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.asdict(self.config)
        cfg["feature_layers"] = list(cfg["feature_layers"])
        (path / "config.json").write_text(json.dumps({**cfg, **meta}, indent=1) + "\n")
        save_file(
            {
                k: v.detach().to(torch.bfloat16 if v.is_floating_point() else v.dtype).contiguous()
                for k, v in self.trained_state().items()
            },
            str(path / "model.safetensors"),
        )


def shift(x: torch.Tensor, m: int) -> torch.Tensor:
    """x[:, p - m] at p (zeros for p < m), along dim 1."""
    if m == 0:
        return x
    return torch.cat([torch.zeros_like(x[:, :m]), x[:, :-m]], 1)


def unrolled_forward(head: EagleHead, tokens: torch.Tensor, g: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Training-time test (EAGLE-3 / HASS) over whole sequences: the head's hidden states [B, T, d] of
    draft steps 0..steps-1, with ``g`` [B, T, d] = ``project_features`` of the target's features.

    Step s at position p drafts from anchor a = p - s: its input is token p with the head's step s-1 hidden
    state at p-1 (step 0: the target's feature of p-1); it attends to step-0 keys at positions <= a (the
    true-feature cache) and to steps 1..s at positions a+1..p (its own draft entries): exactly what
    :class:`HeadDrafter` computes when it drafts a chain from root a with the target's tokens as drafts
    (the property the tests check), so what is trained is what runs.
    """
    from transformers.models.llama.modeling_llama import repeat_kv

    B, T = tokens.shape
    c = head.config
    rep = c.num_attention_heads // c.num_key_value_heads
    scale = c.head_dim**-0.5
    pos = torch.arange(T)[None].expand(B, T)
    idx = torch.arange(T)
    prev = shift(g, 1)  # step 0 reads the target's feature of p-1
    keys, vals, outs = [], [], []
    for s in range(steps):
        x = head.layer_input(tokens, prev)
        q, k, v = head.qkv(x, pos)
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        keys.append(k)
        vals.append(v)
        s0 = (q @ keys[0].transpose(-1, -2)) * scale  # [B, H, T, T]
        s0 = s0.masked_fill(idx[None, :] > (idx[:, None] - s), float("-inf"))
        diag = [
            ((q * shift(keys[j].transpose(1, 2), s - j).transpose(1, 2)).sum(-1) * scale)[..., None]
            for j in range(1, s + 1)
        ]  # [B, H, T, 1] each
        w = torch.softmax(torch.cat([s0] + diag, -1).float(), -1).to(q.dtype)
        out = w[..., :T] @ vals[0]
        for j in range(1, s + 1):
            out = out + w[..., T + j - 1 : T + j] * shift(vals[j].transpose(1, 2), s - j).transpose(1, 2)
        h = head.finish(x, out)
        outs.append(h)
        prev = shift(h, 1)
    return outs


def _decoder(model):
    """The decoder stack (embeddings, layers, final norm) of a transformers causal LM."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def new_head(target, feature_layers=None, subset: torch.Tensor | None = None) -> EagleHead:
    """An untrained head for ``target``: its decoder layer a copy of the target's top layer, its norm the
    target's final norm, ``fc`` picking the highest feature layer and ``fuse`` adding embedding and
    feature (a sensible start for training). ``feature_layers`` default to EAGLE-3's low/middle/high;
    ``subset``: token ids for a :class:`specdec.models.SubsetLMHead` (default: the target's LM head)."""
    import copy

    from specdec.models import SubsetLMHead

    L = target.config.get_text_config().num_hidden_layers
    feature_layers = tuple(feature_layers) if feature_layers is not None else eagle3_layers(L)
    emb = target.get_input_embeddings()
    lm_head = SubsetLMHead(emb.weight, subset) if subset is not None else target.get_output_embeddings()
    config = EagleConfig.for_target(target, feature_layers, 0 if subset is None else len(subset))
    head = EagleHead(config, emb, lm_head)
    inner = _decoder(target)
    head.layer.load_state_dict(copy.deepcopy(inner.layers[L - 1].state_dict()), strict=False)
    head.norm.load_state_dict(inner.norm.state_dict())
    d, n = config.hidden_size, len(feature_layers)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, (n - 1) * d :] = torch.eye(d)
        head.fuse.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)], 1))
    p = next(target.parameters())
    return head.to(device=p.device, dtype=p.dtype)


def _shape_mismatch(config: EagleConfig, target) -> str | None:
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
    c, t = head.config, target.config.get_text_config()
    why = _shape_mismatch(c, target)
    if why:
        raise ValueError(f"the EAGLE head does not fit the target: {why}")
    if max(c.feature_layers) > t.num_hidden_layers or min(c.feature_layers) < 0:
        raise ValueError(f"the EAGLE head reads target layers {c.feature_layers}, the target has {t.num_hidden_layers}")
    if head.embed_tokens is not target.get_input_embeddings():
        raise ValueError(
            "the EAGLE head was built around another model's embeddings: load it with this target "
            "(specdec.eagle.load_head(target, path))"
        )


def load_head(target, path: str | Path) -> EagleHead:
    """Load a head saved with :meth:`EagleHead.save` around ``target``'s embedding and LM head."""
    from safetensors.torch import load_file

    from specdec.models import SubsetLMHead

    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path / 'model.safetensors'} is missing; train a head with `python bench/models/train_eagle_head.py`"
        )
    raw = json.loads((path / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(EagleConfig)}
    config = EagleConfig(**{k: v for k, v in raw.items() if k in fields})
    config.feature_layers = tuple(config.feature_layers)
    why = _shape_mismatch(config, target)
    if why:
        raise ValueError(f"the EAGLE head at {path} was trained for another target: {why}")
    state = load_file(str(path / "model.safetensors"))
    emb = target.get_input_embeddings()
    token_ids = state.pop("lm_head.token_ids", None)
    lm_head = SubsetLMHead(emb.weight, token_ids) if token_ids is not None else target.get_output_embeddings()
    p = next(target.parameters())
    head = EagleHead(config, emb, lm_head)
    missing, unexpected = head.load_state_dict({k: v.to(p.dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.startswith("rotary.")]
    if missing or unexpected:
        raise ValueError(
            f"EAGLE head checkpoint {path} does not match its config: missing {missing}, unexpected {unexpected}"
        )
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
        self._hooks = []
        for i in sorted(set(self.layers)):
            module = inner.embed_tokens if i == 0 else inner.norm if i == L else inner.layers[i - 1]
            self._hooks.append(module.register_forward_hook(self._keeper(i)))

    def _keeper(self, i):
        def hook(module, args, output):
            self._out[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def features(self, n: int | None = None) -> torch.Tensor:
        """[B, N, len(layers) * d] of the last forward (first ``n`` positions)."""
        out = torch.cat([self._out[i] for i in self.layers], -1)
        return out if n is None else out[:, :n]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def _deepest_ancestor(tree_mask: torch.Tensor, B: int) -> torch.Tensor:
    """[B, N]: each node's deepest strict ancestor within the forward (the highest index; topological
    order puts ancestors first), or -1 when its parent is the entry just before the forward."""
    N = tree_mask.shape[-1]
    m = tree_mask.expand(B, N, N) & ~torch.eye(N, dtype=torch.bool, device=tree_mask.device)
    idx = torch.arange(N, device=tree_mask.device)
    return torch.where(m, idx, -1).amax(-1)


class HeadDrafter:
    """Runs an :class:`EagleHead` for :func:`specdec.generate`: its KV cache, the projected target
    features per committed position, its own hidden state per cache slot.

    Per sequence: ``tok[p]`` / ``feat[p]`` hold committed token p and fc(target features of position p);
    ``hlen`` entries of the cache were computed from true features (token p with ``feat[p-1]``).
    """

    kind = "head"

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
    def _run(self, tokens, positions, feature, start, tree_mask, logits: bool = True):
        """One head forward; keeps each node's hidden state at its slot. Returns (logits or None, hidden)."""
        end = int(start.max()) + tokens.shape[1]
        self._reserve(end)
        self.calls += 1
        self.tokens += tokens.shape[1]
        out, hidden = self.head(
            tokens, positions, feature, self.k, self.v, start, tree_mask, logits=logits, max_kv_len=end
        )
        slots = (start[:, None] + torch.arange(tokens.shape[1], device=start.device)).clamp(max=self.capacity - 1)
        self.hid.scatter_(1, slots[..., None].expand_as(hidden), hidden)
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
        ``ctx - 1``); returns the root's next-token logits [B, V]."""
        from specdec.runner import chain_mask

        end = rows.ctx  # entries 0 .. ctx-1 once caught up
        out = None
        while True:
            todo = end - self.hlen
            W = int(todo.max())
            if W <= 0:
                break
            W = min(W, CATCH_UP_CHUNK)
            pos = (self.hlen[:, None] + torch.arange(W, device=end.device)).clamp(max=self.capacity - 1)
            toks = self.tok.gather(1, pos)
            fpos = (pos - 1).clamp(min=0)
            feat = self.feat.gather(1, fpos[..., None].expand(-1, -1, self.feat.shape[-1]))
            feat = torch.where((pos > 0)[..., None], feat, torch.zeros_like(feat))  # nothing precedes token 0
            # Only the root's logits are needed: the head's output layer runs on that one row per sequence.
            _, hidden = self._run(toks, pos, feat, self.hlen, chain_mask(W, end.device), logits=False)
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
        """Draft nodes past the root: each node's feature is the head's hidden state at its parent (the
        deepest ancestor in this forward, else the entry just before ``start``). Logits [B, N, V]."""
        B = tokens.shape[0]
        anc = _deepest_ancestor(tree_mask, B)
        parent_slot = torch.where(anc >= 0, start[:, None] + anc, start[:, None] - 1)
        feat = self.hid.gather(1, parent_slot[..., None].expand(-1, -1, self.hid.shape[-1]))
        return self._run(tokens, positions, feat, start, tree_mask)[0]

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
