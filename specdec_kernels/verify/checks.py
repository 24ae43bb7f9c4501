"""Argument checks of the verification APIs: every tensor's kind, shape, device and values, named."""

from __future__ import annotations

from typing import NamedTuple

import torch

from specdec_kernels.verify.common import MAX_NODES, MODE_DETERMINISTIC, MODE_GREEDY, MODE_SAMPLED

_PROB_SUM_TOL = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, name, what, dims, floating, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what}: {name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    if not floating and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"{what}: {name} must be an integer tensor, got {t.dtype}")
    if t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{what}: {name} must be {want}, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{what}: {name} is on {t.device}, expected {device} (the target's device)")


def parse_seed(seed, B, device, what):
    """int seed -> int in [0, 2**63); tensor -> int64 [B] per-sequence seeds, or an int64 0-d tensor
    standing for an int seed (no host read); None -> a fresh int drawn from torch's default generator
    (so torch.manual_seed makes it reproducible)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (), dtype=torch.int64))
    if isinstance(seed, torch.Tensor):
        check_tensor(seed, "seed", what, (0, 1), floating=False, device=device)
        if seed.dim() == 1 and seed.shape[0] != B:
            raise ValueError(f"{what}: a seed tensor must have shape [B] = [{B}], got {tuple(seed.shape)}")
        return seed.to(torch.int64).contiguous()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{what}: seed must be None, an int or an int64 tensor [B], got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{what}: seed must be in [0, 2**63), got {seed}")
    return seed


def run_value_checks(checks):
    """checks: list of (bad: bool tensor, message with {idx}). One host sync for all of them."""
    checks = [(bad, msg) for bad, msg in checks if bad is not None and bad.numel() > 0]
    if not checks:
        return
    flags = torch.stack([bad.any() for bad, _ in checks]).tolist()
    for flag, (bad, msg) in zip(flags, checks):
        if flag:
            idx = tuple(bad.nonzero()[0].tolist())
            raise ValueError(msg.format(idx=idx))


def dist_checks(x, rows_used, name, what, logits):
    """Bad-row masks for a [B, n, V] probability (or logit) tensor, restricted to rows_used [B, n]."""
    if logits:  # NaN or +inf anywhere in a row, or no finite entry: the row's max is not finite
        bad = ~torch.isfinite(x.amax(-1))
        return [
            (bad & rows_used, f"{what}: {name} has a row (batch, node) = {{idx}} with NaN or +inf, or no finite logit")
        ]
    tol = _PROB_SUM_TOL[x.dtype]
    neg = ~(x.amin(-1) >= 0)  # NaN propagates
    off = ~((x.sum(-1, dtype=torch.float32) - 1.0).abs() <= tol)
    return [
        (neg & rows_used, f"{what}: {name} has a negative or NaN entry in row (batch, node) = {{idx}}"),
        (
            off & rows_used,
            f"{what}: {name} row (batch, node) = {{idx}} does not sum to 1 (tolerance {tol}); "
            "pass probabilities, or logits as target_logits",
        ),
    ]


def _greedy_checks(x, rows_used, name, what, logits):
    """Bad-row masks for greedy verification: only an argmax is taken, so the rows need not be
    normalised, but a NaN or infinite entry has no well-defined argmax (the backends would each pick a
    different token, silently). Logits are held to the sampled rule (an all -inf row has no argmax)."""
    if logits:
        return dist_checks(x, rows_used, name, what, logits)
    bad = ~(torch.isfinite(x.amax(-1)) & torch.isfinite(x.amin(-1)))  # NaN propagates through both
    return [(bad & rows_used, f"{what}: {name} has a NaN or infinite entry in row (batch, node) = {{idx}}")]


def seed_and_target_checks(seed, target, rows_used, tname, what, logits, mode):
    """Value checks of chain_verify / tree_verify shared by both: a seed tensor is >= 0; the target rows in
    use are finite (greedy) or distributions (the sampled rules)."""
    checks = []
    if isinstance(seed, torch.Tensor):
        checks.append((seed.reshape(-1) < 0, f"{what}: seed tensor must be >= 0; bad at batch {{idx}}"))
    if mode == MODE_GREEDY:
        return checks + _greedy_checks(target, rows_used, tname, what, logits)
    return checks + dist_checks(target, rows_used, tname, what, logits)


def check_draft_probs(draft_probs, shape, desc, what, device):
    """draft_probs: a float tensor on the target's device of the given shape (desc names its dims)."""
    check_tensor(draft_probs, "draft_probs", what, (3,), floating=True, device=device)
    if tuple(draft_probs.shape) != shape:
        raise ValueError(f"{what}: draft_probs must have shape {desc} = {shape}, got {tuple(draft_probs.shape)}")


def target_args(target_probs, target_logits, temperature, what):
    if (target_probs is None) == (target_logits is None):
        raise ValueError(f"{what}: pass exactly one of target_probs and target_logits")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{what}: temperature must be a float, got {type(temperature).__name__}")
    if not (temperature >= 0.0 and temperature < float("inf")):
        raise ValueError(f"{what}: temperature must be finite and >= 0, got {temperature}")
    if target_probs is not None:
        if temperature != 1.0:
            raise ValueError(f"{what}: temperature applies to target_logits; target_probs are used as given")
        return target_probs, "target_probs", False
    return target_logits, "target_logits", True


def verify_mode(greedy, logits, temperature, draft_probs):
    if greedy or (logits and temperature == 0.0):
        return MODE_GREEDY
    return MODE_DETERMINISTIC if draft_probs is None else MODE_SAMPLED


# ----------------------------------------------------------------------------------------------------
# Ragged (flattened) batches for serving runtimes: ragged_verify and torch.ops.specdec.ragged_verify
# ----------------------------------------------------------------------------------------------------
# Same kernel (_verify_program with RAGGED), same reference (verify_reference on the padded view built
# by ragged_padded). Layout conventions are in ragged_verify's docstring.

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_shape(t, name, what, shape, desc):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what}: {name} must have shape {desc} = {list(shape)}, got {list(t.shape)}")


