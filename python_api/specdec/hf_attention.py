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
"""

from __future__ import annotations

import torch

from specdec_kernels.tree_attention import tree_attention

ATTENTION_NAME = "specdec_tree"


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
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"attn_implementation='{ATTENTION_NAME}' does not support sliding-window layers")
    if kwargs.get("softcap") is not None:
        raise ValueError(f"attn_implementation='{ATTENTION_NAME}' does not support attention logit soft-capping")
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
    )
    return out, None


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


__all__ = ["ATTENTION_NAME", "register", "specdec_tree_attention"]
