"""Speculative decoding: prefill -> (propose -> verify -> accept)* -> sequences.

Each step, per sequence: the strategy proposes a chain or a tree of drafts after the root (the last
token chosen but not yet run through the target), with distributions from the drafter (a draft model
or an EAGLE head on the target's features, :mod:`specdec.drafters`) or from the context alone (prompt
lookup); the target runs root + drafts in ONE forward (tree attention, writing their K/V in place);
``chain_verify`` / ``tree_verify`` accept a path and add the correction or bonus token. Greedy output
equals the target's own greedy decoding; with temperature
> 0, drafts are sampled from the draft's distribution q and verification accepts x with probability
min(1, p(x)/q(x)), resampling from norm(max(0, p - q)) on rejection, so the output is distributed
exactly as the target's samples (Leviathan et al., 2023; Chen et al., 2023).

Cache bookkeeping: per sequence, with ``ctx`` = committed length (root included), the target's cache
holds ``ctx - 1`` entries (all but the root). Chains need no compaction (the accepted drafts are already
contiguous after the committed context); a tree's root + accepted path is moved with
``compact_kv_cache``. Each drafter keeps its own cache in step (:mod:`specdec.drafters`).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import torch

import specdec_kernels as sk
from specdec.drafters import make_drafter
from specdec.eagle import EagleHead, check_head_fits
from specdec.runner import ModelRunner, chain_mask, tree_attention_enabled
from specdec.sampling import Sampling, seen_per_node, seen_tokens
from specdec.sampling import resolve as resolve_sampling
from specdec.strategies import DraftContext, _choose, resolve_strategy
from specdec.tree_drafting import DraftTree
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
from specdec_kernels import trees

INITIAL_OUTPUT = 256  # new tokens the KV caches have room for before their first doubling


@dataclasses.dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [B, T + new]: the prompt as given (left padding kept) + new tokens
    stats: dict


@dataclasses.dataclass
class _Rows:
    """Per-sequence state of the rows still generating (index i <-> original row ``ids[i]``)."""

    ids: torch.Tensor  # [Ba] original batch index
    prev: torch.Tensor  # [Ba] committed token before the root
    root: torch.Tensor  # [Ba] last committed token, not yet in the target's cache
    ctx: torch.Tensor  # [Ba] committed length: real prompt + generated tokens

    def select(self, keep: torch.Tensor) -> _Rows:
        return _Rows(*(t.index_select(0, keep) for t in (self.ids, self.prev, self.root, self.ctx)))


class _Timer:
    """Wall time per phase (draft / verify / other). On CPU a clock read is free, so it is on by default;
    on CUDA it is off unless asked (``timing=True``), and then records CUDA events, read once at the end,
    instead of synchronising at every phase change."""

    PHASES = ("draft", "verify", "other")

    def __init__(self, device: torch.device, enabled: bool | None):
        self.cuda = device.type == "cuda"
        self.enabled = (not self.cuda) if enabled is None else bool(enabled)
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self._marks: list = []  # CUDA: (phase that starts, event)
        self._phase, self._t = "other", time.perf_counter()

    def phase(self, name: str) -> None:
        if not self.enabled:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((name, event))
            return
        now = time.perf_counter()
        self.totals[self._phase] += now - self._t
        self._phase, self._t = name, now

    def seconds(self) -> dict:
        """{phase}_s per phase, None when timing was off."""
        if not self.enabled:
            return {f"{p}_s": None for p in self.PHASES}
        if self.cuda and self._marks:
            self._marks[-1][1].synchronize()
            for (name, start), (_, end) in zip(self._marks, self._marks[1:]):
                self.totals[name] += start.elapsed_time(end) / 1e3
        return {f"{p}_s": self.totals[p] for p in self.PHASES}


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


def _verify(tgt: ModelRunner, rows: _Rows, tree: DraftTree, sampling: Sampling, seed: int, history):
    """Target forward over the proposal (one call), then fused verification: ``chain_verify`` for a
    chain, ``tree_verify`` for a tree. Without sampling controls the verifier takes the target's logits
    (softmax(logits / temperature) is fused into it); with them, each node's logits get the repetition
    penalty of its own prefix and the warped probabilities go to the verifier (:mod:`specdec.sampling`)."""
    chain = tree.lens is not None
    if chain:
        K = tree.tokens.shape[1] - 1
        mask = chain_mask(K + 1, tree.tokens.device)
        pos = rows.ctx[:, None] - 1 + torch.arange(K + 1, device=tree.tokens.device)
    else:
        mask = trees.ancestor_mask(tree.parents)
        pos = rows.ctx[:, None] - 1 + mask.sum(-1) - 1  # depth = strict ancestors
    logits = tgt.forward(tree.tokens, pos, mask, start=rows.ctx - 1)
    probs = None
    if not sampling.plain:
        if sampling.penalised:
            seen = seen_per_node(seen_tokens(history(), logits.shape[-1], logits.device), tree.tokens, mask)
            logits = sampling.penalise(logits, seen)
        if not sampling.greedy:
            probs, logits = sampling.probs(logits), None
    T, greedy = sampling.temperature, sampling.greedy
    if chain:
        drafts = tree.tokens[:, 1:]
        if greedy:
            return sk.chain_verify(drafts, draft_lens=tree.lens, greedy=True, target_logits=logits, validate=False)
        if probs is not None:
            return sk.chain_verify(drafts, probs, tree.draft_probs, draft_lens=tree.lens, seed=seed, validate=False)
        return sk.chain_verify(
            drafts,
            None,
            tree.draft_probs,
            draft_lens=tree.lens,
            seed=seed,
            target_logits=logits,
            temperature=T,
            validate=False,
        )
    if probs is not None:
        return sk.tree_verify(tree.tokens, tree.parents, probs, tree.draft_probs, seed=seed, validate=False)
    return sk.tree_verify(
        tree.tokens,
        tree.parents,
        None,
        tree.draft_probs,
        greedy=greedy,
        seed=seed,
        target_logits=logits,
        temperature=T or 1.0,
        validate=False,
    )


def _first_token(logits: torch.Tensor, sampling: Sampling, prompts: list[list[int]], gen) -> torch.Tensor:
    """The token after each prompt (prefill logits [B, V]) under the sampling settings."""
    if sampling.plain:
        return _choose(logits, sampling.temperature, gen)[0]
    logits = sampling.penalise(logits, seen_tokens(prompts, logits.shape[-1], logits.device))
    if sampling.greedy:
        return logits.argmax(-1)
    return torch.multinomial(sampling.probs(logits), 1, generator=gen).squeeze(-1)


def _speculate(
    tgt,
    drafter,
    rows: _Rows,
    strategy,
    timer: _Timer,
    sampling: Sampling,
    gen,
    seed: int,
    remaining: torch.Tensor,
    history,
):
    """One step: the strategy proposes (a chain or a tree), one target forward verifies it, both caches
    keep what was accepted. Returns the verifier's result: ``tokens`` [Ba, *] emitted (accepted drafts
    + correction/bonus), ``num_emitted`` [Ba]."""
    timer.phase("draft")
    # drafts follow the draft's own distribution at the temperature (exact for any draft distribution)
    ctx = DraftContext(rows, drafter, sampling.temperature, gen, (remaining - 1).clamp(min=0), history)
    tree = strategy.propose(ctx)
    timer.phase("verify")
    res = _verify(tgt, rows, tree, sampling, seed, history)
    if tree.lens is None:  # the target kept the whole tree: move the root + accepted path together
        base = rows.ctx - 1
        tgt.cache.compact(base[:, None] + res.path.clamp(min=0), base, res.num_accepted + 1)
    if drafter is not None:
        drafter.accept(rows, tree, res)
    strategy.observe(tree, res)
    timer.phase("other")
    return res


def _advance(rows: _Rows, res) -> _Rows:
    """The last emitted token becomes the root, the one before it ``prev``; ctx grows by the emitted."""
    n = res.num_emitted
    emitted = torch.cat([rows.root[:, None], res.tokens.clamp(min=0)], 1)
    idx = torch.arange(n.numel(), device=n.device)
    return _Rows(rows.ids, emitted[idx, n - 1], emitted[idx, n], rows.ctx + n)


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
    strategy : a name ("chain", "disco", "heuristic", "confidence", "static-tree", "eagle2", "dyspec",
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
    max_new_tokens = _first_given(max_new_tokens, from_config.get("max_new_tokens"), 128)
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
    sampling = dataclasses.replace(sampling, temperature=temperature)
    if isinstance(strategy, str) and strategy == "auto" and draft is None:
        raise ValueError('strategy="auto" chooses among draft-model strategies: it needs a draft model or head')
    if isinstance(strategy, str) and strategy == "auto":  # the cost model's pick for this pair, calibrated once
        from specdec.tune import auto_strategy

        strategy = auto_strategy(target, draft, [input_ids[:1, -64:]])
    strategy = resolve_strategy(strategy)
    check_strategy_fits(strategy, vocab)
    if not strategy.needs_drafter:
        draft = None  # a model-free drafter (prompt lookup) reads the context; a draft model would only idle
    elif draft is None:
        raise ValueError("draft is None: only a drafter without a model (specdec.PromptLookup) can run without one")
    device, (B, T) = input_ids.device, input_ids.shape
    input_ids = input_ids.long()
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
    # room for the prompt, the output, and the widest forward past the committed context; the caches
    # start with room for INITIAL_OUTPUT new tokens and double as the output grows (EOS may come early)
    lookahead = max(strategy.max_nodes, strategy.max_fed) + 2
    max_len = T + max_new_tokens + lookahead
    capacity = T + min(max_new_tokens, INITIAL_OUTPUT) + lookahead
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
    step_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=device))
    timer = _Timer(device, timing)
    t0 = time.perf_counter()
    out: list[list[int]] = [[] for _ in range(B)]
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    hist = torch.zeros(strategy.max_nodes, dtype=torch.int64)
    verify_rows = verify_emitted = 0

    models = [target] + ([draft] if draft is not None and not isinstance(draft, EagleHead) else [])
    drafter = None
    with tree_attention_enabled(*models):
        try:
            tgt = ModelRunner(target, B, max_len, capacity=capacity, compile=compile)
            drafter = make_drafter(draft, target, B, max_len, capacity, compile=compile)
            tgt.tap = getattr(drafter, "tap", None)  # a head reads the target's features
            timer.phase("verify")
            first = _first_token(tgt.prefill(input_ids, attention_mask), sampling, prompts, gen)
            prefill_tokens = tgt.tokens
            timer.phase("draft")
            if drafter is not None:
                drafter.prefill(input_ids, attention_mask, first, tgt.prefill_features)
            timer.phase("other")
            lens = attention_mask.sum(1)
            rows = _Rows(torch.arange(B, device=device), input_ids[:, -1], first, lens + 1)
            strategy.start(B, device)
            stream = _stream_fn(streamer, input_ids[0][attention_mask[0].bool()])
            finished = _commit(out, rows.ids, first[:, None], torch.ones_like(first), max_new_tokens, eos, stream)
            rows = _drop_finished(rows, finished, tgt, drafter, strategy)

            step = 0
            while rows is not None:
                ids_now = rows.ids.tolist()
                emitted = torch.tensor([len(out[i]) for i in ids_now], device=device)
                res = _speculate(
                    tgt,
                    drafter,
                    rows,
                    strategy,
                    timer,
                    sampling,
                    gen,
                    step_seed + step,
                    max_new_tokens - emitted,
                    # built at most once a step, on first use (prompt lookup, repetition penalty)
                    functools.cache(lambda ids=ids_now: [prompts[i] + out[i] for i in ids]),
                )
                n = res.num_emitted
                hist += torch.bincount((n - 1).cpu(), minlength=hist.numel())[: hist.numel()]
                verify_rows += n.numel()
                verify_emitted += int(n.sum())
                finished = _commit(out, rows.ids, res.tokens, n, max_new_tokens, eos, stream)
                rows = _advance(rows, res)
                tgt.cache.lens = rows.ctx - 1
                rows = _drop_finished(rows, finished, tgt, drafter, strategy)
                step += 1
        finally:
            if drafter is not None and hasattr(drafter, "release"):
                drafter.release()
    if streamer is not None and not callable(streamer):
        streamer.end()
    timer.phase("other")

    if pad_token_id is None:  # transformers' convention: pad finished rows with (the first) EOS
        pad_token_id = eos[0] if eos else 0
    sequences = _assemble(input_ids, out, pad_token_id)
    new_tokens = sum(len(o) for o in out)
    stats = {
        "target_calls": tgt.calls,
        "draft_calls": drafter.calls if drafter is not None else 0,
        "new_tokens": new_tokens,
        "steps": step,
        "verify_tokens": (tgt.tokens - prefill_tokens) / max(step, 1),  # mean width of a verify forward
        "tau": verify_emitted / max(verify_rows, 1),
        "acceptance_histogram": hist.tolist(),
        "wall_s": time.perf_counter() - t0,
        "compiled": compile,
        **timer.seconds(),
    }
    return GenerateOutput(sequences, stats)


def _first_given(*values):
    return next((v for v in values if v is not None), None)


def _stream_fn(streamer, prompt: torch.Tensor):
    """``streamer`` as a callable taking a list of new ids (None: no streaming). A transformers streamer
    (put/end) first gets the prompt, as transformers' generate gives it, then a tensor per step."""
    if streamer is None or callable(streamer):
        return streamer
    streamer.put(prompt.cpu())

    def put(ids: list[int]) -> None:
        if ids:
            streamer.put(torch.tensor(ids, dtype=torch.int64))

    return put


