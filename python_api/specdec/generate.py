"""``specdec.generate``: checks and resolves every argument, then runs the decoding loop
(:func:`specdec.decoder.decode`). The loop, its cache bookkeeping and the exactness argument are
documented in :mod:`specdec.decoder`."""

from __future__ import annotations

import dataclasses

import torch

from specdec import tune
from specdec.decoder import GenerateOutput, decode
from specdec.eagle import EagleHead, check_head_fits
from specdec.sampling import resolve as resolve_sampling
from specdec.strategies import resolve_strategy
from specdec.validation import (
    check_model,
    check_prompt,
    check_sampling,
    check_strategy_fits,
    check_streamer,
    check_supported,
    check_target,
    check_token_ids,
    logits_width,
)

DEFAULT_MAX_NEW_TOKENS = 128  # when neither the call nor the generation config says


def _check_inputs(
    target,
    draft,
    input_ids,
    attention_mask,
    max_new_tokens,
    temperature,
    seed,
    eos_token_id,
    pad_token_id,
    streamer,
    timing,
):
    """Every argument but the strategy, before any work (:mod:`specdec.validation`). Returns
    (temperature as a float, the EOS ids as a list, the vocabulary size)."""
    tp, vocab = check_target(target)
    check_prompt(input_ids, attention_mask, tp.device, vocab)
    temperature = check_sampling(max_new_tokens, temperature, seed)
    eos = check_token_ids(eos_token_id, pad_token_id, vocab)
    check_streamer(streamer)
    if timing is not None and not isinstance(timing, bool):
        raise TypeError(f"timing must be None (on for CPU, off for CUDA), True or False, got {timing!r}")
    check_supported("target", target)
    if draft is None:
        return temperature, eos, vocab
    dp = check_model("draft", draft)
    if isinstance(draft, EagleHead):
        check_head_fits(draft, target)
    elif not callable(getattr(draft, "get_output_embeddings", None)):
        raise TypeError(
            f"draft must be a transformers causal LM, a specdec.eagle.EagleHead or None, got {type(draft).__name__}"
        )
    dv = draft.config.vocab_size if isinstance(draft, EagleHead) else logits_width(draft)
    if tp.device != dp.device:
        raise ValueError(f"target ({tp.device}) and draft ({dp.device}) must be on one device")
    if tp.dtype != dp.dtype:
        raise ValueError(f"target ({tp.dtype}) and draft ({dp.dtype}) must have the same dtype")
    if vocab != dv:
        raise ValueError(f"target and draft vocabularies differ ({vocab} vs {dv} logits): they must share a tokenizer")
    if not isinstance(draft, EagleHead):  # (a head is specdec's own module, attending through the kernel)
        check_supported("draft", draft)
    return temperature, eos, vocab


