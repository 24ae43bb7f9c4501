"""The ragged (flattened) batch API of serving runtimes: ragged_verify and its torch op."""

from __future__ import annotations

import re

import torch

from specdec_kernels import _ops as _specdec_ops
from specdec_kernels._backend import resolve_backend
from specdec_kernels.philox import MASK32
from specdec_kernels.verify.checks import ragged_args, ragged_value_checks, row_rules
from specdec_kernels.verify.common import MODE_GREEDY, MODE_SAMPLED
from specdec_kernels.verify.launch import launch_ragged
from specdec_kernels.verify.reference import ragged_padded, verify_reference


def ragged_verify(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    *,
    output_token_ids: torch.Tensor,
    accept_length: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    bonus_probs: torch.Tensor | None = None,
    bonus_logits: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    parents: torch.Tensor | None = None,
    greedy: bool = False,
    is_greedy: torch.Tensor | None = None,
    temperature: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    uniform_accept: torch.Tensor | None = None,
    uniform_sample: torch.Tensor | None = None,
    accept_index: torch.Tensor | None = None,
    next_token: torch.Tensor | None = None,
    validate: bool = True,
    backend: str | None = None,
) -> None:
    """Verify a flattened (ragged) batch of draft chains or trees in one launch, into caller buffers.

    The same lossless rules as :func:`chain_verify` / :func:`tree_verify`, in the layouts serving
    runtimes hold: no padding, per-request rules and randomness as device tensors, outputs written in
    place. With ``validate=False`` and the Triton backend nothing is read back to the host (CUDA-graph
    friendly); bad values then give unspecified results but no access outside the given tensors.
    Registered as ``torch.ops.specdec.ragged_verify`` (same arguments).

    Layout. B requests, T drafts in all. Request b's drafts are the flat entries
    ``cu_num_draft_tokens[b] : cu_num_draft_tokens[b + 1]`` (``k_b`` of them, possibly 0). As in
    :func:`tree_verify`, request b has nodes ``0 .. k_b``: node 0 is the root (the last token already
    emitted, not passed) and node ``i + 1`` is its draft i (flat entry ``cu[b] + i``).

    Parameters
    ----------
    draft_token_ids : Tensor
        int32/int64 ``[T]``.
    cu_num_draft_tokens : Tensor
        int32/int64 ``[B + 1]``: 0, then cumulative draft counts (``cu[B] = T``).
    output_token_ids : Tensor, out
        int32/int64 ``[B, max_spec_len + 1]`` (vLLM's layout): row b gets the accepted drafts, then the
        correction/bonus token, then -1 placeholders. Its width sets ``max_spec_len >= max k_b``.
    accept_length : Tensor, out
        int32/int64 ``[B]``: accepted drafts (request b emits ``accept_length[b] + 1`` tokens).
    target_probs, target_logits : Tensor
        Exactly one; float ``[T + B, V]``: node u of request b at row ``cu[b] + b + u``, i.e. each request's
        ``k_b + 1`` rows contiguous (SGLang's and this repository's loop's layout); row of node u = the
        target's distribution after it. Or, for chains with ``bonus_probs`` / ``bonus_logits``
        ``[B, V]`` (vLLM's layout): ``[T, V]`` with draft i's row ``cu[b] + i`` = the target after node
        i (the distribution draft i is verified against) and the bonus row = after the last node.
        Logits are softmaxed with the request's temperature inside the kernel.
    bonus_probs, bonus_logits : Tensor, optional
        ``[B, V]``, same kind and dtype as the target; chains only (``parents=None``).
    draft_probs : Tensor, optional
        float ``[T, V]``: row t = the distribution draft t was sampled from (its parent's ``q``; in a tree
        siblings share it, the walk reads each child's own row). None: deterministic drafts (n-gram,
        top-k; accept x with probability ``p(x)``, the rule of ``draft_probs=None`` in tree_verify).
    parents : Tensor, optional
        int32/int64 ``[T]``, trees: ``parents[cu[b] + i]`` is the parent node of draft i, in
        ``[0, i]`` (0 = the root, j = draft j - 1's node), i.e. tree_verify's ``parents[1:]`` per request;
        children are tried in flat order. None: chains (draft i's parent is node i).
    greedy : bool
        Every request greedy (argmax rule; no randomness needed, ``is_greedy``/``temperature`` unused).
    is_greedy : Tensor, optional
        bool ``[B]``: per-request greedy flags (mixed batches).
    temperature : Tensor, optional
        float ``[B]``, with target logits only: per-request temperature, 0 = greedy (None: 1).
    seed, offset : Tensor, optional
        Integer ``[B]``: Philox key ``seed[b]`` (64 bits) and counter ``(offset[b] low word, node,
        offset[b] high word)`` (offset None: 0). ``seed[b]`` with offset 0 draws exactly chain_verify's /
        tree_verify's numbers for a per-sequence seed ``seed[b]``. Advance seed or offset every step.
    uniform_accept, uniform_sample : Tensor, optional
        Instead of seed: float ``[T]`` (draft t's accept test) and ``[B]`` (the correction/bonus draw),
        uniforms in [0, 1). One of the two sources is required unless ``greedy=True``.
    accept_index : Tensor, out, optional
        int32/int64 ``[B, max_spec_len + 1]`` (SGLang's layout): the accepted path's flat node rows
        ``cu[b] + b + u``, root first (``accept_length[b] + 1`` entries), then -1.
    next_token : Tensor, out, optional
        int32/int64 ``[B]``: the correction/bonus token.
    validate : bool
        Check values (offsets, tokens, parents, distributions, temperatures, uniforms): one host sync.
        Types, shapes and devices are always checked (no sync).
    backend : {None, "triton", "reference"}

    Examples
    --------
    >>> import torch, specdec_kernels as sk
    >>> cu = torch.tensor([0, 2, 2])                          # request 0: 2 drafts, request 1: none
    >>> p = torch.softmax(torch.randn(2 + 2, 7), -1)          # rows: req 0 nodes 0-2, req 1 node 0
    >>> out = torch.empty(2, 3, dtype=torch.int32); n = torch.empty(2, dtype=torch.int32)
    >>> sk.ragged_verify(torch.tensor([3, 5]), cu, output_token_ids=out, accept_length=n, target_probs=p,
    ...                  seed=torch.tensor([7, 8]))
    >>> bool((out >= 0).sum(1).eq(n + 1).all())
    True
    """
    a = ragged_args(
        draft_token_ids,
        cu_num_draft_tokens,
        output_token_ids,
        accept_length,
        target_probs,
        target_logits,
        bonus_probs,
        bonus_logits,
        draft_probs,
        parents,
        greedy,
        is_greedy,
        temperature,
        seed,
        offset,
        uniform_accept,
        uniform_sample,
        accept_index,
        next_token,
    )
    impl = resolve_backend(backend, a.target.device, "ragged_verify")
    greedy_rows, inv_temp = row_rules(is_greedy, temperature) if a.mode != MODE_GREEDY else (None, None)
    if validate:
        ragged_value_checks(
            a,
            draft_token_ids,
            cu_num_draft_tokens,
            draft_probs,
            parents,
            greedy_rows,
            temperature,
            uniform_accept,
            uniform_sample,
        )
    drf = draft_probs if a.mode == MODE_SAMPLED else None
    rng = a.mode != MODE_GREEDY
    seed = seed.to(torch.int64) if rng and seed is not None else None
    offset = offset.to(torch.int64) if seed is not None and offset is not None else None
    u_acc, u_smp = (uniform_accept, uniform_sample) if rng and seed is None else (None, None)
    # both backends take the launch's arguments: the checked batch, then the caller's output buffers
    run = launch_ragged if impl == "triton" else _reference
    run(
        a,
        draft_token_ids,
        cu_num_draft_tokens,
        parents,
        drf,
        output_token_ids,
        accept_length,
        accept_index,
        next_token,
        greedy_rows=greedy_rows,
        inv_temp=inv_temp,
        seed=seed,
        offset=offset,
        u_acc=u_acc,
        u_smp=u_smp,
    )


