"""GPU evidence without a GPU: what each kernel compiles to for sm_80 / sm_90, and what time it cannot beat.

    python bench/gpu_static.py                     # writes bench/results/gpu_static.md and roofline.md
    python bench/gpu_static.py --quick             # only the few configurations CI checks (prints)
    python bench/gpu_static.py measured --device "NVIDIA H100 80GB HBM3" bench/results/gpu/*.md
                                                   # measured time beside the roofline bound (gpu_check.sh)

Static report. Every Triton kernel is compiled ahead of time, exactly as its launcher would launch it on
the GPU: the launchers (``_tree_attention_triton``, ``_paged_tree_attention_triton``,
``verify.launch.launch_padded``) are called on meta
tensors of the benchmark shapes with the kernel swapped for a recorder, so the configuration
(``pick_config``, ``pick_num_splits`` with the target's SM count, the vocabulary tile), the grid and
the arguments are the launchers' own; the recorded arguments then go through Triton's own
specialisation (alignment / divisibility by 16 / strides equal to 1), as a real launch would, and
``triton.compile`` builds PTX and cubin for the target. ``ptxas -v`` (the ptxas Triton uses for that
architecture, Triton's flags) gives registers per thread and spill bytes, Triton's metadata the shared
memory, ``cuobjdump -sass`` the tensor-core instructions (HMMA = mma.sync, HGMMA = wgmma) and local-memory
traffic. The CUDA kernels (compaction, slot moves) are compiled with ``nvcc -Xptxas -v``. Occupancy is the theoretical
number of programs (thread blocks) per SM from registers, shared memory and warps.

Roofline. Per benchmark case, the bytes a kernel must move at least and the FLOPs it must do, over the
HBM bandwidth and dense 16-bit tensor-core peak: a lower bound on the time (launch overhead not counted).

Nothing here runs on a GPU: every number is compiled or predicted.

Compilation runs in a subprocess without ``TRITON_INTERPRET`` (with it set, the kernels are defined as
interpreter functions and cannot be compiled), so the functions below can be called from the test suite.
Compiled reports are cached under ``$XDG_CACHE_HOME/specdec_gpu_static`` (default ~/.cache), keyed by the
PTX; Triton caches the compilation itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# --------------------------------------------------------------------------------------------------
# Architectures and devices
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Arch:
    """A compile target and the per-SM limits that bound occupancy (CUDA programming guide, compute
    capability tables): 64K 32-bit registers per SM allocated per warp in units of 256, 64 resident
    warps, 32 resident blocks, shared memory per SM (1 KB of it reserved per block)."""

    name: str  # "sm_80"
    capability: int
    gpu: str  # the device the roofline uses
    sms: int
    smem_per_sm: int
    smem_per_block: int
    regs_per_sm: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    reg_unit: int = 256  # registers are allocated per warp in units of 256
    reserved_smem: int = 1024  # per block, taken by the system


ARCHS = {
    "sm_80": Arch("sm_80", 80, "A100", sms=108, smem_per_sm=164 * 1024, smem_per_block=163 * 1024),
    "sm_90": Arch("sm_90", 90, "H100", sms=132, smem_per_sm=228 * 1024, smem_per_block=227 * 1024),
}


@dataclasses.dataclass(frozen=True)
class Device:
    """HBM bandwidth (bytes/s) and dense fp16/bf16 tensor-core peak (FLOP/s, no sparsity)."""

    name: str
    hbm_bytes_s: float
    tc_flops_s: float


# H100 and A100 as the issue gives them (SXM parts); B200 for the published anchor; H200 (HBM3e) for
# the measured-vs-bound step on such a machine. Matched on the device name, most specific first.
DEVICES = {
    "H100": Device("H100 SXM", 3.35e12, 989e12),
    "A100": Device("A100 SXM 80GB", 2.0e12, 312e12),
    "H200": Device("H200", 4.8e12, 989e12),
    "B200": Device("B200", 8.0e12, 2250e12),
}
_DEVICE_NAME_PATTERNS = (
    ("H100 PCIe", Device("H100 PCIe", 2.0e12, 756e12)),
    ("H200", DEVICES["H200"]),
    ("H100", DEVICES["H100"]),
    ("A100", DEVICES["A100"]),
    ("B200", DEVICES["B200"]),
)

# FlashInfer's chain speculative sampler, B=32, k=8, V=128k: 78 us on a B200 (the published anchor).
ANCHOR = dict(what="FlashInfer chain speculative sampling, B=32 k=8 V=128k", us=78.0, device="B200")


def device_from_name(name: str) -> Device | None:
    """The roofline peaks of a device from its name (nvidia-smi / torch), None when unknown."""
    for pattern, dev in _DEVICE_NAME_PATTERNS:
        if pattern.lower() in name.lower():
            return dev
    return None


# --------------------------------------------------------------------------------------------------
# Benchmark cases
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttnCase:
    """bench/bench_tree_attention.py: one shared random tree of N nodes after a prefix, kv_lens = prefix + N."""

    n: int
    prefix: int
    dtype: str = "bf16"
    b: int = 1
    hq: int = 32
    hkv: int = 8
    d: int = 128
    features: bool = False  # sliding window 4096, softcap 50 and sinks (Gemma 2 / gpt-oss layers)

    @property
    def label(self) -> str:
        return f"attn {self.dtype} N={self.n} prefix={self.prefix}" + (" window+softcap+sinks" if self.features else "")


@dataclasses.dataclass(frozen=True)
class VerifyCase:
    """bench/bench_rejection_sampling.py: chain (n = K + 1 target rows) or tree of n nodes.
    mode: greedy | sampled (draft_probs given) | topk (deterministic children); target probs or logits."""

    kind: str  # "chain" | "tree"
    b: int
    n: int
    mode: str
    logits: bool
    v: int = 128256
    target_dtype: str = "fp32"  # logits: bf16
    draft_dtype: str = "fp32"

    @property
    def label(self) -> str:
        inp = f"{self.target_dtype} {'logits' if self.logits else 'probs'}"
        shape = f"B={self.b} K={self.n - 1}" if self.kind == "chain" else f"B={self.b} N={self.n}"
        return f"{self.kind} {shape} V={self.v} {inp}, {self.mode}"


@dataclasses.dataclass(frozen=True)
class CompactCase:
    """bench/bench_compaction.py defaults: every layer's K and V, keep rows per sequence moved in place."""

    layers: int = 32
    b: int = 8
    h: int = 8
    d: int = 128
    keep: int = 64
    dtype: str = "bf16"

    @property
    def label(self) -> str:
        return f"compaction L={self.layers} B={self.b} H={self.h} D={self.d} keep={self.keep} {self.dtype}"

    def grid_programs(self) -> int:
        """compact_kv_cuda.cu's grid: one block per (layer, K/V, batch, head) plane."""
        return 2 * self.layers * self.b * self.h


