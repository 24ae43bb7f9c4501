"""Fused rejection sampling: lossless verification of draft tokens, chain or tree, in one launch.

Modules: :mod:`.kernel` (the Triton kernel), :mod:`.launch` (its launches), :mod:`.reference` (the
PyTorch reference that defines the semantics), :mod:`.checks` (argument checks), :mod:`.padded`
(:func:`chain_verify`, :func:`tree_verify` and their ops), :mod:`.ragged` (:func:`ragged_verify` and its
op, for serving runtimes' flattened batches), :mod:`.common` (constants and result types).

Terms (docs/design.md, "Verification"). A *node* u of the token tree carries the target's
distribution ``p_u`` for the token after it and, when its children were sampled, the draft's
distribution ``q_u`` they were drawn from. Verification walks from the root: at node u the children
are tried in node order; an *accepted* child becomes the new u. When every child of u is rejected
(or u has none) one more token is drawn: the *correction* token from the residual distribution left
after the rejections, or the *bonus* token from ``p_u`` when nothing was rejected at u. So a sequence
always emits ``num_accepted + 1`` tokens.

- Greedy: accept the (first) child whose token is ``argmax p_u``; the bonus is ``argmax p_u``.
- Sampled children, one per node (chain; Leviathan et al. 2023, Chen et al. 2023): accept x with
  probability ``min(1, p(x)/q(x))``; on rejection sample from ``norm(max(0, p - q))``.
- Sampled children, several per node (tree; SpecInfer's multi-step speculative sampling with the
  draws taken without replacement, as in Jeon et al. 2024, "Recursive Speculative Decoding"): after
  each rejected child x, ``p <- norm(max(0, p - q))`` and then ``q <- q`` without x, renormalised.
- Deterministic children (``draft_probs=None``, e.g. top-k): q is one-hot at each child, i.e. accept
  x with probability p(x), else ``p <- p`` without x, renormalised.

All three are exactly lossless: the emitted tokens follow the target's distribution.

How the kernel keeps the residual small. With sampled children, after k rejections at node u the
residual is ``P_k = max(0, p_u - A_k q_u)`` for a single scalar ``A_k`` (``max(0, max(0, a - s) - t)
= max(0, a - s - t)`` for ``t >= 0``, and a rejected token's residual is already 0, so removing it from
q changes nothing there). The state per node is therefore three scalars: ``A`` (how much q has been
subtracted), ``Z = sum P`` (the residual's normaliser, one pass over the vocabulary per rejection)
and ``S`` (q's mass left after removing the rejected children); a rejection of x does
``A += Z / S``, ``Z = sum max(0, p_u - A q_u)``, ``S -= q_u(x)``. The accept test for the next child
x is ``u * q_u(x) * Z < P(x) * S`` with ``u`` uniform in (0, 1) on a 2**-24 grid: strict, so a
zero-probability token is never accepted and a ratio >= 1 always is. The scalars are fp64, the
vocabulary passes fp32. With deterministic children the residual is ``p_u`` with the rejected tokens
masked out and ``Z`` is updated by a subtraction, no pass per rejection.

Sampling from an unnormalised residual is two passes over vocabulary tiles: the sum (skipped when a
rejection pass already computed it), then an inverse-CDF scan that stops at the tile holding the
token. Randomness is counter-based (Philox4x32-10, :mod:`specdec_kernels.philox`): key = seed, counter =
(sequence index, node, 0), or key = seed[b] and counter = (0, node, 0) with per-sequence seeds; output
word 0 is node j's accept test, word 1 the correction/bonus draw at node u. A fixed seed reproduces the
result and a row's result does not depend on the other rows. A decoding loop must pass a new seed every
step.
:func:`ragged_verify` (flattened batches of serving runtimes) uses key = seed[b] and counter
(offset[b] low word, node, offset[b] high word), or uniforms the caller supplies.
The PyTorch reference draws the same numbers (philox.py's bit-exact reference), so the two
backends agree up to float rounding at decision boundaries.

Target logits with a temperature can replace target probabilities: the softmax is fused (one online
max/sum pass per visited node), temperature 0 means greedy.
"""

from specdec_kernels.philox import philox_2x32
from specdec_kernels.verify.common import (
    MAX_BLOCK_V,
    MAX_NODES,
    MODE_DETERMINISTIC,
    MODE_GREEDY,
    MODE_SAMPLED,
    PAD_TOKEN,
    ChainVerifyResult,
    TreeVerifyResult,
)
from specdec_kernels.verify.padded import chain_verify, tree_verify
from specdec_kernels.verify.ragged import ragged_verify
from specdec_kernels.verify.reference import verify_reference

__all__ = [
    "ChainVerifyResult",
    "TreeVerifyResult",
    "chain_verify",
    "tree_verify",
    "ragged_verify",
    "verify_reference",
    "philox_2x32",
    "PAD_TOKEN",
    "MAX_NODES",
    "MAX_BLOCK_V",
    "MODE_GREEDY",
    "MODE_DETERMINISTIC",
    "MODE_SAMPLED",
]
