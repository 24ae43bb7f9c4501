"""A Hugging Face causal LM plus its KV buffer, run over token trees with the tree-attention hook."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
import weakref

import torch

from specdec import compiled, hf_attention
from specdec.cache import SpecCache
from specdec.model_support import check_model_support
from specdec_kernels import trees


@contextlib.contextmanager
def tree_attention_enabled(*models):
    """Switch the models to the "specdec_tree" attention for the duration, then restore theirs."""
    name = hf_attention.register()
    saved = [m.config._attn_implementation for m in models]
    try:
        for m in models:
            m.set_attn_implementation(name)
        yield
    finally:
        for m, impl in zip(models, saved):
            m.set_attn_implementation(impl)


PREFILL_CHUNK = 512  # prompt tokens per prefill forward (the Triton kernel takes up to 1024 nodes)

# On CPU, torch's BLAS runs some small row counts slower than larger ones (SmolLM2-135M through this
# runner, unpadded: 2 / 3 / 4 / 5 tokens 70 / 88 / 66 / 59 ms; bench/results/latency_cpu.md).
# Which widths are slow depends on the model's shapes and the machine, so each model is timed once on
# CPU, widths 1..PAD_SEARCH (a few ms for a tiny model, ~2 s for SmolLM2), and a forward of a slow
# width is padded to the fastest wider one when that takes under PAD_MIN_GAIN of its time.
CPU_PADDING = True
PAD_SEARCH = 8
PAD_MIN_GAIN = 0.9
_PAD_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pad_map_from_latency(latency: dict[int, float], gain: float = PAD_MIN_GAIN) -> dict[int, int]:
    """{width: padded width} from a {width: seconds} table: the fastest wider width, where it pays."""
    out = {}
    for n in sorted(latency):
        best = min((w for w in latency if w >= n), key=lambda w: latency[w])
        if best != n and latency[best] < gain * latency[n]:
            out[n] = best
    return out


def cpu_pad_map(model) -> dict[int, int]:
    """The padding map of ``model`` on CPU, measured on first use and cached per model."""
    if model not in _PAD_MAPS:
        latency = time_forwards(model, range(1, PAD_SEARCH + 1), prefix=32, reps=3, pad=False)
        _PAD_MAPS[model] = pad_map_from_latency(latency)
    return _PAD_MAPS[model]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forwards(model, widths, prefix: int, reps: int, pad: bool = True, compile: bool = False) -> dict[int, float]:
    """Median seconds of one forward over n chain tokens after a random ``prefix``-token prompt, for
    each n in ``widths`` (B = 1). Widths are interleaved within each of the reps + 1 rounds, so drift on a
    shared machine hits all alike; the first round is warm-up (and compiles, with ``compile``).
    ``pad``: with this runner's CPU padding; ``compile``: through the compiled forward (bucket widths)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size  # (a draft's head may score only a subset)
    widths = list(widths)
    with tree_attention_enabled(model):
        r = ModelRunner(model, 1, prefix + max(widths) + 1, pad=pad, compile=compile)
        ids = torch.randint(0, vocab, (1, prefix), device=device)
        r.prefill(ids, torch.ones_like(ids))
        return median_forward_seconds(r.forward, vocab, device, widths, prefix, reps)


def median_forward_seconds(forward, vocab: int, device, widths, prefix: int, reps: int) -> dict[int, float]:
    """The timing loop of :func:`time_forwards` (and of the EAGLE head's counterpart): ``forward(tokens,
    positions, tree_mask)`` over n random chain tokens placed after ``prefix`` entries, for each n in
    ``widths``; widths interleaved within each of the reps + 1 rounds, the first round is warm-up."""
    samples = {w: [] for w in widths}
    for rep in range(reps + 1):
        for w in widths:
            x = torch.randint(0, vocab, (1, w), device=device)
            pos = prefix + torch.arange(w, device=device)[None]
            _sync(device)
            t0 = time.perf_counter()
            forward(x, pos, chain_mask(w, device))
            _sync(device)
            if rep:
                samples[w].append(time.perf_counter() - t0)
    return {w: statistics.median(v) for w, v in samples.items()}


