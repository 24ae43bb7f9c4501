"""The fast path: a model's forward compiled once per shape and reused by every later call.

Why. Through transformers' eager path a small model's token costs what its matmuls cost at a fraction
of the machine's bandwidth, and a wider forward costs visibly more than one token, so drafts are paid
for twice. Compiled (inductor with freezing: weights become constants, prepacked for oneDNN's bf16
GEMMs on CPU; CUDA graphs on CUDA) a forward of 16 tokens costs about what one costs
(docs/performance.md, "Regimes"), which is the regime speculative decoding is built for.

What keeps the number of graphs small and fixed (docs/performance.md, "Compiled forwards"):

* **Widths are bucketed.** A forward of n tokens is padded to the smallest of :data:`WIDTHS` that holds
  it (filler nodes see only the prefix and themselves; no real node sees them, their logits are
  dropped). Prompts are prefilled through the eager forward over the same cache (a prompt runs once; a
  graph for it would cost a compile). A generation compiles at most one graph per bucket it uses.
* **Nothing that changes every step reaches the graph as a Python number.** Sequence lengths, write
  positions and the tree mask are tensors; the cache is written by a scatter at tensor positions; the
  attention reads the whole fixed-capacity buffer, masked by ``kv_lens``.
* **The cache grows in few, large steps**: its capacity is a power of two (see
  :meth:`specdec.cache.SpecCache.fixed_shapes`), so a long output adds at most one graph per doubling.

A compiled forward is cached per model (weakly: it goes with the model) and per device kind, so later
``generate`` calls reuse it; inductor's on-disk caches let a second process skip most of the work.
Each new graph is announced on stderr with its compile time, and counted in :func:`compile_stats`.
"""

from __future__ import annotations

import os
import sys
import time
import types
import weakref

import torch

# Token widths a compiled forward is padded to. Few buckets mean few compiles (~1 min each for a 135M
# model on 2 CPU cores); compiled, padding costs little (16 tokens cost ~1.02x one token).
WIDTHS = (1, 4, 16, 64)
# Dynamo's per-function graph limit (default 8) would fall back to eager silently past 8 graphs; a
# target and a draft model over four widths and two capacities need up to 16.
RECOMPILE_LIMIT = 64

# None: inductor (CPU) / CUDA graphs (CUDA). A torch.compile backend name overrides it: tests use "eager"
# to count dynamo's graphs without paying inductor's compile time.
BACKEND: str | None = None

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATS = {"graphs": 0, "compile_s": 0.0}


def bucket(n: int, widths: tuple[int, ...] | None = None) -> int:
    """The smallest width in ``widths`` (default :data:`WIDTHS`) that holds n tokens (ValueError past
    the widest)."""
    widths = WIDTHS if widths is None else widths
    for w in widths:
        if n <= w:
            return w
    raise ValueError(f"a forward of {n} tokens is wider than the widest compiled width {widths[-1]}")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Does ``device`` multiply bf16 natively? CUDA: Ampere or newer; CPU: AVX512-BF16 or AMX. Elsewhere
    bf16 GEMMs are emulated through fp32 and cost more than fp32 itself."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def fast_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """bf16 where ``device`` has native bf16 (:func:`native_bf16`), else fp32: the demo's and the
    benchmarks' default. fp32 stays the dtype in which greedy output is exact."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def reset() -> None:
    """Forget every compiled forward (dynamo's graphs too): the next forward of each model compiles anew."""
    torch._dynamo.reset()
    _COMPILED.clear()


def compile_stats() -> dict:
    """Graphs compiled and seconds spent compiling in this process (all models)."""
    return dict(_STATS)


def _model_forward(model, cache, tokens, positions, tree_mask, kv_lens, capacity: int, layers: tuple = ()):
    # The compiled region: one model call. ``capacity`` is fixed per graph (the cache's allocated
    # length); the attention reads that many entries, masked by kv_lens, so no step-varying int enters.
    # ``layers``: hidden-state indices returned beside the logits (an EAGLE head's features). They are a
    # graph output, not left to forward hooks: dynamo does not guard on hooks, so a graph traced before a
    # hook was added would run without it and leave stale features behind.
    out = model(
        input_ids=tokens,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        tree_mask=tree_mask,
        kv_lens=kv_lens,
        tree_attention_check=False,
        max_kv_len=capacity,
        output_hidden_states=bool(layers),
    )
    if not layers:
        return out.logits
    return out.logits, torch.cat([out.hidden_states[i] for i in layers], -1)


def _own_function(tag: str):
    """A copy of :func:`_model_forward` with a code object of its own. Dynamo keeps its graphs (and
    their limit) per code object: with freezing, a graph holds one model's weights as constants, so two
    models of the same shapes must never share a cache that only tells them apart by guards."""
    code = _model_forward.__code__.replace(co_name=f"_model_forward_{tag}")
    return types.FunctionType(code, _model_forward.__globals__, code.co_name)


