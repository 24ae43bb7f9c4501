"""Launchers: the padded (chain_verify / tree_verify) and ragged (ragged_verify) launches of the kernel."""

from __future__ import annotations

import contextlib

import torch
import triton

from specdec_kernels.philox import MASK32
from specdec_kernels.verify.common import MAX_BLOCK_V
from specdec_kernels.verify.kernel import ragged_verify_kernel, verify_kernel

# ----------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------


def launch_padded(tok, parents, lens, tgt, drf, *, is_chain, mode, logits, inv_temp, seed, write_path, block_v=None):
    """One kernel launch for the whole batch (one program per sequence). Inputs already checked."""
    B, N, V = tgt.shape
    dev = tgt.device
    out_tok = torch.empty(B, N, dtype=torch.int64, device=dev)
    path = torch.empty(B, N, dtype=torch.int64, device=dev) if write_path else out_tok
    num_acc = torch.empty(B, dtype=torch.int64, device=dev)
    num_emit = torch.empty(B, dtype=torch.int64, device=dev)
    nxt = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return out_tok, path, num_acc, num_emit, nxt
    tok = tok if tok.numel() == 0 or tok.stride(-1) == 1 else tok.contiguous()
    tgt = tgt if tgt.stride(-1) == 1 else tgt.contiguous()
    if drf is not None and drf.stride(-1) != 1:
        drf = drf.contiguous()
    if parents is not None and parents.stride(-1) != 1:
        parents = parents.contiguous()
    lens = lens.contiguous() if lens is not None else None
    per_row = isinstance(seed, torch.Tensor)
    seed_lo = seed_hi = 0
    if not per_row:
        seed_lo, seed_hi = seed & MASK32, seed >> 32
        seed_lo = seed_lo - (1 << 32) if seed_lo >= (1 << 31) else seed_lo  # as int32 bits
        seed_hi = seed_hi - (1 << 32) if seed_hi >= (1 << 31) else seed_hi
    block_v = block_v or min(triton.next_power_of_2(V), MAX_BLOCK_V)
    block_n = max(triton.next_power_of_2(N), 2)
    dummy = num_acc
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        verify_kernel[(B,)](
            tok,
            parents if parents is not None else dummy,
            lens if lens is not None else dummy,
            tgt,
            drf if drf is not None else tgt,
            seed if per_row else dummy,
            path,
            out_tok,
            num_acc,
            num_emit,
            nxt,
            seed_lo,
            seed_hi,
            N,
            V,
            float(inv_temp),
            tok.stride(0) if tok.dim() == 2 else 0,
            parents.stride(0) if parents is not None and parents.dim() == 2 else 0,
            tgt.stride(0),
            tgt.stride(1),
            drf.stride(0) if drf is not None else 0,
            drf.stride(1) if drf is not None else 0,
            IS_CHAIN=is_chain,
            HAS_LENS=lens is not None,
            MODE=int(mode),
            LOGITS=logits,
            SEED_PER_ROW=per_row,
            SEED_SCALAR=per_row and seed.dim() == 0,
            WRITE_PATH=write_path,
            BLOCK_V=block_v,
            BLOCK_N=block_n,
            num_warps=8 if block_v >= 2048 else 4,
        )
    return out_tok, path, num_acc, num_emit, nxt


# ----------------------------------------------------------------------------------------------------
# PyTorch reference (defines the semantics; the CPU path). Vectorised over the batch, a loop over nodes.
# ----------------------------------------------------------------------------------------------------


def launch_ragged(
    a,
    tok,
    cu,
    par,
    drf,
    out_tok,
    acc_len,
    acc_idx,
    nxt,
    *,
    greedy_rows,
    inv_temp,
    seed,
    offset,
    u_acc,
    u_smp,
    block_v=None,
):
    """One launch, one program per request; reads nothing back to the host. Inputs already checked."""
    if a.B == 0:
        return
    tgt = a.target if a.target.stride(-1) == 1 else a.target.contiguous()
    bonus = a.bonus
    if bonus is not None and bonus.stride(-1) != 1:
        bonus = bonus.contiguous()
    if drf is not None and drf.stride(-1) != 1:
        drf = drf.contiguous()
    vecs = [
        t.contiguous() if t is not None else None
        for t in (tok, cu, par, greedy_rows, inv_temp, seed, offset, u_acc, u_smp)
    ]
    tok, cu, par, greedy_rows, inv_temp, seed, offset, u_acc, u_smp = vecs
    dummy = acc_len
    nxt = nxt if nxt is not None else torch.empty(a.B, dtype=torch.int64, device=tgt.device)
    block_v = block_v or min(triton.next_power_of_2(a.V), MAX_BLOCK_V)
    block_n = max(triton.next_power_of_2(a.N), 2)
    with torch.cuda.device(tgt.device) if tgt.device.type == "cuda" else contextlib.nullcontext():
        ragged_verify_kernel[(a.B,)](
            tok,
            par if par is not None else dummy,
            cu,
            tgt,
            bonus if bonus is not None else tgt,
            drf if drf is not None else tgt,
            greedy_rows if greedy_rows is not None else dummy,
            inv_temp if inv_temp is not None else dummy,
            seed if seed is not None else dummy,
            offset if offset is not None else dummy,
            u_acc if u_acc is not None else dummy,
            u_smp if u_smp is not None else dummy,
            out_tok,
            acc_idx if acc_idx is not None else out_tok,
            acc_len,
            nxt,
            a.T,
            a.N,
            a.V,
            0 if bonus is not None else tgt.stride(0),
            tgt.stride(0),
            bonus.stride(0) if bonus is not None else 0,
            drf.stride(0) if drf is not None else 0,
            out_tok.stride(0),
            out_tok.stride(1),
            acc_idx.stride(0) if acc_idx is not None else 0,
            acc_idx.stride(1) if acc_idx is not None else 0,
            IS_CHAIN=par is None,
            MODE=int(a.mode),
            LOGITS=a.logits,
            SEP_BONUS=bonus is not None,
            ROW_GREEDY=greedy_rows is not None,
            ROW_TEMP=inv_temp is not None,
            SEED_PER_ROW=seed is not None,
            RNG_OFFSET=offset is not None,
            UNIFORMS=u_acc is not None,
            WRITE_PATH=acc_idx is not None,
            BLOCK_V=block_v,
            BLOCK_N=block_n,
            num_warps=8 if block_v >= 2048 else 4,
        )
