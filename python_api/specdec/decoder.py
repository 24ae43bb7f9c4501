"""The decoding loop: prefill -> (propose -> verify -> accept)* over a batch of rows.

:class:`Decoder` holds one generation's state: the target's runner, the drafter, the strategy and the
rows still generating. :func:`decode` drives it over validated arguments (``specdec.generate`` checks
and resolves them first)::

    first = dec.prefill(input_ids, attention_mask, prompts)
    while dec.active:
        result = dec.step(limit, history)      # one proposal, one target forward, one verification
        dec.drop(finished rows)

Each step, per sequence: the strategy proposes a chain or a tree of drafts after the root (the last
token chosen but not yet run through the target), with distributions from the drafter (a draft model or
an EAGLE head) or from the context alone (prompt lookup); the target runs root + drafts in ONE forward
(tree attention, writing their K/V in place); ``chain_verify`` / ``tree_verify`` accept a path and add
the correction or bonus token. Greedy output equals the target's own greedy decoding; with temperature
> 0, drafts are sampled from the draft's distribution q and verification accepts x with probability
min(1, p(x)/q(x)), resampling from norm(max(0, p - q)) on rejection, so the output is distributed
exactly as the target's samples (Leviathan et al., 2023; Chen et al., 2023).

Cache bookkeeping: per sequence, with ``ctx`` = committed length (root included), the target's cache
holds ``ctx - 1`` entries (all but the root). Chains need no compaction (the accepted drafts are already
contiguous after the committed context); a tree's root + accepted path is moved with
``compact_kv_cache``. Each drafter keeps its own cache in step. docs/strategies.md walks through it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import torch

import specdec_kernels as sk
from specdec.drafters import ModelDrafter
from specdec.eagle import EagleHead, FeatureTap, HeadDrafter
from specdec.proposer import DraftContext, DraftTree, Rows, check_proposal, choose
from specdec.runner import ModelRunner, chain_mask, tree_attention_enabled
from specdec.sampling import Sampling, seen_per_node, seen_tokens
from specdec_kernels import trees

INITIAL_OUTPUT = 256  # new tokens the KV caches have room for before their first doubling
# Cache room past the widest forward: a drafter re-feeds the last two committed tokens (prev at ctx - 2,
# the root at ctx - 1) before the nodes it drafts
CACHE_HEADROOM = 2


@dataclasses.dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [B, T + new]: the prompt as given (left padding kept) + new tokens
    stats: dict


class Timer:
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
            self._marks = self._marks[-1:]
        return {f"{p}_s": self.totals[p] for p in self.PHASES}


def make_drafter(draft, target, batch_size: int, max_len: int, capacity: int | None = None, compile: bool = False):
    """The drafter for ``draft``: an :class:`specdec.eagle.EagleHead` or a causal LM (None: no drafter).
    ``max_len`` bounds its cache positions; ``capacity`` is what is allocated up front (it grows);
    ``compile``: a draft model's forwards are compiled (:mod:`specdec.compiled`)."""
    if draft is None:
        return None
    if isinstance(draft, EagleHead):
        return HeadDrafter(draft, FeatureTap(target, draft.config.feature_layers), batch_size, max_len, capacity)
    return ModelDrafter(draft, batch_size, max_len, capacity, compile=compile)


def verify(target: ModelRunner, rows: Rows, tree: DraftTree, sampling: Sampling, seed: int, history):
    """Target forward over the proposal (one call), then fused verification: ``chain_verify`` for a
    chain, ``tree_verify`` for a tree. Without sampling controls the verifier takes the target's logits
    (softmax(logits / temperature) is fused into it); with them, each node's logits get the repetition
    penalty of its own prefix and the warped probabilities go to the verifier (:mod:`specdec.sampling`)."""
    if tree.is_chain:
        mask = chain_mask(tree.width, tree.tokens.device)
        pos = rows.ctx[:, None] - 1 + torch.arange(tree.width, device=tree.tokens.device)
    else:
        mask = trees.ancestor_mask(tree.parents)
        pos = rows.ctx[:, None] - 1 + trees.mask_depths(mask)
    logits = target.forward(tree.tokens, pos, mask, start=rows.ctx - 1)
    probs = None
    if not sampling.plain:
        if sampling.penalised:
            seen = seen_per_node(seen_tokens(history(), logits.shape[-1], logits.device), tree.tokens, mask)
            logits = sampling.penalise(logits, seen)
        if not sampling.greedy:
            probs, logits = sampling.probs(logits), None
    T, greedy = sampling.temperature, sampling.greedy
    if tree.is_chain:
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