def _check_out(t, name, what, shape, desc, device):
    """An integer output buffer (int32 or int64) of the given shape on the target's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{what}: {name} must be int32 or int64, got {t.dtype}")
    _check_shape(t, name, what, shape, desc)
    if t.device != device:
        raise ValueError(f"{what}: {name} is on {t.device}, expected {device} (the target's device)")


class RaggedArgs(NamedTuple):
    target: torch.Tensor
    tname: str
    logits: bool
    bonus: torch.Tensor | None
    B: int
    T: int
    V: int
    N: int  # max_spec_len + 1
    mode: int


def ragged_args(
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
):
    """Types, shapes and devices of ragged_verify's arguments (no data read: also the fake kernel)."""
    what = "ragged_verify"
    if (target_probs is None) == (target_logits is None):
        raise ValueError(f"{what}: pass exactly one of target_probs and target_logits")
    logits = target_logits is not None
    target, tname = (target_logits, "target_logits") if logits else (target_probs, "target_probs")
    bonus, bname = (bonus_logits, "bonus_logits") if logits else (bonus_probs, "bonus_probs")
    if (bonus_probs if logits else bonus_logits) is not None:
        raise ValueError(
            f"{what}: bonus rows come in the target's kind: bonus_probs with target_probs, "
            "bonus_logits with target_logits"
        )
    check_tensor(target, tname, what, (2,), floating=True)
    dev = target.device
    check_tensor(draft_token_ids, "draft_token_ids", what, (1,), floating=False, device=dev)
    check_tensor(cu_num_draft_tokens, "cu_num_draft_tokens", what, (1,), floating=False, device=dev)
    T, B, V = draft_token_ids.shape[0], cu_num_draft_tokens.shape[0] - 1, target.shape[1]
    if B < 0:
        raise ValueError(f"{what}: cu_num_draft_tokens must have B + 1 >= 1 entries, got shape [0]")
    if V < 1:
        raise ValueError(f"{what}: need V >= 1, got {tname} {list(target.shape)}")
    N = _check_ragged_outputs(output_token_ids, accept_length, accept_index, next_token, B, dev)
    if bonus is None:
        _check_shape(target, tname, what, (T + B, V), "[T + B, V] (no bonus rows given)")
    else:
        check_tensor(bonus, bname, what, (2,), floating=True, device=dev)
        _check_shape(target, tname, what, (T, V), f"[T, V] (with {bname})")
        _check_shape(bonus, bname, what, (B, V), "[B, V]")
        if bonus.dtype != target.dtype:
            raise TypeError(f"{what}: {bname} must have the dtype of {tname} ({target.dtype}), got {bonus.dtype}")
    if parents is not None:
        check_tensor(parents, "parents", what, (1,), floating=False, device=dev)
        _check_shape(parents, "parents", what, (T,), "[T]")
        if bonus is not None:
            raise ValueError(
                f"{what}: separate bonus rows ({bname}) describe chains; pass a tree's node rows "
                f"in the [T + B, V] layout of {tname}"
            )
    if draft_probs is not None:
        check_tensor(draft_probs, "draft_probs", what, (2,), floating=True, device=dev)
        _check_shape(draft_probs, "draft_probs", what, (T, V), "[T, V]")
    _check_ragged_sampling(
        greedy, is_greedy, temperature, seed, offset, uniform_accept, uniform_sample, logits, B, T, dev
    )
    mode = MODE_GREEDY if greedy else (MODE_DETERMINISTIC if draft_probs is None else MODE_SAMPLED)
    return RaggedArgs(target, tname, logits, bonus, B, T, V, N, mode)