def generate(
    target,
    draft,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    strategy="chain",
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    generation_config=None,
    seed: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    streamer=None,
    timing: bool | None = None,
    compile: bool = False,
) -> GenerateOutput:
    """Generate with speculative decoding; greedy output equals ``target.generate(do_sample=False)``.

    Parameters
    ----------
    target : a transformers causal LM.
    draft : what drafts: a causal LM sharing the target's tokenizer (device and dtype), an
        :class:`specdec.EagleHead` built for this target (drafts from its hidden states, see
        :mod:`specdec.eagle`), or None for a model-free strategy (:class:`specdec.PromptLookup`).
    input_ids : [B, T] int64, left-padded when ragged (``attention_mask`` [B, T] marks real tokens).
    max_new_tokens : int >= 1 (default: the generation config's, else 128).
    strategy : a name ("chain", "disco", "heuristic", "confidence", "gate", "static-tree", "eagle2", "dyspec",
        "ddd", "lookup" (prompt lookup, k = 8), "hybrid" (prompt lookup where the context matches, else a
        chain from an EAGLE head), "auto") or an object (:class:`specdec.Chain`, :class:`specdec.DynamicLookahead`,
        :class:`specdec.StaticTree`, :class:`specdec.DynamicTree`, :class:`specdec.PromptLookup`: any
        :class:`specdec.Proposer`). "auto" asks the cost model (:mod:`specdec.tune`) once per model pair.
    temperature : 0 (default) for greedy; > 0 samples exactly from softmax(target_logits / temperature).
    top_k, top_p, min_p, repetition_penalty : transformers' sampling controls (0 / 1 / 0 / 1 mean off);
        the output then follows the warped target distribution exactly (:mod:`specdec.sampling`).
    generation_config : a ``transformers.GenerationConfig`` (e.g. ``model.generation_config``): its
        do_sample, temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, eos and pad ids
        apply where the matching argument is not given (explicit arguments win); any other field set to
        a non-default value is refused by name, never ignored.
    seed : makes sampling reproducible.
    eos_token_id, pad_token_id : a sequence stops after EOS (one id or a list); finished rows are
        padded with ``pad_token_id`` (default: the first EOS, else 0).
    streamer : optional; row 0's new token ids as they are accepted go to a callable (a list of ids
        per call) or to a transformers streamer (``TextStreamer``: ``put`` gets the prompt, then each
        step's ids as a tensor; ``end`` when generation ends).
    timing : split the wall time into draft / verify / other (``stats["draft_s"]`` ...). None: on CPU
        (free), off on CUDA, where True records CUDA events instead of synchronising.
    compile : run the target's and the draft model's forwards compiled (:mod:`specdec.compiled`:
        inductor with frozen, prepacked weights on CPU, CUDA graphs on CUDA), padded to a few bucket
        widths. Each new shape compiles once per model and process (about a minute for a 135M model on
        2 CPU cores, announced on stderr) and is reused by later calls. Greedy output stays identical to
        the target's own in fp32 up to the compiler's rounding (docs/performance.md, "Exactness").

    Returns
    -------
    GenerateOutput with ``sequences`` [B, T + new] and ``stats`` (target_calls, draft_calls,
    new_tokens, tau = tokens emitted per verification (bonus included), acceptance histogram,
    wall_s and its draft/verify/other split).

    Examples
    --------
    >>> import specdec
    >>> target, draft, tok = specdec.load_default_pair()
    >>> ids = tok("def fib(n):", return_tensors="pt").input_ids
    >>> out = specdec.generate(target, draft, ids, max_new_tokens=32)
    >>> out.sequences.shape[1] <= ids.shape[1] + 32
    True
    >>> target, head, tok = specdec.load_default_pair(draft="eagle")
    >>> out = specdec.generate(target, head, ids, max_new_tokens=32, strategy="eagle2")  # doctest: +SKIP
    """
    sampling, from_config = resolve_sampling(temperature, top_k, top_p, min_p, repetition_penalty, generation_config)
    max_new_tokens = _first_given(max_new_tokens, from_config.get("max_new_tokens"), DEFAULT_MAX_NEW_TOKENS)
    eos_token_id = _first_given(eos_token_id, from_config.get("eos_token_id"))
    pad_token_id = _first_given(pad_token_id, from_config.get("pad_token_id"))
    temperature, eos, vocab = _check_inputs(
        target,
        draft,
        input_ids,
        attention_mask,
        max_new_tokens,
        sampling.temperature,
        seed,
        eos_token_id,
        pad_token_id,
        streamer,
        timing,
    )
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    strategy = _resolve_strategy(strategy, target, draft, input_ids, vocab)
    if not strategy.needs_drafter:
        draft = None  # a model-free drafter (prompt lookup) reads the context; a draft model would only idle
    elif draft is None:
        raise ValueError("draft is None: only a drafter without a model (specdec.PromptLookup) can run without one")
    return decode(
        target,
        draft,
        input_ids,
        attention_mask,
        strategy=strategy,
        max_new_tokens=max_new_tokens,
        sampling=dataclasses.replace(sampling, temperature=temperature),
        eos=eos,
        pad_token_id=pad_token_id,
        streamer=streamer,
        seed=seed,
        timing=timing,
        compile=compile,
    )


def _resolve_strategy(strategy, target, draft, input_ids: torch.Tensor, vocab: int):
    """The strategy object: a name, an object, or "auto" (the cost model's pick for this model pair,
    calibrated once on the first prompt, :func:`specdec.tune.auto_strategy`)."""
    if isinstance(strategy, str) and strategy == "auto":
        strategy = tune.auto_strategy(target, draft, [tune.auto_sample(input_ids)])
    strategy = resolve_strategy(strategy)
    check_strategy_fits(strategy, vocab)
    return strategy


def _first_given(*values):
    return next((v for v in values if v is not None), None)


__all__ = ["generate", "GenerateOutput"]