@dataclasses.dataclass(frozen=True)
class PagedAttnCase:
    """Ragged + paged tree attention as a serving runtime calls it: B requests of n_b nodes each (ragged
    layout, T = B * n_b rows), every request with the same prefix in a paged cache of ``page_size`` slots
    per page (vLLM's [num_blocks, page_size, Hkv, D]), int32 index tensors, per-request packed masks."""

    n: int  # n_b, nodes per request
    prefix: int
    dtype: str = "bf16"
    b: int = 8
    hq: int = 32
    hkv: int = 8
    d: int = 128
    page_size: int = 16
    features: bool = False  # sliding window 4096, softcap 50 and sinks

    @property
    def label(self) -> str:
        extra = " window+softcap+sinks" if self.features else ""
        return f"paged {self.dtype} B={self.b} n_b={self.n} prefix={self.prefix}{extra}"


@dataclasses.dataclass(frozen=True)
class MoveCase:
    """move_kv_slots on a vLLM-layout model: one K and one V cache [num_blocks, page_size, Hkv, D] per
    layer, a slot's row = Hkv * D contiguous elements (one plane per buffer)."""

    layers: int = 32
    hkv: int = 8
    d: int = 128
    dtype: str = "bf16"

    @property
    def label(self) -> str:
        return f"move_kv_slots L={self.layers} K+V [blocks, page, {self.hkv}, {self.d}] {self.dtype}"

    def row_bytes(self) -> int:
        return self.hkv * self.d * ESIZE[self.dtype]

    def grid_programs(self) -> int:
        """move_kv_cuda.cu's grid with 16-byte vectors: x = buffers * planes, y = row slices of 64 vectors."""
        return 2 * self.layers * math.ceil(self.row_bytes() // 16 / 64)


@dataclasses.dataclass(frozen=True)
class RaggedVerifyCase:
    """ragged_verify as vLLM's rejection sampler calls it: B requests of k draft tokens each (T = B * k
    rows), per-request temperature (so greedy flags and 1/T rows) and seeds in the random modes; chains
    with separate bonus rows [B, V], trees (k nodes per request, ``parents`` [T]) with T + B target rows."""

    kind: str  # "chain" | "tree"
    b: int
    k: int
    mode: str  # greedy | sampled | topk
    logits: bool
    v: int = 128256
    target_dtype: str = "fp32"
    draft_dtype: str = "fp32"

    @property
    def label(self) -> str:
        inp = f"{self.target_dtype} {'logits' if self.logits else 'probs'}"
        return f"ragged {self.kind} B={self.b} k={self.k} V={self.v} {inp}, {self.mode}"


ESIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
ATTN_N = (1, 8, 16, 64, 128, 256)  # the sizes and the benchmark's defaults
ATTN_PREFIX = (1024, 8192, 32768)


def attention_cases(dtypes=("bf16", "fp16"), ns=ATTN_N, prefixes=ATTN_PREFIX) -> list[AttnCase]:
    return [AttnCase(n, p, dt) for dt in dtypes for n in ns for p in prefixes]


PAGED_N = (1, 8, 64)  # nodes per request


def paged_attention_cases(dtypes=("bf16", "fp16"), ns=PAGED_N, prefixes=ATTN_PREFIX) -> list[PagedAttnCase]:
    return [PagedAttnCase(n, p, dt) for dt in dtypes for n in ns for p in prefixes]


def feature_cases() -> list:
    """The window/softcap/sinks specialisation (Gemma 2 / gpt-oss layers) at the benchmark shapes: every
    tree size and both layouts, prefix 32k (the prefix only changes the split count)."""
    dense = [AttnCase(n, 32768, dt, features=True) for dt in ("bf16", "fp16") for n in ATTN_N]
    return dense + [PagedAttnCase(n, 32768, dt, features=True) for dt in ("bf16", "fp16") for n in PAGED_N]


def verify_cases() -> list[VerifyCase]:
    """The rejection-sampling benchmark's cases plus greedy (chain B=32 K=8, trees of 64 nodes, V=128256)."""
    out = [
        VerifyCase("chain", 32, 9, "greedy", True, target_dtype="bf16"),
        VerifyCase("chain", 32, 9, "sampled", False),
        VerifyCase("chain", 32, 9, "sampled", True, target_dtype="bf16"),
    ]
    for b in (1, 32):
        out += [
            VerifyCase("tree", b, 64, "greedy", True, target_dtype="bf16"),
            VerifyCase("tree", b, 64, "sampled", False),
            VerifyCase("tree", b, 64, "topk", True, target_dtype="bf16"),
        ]
    return out


def ragged_verify_cases() -> list[RaggedVerifyCase]:
    """The chain and tree verify benchmarks' shapes in the ragged (serving) layout."""
    return [
        RaggedVerifyCase("chain", 32, 8, "greedy", True, target_dtype="bf16"),
        RaggedVerifyCase("chain", 32, 8, "sampled", False),
        RaggedVerifyCase("chain", 32, 8, "sampled", True, target_dtype="bf16"),
        RaggedVerifyCase("tree", 32, 64, "topk", True, target_dtype="bf16"),
        RaggedVerifyCase("tree", 32, 64, "sampled", False),
    ]


def quick_cases() -> list:
    """What CI compiles: the small-row attention tiles that spilled, a large one, each verify mode, and
    paged attention's smallest (split-K, so also its combine launch) and largest tile."""
    return [
        AttnCase(1, 8192, "bf16"),
        AttnCase(16, 8192, "fp16"),
        AttnCase(64, 8192, "bf16"),
        VerifyCase("chain", 32, 9, "sampled", False),
        VerifyCase("tree", 32, 64, "topk", True, target_dtype="bf16"),
        PagedAttnCase(1, 8192, "bf16"),  # split-K (small n_b: few programs) -> also the combine kernel
        PagedAttnCase(64, 8192, "fp16"),  # the largest tile
        RaggedVerifyCase("chain", 32, 8, "sampled", False),
        # The window/softcap/sinks specialisation (WINDOW, SOFTCAP, SINKS_ON constexprs): smallest tile
        # (split-K, so the combine kernel with sinks too) and largest tile, dense and paged.
        AttnCase(1, 8192, "bf16", features=True),
        AttnCase(64, 8192, "bf16", features=True),
        PagedAttnCase(64, 8192, "fp16", features=True),
    ]


def _bench_module(name: str):
    """A bench/ script as a module (bench/ is not a package), to reuse its case builders."""
    spec = importlib.util.spec_from_file_location(f"_specdec_bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# Recording the launchers' own launches (worker side: needs the real Triton JIT, no interpreter)
# --------------------------------------------------------------------------------------------------


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` is recorded, not run."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.calls.append((tuple(grid), args, kwargs))

        return record


def _torch_dtype(name):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _record(module, kernel_names, arch: Arch, call, sms_module=None):
    """Run ``call()`` with the module's kernels replaced by recorders and the SM count of ``sms_module``
    (default: the module; the one whose ``_num_sms`` the split heuristic reads) set to the arch's.
    Returns [(kernel name, fn, grid, args, kwargs)]."""
    sms_module = module if sms_module is None else sms_module
    saved = {n: getattr(module, n) for n in kernel_names}
    saved_sms = getattr(sms_module, "_num_sms", None)
    recs = {n: _Recorder(f) for n, f in saved.items()}
    try:
        for n, r in recs.items():
            setattr(module, n, r)
        if saved_sms is not None:
            sms_module._num_sms = lambda device: arch.sms
        call()
    finally:
        for n, f in saved.items():
            setattr(module, n, f)
        if saved_sms is not None:
            sms_module._num_sms = saved_sms
    return [(n, r.fn, *c) for n, r in recs.items() for c in r.calls]


def record_attention(case: AttnCase, arch: Arch):
    """The launches ``_tree_attention_triton`` makes for this case on this architecture."""
    import torch

    ta = importlib.import_module("specdec_kernels.tree_attention")
    dt, dev = _torch_dtype(case.dtype), "meta"
    s = case.prefix + case.n
    q = torch.empty(case.b, case.hq, case.n, case.d, dtype=dt, device=dev)
    k = torch.empty(case.b, case.hkv, s, case.d, dtype=dt, device=dev)
    v = torch.empty_like(k)
    kv_lens = torch.empty(case.b, dtype=torch.int64, device=dev)
    packed = torch.empty(case.n, (case.n + 31) // 32, dtype=torch.int32, device=dev)
    out = torch.empty_like(q)
    feats = _features(case, dt, dev, 1)
    return _record(
        ta,
        ("_tree_attention_fwd_kernel", "tree_attention_combine_kernel"),
        arch,
        lambda: ta._tree_attention_triton(q, k, v, kv_lens, packed, case.d**-0.5, out, s, None, feats),
    )


def _features(case, dt, dev, depth_rows: int):
    """The AttentionFeatures a case with ``features`` launches with (meta tensors), else None."""
    import torch

    if not case.features:
        return None
    ta = importlib.import_module("specdec_kernels.tree_attention")
    sinks = torch.empty(case.hq, dtype=dt, device=dev)
    depth = torch.empty(depth_rows, case.n, dtype=torch.int32, device=dev)
    return ta.AttentionFeatures(window=4096, softcap=50.0, sinks=sinks, depth=depth)


def record_paged_attention(case: PagedAttnCase, arch: Arch):
    """The launches ``_paged_tree_attention_triton`` makes for this case on this architecture (its split
    heuristic is tree_attention's ``pick_num_splits``, which reads tree_attention's SM count)."""
    import torch

    ta = importlib.import_module("specdec_kernels.tree_attention")
    pta = importlib.import_module("specdec_kernels.paged_tree_attention")
    dt, dev, i32 = _torch_dtype(case.dtype), "meta", torch.int32
    s = case.prefix + case.n
    pages = -(-s // case.page_size)
    q = torch.empty(case.b * case.n, case.hq, case.d, dtype=dt, device=dev)
    k_cache = torch.empty(case.b * pages, case.page_size, case.hkv, case.d, dtype=dt, device=dev)
    v_cache = torch.empty_like(k_cache)
    cu = torch.empty(case.b + 1, dtype=i32, device=dev)
    seq_lens = torch.empty(case.b, dtype=i32, device=dev)
    block_table = torch.empty(case.b, pages, dtype=i32, device=dev)
    packed = torch.empty(case.b, case.n, (case.n + 31) // 32, dtype=i32, device=dev)
    out = torch.empty_like(q)
    return _record(
        pta,
        ("_paged_tree_attention_fwd_kernel", "tree_attention_combine_kernel"),
        arch,
        lambda: pta._paged_tree_attention_triton(
            q,
            k_cache,
            v_cache,
            cu,
            seq_lens,
            block_table,
            packed,
            case.d**-0.5,
            out,
            case.n,
            s,
            None,
            _features(case, dt, dev, case.b),
        ),
        sms_module=ta,
    )


def record_verify(case: VerifyCase, arch: Arch):
    """The launch ``verify.launch.launch_padded`` makes for this case (int seed, as the benchmark)."""
    import torch

    rs = importlib.import_module("specdec_kernels.verify")
    launch = importlib.import_module("specdec_kernels.verify.launch")
    dev = "meta"
    chain = case.kind == "chain"
    tgt = torch.empty(case.b, case.n, case.v, dtype=_torch_dtype(case.target_dtype), device=dev)
    drf = None
    if case.mode == "sampled":
        drf = torch.empty(
            case.b, case.n - 1 if chain else case.n, case.v, dtype=_torch_dtype(case.draft_dtype), device=dev
        )
    tok = torch.empty(case.b, case.n - 1 if chain else case.n, dtype=torch.int64, device=dev)
    parents = None if chain else torch.empty(case.n, dtype=torch.int64, device=dev)
    mode = {"greedy": rs.MODE_GREEDY, "topk": rs.MODE_DETERMINISTIC, "sampled": rs.MODE_SAMPLED}[case.mode]
    return _record(
        launch,
        ("verify_kernel",),
        arch,
        lambda: launch.launch_padded(
            tok,
            parents,
            None,
            tgt,
            drf,
            is_chain=chain,
            mode=mode,
            logits=case.logits,
            inv_temp=1.0,
            seed=1,
            write_path=not chain,
        ),
    )


def record_ragged_verify(case: RaggedVerifyCase, arch: Arch):
    """The launch ``verify.launch.launch_ragged`` makes for this case (per-request seeds)."""
    import torch

    rs = importlib.import_module("specdec_kernels.verify")
    launch = importlib.import_module("specdec_kernels.verify.launch")
    checks = importlib.import_module("specdec_kernels.verify.checks")
    dev, i64 = "meta", torch.int64
    chain, t = case.kind == "chain", case.b * case.k
    tdt = _torch_dtype(case.target_dtype)
    tgt = torch.empty(t if chain else t + case.b, case.v, dtype=tdt, device=dev)
    bonus = torch.empty(case.b, case.v, dtype=tdt, device=dev) if chain else None
    drf = torch.empty(t, case.v, dtype=_torch_dtype(case.draft_dtype), device=dev) if case.mode == "sampled" else None
    mode = {"greedy": rs.MODE_GREEDY, "topk": rs.MODE_DETERMINISTIC, "sampled": rs.MODE_SAMPLED}[case.mode]
    n = case.k + 1
    a = checks.RaggedArgs(
        tgt, "target_logits" if case.logits else "target_probs", case.logits, bonus, case.b, t, case.v, n, mode
    )
    rng = mode != rs.MODE_GREEDY
    per_req = lambda dt: torch.empty(case.b, dtype=dt, device=dev) if rng else None  # noqa: E731
    return _record(
        launch,
        ("ragged_verify_kernel",),
        arch,
        lambda: launch.launch_ragged(
            a,
            torch.empty(t, dtype=i64, device=dev),
            torch.empty(case.b + 1, dtype=torch.int32, device=dev),
            None if chain else torch.empty(t, dtype=i64, device=dev),
            drf,
            torch.empty(case.b, n, dtype=i64, device=dev),
            torch.empty(case.b, dtype=torch.int32, device=dev),
            None if chain else torch.empty(case.b, n, dtype=i64, device=dev),
            None,
            greedy_rows=per_req(torch.bool),
            inv_temp=per_req(torch.float32),
            seed=per_req(i64),
            offset=None,
            u_acc=None,
            u_smp=None,
        ),
    )


# --------------------------------------------------------------------------------------------------
# Compiling a recorded launch and reading its resources
# --------------------------------------------------------------------------------------------------


def _nvidia_bin() -> Path:
    import triton

    return Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin"


def ptxas_blackwell_path() -> Path | None:
    """Triton's bundled ptxas for sm_90+ (the test is skipped without it), found without importing triton."""
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
    return p if p.exists() else None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "specdec_gpu_static"
    d.mkdir(parents=True, exist_ok=True)
    return d


def parse_ptxas_log(log: str) -> dict:
    """registers, spill store/load bytes and stack frame of the (single) entry in a ``ptxas -v`` log."""
    regs = re.findall(r"Used (\d+) registers", log)
    spill = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs or not spill:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return dict(
        regs=int(regs[-1]), stack=int(spill[-1][0]), spill_stores=int(spill[-1][1]), spill_loads=int(spill[-1][2])
    )


def sass_counts(sass: str) -> dict:
    """Instruction counts that matter here: tensor-core MMAs and local-memory (spill) traffic."""
    ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, flags=re.M)
    count = lambda *names: sum(1 for o in ops if o in names)  # noqa: E731
    return dict(hmma=count("HMMA"), hgmma=count("HGMMA"), stl=count("STL"), ldl=count("LDL"))


def occupancy(regs: int, smem: int, num_warps: int, arch: Arch) -> tuple[int, str]:
    """Theoretical resident programs per SM and what limits it ("regs", "smem", "warps", "blocks")."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / arch.reg_unit) * arch.reg_unit
    limits = {
        "regs": (arch.regs_per_sm // regs_per_warp) // num_warps,
        "smem": arch.smem_per_sm // (smem + arch.reserved_smem) if smem <= arch.smem_per_block else 0,
        "warps": arch.max_warps // num_warps,
        "blocks": arch.max_blocks,
    }
    which = min(limits, key=limits.get)
    return limits[which], which


def _specialize(fn, args, kwargs, arch: Arch):
    """Triton's own runtime specialisation of the recorded arguments (what a launch on the GPU compiles):
    (ASTSource, target, options, constexprs by name)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch.capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, opts)
    consts = {fn.arg_names[k[0]]: v for k, v in constexprs.items() if len(k) == 1}
    return ASTSource(fn, signature, constexprs, attrs), target, options, consts


def _resources(kernel, arch: Arch) -> dict:
    """ptxas -v (the ptxas and flags Triton used for this arch) and cuobjdump -sass of the cubin, cached."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch.capability).path
    ptx = kernel.asm["ptx"]
    key = hashlib.sha256((ptx + ptxas + str(arch)).encode()).hexdigest()[:32]
    cached = _cache_dir() / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    work = _cache_dir() / key
    work.mkdir(exist_ok=True)
    (work / "kernel.ptx").write_text(ptx)
    (work / "kernel.cubin").write_bytes(kernel.asm["cubin"])
    log = subprocess.run(
        [
            ptxas,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",
            f"--gpu-name={sm_arch_from_capability(arch.capability)}",
            str(work / "kernel.ptx"),
            "-o",
            str(work / "ptxas.cubin"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    sass = subprocess.run(
        [str(_nvidia_bin() / "cuobjdump"), "-sass", str(work / "kernel.cubin")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res = dict(
        parse_ptxas_log(log),
        **sass_counts(sass),
        ptx_mma=ptx.count("mma.sync") + ptx.count("wgmma.mma_async"),
        ptx_local=ptx.count("st.local"),
    )
    cached.write_text(json.dumps(res))
    return res


_CONFIG_KEYS = (
    "BLOCK_M",
    "BLOCK_N",
    "BLOCK_D",
    "BLOCK_S",
    "BLOCK_V",
    "SPLIT",
    "WINDOW",
    "SOFTCAP",
    "SINKS_ON",
    "MODE",
    "LOGITS",
    "IS_CHAIN",
    "GROUP",
    "PAGE_SIZE",
    "SEP_BONUS",
    "ROW_GREEDY",
    "SEED_PER_ROW",
    "WRITE_PATH",
)


def _config_text(consts: dict, options) -> str:
    parts = [f"{k}={int(consts[k]) if isinstance(consts[k], bool) else consts[k]}" for k in _CONFIG_KEYS if k in consts]
    return " ".join(parts + [f"warps={options.num_warps}", f"stages={options.num_stages}"])


def _mma_expected(kernel_name: str, case) -> bool:
    """A tl.dot on 16-bit inputs: the attention forward kernel in fp16/bf16 (its QK^T and PV)."""
    return kernel_name in _ATTN_FWD_KERNELS and getattr(case, "dtype", "") in ("fp16", "bf16")


_ATTN_FWD_KERNELS = ("_tree_attention_fwd_kernel", "_paged_tree_attention_fwd_kernel")


def _worker(cases: list, arch: Arch) -> list[dict]:
    """Record, compile and measure every launch of the cases for one architecture (in this process)."""
    import triton

    rows: dict[str, dict] = {}
    for case in cases:
        rec = _RECORDERS[type(case).__name__]
        for name, fn, grid, args, kwargs in rec(case, arch):
            print(f"[gpu_static] {arch.name} {case.label}: {name}", file=sys.stderr, flush=True)
            src, target, options, consts = _specialize(fn, args, kwargs, arch)
            key = f"{name}|{src.hash()}|{options.num_warps}|{options.num_stages}"
            programs = math.prod(grid)
            if key in rows:
                rows[key]["cases"].append(case.label)
                rows[key]["grid_programs"].append(programs)
                continue
            kernel = triton.compile(src, target=target, options=options.__dict__)
            config = _config_text(consts, options)
            res = _resources(kernel, arch)
            occ, limit = occupancy(res["regs"], kernel.metadata.shared, options.num_warps, arch)
            rows[key] = dict(
                arch=arch.name,
                kernel=name,
                config=config,
                num_warps=options.num_warps,
                smem=kernel.metadata.shared,
                occupancy=occ,
                occupancy_limit=limit,
                mma_expected=_mma_expected(name, case),
                cases=[case.label],
                grid_programs=[programs],
                **res,
            )
    return list(rows.values())


_RECORDERS = {  # case type -> the function recording its launches
    "AttnCase": record_attention,
    "PagedAttnCase": record_paged_attention,
    "VerifyCase": record_verify,
    "RaggedVerifyCase": record_ragged_verify,
}


def _case_to_json(case) -> dict:
    return dict(type=type(case).__name__, **dataclasses.asdict(case))


def _case_from_json(d: dict):
    d = dict(d)
    cls = {
        "AttnCase": AttnCase,
        "PagedAttnCase": PagedAttnCase,
        "VerifyCase": VerifyCase,
        "RaggedVerifyCase": RaggedVerifyCase,
    }[d.pop("type")]
    return cls(**d)


def compile_report(cases: list, archs=("sm_80", "sm_90"), jobs: int = 2) -> list[dict]:
    """Compile every Triton launch of the cases for each architecture; one row per distinct kernel
    configuration: arch, kernel, config, regs, spill_stores/spill_loads (bytes), stack, smem (bytes),
    occupancy (programs per SM) and its limit, hmma/hgmma/stl/ldl (SASS counts), mma_expected, cases,
    grid_programs. Runs in subprocesses without TRITON_INTERPRET (one per architecture, ``jobs`` at a
    time); raises RuntimeError with the compiler's output when a kernel does not compile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    payload = json.dumps([_case_to_json(c) for c in cases])

    def run(arch):
        p = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "_worker", arch],
            input=payload,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        sys.stderr.write(p.stderr if p.returncode == 0 else "")
        if p.returncode != 0:
            raise RuntimeError(f"compiling for {arch} failed:\n{p.stderr[-6000:]}")
        return json.loads(p.stdout)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return [row for rows in pool.map(run, archs) for row in rows]


# --------------------------------------------------------------------------------------------------
# The CUDA kernels (compaction, slot moves)
# --------------------------------------------------------------------------------------------------


def nvcc_path() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)


_VEC_BYTES = {"unsigned char": 1, "unsigned short": 2, "unsigned int": 4, "uint2": 8, "uint4": 16}  # Vec argument


def demangler_path() -> str | None:
    """The CUDA toolkit's ``cu++filt`` beside nvcc, else binutils' ``c++filt`` (nvcc's names are Itanium)."""
    nvcc = nvcc_path()
    if nvcc:
        beside = Path(os.path.realpath(nvcc)).parent / "cu++filt"
        if beside.exists():
            return str(beside)
    return shutil.which("cu++filt") or shutil.which("c++filt")


def demangle(names: list[str]) -> list[str]:
    """Demangled C++ names, one per input, through a real demangler. A name in an anonymous namespace
    carries a hash of the source's path (``_GLOBAL__N__<hash>_..._369bc8cf17compact_kv_kernel``) whose
    digits run into the next length prefix, so no parsing of the mangled form is reliable."""
    tool = demangler_path()
    if tool is None:
        raise RuntimeError("no C++ demangler found (cu++filt from the CUDA toolkit or c++filt from binutils)")
    p = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    out = p.stdout.splitlines()
    if len(out) != len(names):
        raise RuntimeError(f"{tool} returned {len(out)} names for {len(names)}")
    return out


def _kernel_name_and_vector(demangled: str) -> tuple[str, str]:
    """(kernel name, Vec type) of ``void specdec::(anonymous namespace)::compact_kv_kernel<uint4>(...)``."""
    m = re.search(r"(\w+)<([^<>]+)>\(", demangled)
    if m is None:
        raise RuntimeError(f"not a kernel template instantiation: {demangled!r}")
    return m.group(1), m.group(2)


# Each CUDA source and the benchmark-shaped case its 16-byte-vector instantiation is reported for (both
# cases move bf16 rows of 256 / 2048 bytes, 16-byte aligned, so they move as uint4).
CUDA_SOURCES = {
    "csrc/compact_kv_cuda.cu": CompactCase(),
    "csrc/move_kv_cuda.cu": MoveCase(),
}


def cuda_report(
    archs=("sm_80", "sm_90"),
    sources=tuple(CUDA_SOURCES),
    threads: int = 256,
) -> list[dict]:
    """``nvcc -Xptxas -v`` of each kernel instantiation in the sources (every kernel launches ``threads``
    threads per block, both sources' kThreads); the 16-byte-vector row of a source carries its
    CUDA_SOURCES case and grid. Raises RuntimeError when nvcc fails."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    rows = []
    for arch_name in archs:
        arch = ARCHS[arch_name]
        for src in sources:
            case = CUDA_SOURCES[src]
            print(f"[gpu_static] {arch_name} nvcc {src}", file=sys.stderr, flush=True)
            p = subprocess.run(
                [nvcc, "-c", "-std=c++17", f"-arch={arch_name}", "-Xptxas", "-v", src, "-o", os.devnull],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if p.returncode != 0:
                raise RuntimeError(f"nvcc {src} for {arch_name} failed:\n{p.stderr[-4000:]}")
            blocks = re.split(r"(?=ptxas info\s+: Compiling entry function)", p.stderr)[1:]
            mangled = [re.search(r"entry function '(\w+)'", block).group(1) for block in blocks]
            for block, demangled in zip(blocks, demangle(mangled)):
                res = parse_ptxas_log(block)
                name, vec = _kernel_name_and_vector(demangled)
                vec_bytes = _VEC_BYTES.get(vec)
                used = vec_bytes == 16  # the case's bf16 rows (16-byte aligned) move as uint4
                smem = int(re.search(r"(\d+) bytes smem", block).group(1)) if "bytes smem" in block else 0
                occ, limit = occupancy(res["regs"], smem, threads // 32, arch)
                rows.append(
                    dict(
                        arch=arch_name,
                        kernel=f"{name} (CUDA)",
                        config=f"{vec_bytes}-byte vectors, {threads} threads",
                        num_warps=threads // 32,
                        smem=smem,
                        occupancy=occ,
                        occupancy_limit=limit,
                        mma_expected=False,
                        hmma=0,
                        hgmma=0,
                        stl=0,
                        ldl=0,
                        cases=[case.label] if used else [],
                        grid_programs=[case.grid_programs()],
                        **res,
                    )
                )
    return rows


# --------------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------------


def attention_roofline(case: AttnCase) -> tuple[float, float]:
    """(bytes, FLOPs) tree attention must move / do at least: K and V of every valid entry read once, q
    read and out written once, the packed mask; 4 * D * Hq FLOPs per visible (node, key) pair (QK^T and
    PV, what the benchmark counts) for the benchmark's own random tree."""
    from specdec_kernels import trees

    parents = _bench_module("bench_tree_attention").random_tree(case.n)
    tree_pairs = int(trees.ancestor_mask(parents).tril().sum())  # (node, ancestor-or-self) pairs
    visible = case.b * (case.n * case.prefix + tree_pairs)
    e = ESIZE[case.dtype]
    nbytes = (
        2 * case.b * case.hkv * (case.prefix + case.n) * case.d * e
        + 2 * case.b * case.hq * case.n * case.d * e
        + case.n * ((case.n + 31) // 32) * 4
        + case.b * 8
    )
    return float(nbytes), float(4 * case.d * case.hq * visible)


def _draft_rows(case: VerifyCase) -> int:
    """Draft rows a sampled verification can read: one per node with children (chain: K; tree: the
    benchmark's 4-ary tree's inner nodes)."""
    if case.kind == "chain":
        return case.n - 1
    parents = _bench_module("bench_rejection_sampling").tree_parents(case.n)
    return len(set(int(p) for p in parents[1:]))


def verify_roofline(case: VerifyCase, rows_per_seq: int | None = None) -> tuple[float, float]:
    """(bytes, FLOPs) verification must move / do at least. ``rows_per_seq=None``: every target row once
    and, for sampled drafts, every draft row a node with children has (the most a single-pass verifier
    reads, what a full-row sampler such as FlashInfer's reads); ``rows_per_seq=r``: the target (and draft)
    rows of r visited nodes. Plus the tokens/tree read and the outputs written. FLOPs are a few per
    element, far below any peak: counted as 0."""
    sampled = case.mode == "sampled"
    if rows_per_seq is None:
        t_rows, d_rows = case.n, _draft_rows(case) if sampled else 0
    else:
        t_rows, d_rows = rows_per_seq, rows_per_seq if sampled else 0
    per_seq = case.v * (t_rows * ESIZE[case.target_dtype] + d_rows * ESIZE[case.draft_dtype])
    small = case.b * case.n * 8 * 3 + case.b * 8 * 3  # tokens, parents, path/tokens out, counters
    return float(case.b * per_seq + small), 0.0


def compaction_roofline(case: CompactCase) -> tuple[float, float]:
    """(bytes, 0): every kept row of K and V of every layer read once and written once."""
    return float(2 * case.layers * 2 * case.b * case.h * case.keep * case.d * ESIZE[case.dtype]), 0.0


def bound_us(nbytes: float, flops: float, dev: Device) -> tuple[float, str]:
    """Lower-bound time in microseconds and what bounds it ("memory" or "compute")."""
    t_mem, t_fl = nbytes / dev.hbm_bytes_s, flops / dev.tc_flops_s
    return max(t_mem, t_fl) * 1e6, "memory" if t_mem >= t_fl else "compute"


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------

NOTHING_MEASURED = (
    "Nothing in this file was measured on a GPU: no machine this project has run on has had one. "
    "Every number is compiled (ptxas / nvcc for the target) or predicted (roofline)."
)


def _summarise_cases(labels: list[str]) -> str:
    if not labels:
        return "(not at the benchmark shapes)"
    return (
        "; ".join(dict.fromkeys(labels))
        if len(labels) <= 3
        else f"{'; '.join(list(dict.fromkeys(labels))[:3])}; +{len(set(labels)) - 3} more"
    )


def _span(values: list[int]) -> str:
    return str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def static_markdown(rows: list[dict], command: str) -> str:
    import triton

    lines = [
        "# Compiled resources per kernel (sm_80 / sm_90, no GPU)",
        "",
        f"Command: `{command}`  ",
        f"Triton {triton.__version__}; ptxas as Triton runs it for the target (sm_80: bundled ptxas, sm_90: "
        "ptxas-blackwell, `--gpu-name sm_90a`); CUDA kernels (compaction, move_kv_slots): nvcc `-Xptxas -v`.  ",
        NOTHING_MEASURED,
        "",
        "Each row is one distinct kernel configuration that the launchers pick at the benchmark shapes (tree "
        "attention N in {1, 8, 16, 64, 128, 256}, prefix {1k, 8k, 32k}, B=1, GQA 32/8, d=128, bf16/fp16; verify chain "
        "paged tree attention B=8 requests of n_b in {1, 8, 64} nodes, same prefixes, page_size 16, int32 "
        "indices; both again with a sliding window of 4096, softcap 50 and sinks at prefix 32k "
        "(WINDOW/SOFTCAP/SINKS_ON=1, labelled window+softcap+sinks); verify chain B=32 K=8 and trees of 64 "
        "nodes with B in {1, 32}, V=128256; compaction L=32 B=8 "
        "H=8 keep 64; move_kv_slots L=32 K+V caches, rows of 8 x 128 bf16), "
        "compiled from the launchers' own arguments with Triton's runtime specialisation. Occupancy: resident "
        "programs per SM (H100: 65536 registers, 228 KB shared memory, 64 warps; A100: 65536, 164 KB, 64) "
        "and the resource that limits it. Grid: programs one launch starts (min-max over the cases). "
        "MMA: tensor-core instructions in the SASS (HMMA = mma.sync, HGMMA = wgmma), "
        "expected where a `tl.dot` has 16-bit inputs. Spill: ptxas spill stores / loads, bytes per thread.",
        "",
        "| arch | kernel | config | used by | regs/thread | spill st/ld B | smem B | programs/SM (limit) | grid "
        "| MMA |",
        "|---|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        mma = f"yes ({r['hgmma']} HGMMA)" if r["hgmma"] else f"yes ({r['hmma']} HMMA)" if r["hmma"] else "no"
        mma += "" if r["mma_expected"] or mma == "no" else " (unexpected)"
        mma = mma if r["mma_expected"] or mma != "no" else "no (none expected)"
        grid = r["grid_programs"]
        lines.append(
            f"| {r['arch']} | {r['kernel']} | {r['config']} | {_summarise_cases(r['cases'])} | {r['regs']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {r['smem']} | {r['occupancy']} ({r['occupancy_limit']}) | "
            f"{_span(grid)} | {mma} |"
        )
    bad = problems(rows)
    verify_grid = sorted({g for r in rows if r["kernel"] == "verify_kernel" for g in r["grid_programs"]})
    lines += ["", "Findings:", ""]
    lines += [f"- PROBLEM: {p}" for p in bad] or [
        "- No configuration spills (ptxas spill bytes and SASS STL/LDL are all 0), every kernel fits on "
        "the SM, and every 16-bit attention dot runs on tensor cores (HMMA = mma.sync; HGMMA = wgmma, which "
        "sm_90 uses for tiles of 64+ rows)."
    ]
    if verify_grid:
        lines.append(
            f"- Verification launches one program per sequence (grids of {verify_grid} programs): "
            f"at most that many SMs stream the vocabulary rows (of {ARCHS['sm_90'].sms} on an H100), "
            "so the small-batch cases are bound by a few SMs' bandwidth, not by HBM's roofline.md bound."
        )
    return "\n".join(lines) + "\n"


def problems(rows: list[dict]) -> list[str]:
    """What CI fails on: a spill, or a 16-bit dot without tensor-core instructions, or a kernel that does
    not fit on the SM (occupancy 0)."""
    out = []
    for r in rows:
        where = f"{r['arch']} {r['kernel']} [{r['config']}]"
        if r["spill_stores"] or r["spill_loads"] or r["stl"] or r["ldl"]:
            out.append(
                f"{where}: spills ({r['spill_stores']} bytes stored, {r['spill_loads']} loaded, "
                f"{r['stl']} STL / {r['ldl']} LDL)"
            )
        if r["mma_expected"] and not (r["hmma"] or r["hgmma"]):
            out.append(f"{where}: 16-bit tl.dot without tensor-core MMA instructions")
        if r["occupancy"] < 1:
            out.append(f"{where}: does not fit on one SM ({r['occupancy_limit']})")
    return out


def roofline_markdown(command: str) -> str:
    h100, a100 = DEVICES["H100"], DEVICES["A100"]
    lines = [
        "# Roofline: the time each benchmark case cannot beat",
        "",
        f"Command: `{command}`  ",
        "Predicted only. " + NOTHING_MEASURED,
        "",
        f"Bound = max(bytes / HBM bandwidth, FLOPs / dense 16-bit tensor-core peak); H100 SXM: "
        f"{h100.hbm_bytes_s / 1e12:.2f} TB/s, {h100.tc_flops_s / 1e12:.0f} TFLOP/s; A100: "
        f"{a100.hbm_bytes_s / 1e12:.2f} TB/s, {a100.tc_flops_s / 1e12:.0f} TFLOP/s. Launch overhead "
        "(a few µs per launch) is not counted, so the small cases cannot reach their bound. "
        "`bash bench/gpu_check.sh` prints the measured time beside these bounds.",
        "",
        "## Tree attention (B=1, Hq=32, Hkv=8, D=128; the benchmark's random tree)",
        "",
        "Bytes: K and V of every valid entry once, q and out once, the packed mask. FLOPs: 4·D·Hq per visible "
        "(node, key) pair.",
        "",
        "| dtype | N | prefix | MB | GFLOP | FLOP/byte | H100 bound µs | A100 bound µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in attention_cases():
        nb, fl = attention_roofline(c)
        (th, wh), (ta, wa) = bound_us(nb, fl, h100), bound_us(nb, fl, a100)
        lines.append(
            f"| {c.dtype} | {c.n} | {c.prefix} | {nb / 1e6:.2f} | {fl / 1e9:.2f} | {fl / nb:.1f} | "
            f"{th:.1f} ({wh}) | {ta:.1f} ({wa}) |"
        )
    lines += [
        "",
        "## Verification (chain_verify / tree_verify), V=128256",
        "",
        "Memory-bound (a few FLOPs per element). Bytes: the target row (and for sampled drafts the draft row) "
        "of each visited node, once. 'all rows': every target row and the draft rows of the nodes with children, "
        "once (the most a single-pass verifier reads); '1 row': one visited node per sequence (the least: "
        "its correction/bonus row). "
        "The measured step uses the benchmark's own count of visited rows.",
        "",
        "| case | MB all rows | H100 µs | A100 µs | MB 1 row | H100 µs | A100 µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in verify_cases():
        nb_all, _ = verify_roofline(c)
        nb_one, _ = verify_roofline(c, 1)
        lines.append(
            f"| {c.label} | {nb_all / 1e6:.1f} | {bound_us(nb_all, 0, h100)[0]:.1f} | "
            f"{bound_us(nb_all, 0, a100)[0]:.1f} | {nb_one / 1e6:.2f} | {bound_us(nb_one, 0, h100)[0]:.1f} | "
            f"{bound_us(nb_one, 0, a100)[0]:.1f} |"
        )
    anchor = VerifyCase("chain", 32, 9, "sampled", False)  # V=128k read as the benchmark's 128256
    nb_anchor, _ = verify_roofline(anchor)
    b200 = DEVICES["B200"]
    t_b200 = bound_us(nb_anchor, 0, b200)[0]
    lines += [
        "",
        f"Published anchor: {ANCHOR['what']}: {ANCHOR['us']:.0f} µs on a {ANCHOR['device']}. That is the "
        f"'{anchor.label}' row: with fp32 target and draft probabilities every row read once is "
        f"{nb_anchor / 1e6:.0f} MB, {t_b200:.0f} µs at the B200's {b200.hbm_bytes_s / 1e12:.0f} TB/s, so the "
        f"anchor runs at {100 * t_b200 / ANCHOR['us']:.0f}% of that bound; the same bytes take at least "
        f"{bound_us(nb_anchor, 0, h100)[0]:.0f} µs on an H100 and {bound_us(nb_anchor, 0, a100)[0]:.0f} µs on "
        "an A100. A kernel that stops reading at the first rejection needs fewer bytes (the '1 row' columns "
        "are the floor).",
        "",
        "## KV compaction (CUDA kernel)",
        "",
        "| case | MB (read + write) | H100 bound µs | A100 bound µs |",
        "|---|---:|---:|---:|",
    ]
    cc = CompactCase()
    nb, _ = compaction_roofline(cc)
    lines.append(f"| {cc.label} | {nb / 1e6:.1f} | {bound_us(nb, 0, h100)[0]:.1f} | {bound_us(nb, 0, a100)[0]:.1f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Measured time beside the bound (bench/gpu_check.sh, on a GPU machine)
# --------------------------------------------------------------------------------------------------


def _table_rows(text: str) -> list[list[str]]:
    """Rows of the first markdown table after the header row (cells stripped)."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.strip().startswith("|")
    ]
    return [r for r in rows[2:]] if len(rows) > 2 else []


def measured_vs_bound(files: list[str], device_name: str) -> str:
    """A markdown table: per benchmark row, measured median µs, the roofline bound on this device, and
    bound / measured (the fraction of the roofline reached). Reads the tables bench_tree_attention.py,
    bench_rejection_sampling.py and bench_compaction.py write."""
    dev = device_from_name(device_name)
    if dev is None:
        return f"roofline: no peak numbers for device {device_name!r}; add it to DEVICES in bench/gpu_static.py\n"
    out = [
        f"# Measured vs roofline on {device_name} ({dev.hbm_bytes_s / 1e12:.2f} TB/s, "
        f"{dev.tc_flops_s / 1e12:.0f} TFLOP/s)",
        "",
        "Bound: bench/results/roofline.md's model for this device (fp32 attention is held to the 16-bit "
        "tensor-core peak: optimistic); verification bytes are the benchmark's own count of visited rows. "
        "bound / measured = the fraction of the roofline reached.",
        "",
        "| benchmark | case | provider | measured µs | bound µs | bound / measured |",
        "|---|---|---|---:|---:|---:|",
    ]

    def add(bench, case, prov, med, nbytes, flops):
        b = bound_us(nbytes, flops, dev)[0]
        out.append(f"| {bench} | {case} | {prov} | {med:.1f} | {b:.1f} | {100 * b / med:.1f}% |")

    for path in files:
        text = Path(path).read_text()
        if "Tree attention microbenchmark" in text:
            m = re.search(r"B=(\d+), Hq=(\d+), Hkv=(\d+), D=(\d+), torch\.(\w+)", text)
            b, hq, hkv, d = (int(x) for x in m.groups()[:4])
            dt = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[m.group(5)]
            for r in _table_rows(text):
                c = AttnCase(int(r[0]), int(r[1]), dt, b, hq, hkv, d)
                add("tree attention", c.label, r[2], float(r[3]), *attention_roofline(c))
        elif "Rejection sampling" in text:
            for r in _table_rows(text):  # bytes: the benchmark's own count of visited rows (GB/s x time)
                med, gbs = float(r[3]), float(r[5])
                add("verify", f"{r[0]} {r[1]}", r[2], med, gbs * 1e9 * med * 1e-6, 0.0)
        elif "KV compaction" in text:
            m = re.search(r"L=(\d+) B=(\d+) H=(\d+) D=(\d+) (\w+), (\d+) rows kept", text)
            c = CompactCase(
                int(m.group(1)),
                int(m.group(2)),
                int(m.group(3)),
                int(m.group(4)),
                int(m.group(6)),
                {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[m.group(5)],
            )
            for r in _table_rows(text):
                add("compaction", c.label, r[0], float(r[1]), *compaction_roofline(c))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:  # compile side, in a subprocess without TRITON_INTERPRET
        cases = [_case_from_json(d) for d in json.loads(sys.stdin.read())]
        json.dump(_worker(cases, ARCHS[argv[1]]), sys.stdout)
        return 0
    if argv[:1] == ["measured"]:
        ap = argparse.ArgumentParser(prog="gpu_static.py measured")
        ap.add_argument("--device", required=True, help="device name, e.g. from nvidia-smi")
        ap.add_argument("--out", default=None)
        ap.add_argument("files", nargs="+")
        a = ap.parse_args(argv[1:])
        text = measured_vs_bound(a.files, a.device)
        print(text)
        if a.out:
            Path(a.out).write_text(text)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the configurations CI checks; print, write nothing")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out-dir", default=str(RESULTS))
    a = ap.parse_args(argv)
    command = "python bench/gpu_static.py" + (" " + " ".join(argv) if argv else "")
    cases = (
        quick_cases()
        if a.quick
        else attention_cases() + paged_attention_cases() + feature_cases() + verify_cases() + ragged_verify_cases()
    )
    rows = compile_report(cases, jobs=a.jobs)
    if nvcc_path():
        rows += cuda_report()
    else:
        print("[gpu_static] nvcc not found: the CUDA kernels are not in the report", file=sys.stderr)
    static = static_markdown(rows, command)
    bad = problems(rows)
    if a.quick:
        print(static)
    else:
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_static.md").write_text(static)
        (out / "roofline.md").write_text(roofline_markdown(command))
        print(f"wrote {out / 'gpu_static.md'} and {out / 'roofline.md'}", file=sys.stderr)
    for p in bad:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
