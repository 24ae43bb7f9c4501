"""Which Hugging Face causal LMs the loop can run exactly, decided before the first real forward.

The loop relies on three things a transformers model may or may not do (docs/loop.md, "Which models
run"): (1) every layer's attention goes through transformers' ``AttentionInterface``, so switching
``attn_implementation`` to ``"specdec_tree"`` replaces the model's own causal mask with the tree mask
and per-row lengths; (2) the decoder layers hand the model call's extra keyword arguments
(``tree_mask``, ``kv_lens``, ...) down to attention; (3) each layer caches keys and values of one shape
``[B, Hkv, S, D]`` through ``past_key_values.update`` and attends over what that returned, with no
additive bias of its own (ALiBi) passed as the attention mask.

None of this can be read reliably from a class or its config: ``set_attn_implementation`` only logs a
warning when the class ignores it, and a layer may take ``**kwargs`` and drop them (StableLM). So
:func:`check_model_support` asks the model itself, with a probe that cannot corrupt anything: three tokens
through the model with a throw-away cache that keeps nothing, under a registered attention function
that only records what it is given and returns zeros. From the record it either refuses the model with a
ValueError naming its class and what is unsupported, or returns the K/V layout the loop's
:class:`specdec.cache.SpecCache` must allocate (read from the actual keys and values, not from one
config field name: Falcon calls its count ``num_kv_heads``, or says ``multi_query``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

PROBE_NAME = "specdec_probe"
PROBE_TOKENS = 3  # a causal chain: enough for the attention weights (scale, sinks, soft-cap) to matter


@dataclasses.dataclass(frozen=True)
class KVLayout:
    """What one model caches: ``num_layers`` layers of keys and values ``[B, kv_heads, S, head_dim]``."""

    num_layers: int
    kv_heads: int
    head_dim: int


@dataclasses.dataclass
class _Call:
    """One attention call seen by the probe."""

    layer: object  # the module's layer_idx (None when it has none)
    query: torch.Size
    key: torch.Tensor
    value: torch.Tensor
    got_kwargs: bool  # the model call's keyword arguments arrived
    has_mask: bool  # the model passed an attention mask / bias of its own
    from_cache: bool  # key and value are what the cache's update returned
    causal: bool = True  # the module says it attends causally (``is_causal``)
    window: object = None  # the sliding_window keyword it was given
    hook_error: str | None = None  # what the tree-attention hook refused, if anything
    differs: float | None = None  # max |hook - the model's own eager attention|, when beyond rounding


class _Recorder:
    def __init__(self, marker: torch.Tensor):
        self.marker = marker
        self.calls: list[_Call] = []
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []


_ACTIVE: list[_Recorder] = []  # the probe in progress (probes do not nest)


def _probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function of the probe: records the call and, when the loop's keyword arguments
    arrived, runs the real hook on it (the probe's causal chain) and compares it with the model's own
    eager attention, so whatever the hook refuses (an
    attention variant it does not implement) is refused here, before the loop's first forward."""
    from specdec.hf_attention import specdec_tree_attention

    rec = _ACTIVE[-1]
    call = _Call(
        getattr(module, "layer_idx", None),
        query.shape,
        key,
        value,
        kwargs.get("kv_lens") is rec.marker,
        attention_mask is not None,
        any(key is k and value is v for k, v in rec.updates),
        getattr(module, "is_causal", True) is not False,
        kwargs.get("sliding_window"),
    )
    rec.calls.append(call)
    if call.got_kwargs and call.from_cache and key.shape == value.shape:
        try:
            out, _ = specdec_tree_attention(module, query, key, value, None, scaling=scaling, dropout=dropout, **kwargs)
        except ValueError as e:
            call.hook_error = str(e)
        else:
            call.differs = _differs_from_eager(module, query, key, value, out, scaling, kwargs)
    B, _, N, _ = query.shape
    return query.new_zeros(B, N, query.shape[1], value.shape[-1]), None