def _check_ragged_outputs(output_token_ids, accept_length, accept_index, next_token, B: int, dev) -> int:
    """The caller's output buffers of ragged_verify; returns N = max_spec_len + 1."""
    what = "ragged_verify"
    if not isinstance(output_token_ids, torch.Tensor) or output_token_ids.dim() != 2:
        raise ValueError(f"{what}: output_token_ids must be a 2-D tensor [B, max_spec_len + 1]")
    N = output_token_ids.shape[1]
    if not 1 <= N <= MAX_NODES:
        raise ValueError(f"{what}: output_token_ids must have 1 <= max_spec_len + 1 <= {MAX_NODES} columns, got {N}")
    _check_out(output_token_ids, "output_token_ids", what, (B, N), "[B, max_spec_len + 1]", dev)
    _check_out(accept_length, "accept_length", what, (B,), "[B]", dev)
    if accept_index is not None:
        _check_out(accept_index, "accept_index", what, (B, N), "[B, max_spec_len + 1]", dev)
    if next_token is not None:
        _check_out(next_token, "next_token", what, (B,), "[B]", dev)
    return N


def _check_ragged_sampling(
    greedy, is_greedy, temperature, seed, offset, uniform_accept, uniform_sample, logits, B, T, dev
):
    """ragged_verify's sampling arguments: the per-request rules and where its randomness comes from."""
    what = "ragged_verify"
    if not isinstance(greedy, bool):
        raise TypeError(
            f"{what}: greedy must be a bool (per-request flags go in is_greedy), got {type(greedy).__name__}"
        )
    if is_greedy is not None:
        if not isinstance(is_greedy, torch.Tensor) or is_greedy.dtype != torch.bool:
            raise TypeError(f"{what}: is_greedy must be a bool tensor [B]")
        _check_shape(is_greedy, "is_greedy", what, (B,), "[B]")
    if temperature is not None:
        if not logits:
            raise ValueError(f"{what}: temperature applies to target_logits; target_probs are used as given")
        check_tensor(temperature, "temperature", what, (1,), floating=True, device=dev)
        _check_shape(temperature, "temperature", what, (B,), "[B]")
    for name, t, n in (("seed", seed, B), ("offset", offset, B)):
        if t is not None:
            check_tensor(t, name, what, (1,), floating=False, device=dev)
            _check_shape(t, name, what, (n,), "[B]")
    for name, t, n, desc in (
        ("uniform_accept", uniform_accept, T, "[T]"),
        ("uniform_sample", uniform_sample, B, "[B]"),
    ):
        if t is not None:
            check_tensor(t, name, what, (1,), floating=True, device=dev)
            _check_shape(t, name, what, (n,), desc)
    if is_greedy is not None and is_greedy.device != dev:
        raise ValueError(f"{what}: is_greedy is on {is_greedy.device}, expected {dev} (the target's device)")
    if offset is not None and seed is None:
        raise ValueError(f"{what}: offset goes with seed")
    if (uniform_accept is None) != (uniform_sample is None):
        raise ValueError(f"{what}: pass both uniform_accept and uniform_sample, or neither")
    if seed is not None and uniform_accept is not None:
        raise ValueError(f"{what}: pass either seed (and offset) or uniform_accept and uniform_sample, not both")
    if not greedy and seed is None and uniform_accept is None:
        raise ValueError(
            f"{what}: sampled verification needs randomness on the device: seed [B] (and offset "
            "[B]) or uniform_accept [T] and uniform_sample [B]; only greedy=True may omit it"
        )


