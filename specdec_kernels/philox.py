"""Philox4x32-10 counter-based random numbers: the Triton device function and its PyTorch reference.

The verification kernels draw every random number as Philox4x32-10 (Salmon et al. 2011, "Parallel random
numbers: as easy as 1, 2, 3") of a key (two uint32 words) and a counter (four uint32 words, the last one 0
here), so a number depends only on (seed, sequence, node) and never on launch order or the other rows.
Only the first two output words are used. :func:`philox_2x32` reproduces :func:`philox_2x32_tl` bit for
bit in int64 arithmetic, which is what lets the reference backend draw the kernel's numbers.

Uniforms take the high 24 bits of a word: ``(w >> 8) * 2**-24`` in [0, 1), or ``((w >> 8) + 0.5) * 2**-24``
in (0, 1) (the accept test: never 0, so a zero-probability token is never accepted).

The constants are ``tl.constexpr`` so that the kernels can read them; they compare and index as ints
(``.value`` is the plain number).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.random import philox_impl

__all__ = ["philox_2x32", "philox_2x32_tl", "uniform_open", "uniform_closed_open", "MASK32"]

# Philox4x32's constants, as triton.language.random has them (the reference below needs them by value)
PHILOX_ROUNDS = tl.constexpr(10)
PHILOX_KEY_A = tl.constexpr(0x9E3779B9)  # key increment per round (golden ratio)
PHILOX_KEY_B = tl.constexpr(0xBB67AE85)  # key increment per round (sqrt(3) - 1)
PHILOX_ROUND_A = tl.constexpr(0xD2511F53)  # round multiplier of counter word 0
PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)  # round multiplier of counter word 2
UNIFORM_SHIFT = tl.constexpr(8)  # a uniform keeps the high 24 bits of a 32-bit word ...
UNIFORM_STEP = tl.constexpr(5.9604644775390625e-08)  # ... on a grid of 2**-24
MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------
# Triton device function
# ----------------------------------------------------------------------------------------------------


@triton.jit
def philox_2x32_tl(k0, k1, c0, c1, c2):
    """First two output words of Philox4x32-10, key (k0, k1), counter (c0, c1, c2, 0); uint32. The rounds
    are Triton's own (``triton.language.random.philox_impl``, what ``tl.randint4x`` runs): this picks the
    key and counter layout the kernels use and keeps the two words they read."""
    w0, w1, _, _ = philox_impl(c0, c1, c2, c0 * 0, k0, k1, PHILOX_ROUNDS)
    return w0, w1


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------


def _mulhilo32(a: int, b: torch.Tensor):
    """(high, low) 32-bit words of a * b for a < 2**32 and int64 b in [0, 2**32), without overflow."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    t_lo = a * b_lo  # < 2**48
    t = a * b_hi + (t_lo >> 16)  # < 2**49
    return t >> 16, ((t & 0xFFFF) << 16) | (t_lo & 0xFFFF)


def philox_2x32(k0: torch.Tensor, k1: torch.Tensor, c0: torch.Tensor, c1, c2=0):
    """Philox4x32-10, first two output words, as int64 in [0, 2**32): :func:`philox_2x32_tl`'s numbers,
    bit for bit. Key (k0, k1) and counter (c0, c1, c2, 0) are uint32 values in int64 tensors (or ints).

    >>> z = torch.zeros(1, dtype=torch.int64)
    >>> [hex(int(w)) for w in philox_2x32(z, z, z, 0, 0)]  # Random123's known answer for key 0, counter 0
    ['0x6627e8d5', '0xe169c58d']
    """
    c0 = c0.to(torch.int64)
    c1 = torch.as_tensor(c1, dtype=torch.int64, device=c0.device).expand_as(c0)
    c2 = torch.as_tensor(c2, dtype=torch.int64, device=c0.device).expand_as(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = k0.to(torch.int64), k1.to(torch.int64)
    for _ in range(PHILOX_ROUNDS.value):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B.value, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A.value, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A.value) & MASK32
        k1 = (k1 + PHILOX_KEY_B.value) & MASK32
    return c0, c1


def uniform_open(w: torch.Tensor) -> torch.Tensor:
    """fp64 uniforms in (0, 1) from int64 words in [0, 2**32) (the kernels' accept tests)."""
    return ((w >> UNIFORM_SHIFT.value).to(torch.float64) + 0.5) * UNIFORM_STEP.value


def uniform_closed_open(w: torch.Tensor) -> torch.Tensor:
    """fp32 uniforms in [0, 1) from int64 words in [0, 2**32) (the kernels' correction/bonus draws)."""
    return (w >> UNIFORM_SHIFT.value).to(torch.float32) * UNIFORM_STEP.value
