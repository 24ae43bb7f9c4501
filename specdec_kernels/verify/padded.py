"""The padded-batch API: chain_verify and tree_verify, and their torch ops."""

from __future__ import annotations

import torch

from specdec_kernels import _ops as _specdec_ops
from specdec_kernels._backend import resolve_backend
from specdec_kernels.trees import validate_parents
from specdec_kernels.verify.checks import (
    check_draft_probs,
    check_tensor,
    dist_checks,
    parse_seed,
    run_value_checks,
    seed_and_target_checks,
    target_args,
    verify_mode,
)
from specdec_kernels.verify.common import MAX_NODES, MODE_GREEDY, MODE_SAMPLED, ChainVerifyResult, TreeVerifyResult
from specdec_kernels.verify.launch import launch_padded
from specdec_kernels.verify.reference import reference_keys, verify_reference

# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def chain_verify(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    *,
    draft_lens: torch.Tensor | None = None,
    greedy: bool = False,
    seed: int | torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    validate: bool = True,
    backend: str | None = None,
) -> ChainVerifyResult:
    """Verify a chain of K draft tokens per sequence against the target, losslessly, in one launch.

    Accept draft k with probability ``min(1, p_k(x)/q_k(x))`` (``p_k(x)`` when ``draft_probs`` is
    None, the argmax rule when greedy); at the first rejection emit a token from
    ``norm(max(0, p_k - q_k))`` (``p_k`` without x when ``draft_probs`` is None); if all are accepted
    emit a bonus token from ``p_K``. Leviathan et al. 2023, "Fast Inference from Transformers via
    Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling".

    Parameters
    ----------
    draft_tokens : Tensor
        Integer draft tokens. Shape: ``[B, K]``.
    target_probs : Tensor, optional
        Target distribution after the prefix and after each draft. Shape: ``[B, K+1, V]``.
    draft_probs : Tensor, optional
        Distribution each draft token was sampled from, or None for a deterministic draft. Shape:
        ``[B, K, V]``.
    draft_lens : Tensor, optional
        Integer, valid drafts per sequence (ragged chains); later drafts and target rows are ignored.
        Shape: ``[B]``.
    greedy : bool
        Argmax verification (no randomness).
    seed : int, Tensor or None
        Philox seed: an int (sequence b uses counter b) or an integer ``[B]`` tensor of per-sequence
        seeds (a sequence's result then depends only on its own seed and inputs), or a 0-d integer
        tensor on the target's device that acts as that int (read by the kernel, not the host). None
        draws one from torch's default generator. A decoding loop must change it every step.
    target_logits : Tensor, optional
        Instead of ``target_probs``: logits ``[B, K+1, V]``; the softmax of ``logits / temperature``
        is fused into the kernel. ``temperature=0`` means greedy.
    temperature : float
        Only with ``target_logits``.
    validate : bool
        Check values (token range, distributions, draft_lens, seeds; greedy: no NaN/inf target entries);
        costs host syncs. Shapes, dtypes and devices are always checked. With ``validate=False`` and a
        seed tensor (or greedy) neither backend reads any value back to the host.
    backend : {None, "triton", "reference"}

    Returns
    -------
    ChainVerifyResult
        ``tokens [B, K+1]`` (accepted drafts then the correction/bonus token, padded with -1),
        ``num_emitted [B]`` (= accepted + 1), ``num_accepted [B]``, ``next_token [B]``; int64.

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> p = torch.softmax(torch.randn(2, 4, 11), -1); q = torch.softmax(torch.randn(2, 3, 11), -1)
    >>> x = torch.multinomial(q.flatten(0, 1), 1).view(2, 3)
    >>> res = sk.chain_verify(x, p, q, seed=0)
    >>> bool((res.tokens >= 0).sum(1).eq(res.num_emitted).all())
    True
    """
    what = "chain_verify"
    target, tname, logits = target_args(target_probs, target_logits, temperature, what)
    check_tensor(target, tname, what, (3,), floating=True)
    dev = target.device
    check_tensor(draft_tokens, "draft_tokens", what, (2,), floating=False, device=dev)
    B, N, V = target.shape
    K = draft_tokens.shape[1]
    if draft_tokens.shape[0] != B or N != K + 1:
        raise ValueError(
            f"{what}: draft_tokens [B, K] = {tuple(draft_tokens.shape)} needs {tname} "
            f"[B, K+1, V] = [{draft_tokens.shape[0]}, {K + 1}, V], got {tuple(target.shape)}"
        )
    if V < 1 or N > MAX_NODES:
        raise ValueError(f"{what}: need V >= 1 and K + 1 <= {MAX_NODES}, got {tname} {tuple(target.shape)}")
    mode = verify_mode(greedy, logits, temperature, draft_probs)
    if draft_probs is not None:
        check_draft_probs(draft_probs, (B, K, V), "[B, K, V]", what, dev)
    if draft_lens is not None:
        check_tensor(draft_lens, "draft_lens", what, (1,), floating=False, device=dev)
        if draft_lens.shape[0] != B:
            raise ValueError(f"{what}: draft_lens must have shape [B] = [{B}], got {tuple(draft_lens.shape)}")
    seed = parse_seed(seed, B, dev, what) if mode != MODE_GREEDY else 0
    impl = resolve_backend(backend, dev, what)

    ar = torch.arange(N, device=dev)
    if validate:
        lens = draft_lens.to(torch.int64) if draft_lens is not None else torch.full((B,), K, device=dev)
        node_ok = ar[None, :] <= lens[:, None]  # [B, K+1] target rows in use
        checks = [
            ((lens < 0) | (lens > K), f"{what}: draft_lens must be in [0, K={K}]; bad at batch {{idx}}"),
            (
                ((draft_tokens < 0) | (draft_tokens >= V)) & node_ok[:, 1:],
                f"{what}: draft_tokens out of range [0, V={V}) at (batch, k) = {{idx}}",
            ),
        ]
        checks += seed_and_target_checks(seed, target, node_ok, tname, what, logits, mode)
        if mode == MODE_SAMPLED:
            checks += dist_checks(draft_probs, node_ok[:, 1:], "draft_probs", what, False)
        run_value_checks(checks)

    inv_temp = 1.0 / temperature if logits and temperature > 0 else 1.0
    drf = draft_probs if mode == MODE_SAMPLED else None
    if impl == "triton":
        out, _, n_acc, n_emit, nxt = launch_padded(
            draft_tokens,
            None,
            draft_lens,
            target,
            drf,
            is_chain=True,
            mode=mode,
            logits=logits,
            inv_temp=inv_temp,
            seed=seed,
            write_path=False,
        )
        return ChainVerifyResult(out, n_emit, n_acc, nxt)
    tok = torch.cat([torch.zeros(B, 1, dtype=torch.int64, device=dev), draft_tokens.to(torch.int64)], 1)
    par = (ar - 1).expand(B, N)
    valid = ar[None, :] >= 1
    if draft_lens is not None:
        valid = valid & (ar[None, :] <= draft_lens.to(torch.int64)[:, None])
    valid = valid.expand(B, N)
    k0, k1, c0 = reference_keys(seed, B, dev)
    out, _, n_acc, nxt = verify_reference(
        tok, par, valid, target, drf, mode=mode, logits=logits, inv_temp=inv_temp, k0=k0, k1=k1, c0=c0
    )
    return ChainVerifyResult(out, n_acc + 1, n_acc, nxt)