def _differs_from_eager(module, query, key, value, out, scaling, kwargs) -> float | None:
    """The hook's output against the model's own eager attention (its modeling file's
    ``eager_attention_forward``, which applies what the model adds: attention sinks, soft-capping) on
    the probe's causal tokens; the largest difference when it is beyond rounding, else None. A model
    without that function, or whose function does not take these arguments, is not compared."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        return None
    N, S = query.shape[2], key.shape[2]
    past = torch.arange(S, device=query.device)[None] <= torch.arange(S - N, S, device=query.device)[:, None]
    mask = torch.zeros(N, S, dtype=query.dtype, device=query.device).masked_fill(~past, torch.finfo(query.dtype).min)
    try:
        ref, _ = eager(module, query, key, value, mask[None, None], scaling=scaling, dropout=0.0, **kwargs)
    except Exception:  # noqa: BLE001 -- an eager function of another signature: nothing to compare with
        return None
    tol = 1e-4 if query.dtype == torch.float32 else 3e-2
    diff = float((out.float() - ref.float()).abs().max())
    return diff if diff > tol * max(1.0, float(ref.float().abs().max())) else None


class _ProbeLayer(CacheLayerMixin):
    """Cache layer that keeps nothing: records what the layer writes and hands it straight back."""

    is_sliding = False
    is_compileable = False

    def __init__(self, rec: _Recorder):
        super().__init__()
        self.rec = rec
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        self.rec.updates.append((key_states, value_states))
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1


class _ProbeCache(Cache):
    def __init__(self, num_layers: int, rec: _Recorder):
        super().__init__(layers=[_ProbeLayer(rec) for _ in range(num_layers)])


def _configs(model) -> list:
    """The configs whose ``_attn_implementation`` a switch must set: the model's and its sub-models'."""
    from transformers import PreTrainedModel

    out = {id(model.config): model.config}
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            out.setdefault(id(m.config), m.config)
    return list(out.values())


@contextlib.contextmanager
def _switched(model, name: str):
    """``model`` set to attention ``name`` for the duration (restored after, whatever happens)."""
    saved = model.config._attn_implementation
    try:
        model.set_attn_implementation(name)
        yield
    finally:
        model.set_attn_implementation(saved)


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(model) -> int:
    return int(_text_config(model).num_hidden_layers)


class UnsupportedModelError(ValueError):
    """A model the loop cannot run exactly (a ValueError naming the class and the reason)."""


def _refuse(cls: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{cls} is not supported by specdec: {what} (see docs/model_support.md)")


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_model_support(model) -> KVLayout:
    """Refuse ``model`` (UnsupportedModelError, a ValueError) unless the loop can run it exactly; return
    its K/V layout. Runs the probe once per model object (the verdict is kept while it lives)."""
    if model in _LAYOUTS:
        return _LAYOUTS[model]
    layout = _probe(model)
    _LAYOUTS[model] = layout
    return layout


def _probe(model) -> KVLayout:
    from transformers import AttentionInterface

    cls = type(model).__name__
    if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
        raise _refuse(cls, "it is not a transformers PreTrainedModel")
    AttentionInterface.register(PROBE_NAME, _probe_attention)
    L = num_layers(model)
    device = next(model.parameters()).device
    marker = torch.full((1,), PROBE_TOKENS, dtype=torch.int64, device=device)  # kv_lens
    rec = _Recorder(marker)
    with _switched(model, PROBE_NAME):
        stuck = [c for c in _configs(model) if c._attn_implementation != PROBE_NAME]
        if stuck:
            raise _refuse(
                cls,
                "it does not route attention through transformers' AttentionInterface "
                "(set_attn_implementation has no effect on it), so its own causal mask would override the "
                "draft tree's mask and each row's length",
            )
        ids = torch.arange(PROBE_TOKENS, device=device)[None]  # also the positions
        _ACTIVE.append(rec)
        try:
            with torch.inference_mode():
                model(
                    input_ids=ids,
                    position_ids=ids,
                    past_key_values=_ProbeCache(L, rec),
                    use_cache=True,
                    tree_mask=torch.ones(PROBE_TOKENS, PROBE_TOKENS, dtype=torch.bool, device=device).tril(),
                    kv_lens=marker,
                    mask_memo={},
                    tree_attention_check=False,
                    max_kv_len=PROBE_TOKENS,
                )
        except Exception as e:  # noqa: BLE001 -- any failure here is the model refusing the loop's call
            raise _refuse(
                cls,
                f"a {PROBE_TOKENS}-token forward with specdec's cache and keyword arguments failed "
                f"({type(e).__name__}: {str(e)[:300]})",
            ) from e
        finally:
            _ACTIVE.pop()
    return _layout_from(cls, L, rec, _text_config(model))


def _windowed_by_mask_only(config, calls: list[_Call]) -> bool:
    """The config sets a sliding window for some layers, but no attention call is told about it: the
    model applies it only through its own mask (Phi-MoE), which tree attention replaces."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    windowed = window is not None and (types is None or any("sliding" in str(t) for t in types))
    return windowed and all(c.window is None for c in calls)


