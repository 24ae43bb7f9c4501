"""Constants and result types shared by the verification kernels, launchers, reference and APIs."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton.language as tl

PAD_TOKEN = -1  # padding in tokens / path outputs
MAX_NODES = 1024  # per-program vectors of next_pow2(N) entries
MAX_BLOCK_V = 2048  # vocabulary tile

# Verification modes, the kernels' MODE: tl.constexpr so that the kernels test them by name (they compare
# and hash as the ints; launches pass int(mode)).
MODE_GREEDY = tl.constexpr(0)
MODE_DETERMINISTIC = tl.constexpr(1)  # draft_probs=None: q one-hot at each child
MODE_SAMPLED = tl.constexpr(2)  # children drawn from draft_probs without replacement


class ChainVerifyResult(NamedTuple):
    """Result of :func:`chain_verify` (all int64)."""

    tokens: torch.Tensor  # [B, K+1] accepted drafts then the correction/bonus token, padded with -1
    num_emitted: torch.Tensor  # [B] accepted + 1
    num_accepted: torch.Tensor  # [B] accepted drafts
    next_token: torch.Tensor  # [B] the correction or bonus token (tokens[b, num_accepted[b]])


class TreeVerifyResult(NamedTuple):
    """Result of :func:`tree_verify` (all int64)."""

    path: torch.Tensor  # [B, N] accepted node indices, path[:, 0] = 0 (the root), padded with -1
    num_accepted: torch.Tensor  # [B] accepted draft nodes (path holds num_accepted + 1 nodes)
    next_token: torch.Tensor  # [B] the correction or bonus token
    tokens: torch.Tensor  # [B, N] tokens of the accepted draft nodes then next_token, padded with -1
    num_emitted: torch.Tensor  # [B] num_accepted + 1
