"""Backend selection shared by every kernel family (docs/design.md, "Backends")."""

from __future__ import annotations

import os

import torch

BACKENDS = (None, "auto", "triton", "reference")


def interpreter_enabled() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1 set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str | None, device: torch.device, what: str) -> str:
    """Return "triton" or "reference" for a kernel call on tensors living on ``device``.

    auto picks Triton on CUDA and the PyTorch reference on CPU. Asking for Triton on CPU tensors needs
    the interpreter; without it the call fails loudly instead of silently running something else.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{what}: backend must be one of None, 'auto', 'triton', 'reference'; got {backend!r}")
    if backend in (None, "auto"):
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type != "cuda" and not interpreter_enabled():
        raise ValueError(
            f"{what}: backend='triton' on {device.type} tensors needs the Triton interpreter; "
            "set TRITON_INTERPRET=1 in the environment before importing specdec_kernels"
        )
    return backend