def tree_verify(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    *,
    greedy: bool = False,
    seed: int | torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    validate: bool = True,
    backend: str | None = None,
) -> TreeVerifyResult:
    """Verify a token tree per sequence against the target, losslessly, in one launch.

    Walk from the root; at node u try its children in node order. Greedy: accept the first child whose
    token is ``argmax p_u``. Sampled children (drawn from ``q_u`` without replacement, in node order):
    accept x with probability ``min(1, p(x)/q(x))``, else ``p <- norm(max(0, p - q))`` and ``q <- q``
    without x, renormalised. Deterministic children (``draft_probs=None``): accept x with probability
    ``p(x)``, else ``p <- p`` without x, renormalised. When every child of the last accepted node is
    rejected, or it has none, one token is drawn from the final p (SpecInfer, Miao et al. 2024;
    without replacement: Jeon et al. 2024, "Recursive Speculative Decoding").

    Parameters
    ----------
    tokens : Tensor
        Integer node tokens, node 0 = the root (its token is not used). Shape: ``[B, N]``.
    parents : Tensor
        Integer parents in topological order, ``parents[0] = -1``. Shape: ``[N]`` or ``[B, N]``.
    target_probs : Tensor, optional
        Target distribution after node i. Shape: ``[B, N, V]``.
    draft_probs : Tensor, optional
        Distribution node i's children were drawn from (rows of leaves are not read), or None for
        deterministic (top-k) children. Shape: ``[B, N, V]``.
    greedy, seed, target_logits, temperature, validate, backend
        As in :func:`chain_verify` (``target_logits`` shape ``[B, N, V]``).

    Returns
    -------
    TreeVerifyResult
        ``path [B, N]`` accepted node indices starting with the root 0, padded with -1;
        ``num_accepted [B]`` accepted draft nodes; ``next_token [B]`` the correction/bonus token;
        ``tokens [B, N]`` the accepted nodes' tokens then next_token, padded with -1;
        ``num_emitted [B]`` = num_accepted + 1; int64.

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> parents = torch.tensor([-1, 0, 0, 1])           # root, two children, a grandchild
    >>> p = torch.softmax(torch.randn(1, 4, 11), -1)
    >>> tok = torch.tensor([[5, 3, 7, 2]])
    >>> res = sk.tree_verify(tok, parents, p, seed=0)   # deterministic children
    >>> int(res.path[0, 0]), int(res.num_emitted[0]) == int(res.num_accepted[0]) + 1
    (0, True)
    """
    what = "tree_verify"
    target, tname, logits = target_args(target_probs, target_logits, temperature, what)
    check_tensor(target, tname, what, (3,), floating=True)
    dev = target.device
    check_tensor(tokens, "tokens", what, (2,), floating=False, device=dev)
    check_tensor(parents, "parents", what, (1, 2), floating=False, device=dev)
    B, N, V = target.shape
    if tuple(tokens.shape) != (B, N):
        raise ValueError(
            f"{what}: tokens must have shape [B, N] = {(B, N)} (from {tname} [B, N, V]), got {tuple(tokens.shape)}"
        )
    if parents.shape[-1] != N or (parents.dim() == 2 and parents.shape[0] != B):
        raise ValueError(
            f"{what}: parents must have shape [N] or [B, N] with N = {N}, B = {B}, got {tuple(parents.shape)}"
        )
    if V < 1 or N < 1 or N > MAX_NODES:
        raise ValueError(f"{what}: need V >= 1 and 1 <= N <= {MAX_NODES}, got {tname} {tuple(target.shape)}")
    mode = verify_mode(greedy, logits, temperature, draft_probs)
    if draft_probs is not None:
        check_draft_probs(draft_probs, (B, N, V), "[B, N, V]", what, dev)
    seed = parse_seed(seed, B, dev, what) if mode != MODE_GREEDY else 0
    impl = resolve_backend(backend, dev, what)

    if validate:
        validate_parents(parents, "parents", n=N)
        nodes_ok = torch.ones(B, N, dtype=torch.bool, device=dev)
        checks = [
            (
                ((tokens < 0) | (tokens >= V)) & (torch.arange(N, device=dev) >= 1),
                f"{what}: tokens out of range [0, V={V}) at (batch, node) = {{idx}}",
            )
        ]
        checks += seed_and_target_checks(seed, target, nodes_ok, tname, what, logits, mode)
        if mode == MODE_SAMPLED:
            par = parents.to(torch.int64).expand(B, N)
            has_child = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
            has_child.scatter_(1, (par + (par < 0) * (N + 1)), True)  # the root's -1 -> column N
            checks += dist_checks(draft_probs, has_child[:, :N], "draft_probs", what, False)
        run_value_checks(checks)

    inv_temp = 1.0 / temperature if logits and temperature > 0 else 1.0
    drf = draft_probs if mode == MODE_SAMPLED else None
    if impl == "triton":
        out, path, n_acc, n_emit, nxt = launch_padded(
            tokens,
            parents,
            None,
            target,
            drf,
            is_chain=False,
            mode=mode,
            logits=logits,
            inv_temp=inv_temp,
            seed=seed,
            write_path=True,
        )
        return TreeVerifyResult(path, n_acc, nxt, out, n_emit)
    par = parents.to(torch.int64).expand(B, N)
    valid = (torch.arange(N, device=dev) >= 1).expand(B, N)
    k0, k1, c0 = reference_keys(seed, B, dev)
    out, path, n_acc, nxt = verify_reference(
        tokens.to(torch.int64),
        par,
        valid,
        target,
        drf,
        mode=mode,
        logits=logits,
        inv_temp=inv_temp,
        k0=k0,
        k1=k1,
        c0=c0,
    )
    return TreeVerifyResult(path, n_acc, nxt, out, n_acc + 1)


