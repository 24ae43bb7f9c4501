# TRITON_INTERPRET=1 is set by the repository's root conftest.py, which pytest loads first.
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def no_timed_padding(monkeypatch):
    """The runner's CPU padding map is measured by timing forwards (specdec.runner.cpu_pad_map), so on a
    busy machine it changes from run to run; tests run unpadded unless they switch it on themselves."""
    from specdec import runner

    monkeypatch.setattr(runner, "CPU_PADDING", False)


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh, seeded CPU generator per test so every test is reproducible on its own."""
    g = torch.Generator().manual_seed(1234)
    return g


def compile_ahead_of_time(script: str, marker: str, *, timeout: int = 300, cache_dir=None) -> None:
    """Run ``script`` (a Triton ahead-of-time compile for a GPU target) in a fresh process without the
    interpreter, which compiling needs; it must exit 0 and print ``marker``. Skips when Triton's ptxas
    is missing (the compile cannot run on this machine, which says nothing about the kernel)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    if marker not in res.stdout and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        pytest.skip("Triton's bundled ptxas is unavailable")
    assert res.returncode == 0 and marker in res.stdout, res.stderr[-3000:]


def run_isolated(script: str) -> None:
    """Run ``script`` in its own process (one that might crash must not take pytest down); it must exit
    0 having printed exactly ``ok``."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])