def _reference(
    a,
    tok,
    cu,
    parents,
    drf,
    output_token_ids,
    accept_length,
    accept_index,
    next_token,
    *,
    greedy_rows,
    inv_temp,
    seed,
    offset,
    u_acc,
    u_smp,
) -> None:
    """The reference backend, with :func:`launch_ragged`'s arguments: the padded view of the flattened
    batch through :func:`verify_reference`, written into the caller's buffers."""
    if a.B == 0:
        return
    tok, par, valid, tgt, drf_p, ua, t0 = ragged_padded(a, tok, cu, parents, drf, u_acc)
    zeros = torch.zeros(a.B, dtype=torch.int64, device=tgt.device)
    s = seed if seed is not None else zeros
    o = offset if offset is not None else zeros
    out, path, n_acc, nxt = verify_reference(
        tok,
        par,
        valid,
        tgt,
        drf_p,
        mode=a.mode,
        logits=a.logits,
        inv_temp=inv_temp if inv_temp is not None else 1.0,
        k0=s & MASK32,
        k1=(s >> 32) & MASK32,
        c0=o & MASK32,
        c2=(o >> 32) & MASK32,
        greedy_rows=greedy_rows,
        uniforms=None if ua is None else (ua, u_smp),
    )
    output_token_ids.copy_(out)
    accept_length.copy_(n_acc)
    if accept_index is not None:
        accept_index.copy_(torch.where(path >= 0, path + (t0 + torch.arange(a.B, device=tgt.device))[:, None], -1))
    if next_token is not None:
        next_token.copy_(nxt)