def _commit(out, ids, tokens, n, max_new_tokens, eos: list[int], stream=None) -> torch.Tensor:
    """Append each row's emitted tokens, cut at EOS (any of ``eos``) and max_new_tokens; returns
    finished [Ba] bool. ``stream`` gets row 0's new ids."""
    eos = set(eos)
    finished = []
    for row, toks, count in zip(ids.tolist(), tokens.tolist(), n.tolist()):
        done, before = False, len(out[row])
        for t in toks[:count]:
            out[row].append(t)
            if t in eos or len(out[row]) >= max_new_tokens:
                done = True
                break
        if stream is not None and row == 0:
            stream(out[row][before:])
        finished.append(done)
    return torch.tensor(finished, dtype=torch.bool)


def _drop_finished(rows, finished, tgt, drafter, strategy):
    """Remove finished rows from the batch (caches, strategy state) so they stop consuming work;
    None once every row is done."""
    if not bool(finished.any()):
        return rows
    keep = (~finished).nonzero().squeeze(1).to(rows.ids.device)
    if keep.numel() == 0:
        return None
    for runner in (tgt, drafter):
        if runner is not None:
            runner.select(keep)
    strategy.select(keep)
    return rows.select(keep)


def _assemble(input_ids, out, pad) -> torch.Tensor:
    width = max(len(o) for o in out)
    new = torch.full((len(out), width), pad, dtype=torch.int64)
    for b, o in enumerate(out):
        new[b, : len(o)] = torch.tensor(o, dtype=torch.int64)
    return torch.cat([input_ids, new.to(input_ids.device)], 1)
