# TRITON_INTERPRET=1 is set by the repository's root conftest.py, which pytest loads first.
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh, seeded CPU generator per test so every test is reproducible on its own."""
    g = torch.Generator().manual_seed(1234)
    return g
