"""Repository-wide pytest set-up, loaded before anything is collected (tests and the packages' doctests).

The Triton interpreter must be switched on before any @triton.jit kernel is defined (i.e. before
specdec_kernels is imported): set later, a launch on CPU tensors fails with "0 active drivers". Doctest
collection imports the kernel modules, so this cannot wait for tests/conftest.py.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