def row_rules(is_greedy, temperature):
    """Per-request (greedy flags, fp32 1 / temperature) on the device; None where not per request.
    Temperature 0 means greedy, as for chain_verify."""
    inv_temp = greedy_rows = None
    if temperature is not None:
        t = temperature.to(torch.float64)
        inv_temp = torch.where(t > 0, 1.0 / t, 1.0).to(torch.float32)  # fp64 reciprocal, as chain_verify's
        greedy_rows = t <= 0
    if is_greedy is not None:
        greedy_rows = is_greedy if greedy_rows is None else greedy_rows | is_greedy
    return greedy_rows, inv_temp


def _flat_row_checks(checks):
    """dist_checks / _greedy_checks run on [R, 1, V] rows, reworded for flat row indices."""
    return [(bad.reshape(-1), msg.replace("row (batch, node) =", "flat row")) for bad, msg in checks]


def ragged_value_checks(
    a, draft_token_ids, cu, draft_probs, parents, greedy_rows, temperature, uniform_accept, uniform_sample
):
    """ValueError on bad values (one host sync): offsets, tokens, parents, distributions, temperatures,
    uniforms. Greedy requests' rows are held to the greedy rule, the others to the sampled one."""
    what = "ragged_verify"
    dev, B, T, N = a.target.device, a.B, a.T, a.N
    cu64 = cu.to(torch.int64)
    k = cu64[1:] - cu64[:-1]
    flat = torch.arange(T, device=dev)
    req_t = torch.searchsorted(cu64[1:].contiguous(), flat, right=True).clamp(max=max(B - 1, 0))
    checks = [
        (cu64[:1] != 0, f"{what}: cu_num_draft_tokens[0] must be 0"),
        (k < 0, f"{what}: cu_num_draft_tokens must be nondecreasing; bad at request {{idx}}"),
        (cu64[-1:] != T, f"{what}: cu_num_draft_tokens[B] must be T = len(draft_token_ids) = {T}"),
        (
            k > N - 1,
            f"{what}: a request has more drafts than output_token_ids holds (max_spec_len = {N - 1}); "
            "bad at request {idx}",
        ),
        (
            (draft_token_ids < 0) | (draft_token_ids >= a.V),
            f"{what}: draft_token_ids out of range [0, V={a.V}) at flat entry {{idx}}",
        ),
    ]
    if parents is not None and B > 0:
        pos = flat - cu64[req_t]  # the draft's index i within its request: its node is i + 1
        checks.append(
            (
                (parents < 0) | (parents > pos),
                f"{what}: parents of a request's i-th draft must be in [0, i] (0 = the root, j = the "
                "node of draft j - 1); bad at flat entry {idx}",
            )
        )
    if temperature is not None:
        checks.append(
            (
                ~((temperature >= 0) & torch.isfinite(temperature)),
                f"{what}: temperature must be finite and >= 0; bad at request {{idx}}",
            )
        )
    for name, u in (("uniform_accept", uniform_accept), ("uniform_sample", uniform_sample)):
        if u is not None:
            checks.append((~((u >= 0) & (u < 1)), f"{what}: {name} must be in [0, 1); bad at {{idx}}"))
    # which request each target row belongs to: its greedy flag picks the rule
    if a.bonus is None:
        ends = cu64[1:] + torch.arange(B, device=dev)  # the last row of request b
        req_rows = [torch.searchsorted(ends.contiguous(), torch.arange(T + B, device=dev)).clamp(max=max(B - 1, 0))]
        rows = [a.target]
    else:
        req_rows, rows = [req_t, torch.arange(B, device=dev)], [a.target, a.bonus]
    names = [a.tname] if a.bonus is None else [a.tname, "bonus_logits" if a.logits else "bonus_probs"]
    for x, req, name in zip(rows, req_rows, names):
        g = (
            torch.ones_like(req, dtype=torch.bool)
            if a.mode == MODE_GREEDY
            else (greedy_rows[req] if greedy_rows is not None and B > 0 else torch.zeros_like(req, dtype=torch.bool))
        )
        checks += _flat_row_checks(_greedy_checks(x[:, None], g[:, None], name, what, a.logits))
        if a.mode != MODE_GREEDY:
            checks += _flat_row_checks(dist_checks(x[:, None], ~g[:, None], name, what, a.logits))
    if a.mode == MODE_SAMPLED:
        g = greedy_rows[req_t] if greedy_rows is not None and B > 0 else torch.zeros(T, dtype=torch.bool, device=dev)
        checks += _flat_row_checks(dist_checks(draft_probs[:, None], ~g[:, None], "draft_probs", what, False))
    run_value_checks(checks)