def _layout_from(cls: str, L: int, rec: _Recorder, config) -> KVLayout:
    """The verdict on one probe's record."""
    calls = rec.calls
    if not calls:
        raise _refuse(
            cls,
            "its attention never calls the function registered with transformers' AttentionInterface, "
            "so its own causal mask would override the draft tree's mask and each row's length",
        )
    if not all(c.got_kwargs for c in calls):
        raise _refuse(
            cls,
            "its decoder layers do not pass the model call's keyword arguments through to attention, so "
            "the tree mask and per-row lengths never reach it",
        )
    if len(calls) != L or len(rec.updates) != L:
        raise _refuse(
            cls,
            f"its {L} layers make {len(calls)} attention calls and {len(rec.updates)} KV-cache writes per "
            "forward; the loop needs exactly one of each per layer (recurrent, linear-attention, "
            "shared-KV or multi-pass attention layers keep state or read K/V the loop does not manage)",
        )
    if not all(c.causal for c in calls):
        raise _refuse(
            cls,
            "its attention is bidirectional (is_causal=False; e.g. an encoder not configured with "
            "is_decoder=True), so there is no causal decoding to speculate on",
        )
    shapes = {(tuple(k.shape), tuple(v.shape)) for k, v in rec.updates}  # what each layer caches
    k, v = next(iter(shapes))
    if any(ks != vs for ks, vs in shapes):
        raise _refuse(
            cls,
            f"it caches keys {list(k)} and values {list(v)} of different shapes (multi-head latent attention "
            "or different K and V head sizes); the KV buffer holds [B, Hkv, S, D] keys and values alike",
        )
    if len(shapes) != 1:
        raise _refuse(cls, f"its layers cache keys and values of different shapes {sorted(s[0] for s in shapes)}")
    if not all(c.from_cache for c in calls):
        raise _refuse(cls, "its attention does not attend over the keys and values it writes to the KV cache")
    if any(c.has_mask for c in calls):
        raise _refuse(
            cls,
            "it builds its own attention mask or bias (e.g. ALiBi) outside transformers' mask interface, "
            "which tree attention would not apply",
        )
    if _windowed_by_mask_only(config, calls):
        raise _refuse(
            cls,
            f"its sliding window ({config.sliding_window}) is applied only through its own attention mask, "
            "which tree attention replaces; its attention is never told about the window",
        )
    refused = next((c.hook_error for c in calls if c.hook_error), None)
    if refused:
        raise _refuse(cls, f"its attention needs what tree attention does not implement ({refused})")
    if len(k) != 4 or k[2] != PROBE_TOKENS:
        raise _refuse(cls, f"it caches keys of shape {list(k)} for {PROBE_TOKENS} tokens, not [B, Hkv, N, D]")
    differs = max((c.differs for c in calls if c.differs is not None), default=None)
    if differs is not None:
        raise _refuse(
            cls,
            f"tree attention's output differs from the model's own eager attention by {differs:.2g} on a "
            "causal chain: the model computes attention in a way the hook does not implement (e.g. "
            "attention sinks)",
        )
    q = calls[0].query
    if len(q) != 4 or q[-1] != k[-1] or q[1] % k[1]:
        raise _refuse(
            cls,
            f"its queries {list(q)} do not fit its keys {list(k)} (tree attention needs the same head size "
            "and a query head count that is a multiple of the KV head count)",
        )
    return KVLayout(L, int(k[1]), int(k[3]))


__all__ = ["KVLayout", "UnsupportedModelError", "check_model_support"]