# torch.ops.specdec.ragged_verify: ragged_verify's arguments in its order, the tensors positional (an op
# takes no keyword-only tensors) and the flags keyword-only; the output buffers are marked mutated. The
# schema is the one place the argument list is written; the op reads its tensor names from it.
RAGGED_VERIFY_SCHEMA = (
    "ragged_verify(Tensor draft_token_ids, Tensor cu_num_draft_tokens, Tensor(a2!) output_token_ids, "
    "Tensor(a3!) accept_length, Tensor? target_probs=None, Tensor? target_logits=None, Tensor? bonus_probs=None, "
    "Tensor? bonus_logits=None, Tensor? draft_probs=None, Tensor? parents=None, Tensor? is_greedy=None, "
    "Tensor? temperature=None, Tensor? seed=None, Tensor? offset=None, Tensor? uniform_accept=None, "
    "Tensor? uniform_sample=None, Tensor(a16!)? accept_index=None, Tensor(a17!)? next_token=None, "
    "*, bool greedy=False, bool validate=True, str? backend=None) -> ()"
)
_OP_TENSORS = tuple(re.findall(r"Tensor(?:\(\w+!\))?\??\s+(\w+)", RAGGED_VERIFY_SCHEMA))


def _ragged_verify_op(*tensors, greedy=False, validate=True, backend=None) -> None:
    """:func:`ragged_verify` as a torch op (writes its output buffers, returns nothing). Same arguments;
    the tensors may also be passed by position, in ragged_verify's order."""
    ragged_verify(**dict(zip(_OP_TENSORS, tensors)), greedy=greedy, validate=validate, backend=backend)


def _ragged_verify_fake(*tensors, greedy=False, validate=True, backend=None):
    # outputs are written in place: only the argument metadata can be checked
    ragged_args(**dict(zip(_OP_TENSORS, tensors)), greedy=greedy)
    return None


_specdec_ops.define_op(RAGGED_VERIFY_SCHEMA, _ragged_verify_op, _ragged_verify_fake)