def first_token(logits: torch.Tensor, sampling: Sampling, prompts: list[list[int]], gen) -> torch.Tensor:
    """The token after each prompt (prefill logits [B, V]) under the sampling settings."""
    if sampling.plain:
        return choose(logits, sampling.temperature, gen)[0]
    logits = sampling.penalise(logits, seen_tokens(prompts, logits.shape[-1], logits.device))
    if sampling.greedy:
        return logits.argmax(-1)
    return torch.multinomial(sampling.probs(logits), 1, generator=gen).squeeze(-1)


def fresh_seed() -> int:
    """A seed for a generation given none: drawn from torch's global generator (so ``torch.manual_seed``
    makes it reproducible), below 2**62 to stay a valid generator seed."""
    return int(torch.randint(0, 2**62, (1,)))


class Decoder:
    """One generation in progress over a batch: the target's runner, the drafter, the strategy and the
    rows still generating (``rows``; finished rows leave through :meth:`drop`).

    ``max_len`` bounds every cache position; ``capacity`` is what the caches allocate up front (they
    double when short). Use it as a context manager: leaving releases the drafter (an EAGLE head's hook
    on the target)."""

    def __init__(
        self,
        target,
        draft,
        strategy,
        sampling: Sampling,
        *,
        batch: int,
        max_len: int,
        capacity: int,
        seed: int | None = None,
        timing: bool | None = None,
        compile: bool = False,
    ):
        device = next(target.parameters()).device
        self.strategy, self.sampling = strategy, sampling
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed if seed is not None else fresh_seed())
        # verification's Philox seed of step s is step_seed + s: one draw, then no generator traffic
        self.step_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen, device=device))
        self.timer = Timer(device, timing)
        self.drafter = make_drafter(draft, target, batch, max_len, capacity, compile=compile)
        self._released = False
        try:
            tap = self.drafter.tap if self.drafter is not None else None
            self.target = ModelRunner(target, batch, max_len, capacity=capacity, compile=compile, tap=tap)
        except BaseException:
            self.close()
            raise
        self.rows: Rows | None = None
        self.steps = 0
        self.histogram = torch.zeros(strategy.max_nodes, dtype=torch.int64)  # emitted - 1 per row-step
        self._prefill_tokens = 0

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the drafter (once): its hooks on the target go; its counters stay readable."""
        if self.drafter is not None and not self._released:
            self.drafter.release()
        self._released = True

    @property
    def active(self) -> bool:
        return self.rows is not None

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: list[list[int]]):
        """Run the prompts ([B, T], left padded) through the target and the drafter; the first new token
        of each row [B] (``prompts``: each row's real tokens, for a repetition penalty)."""
        B = input_ids.shape[0]
        self.timer.phase("verify")
        first = first_token(self.target.prefill(input_ids, attention_mask), self.sampling, prompts, self.gen)
        self._prefill_tokens = self.target.tokens
        self.timer.phase("draft")
        if self.drafter is not None:
            self.drafter.prefill(input_ids, attention_mask, first, self.target.prefill_features)
        self.timer.phase("other")
        lens = attention_mask.sum(1)
        self.rows = Rows(torch.arange(B, device=input_ids.device), input_ids[:, -1], first, lens + 1)
        self.strategy.start(B, input_ids.device)
        return first

    def step(self, limit: torch.Tensor, history: Callable[[], list[list[int]]]):
        """One step over the rows still generating: the strategy proposes, one target forward verifies,
        both caches keep what was accepted. ``limit`` [Ba]: the most drafts each row can still use;
        ``history``: committed tokens per row, on demand. Returns the verifier's result (``tokens``
        [Ba, *] emitted: accepted drafts + the correction or bonus token; ``num_emitted`` [Ba])."""
        rows, drafter, strategy = self.rows, self.drafter, self.strategy
        self.timer.phase("draft")
        # drafts follow the draft's own distribution at the temperature (exact for any draft distribution)
        ctx = DraftContext(rows, drafter, self.sampling.temperature, self.gen, limit, history)
        tree = strategy.propose(ctx)
        check_proposal(strategy, tree, rows.ids.numel())
        self.timer.phase("verify")
        result = verify(self.target, rows, tree, self.sampling, self.step_seed + self.steps, history)
        if not tree.is_chain:  # the target kept the whole tree: move the root + accepted path together
            base = rows.ctx - 1
            self.target.cache.compact(base[:, None] + result.path.clamp(min=0), base, result.num_accepted + 1)
        if drafter is not None:
            drafter.accept(rows, tree, result)
        strategy.observe(tree, result)
        self.timer.phase("other")
        n = result.num_emitted
        self.histogram += torch.bincount((n - 1).cpu(), minlength=self.histogram.numel())[: self.histogram.numel()]
        self.rows = rows.advance(result)
        self.target.commit(self.rows.ctx - 1)  # everything but the new root
        self.steps += 1
        return result

    def drop(self, finished: torch.Tensor) -> None:
        """Remove the finished rows ([Ba] bool) from the batch (caches, strategy state), so they stop
        consuming work; ``active`` turns False once every row is done."""
        if not bool(finished.any()):
            return
        keep = (~finished).nonzero().squeeze(1).to(self.rows.ids.device)
        if keep.numel() == 0:
            self.rows = None
            return
        for runner in (self.target, self.drafter):
            if runner is not None:
                runner.select(keep)
        self.strategy.select(keep)
        self.rows = self.rows.select(keep)

    def stats(self) -> dict:
        """Counters of the generation so far (see :func:`specdec.generate`'s Returns)."""
        self.timer.phase("other")
        h = self.histogram
        rows = int(h.sum())
        emitted = int((h * torch.arange(1, h.numel() + 1)).sum())
        return {
            "target_calls": self.target.calls,
            "draft_calls": self.drafter.calls if self.drafter is not None else 0,
            "steps": self.steps,
            # mean width of a verify forward
            "verify_tokens": (self.target.tokens - self._prefill_tokens) / max(self.steps, 1),
            "tau": emitted / max(rows, 1),  # tokens emitted per verification of a row, bonus included
            "acceptance_histogram": h.tolist(),
            **self.timer.seconds(),
        }


class Outputs:
    """Each row's new tokens, cut at EOS and ``max_new_tokens``; row 0's go to ``stream`` as they come."""

    def __init__(self, prompts: list[list[int]], max_new_tokens: int, eos: list[int], stream=None):
        self.prompts, self.max_new_tokens, self.eos, self.stream = prompts, max_new_tokens, set(eos), stream
        self.tokens: list[list[int]] = [[] for _ in prompts]

    def commit(self, ids: list[int], tokens: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Append each row's ``n`` emitted ``tokens``; finished [Ba] bool."""
        finished = []
        for row, toks, count in zip(ids, tokens.tolist(), n.tolist()):
            out, done = self.tokens[row], False
            before = len(out)
            for t in toks[:count]:
                out.append(t)
                if t in self.eos or len(out) >= self.max_new_tokens:
                    done = True
                    break
            if self.stream is not None and row == 0:
                self.stream(out[before:])
            finished.append(done)
        return torch.tensor(finished, dtype=torch.bool)

    def limit(self, ids: list[int], device) -> torch.Tensor:
        """[Ba] the most drafts each row can use: one token of what is left is the correction or bonus."""
        left = torch.tensor([self.max_new_tokens - len(self.tokens[i]) for i in ids], device=device)
        return (left - 1).clamp(min=0)

    def history(self, ids: list[int]) -> Callable[[], list[list[int]]]:
        """Committed tokens per row (prompt + output), built at most once a step, on first use (prompt
        lookup, the repetition penalty)."""
        return functools.cache(lambda: [self.prompts[i] + self.tokens[i] for i in ids])

    def sequences(self, input_ids: torch.Tensor, pad: int) -> torch.Tensor:
        """[B, T + new]: the prompts as given, then the new tokens padded with ``pad``."""
        width = max(len(o) for o in self.tokens)
        new = torch.full((len(self.tokens), width), pad, dtype=torch.int64)
        for b, o in enumerate(self.tokens):
            new[b, : len(o)] = torch.tensor(o, dtype=torch.int64)
        return torch.cat([input_ids, new.to(input_ids.device)], 1)


def stream_fn(streamer, prompt: torch.Tensor):
    """``streamer`` as a callable taking a list of new ids (None: no streaming). A transformers streamer
    (put/end) first gets the prompt, as transformers' generate gives it, then a tensor per step."""
    if streamer is None or callable(streamer):
        return streamer
    streamer.put(prompt.cpu())

    def put(ids: list[int]) -> None:
        if ids:
            streamer.put(torch.tensor(ids, dtype=torch.int64))

    return put


def decode(
    target,
    draft,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    strategy,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    eos: list[int] = (),
    pad_token_id: int | None = None,
    streamer=None,
    seed: int | None = None,
    timing: bool | None = None,
    compile: bool = False,
) -> GenerateOutput:
    """Speculative decoding over arguments ``specdec.generate`` has checked and resolved: ``strategy`` a
    :class:`specdec.Proposer` object, ``draft`` None exactly when it needs no drafter, ``sampling`` a
    :class:`specdec.sampling.Sampling` (None: greedy). The rest as :func:`specdec.generate`'s."""
    sampling = sampling if sampling is not None else Sampling()
    input_ids = input_ids.long()
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
    B, T = input_ids.shape
    # room for the prompt, the output, and the widest forward past the committed context; the caches
    # start with room for INITIAL_OUTPUT new tokens and double as the output grows (EOS may come early)
    lookahead = max(strategy.max_nodes, strategy.max_fed) + CACHE_HEADROOM
    sizes = dict(
        batch=B, max_len=T + max_new_tokens + lookahead, capacity=T + min(max_new_tokens, INITIAL_OUTPUT) + lookahead
    )
    t0 = time.perf_counter()
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    out = Outputs(prompts, max_new_tokens, list(eos))
    models = [target] + ([draft] if draft is not None and not isinstance(draft, EagleHead) else [])
    options = dict(seed=seed, timing=timing, compile=compile)
    with tree_attention_enabled(*models), Decoder(target, draft, strategy, sampling, **sizes, **options) as dec:
        first = dec.prefill(input_ids, attention_mask, prompts)
        out.stream = stream_fn(streamer, input_ids[0][attention_mask[0].bool()])
        dec.drop(out.commit(list(range(B)), first[:, None], torch.ones_like(first)))
        while dec.active:
            ids = dec.rows.ids.tolist()
            result = dec.step(out.limit(ids, input_ids.device), out.history(ids))
            dec.drop(out.commit(ids, result.tokens, result.num_emitted))
    if streamer is not None and not callable(streamer):
        streamer.end()
    if pad_token_id is None:  # transformers' convention: pad finished rows with (the first) EOS
        pad_token_id = eos[0] if eos else 0
    stats = dec.stats()
    stats.update(
        new_tokens=sum(len(o) for o in out.tokens),
        wall_s=time.perf_counter() - t0,
        compiled=compile,
    )
    return GenerateOutput(out.sequences(input_ids, pad_token_id), stats)


__all__ = ["Decoder", "GenerateOutput", "decode", "make_drafter", "verify"]
