"""Hugging Face transformers hook: run a stock model's attention through :func:`tree_attention`.

:func:`register` adds an attention function named ``"specdec_tree"`` to transformers' ``AttentionInterface``.
A model built with ``attn_implementation="specdec_tree"`` (or switched with
``model.set_attn_implementation("specdec_tree")``) then verifies a whole token tree in one forward::

    import specdec.hf_attention as hfa
    hfa.register()
    model.set_attn_implementation("specdec_tree")
    out = model(tree_tokens,                          # [B, N], node 0 the root
                position_ids=prefix[:, None] + depth,  # [B, N]: trees.tree_position_ids(parents, prefix)
                past_key_values=cache, use_cache=True,
                tree_mask=mask,                        # [N, N] / [B, N, N] bool, or packed int32
                kv_lens=prefix + N)                    # [B] int64, valid entries AFTER this forward

How the pieces reach the kernel (checked against transformers 5.23, models/llama/modeling_llama.py and
models/qwen2/modeling_qwen2.py): the model's ``forward(**kwargs)`` hands every extra keyword to each
decoder layer and from there to ``attention_interface(module, q, k, v, attention_mask, scaling=...,
**kwargs)``, so ``tree_mask``, ``kv_lens``, ``tree_attention_backend`` and ``max_kv_len`` arrive here
untouched. The keys/values are what ``past_key_values.update(...)`` returned for the layer
(``[B, Hkv, S, D]``, S possibly longer than ``max(kv_lens)``); the cache must have written this forward's
N tokens at positions ``kv_lens[b] - N ..`` of sequence b (DynamicCache does so when every sequence has
the same length). The name is deliberately *not* registered with ``AttentionMaskInterface``:
``masking_utils.create_causal_mask`` then returns ``None`` early (no dense [N, S] mask is built) and
the tree mask is the only mask. A 2-D ``attention_mask`` passed to the model is ignored the same way:
padding is expressed through ``kv_lens``.

What the layer adds is passed on, never dropped (checked against transformers 5.23's mistral, qwen2,
qwen2_moe, phimoe, gemma2, gemma3, cohere2, olmo3, exaone4, gpt_oss and llama4):

- a sliding window: the ``sliding_window`` keyword (most models; None on full-attention layers), else
  ``module.sliding_window`` (Qwen2-MoE sets it on sliding layers only), else the config: a layer typed
  ``"sliding_attention"`` in ``config.layer_types``, or ``config.sliding_window`` for a model without
  layer types (PhiMoE). It becomes the kernel's ``window`` (transformers' convention: node i at position
  p sees keys at positions > p - window). The cache keeps every entry; the window only masks.
- ``softcap`` (Gemma 2's ``attn_logit_softcapping``) and ``s_aux`` (gpt-oss's per-head sinks) become
  the kernel's ``softcap`` and ``sinks``.
- chunked attention (Llama 4's ``"chunked_attention"`` layers) is refused by name, as is any other
  keyword argument outside a list of known-harmless ones (a new model's attention option must not be
  silently ignored).
"""

from __future__ import annotations

import torch

from specdec_kernels.tree_attention import tree_attention

ATTENTION_NAME = "specdec_tree"

# Keyword arguments the hook reads itself.
_OWN_KWARGS = frozenset(
    {"tree_mask", "kv_lens", "tree_attention_backend", "max_kv_len", "mask_memo", "tree_attention_check"}
)
# Keyword arguments models pass through to every attention function that do not change attention
# (positions are already applied to q/k by RoPE; the cache was already updated by the layer).
_HARMLESS_KWARGS = frozenset(  # output_hidden_states: what the model returns, not how a layer attends
    {
        "position_ids",
        "cache_position",
        "use_cache",
        "output_router_logits",
        "output_hidden_states",
        "position_embeddings",
        "past_key_values",
    }
)

# Arguments that say "nothing here" when None: a decoder-only run of a BERT-style decoder passes
# encoder_hidden_states=None to its self-attention (cross-attention is another module, never run).
_ABSENT_WHEN_NONE = frozenset({"encoder_hidden_states", "encoder_attention_mask", "head_mask"})