def _pad_forward(tokens: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor, width: int):
    """Append width - N filler nodes: each sees the prefix and itself only, and no real node sees them.
    Their K/V land just past the tree, where nothing reads them (kv_lens ends at the real tree for
    every later forward, which rewrites those slots first); their logits are dropped."""
    B, N = tokens.shape
    extra = width - N
    tokens = torch.cat([tokens, tokens[:, -1:].expand(B, extra)], 1)
    positions = torch.cat([positions, positions[:, -1:].expand(B, extra)], 1)
    mask = torch.zeros(*tree_mask.shape[:-2], width, width, dtype=torch.bool, device=tree_mask.device)
    mask[..., :N, :N] = tree_mask
    pad = torch.arange(N, width, device=tree_mask.device)
    mask[..., pad, pad] = True
    return tokens, positions, mask


class ModelRunner:
    """Runs one model over trees of tokens; ``cache.lens`` holds each sequence's committed length
    (set by :meth:`prefill` and :meth:`commit`).

    ``compile=True``: every forward goes through the model's compiled forward
    (:mod:`specdec.compiled`), padded to a bucket width, over a fixed-shape cache."""

    def __init__(
        self,
        model,
        batch_size: int,
        max_len: int,
        pad: bool = True,
        capacity: int | None = None,
        compile: bool = False,
        tap=None,
    ):
        self.model = model
        layout = check_model_support(model)  # refuses what the loop cannot run, before any forward of it
        p = next(model.parameters())
        self.compiled = compiled.compiled_forward(model) if compile else None
        eager_cpu = pad and CPU_PADDING and p.device.type == "cpu" and not compile
        self.pad = cpu_pad_map(model) if eager_cpu else {}
        # compiled: filler nodes of the widest bucket may land past the last real position
        max_len += compiled.WIDTHS[-1] if compile else 0
        self.cache = SpecCache(
            model.config, batch_size, max_len, dtype=p.dtype, device=p.device, capacity=capacity, layout=layout
        )
        if compile:
            self.cache.fixed_shapes()
        self.calls = 0
        self.tokens = 0  # tokens fed per row, summed over forwards (prefill included)
        self.tap = tap  # a specdec.eagle.FeatureTap on ``model``: prefill then keeps its features
        if tap is not None and compile:
            # Every forward of a compiled runner returns the features itself (FeatureTap.keep), so the hooks
            # go: dynamo guards on a traced hook's code object, and each generate's new tap would retrace
            # (a minute per width, inside a request) when the hooks' order on a layer changes.
            tap.remove()
        self.prefill_features: torch.Tensor | None = None  # [B, T, F] (shifted layout) when tapped

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tree_mask: torch.Tensor,
        start: torch.Tensor | int | None = None,
        prefill: bool = False,
    ) -> torch.Tensor:
        """Run N tokens per sequence written at cache positions ``start[b] + 0..N-1`` (default ``lens``;
        an int: one offset for every sequence). ``prefill``: a prompt chunk, which a compiled runner runs
        through the model's eager forward over the same cache (see :meth:`prefill`).

        tokens, positions: [B, N]; tree_mask: [N, N] or [B, N, N] bool. Returns logits [B, N, V] (fp32).
        Does not move ``lens``: the caller commits what was accepted (:meth:`commit`).
        """
        n = tokens.shape[1]
        if self.compiled is not None:
            return self._compiled_forward(tokens, positions, tree_mask, start, eager=prefill)
        width = self.pad.get(n)  # (CPU only: there a read-back costs nothing)
        if width and _max_start(self.cache.lens if start is None else start) + width <= self.cache.max_len:
            tokens, positions, tree_mask = _pad_forward(tokens, positions, tree_mask, width)
        kv_lens = self.cache.begin_forward(tokens.shape[1], start)
        if tree_mask.dtype == torch.bool and tokens.device.type == "cuda":
            tree_mask = trees.pack_mask(tree_mask)  # once per forward, not in every layer's kernel launch
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            tree_mask=tree_mask,
            kv_lens=kv_lens,
            mask_memo={},
            # kv_lens is built here and begin_forward checked it against the cache (its max is the
            # split-K bound): no layer needs to read kv_lens back
            tree_attention_check=False,
            max_kv_len=self.cache.max_end,
        )
        self.calls += 1
        self.tokens += tokens.shape[1]
        return out.logits[:, :n].float()

    def _compiled_forward(self, tokens, positions, tree_mask, start, eager: bool = False) -> torch.Tensor:
        B, n = tokens.shape
        width = n if eager else compiled.bucket(n)
        if width > n:
            tokens, positions, tree_mask = _pad_forward(tokens, positions, tree_mask, width)
        kv_lens = self.cache.begin_forward(width, start)
        # copies made here (inference mode) are inference tensors, whoever made the originals: a graph
        # input's dispatch keys are guarded, so a mix would compile the same shape twice
        mask = compiled.dense_batch_mask(tree_mask, B)  # (a copy already)
        tokens, positions = tokens.clone(), positions.clone()
        run = self.compiled.eager if eager else self.compiled
        if self.tap is None:
            out = run(self.cache, tokens, positions, mask, kv_lens)
        else:  # the features come out of the graph (a hook may not be in it) and replace the hooks'
            out, features = run(self.cache, tokens, positions, mask, kv_lens, self.tap.layers)
            self.tap.keep(features)
        self.calls += 1
        self.tokens += width
        return out[:, :n].float()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run left-padded prompts; afterwards sequence b's real tokens sit at positions 0..len_b-1.

        Each row is first shifted left (its real tokens to the front, filler after them), then the rows
        run in causal chunks of at most ``PREFILL_CHUNK`` tokens: chunk j is a chain "tree" over the
        prefix of the j previous chunks. A real token only ever sees real tokens (they form a prefix);
        filler entries sit at or past ``lens`` and are overwritten later. Chunks keep every forward
        within the tree-attention kernel's node limit, whatever the prompt length. A compiled runner
        prefills through the model's eager forward over the same fixed-shape cache: a prompt runs once,
        and a graph of its width would cost a compile (minutes on a small CPU) to save milliseconds.
        Returns the logits after each row's last prompt token, [B, V].
        """
        B, T = input_ids.shape
        ids, lens = left_aligned(input_ids, attention_mask)
        last = lens - 1  # position of each row's last real token
        out, feats = None, []
        for start in range(0, T, PREFILL_CHUNK):
            n = min(PREFILL_CHUNK, T - start)
            pos = torch.arange(start, start + n, device=ids.device).expand(B, n)
            chunk = ids[:, start : start + n]
            logits = self.forward(chunk, pos, chain_mask(n, ids.device), start=start, prefill=True)
            if self.tap is not None:
                feats.append(self.tap.features(n))
            here = (last >= start) & (last < start + n)
            picked = logits.gather(1, (last - start).clamp(0, n - 1)[:, None, None].expand(B, 1, logits.shape[-1]))[
                :, 0
            ]
            out = picked if out is None else torch.where(here[:, None], picked, out)
        self.cache.lens = lens.clone()
        self.prefill_features = torch.cat(feats, 1) if feats else None
        return out

    def commit(self, lens: torch.Tensor) -> None:
        """Entries ``0 .. lens[b] - 1`` of each sequence are its committed context; what forwards wrote
        past them is scratch, overwritten by the next forward."""
        self.cache.lens = lens

    def select(self, rows: torch.Tensor) -> None:
        self.cache.select(rows)


def _max_start(start: torch.Tensor | int) -> int:
    return start if isinstance(start, int) else int(start.max())


def left_aligned(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts shifted so each row's real tokens come first ([B, T], filler after them),
    and the real lengths [B]: the layout every cache of the loop is prefilled in."""
    T = input_ids.shape[1]
    lens = attention_mask.sum(1)
    cols = (torch.arange(T, device=input_ids.device) + (T - lens)[:, None]).clamp(max=T - 1)
    return input_ids.gather(1, cols), lens


@functools.lru_cache(maxsize=64)
def chain_mask(n: int, device) -> torch.Tensor:
    """Causal [n, n] mask: the ancestor mask of a chain. Cached, the loop asks for the same few sizes."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


__all__ = ["ModelRunner", "tree_attention_enabled", "chain_mask", "left_aligned", "time_forwards"]