def _compile(device: torch.device, tag: str):
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    fn = _own_function(tag)
    if BACKEND is not None:
        return torch.compile(fn, backend=BACKEND, dynamic=False)
    if device.type == "cuda":  # CUDA graphs: the step's launches replayed as one
        return torch.compile(fn, mode="reduce-overhead", dynamic=False)
    # CPU: freezing folds the (inference-only) weights into the graph as constants, which lets inductor
    # prepack them for oneDNN (bf16 GEMMs with AVX512-BF16 / AMX); weight_prepack is on by default.
    return torch.compile(fn, dynamic=False, options={"freezing": True})


class CompiledForward:
    """``model``'s forward compiled for fixed shapes; one per model (see :func:`compiled_forward`)."""

    def __init__(self, model, name: str):
        self.model_ref = weakref.ref(model)
        self.name = name
        device = next(model.parameters()).device
        self.fn = _compile(device, f"{id(model):x}")
        # Dynamo lifts a module's parameters to graph inputs, which inductor's freezing leaves as inputs
        # (no constant folding, no prepacked oneDNN weights: plain aten::mm) unless dynamo is told, while
        # it traces, that the graph will be frozen. Read at trace time, so set around every call.
        frozen = BACKEND is None and device.type == "cpu"
        self.trace_config = torch._dynamo.config.patch(prepare_freezing=frozen)
        self.seen: set[tuple] = set()

    def __call__(self, cache, tokens, positions, tree_mask, kv_lens, layers: tuple = ()):
        """Logits [B, N, V]; with ``layers``, (logits, the hidden states at those indices concatenated)."""
        key = (tuple(tokens.shape), tuple(tree_mask.shape), cache.capacity, layers)
        new = key not in self.seen
        if new:
            B, W = tokens.shape
            tapped = f", features of layers {list(layers)}" if layers else ""
            print(
                f"specdec: compiling {self.name} for width {W} (batch {B}, cache {cache.capacity}{tapped}) "
                "- once per shape, reused by later calls ...",
                file=sys.stderr,
                flush=True,
            )
            t0 = time.perf_counter()
        if tokens.device.type == "cuda":
            torch._dynamo.mark_static_address(cache.buffer)  # written in place between graph replays
        try:
            with self.trace_config:
                out = self.fn(self.model_ref(), cache, tokens, positions, tree_mask, kv_lens, cache.capacity, layers)
        except Exception as e:
            _explain_compile_failure(e)
            raise
        if new:
            dt = time.perf_counter() - t0
            self.seen.add(key)
            _STATS["graphs"] += 1
            _STATS["compile_s"] += dt
            print(f"specdec: compiled {self.name} width {W} in {dt:.1f} s", file=sys.stderr, flush=True)
        return out

    def eager(self, cache, tokens, positions, tree_mask, kv_lens, layers: tuple = ()):
        """The same forward, uncompiled: for shapes met once (a prompt), not worth a graph."""
        return _model_forward(self.model_ref(), cache, tokens, positions, tree_mask, kv_lens, cache.capacity, layers)


def _explain_compile_failure(error: Exception) -> None:
    """Raise a clear error for a compile failure whose cause is known: inductor (torch 2.13) passes
    torch's include directories to g++ unquoted, so a torch installed under a path with a space fails
    every CPU compile with a C++ error that does not say why."""
    torch_dir = os.path.dirname(torch.__file__)
    if " " in torch_dir and "CppCompileError" in f"{type(error).__name__} {str(error)[:300]}":
        raise RuntimeError(
            f"torch.compile's C++ backend cannot build with torch installed under a path containing a "
            f"space ({torch_dir!r}): inductor passes its include paths to g++ unquoted. Install into a "
            "path without spaces, or run with compile=False."
        ) from error


def compiled_forward(model) -> CompiledForward:
    """The compiled forward of ``model``, made on first use and kept while the model lives."""
    per_backend = _COMPILED.setdefault(model, {})
    fwd = per_backend.get(BACKEND)
    if fwd is None:
        name = getattr(model.config, "name_or_path", "") or ""
        fwd = per_backend[BACKEND] = CompiledForward(model, name.rstrip("/").split("/")[-1] or type(model).__name__)
    return fwd


def dense_batch_mask(tree_mask: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B, N, N]`` bool, a new contiguous tensor: one mask layout for every step (a 2-D or broadcast
    mask would be a different graph input)."""
    if tree_mask.dim() == 2:
        tree_mask = tree_mask.unsqueeze(0)
    return tree_mask.expand(batch, -1, -1).clone(memory_format=torch.contiguous_format)


__all__ = [
    "WIDTHS",
    "bucket",
    "compile_stats",
    "reset",
    "native_bf16",
    "fast_dtype",
    "compiled_forward",
    "CompiledForward",
    "dense_batch_mask",
]