def specdec_tree_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: tree attention of this forward's N tokens.

    Shape: query ``[B, Hq, N, D]``; key, value ``[B, Hkv, S, D]``; returns ``([B, N, Hq, D], None)``.
    Keyword arguments read from the model call: ``tree_mask`` (required), ``kv_lens`` (required),
    ``tree_attention_backend`` (None = auto), ``max_kv_len`` (optional int hint for split-K), ``mask_memo``
    (optional dict, fresh per model call: the reference path builds its dense mask once per forward),
    ``tree_attention_check`` (default True: the first layer checks the values of ``kv_lens``, a host
    sync on CUDA; a caller that builds ``kv_lens`` itself passes False and no layer reads back).
    From the layer: ``sliding_window``, ``softcap``, ``s_aux`` (see the module docstring).
    """
    tree_mask = kwargs.get("tree_mask")
    kv_lens = kwargs.get("kv_lens")
    if tree_mask is None or kv_lens is None:
        missing = [n for n, x in (("tree_mask", tree_mask), ("kv_lens", kv_lens)) if x is None]
        raise ValueError(
            f"attn_implementation='{ATTENTION_NAME}' needs the model call to pass {' and '.join(missing)}: "
            "model(input_ids, position_ids=..., past_key_values=cache, tree_mask=[N, N] or [B, N, N] bool, "
            "kv_lens=[B] int64 valid cache entries after this forward). For a plain causal prefill pass the "
            "chain mask trees.ancestor_mask(trees.chain_parents(N)) or switch to 'sdpa'."
        )
    _refuse_unknown_kwargs(kwargs)
    window = layer_window(module, kwargs)
    if dropout:
        raise ValueError(f"attn_implementation='{ATTENTION_NAME}' is for inference: attention dropout must be 0")
    B, Hq, N, D = query.shape
    out = torch.empty(B, N, Hq, D, dtype=query.dtype, device=query.device)  # the layout o_proj wants
    tree_attention(
        query,
        key,
        value,
        kv_lens,
        tree_mask,
        sm_scale=scaling,
        backend=kwargs.get("tree_attention_backend"),
        out=out.transpose(1, 2),
        # Value checks cost a host sync on CUDA: once per forward (first layer) is enough, none when the
        # caller vouches for kv_lens.
        check=kwargs.get("tree_attention_check", True) and getattr(module, "layer_idx", 0) == 0,
        max_kv_len=kwargs.get("max_kv_len"),
        mask_memo=kwargs.get("mask_memo"),
        window=window,
        softcap=kwargs.get("softcap"),
        sinks=kwargs.get("s_aux"),
    )
    return out, None


def _refuse_unknown_kwargs(kwargs: dict) -> None:
    """ValueError naming a keyword argument that would change attention and that the hook cannot honour."""
    for name, value in kwargs.items():
        if name in _OWN_KWARGS or name in _HARMLESS_KWARGS or name in ("sliding_window", "softcap", "s_aux"):
            continue
        if name == "output_attentions" and not value:
            continue
        if name in _ABSENT_WHEN_NONE and value is None:
            continue
        if name == "is_causal" and value is not False:  # the tree mask is the causal mask
            continue
        raise ValueError(
            f"attn_implementation='{ATTENTION_NAME}' does not support the attention argument {name}={value!r} "
            "passed by the model (it would be silently ignored); use 'sdpa' or 'eager' for this model"
        )


def layer_window(module: torch.nn.Module, kwargs: dict) -> int | None:
    """The layer's sliding window (None: full attention), from the keyword, the module or its config.

    Raises ValueError for chunked attention (Llama 4), which the kernel does not implement.
    """
    config = getattr(module, "config", None)
    layer_types = getattr(config, "layer_types", None)
    layer_idx = getattr(module, "layer_idx", None)
    layer_type = layer_types[layer_idx] if layer_types is not None and layer_idx is not None else None
    if layer_type == "chunked_attention" or (layer_types is None and getattr(config, "attention_chunk_size", None)):
        raise ValueError(
            f"attn_implementation='{ATTENTION_NAME}' does not support chunked attention "
            f"(layer {layer_idx}: attention_chunk_size={getattr(config, 'attention_chunk_size', None)})"
        )
    if "sliding_window" in kwargs:
        window = kwargs["sliding_window"]
    elif getattr(module, "sliding_window", None) is not None:
        window = module.sliding_window
    elif layer_types is not None:
        window = config.sliding_window if layer_type == "sliding_attention" else None
    else:
        window = getattr(config, "sliding_window", None)
    return None if window is None else int(window)


def register(name: str = ATTENTION_NAME) -> str:
    """Register :func:`specdec_tree_attention` with transformers' ``AttentionInterface`` under ``name``.

    Idempotent. Returns the name to pass as ``attn_implementation``.

    >>> import specdec.hf_attention as hfa
    >>> hfa.register()
    'specdec_tree'
    """
    from transformers import AttentionInterface

    AttentionInterface.register(name, specdec_tree_attention)
    return name


__all__ = ["ATTENTION_NAME", "layer_window", "register", "specdec_tree_attention"]