# ----------------------------------------------------------------------------------------------------
# Registered torch ops: torch.ops.specdec.chain_verify, torch.ops.specdec.tree_verify
# ----------------------------------------------------------------------------------------------------
# For serving runtimes and torch.compile (opaque to the compiler: no graph break, the fake kernels give
# the shapes). Same arguments as the Python functions above, which they run (reference on CPU, Triton on
# CUDA by default) and which stay the public entry (no dispatcher overhead, bench/results/dispatch_cpu.md).
# The ops return the plain tuple of tensors in the NamedTuple's field order: ChainVerifyResult(*op(...)).
# Randomness: the op takes the seed as a tensor on the target's device (int32/int64; 0-d: the numbers of
# that int seed, [B]: per-sequence seeds), so nothing is drawn or read on the host; required unless greedy.

_VERIFY_OP_KWARGS = (
    "bool greedy=False, Tensor? seed=None, Tensor? target_logits=None, float temperature=1.0, "
    "bool validate=True, str? backend=None"
)


def _op_seed(seed, greedy, target_logits, temperature, what):
    """The seed to hand to the Python function: the tensor, or 0 where no randomness is used."""
    if seed is not None:
        return seed
    if greedy or (target_logits is not None and temperature == 0.0):
        return 0  # greedy: not read
    raise ValueError(
        f"{what} (torch op): seed must be an integer tensor, 0-d or [B], on the target's device "
        "(the op draws nothing on the host); only greedy verification may omit it"
    )


