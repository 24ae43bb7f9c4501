import os

# The Triton interpreter must be switched on before any @triton.jit kernel is defined (i.e. before
# specdec_kernels is imported); set later, a launch fails with "0 active drivers".
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh, seeded CPU generator per test so every test is reproducible on its own."""
    g = torch.Generator().manual_seed(1234)
    return g
