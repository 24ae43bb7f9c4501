"""The benchmark toolkit every script in ``bench/`` uses: timing, throughput arithmetic, the machine line
and markdown tables.

Timing (:func:`measure`): ``warmup`` untimed calls, then ``repeats`` timed ones; the result keeps every
sample, so a script reports the median and whichever quantiles its table shows. On CUDA each call is
timed with a pair of CUDA events, the device synchronised before the first and after the last, and the
L2 cache flushed before each call by overwriting a 256 MiB buffer (as ``triton.testing.do_bench`` does,
so a kernel does not read its inputs from the previous call's L2). By default the host runs ahead, so a
sample is the GPU time of the work the call enqueues (a kernel's time); ``sync_each=True`` synchronises
before every call, so a sample also holds the host's launch time (a decoding step's latency). On CPU:
``time.perf_counter`` around the call.

>>> t = measure(lambda: sum(range(100)), warmup=1, repeats=5)
>>> len(t.samples_s), t.p10_s <= t.median_s <= t.p90_s
(5, True)
>>> gbps(2e9, 0.5), tflops(3e12, 2.0)
(4.0, 1.5)
>>> print(markdown_table(["case", "median µs"], [["a", "1.0"]], align="lr"))
| case | median µs |
|---|---:|
| a | 1.0 |
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

__all__ = [
    "Timing",
    "measure",
    "gbps",
    "tflops",
    "copy_bandwidth_gbps",
    "machine_description",
    "markdown_header",
    "markdown_row",
    "markdown_table",
    "import_script",
]

L2_FLUSH_BYTES = 256 << 20  # larger than the L2 of any current GPU (H100: 50 MB, B200: 126 MB)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call, one sample per timed repetition (in the order measured)."""

    samples_s: tuple[float, ...]

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1) of the samples, linear interpolation between order statistics."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        return float(np.quantile(self.samples_s, q))

    @property
    def median_s(self) -> float:
        return self.quantile(0.5)

    @property
    def p10_s(self) -> float:
        return self.quantile(0.1)

    @property
    def p90_s(self) -> float:
        return self.quantile(0.9)


# Defaults per device type: a GPU call is short and cheap to repeat, and its first calls also ramp clocks
# up and fill caches (Triton compiles in the first call on either device).
DEFAULT_WARMUP = {"cpu": 1, "cuda": 10}
DEFAULT_REPEATS = {"cpu": 20, "cuda": 100}


def measure(
    fn: Callable[[], object],
    *,
    warmup: int | None = None,
    repeats: int | None = None,
    device: str | torch.device = "cpu",
    number: int = 1,
    sync_each: bool = False,
    timer: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` samples of ``number`` calls each.

    A sample is the time of its ``number`` calls divided by ``number`` (several calls per sample for
    work shorter than the clock's resolution, as ``timeit`` does). ``device``: where ``fn``'s work runs;
    a CUDA device is timed with CUDA events (``timer`` is then unused), anything else with ``timer``
    (``time.perf_counter``; tests pass a fake clock). ``sync_each`` (CUDA): synchronise before every
    sample, which then includes the host's time to launch the work (see the module docstring).
    ``warmup`` / ``repeats`` of None take DEFAULT_WARMUP / DEFAULT_REPEATS for the device type (1 / 20 on
    CPU, 10 / 100 on CUDA). Raises ValueError for ``warmup < 0``, ``repeats < 1`` or ``number < 1``.
    """
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    warmup = DEFAULT_WARMUP[kind] if warmup is None else warmup
    repeats = DEFAULT_REPEATS[kind] if repeats is None else repeats
    if warmup < 0 or repeats < 1 or number < 1:
        raise ValueError(
            f"need warmup >= 0, repeats >= 1, number >= 1; got warmup={warmup}, repeats={repeats}, number={number}"
        )
    for _ in range(warmup):
        fn()
    if kind == "cuda":
        return _measure_cuda(fn, repeats, number, torch.device(device), sync_each)
    samples = []
    for _ in range(repeats):
        t0 = timer()
        for _ in range(number):
            fn()
        samples.append((timer() - t0) / number)
    return Timing(tuple(samples))


def _measure_cuda(fn, repeats: int, number: int, device: torch.device, sync_each: bool) -> Timing:
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    with torch.cuda.device(device):  # events record on the current stream of the current device
        torch.cuda.synchronize()
        for start, end in zip(starts, ends):
            flush.zero_()  # evict the previous call's data from L2 (outside the timed interval)
            if sync_each:
                torch.cuda.synchronize()
            start.record()
            for _ in range(number):
                fn()
            end.record()
        torch.cuda.synchronize()
    return Timing(tuple(s.elapsed_time(e) * 1e-3 / number for s, e in zip(starts, ends)))


def gbps(nbytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (10^9 bytes per second) of moving ``nbytes`` in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return nbytes / seconds / 1e9


def tflops(flops: float, seconds: float) -> float:
    """Throughput in TFLOP/s (10^12 floating-point operations per second) of ``flops`` in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return flops / seconds / 1e12


def copy_bandwidth_gbps(
    nbytes: int, device: str | torch.device, *, warmup: int | None = None, repeats: int | None = None
) -> float:
    """Measured same-device copy bandwidth in GB/s, counting read + write bytes (2 * nbytes per copy)
    of a ``nbytes`` buffer: the practical ceiling a bandwidth-bound kernel is compared with."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), warmup=warmup, repeats=repeats, device=device)
    return gbps(2 * src.numel() * src.element_size(), t.median_s)


def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str | torch.device = "cpu") -> str:
    """One line naming the hardware and software a measurement ran on: the GPU (CUDA device) or the CPU
    model and core count, torch's CPU threads, and the torch, Triton and Python versions."""
    dev = torch.device(device)
    if dev.type == "cuda":
        hw = f"{torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}"
    else:
        hw = f"CPU {_cpu_model()}, {os.cpu_count()} cores"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return (
        f"{hw}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, triton {triton_version}, "
        f"Python {platform.python_version()}"
    )


def markdown_header(columns: Sequence[str], align: str | None = None) -> list[str]:
    """The two header lines of a markdown table. ``align``: one letter per column, ``l`` (``---``) or
    ``r`` (``---:``); default all ``l``."""
    align = align or "l" * len(columns)
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one of 'l'/'r' per column ({len(columns)}), got {align!r}")
    return ["| " + " | ".join(columns) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align)]


def markdown_row(cells: Sequence[object]) -> str:
    """One table row; cells are written with ``str``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table (no trailing newline): :func:`markdown_header` then one :func:`markdown_row` per row."""
    return "\n".join(markdown_header(columns, align) + [markdown_row(r) for r in rows])


def import_script(path: str | Path) -> ModuleType:
    """Import a Python file that is not part of a package (a script of ``bench/`` another one reuses) as a
    module, without adding its folder to ``sys.path``; its ``if __name__ == "__main__"`` block does not run.
    The module is registered in ``sys.modules`` under the file's stem (dataclasses look it up there); a
    second call for the same file returns that module."""
    path = Path(path).resolve()
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