def _op_int64(*shapes, like):
    return tuple(like.new_empty(shape, dtype=torch.int64) for shape in shapes)


def _op_kwargs(kw: dict, what: str) -> dict:
    """The op's keyword options for the Python function: the seed tensor, or 0 where none is read."""
    seed = _op_seed(kw.get("seed"), kw.get("greedy", False), kw.get("target_logits"), kw.get("temperature", 1.0), what)
    return {**kw, "seed": seed}


def _chain_verify_op(draft_tokens, target_probs=None, draft_probs=None, **kw):
    return tuple(chain_verify(draft_tokens, target_probs, draft_probs, **_op_kwargs(kw, "chain_verify")))


def _chain_verify_fake(draft_tokens, target_probs=None, draft_probs=None, **kw):
    target, tname, _ = target_args(target_probs, kw.get("target_logits"), kw.get("temperature", 1.0), "chain_verify")
    check_tensor(target, tname, "chain_verify", (3,), floating=True)
    B, N = target.shape[0], target.shape[1]
    return _op_int64((B, N), (B,), (B,), (B,), like=target)


def _tree_verify_op(tokens, parents, target_probs=None, draft_probs=None, **kw):
    return tuple(tree_verify(tokens, parents, target_probs, draft_probs, **_op_kwargs(kw, "tree_verify")))


def _tree_verify_fake(tokens, parents, target_probs=None, draft_probs=None, **kw):
    target, tname, _ = target_args(target_probs, kw.get("target_logits"), kw.get("temperature", 1.0), "tree_verify")
    check_tensor(target, tname, "tree_verify", (3,), floating=True)
    B, N = target.shape[0], target.shape[1]
    return _op_int64((B, N), (B,), (B,), (B, N), (B,), like=target)


_specdec_ops.define_op(
    "chain_verify(Tensor draft_tokens, Tensor? target_probs=None, Tensor? draft_probs=None, *, "
    f"Tensor? draft_lens=None, {_VERIFY_OP_KWARGS}) -> (Tensor tokens, Tensor num_emitted, Tensor num_accepted, "
    "Tensor next_token)",
    _chain_verify_op,
    _chain_verify_fake,
)
_specdec_ops.define_op(
    f"tree_verify(Tensor tokens, Tensor parents, Tensor? target_probs=None, Tensor? draft_probs=None, *, "
    f"{_VERIFY_OP_KWARGS}) -> (Tensor path, Tensor num_accepted, Tensor next_token, Tensor tokens, "
    "Tensor num_emitted)",
    _tree_verify_op,
    _tree_verify_fake,
)
