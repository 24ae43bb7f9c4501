"""Argument checks of :func:`specdec.generate`: every argument is checked before any forward runs, and
a bad one is refused with a TypeError (wrong kind) or ValueError (wrong value) that names it and
says what is allowed. Nothing is silently converted beyond what the message promises."""

from __future__ import annotations

import math
import numbers

import torch

from specdec.model_support import UnsupportedModelError, check_model_support
from specdec.proposer import MAX_TREE_NODES


def is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)  # True is a mistake, not 1


def is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# Parameter checks of the strategies (at construction: a bad value fails where it was written, not
# steps later inside a kernel)


def check_int(what: str, name: str, value, lo: int, hi: int | None = None, hi_name: str | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` (``hi=None``: no upper bound; ``hi_name``: the argument the
    bound comes from), else TypeError/ValueError naming the argument. Bools are refused although they
    are ints: ``k=True`` is a mistake, not 1."""
    top = None if hi is None else f"{hi_name}={hi}" if hi_name else f"{hi}"
    allowed = f"an int in [{lo}, {top}]" if hi is not None else f"an int >= {lo}"
    if not is_int(value):
        raise TypeError(f"{what}: {name} must be {allowed}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{what}: {name} must be {allowed}, got {value}")
    return value


def check_real(what: str, name: str, value, lo: float, hi: float, allowed: str) -> float:
    """``value`` as a float in ``[lo, hi]`` (NaN never is), else TypeError/ValueError naming the argument."""
    if not is_real(value):
        raise TypeError(f"{what}: {name} must be {allowed}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {name} must be {allowed}, got {value}")
    return value


def check_tree_size(what: str, formula: str, count: int) -> None:
    """Every verify forward (the tree, root included) and draft forward (the fed draft tokens) runs tree
    attention, whose kernel takes at most MAX_TREE_NODES nodes: refuse a bigger strategy up front.
    ``formula`` says which arguments make ``count``."""
    if count > MAX_TREE_NODES:
        raise ValueError(
            f"{what}: {formula} = {count} exceeds the tree-attention limit of {MAX_TREE_NODES} "
            f"nodes per forward; choose smaller values"
        )


def _integer_dtype(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def logits_width(model) -> int:
    """Logits per position: the head's out_features (a subset head still returns full-vocabulary logits)."""
    head = model.get_output_embeddings()
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


def check_model(name: str, model) -> torch.nn.Parameter:
    """A loaded torch model (weights on a real device); returns its first parameter."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a transformers causal LM (a torch.nn.Module), got {type(model).__name__}")
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError(f"{name} has no parameters: pass a causal LM with its weights")
    if p.device.type == "meta":
        raise ValueError(
            f"{name}'s weights are on the meta device (not loaded): load them before generating "
            f"(from_pretrained without init_empty_weights, or .to_empty() + load_state_dict)"
        )
    return p


def check_target(target) -> tuple[torch.nn.Parameter, int]:
    """The target's first parameter and its logits width."""
    p = check_model("target", target)
    if not callable(getattr(target, "get_output_embeddings", None)) or target.get_output_embeddings() is None:
        raise TypeError(
            f"target must be a transformers causal LM with an output head (get_output_embeddings), "
            f"got {type(target).__name__}"
        )
    return p, logits_width(target)


def check_supported(name: str, model) -> None:
    """The loop can run ``model`` exactly (:mod:`specdec.model_support`: attention through transformers'
    AttentionInterface, keyword arguments reaching it, one [B, Hkv, S, D] K/V shape); else a ValueError
    naming the argument, the class and what is unsupported. Runs one probe token that keeps nothing."""
    try:
        check_model_support(model)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{name}: {e}") from e


def check_prompt(input_ids, attention_mask, device: torch.device, vocab: int) -> None:
    """input_ids [B, T] integer token ids in [0, vocab) on the target's device; attention_mask [B, T] of
    0/1 (or bool), left-padded, at least one real token per row."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids [B, T], got {type(input_ids).__name__}")
    if input_ids.dim() != 2 or not _integer_dtype(input_ids):
        raise ValueError(
            f"input_ids must be an integer tensor of shape [B, T], got {input_ids.dtype} "
            f"of shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must hold at least one token per sequence, got shape {tuple(input_ids.shape)}")
    if input_ids.device != device:
        raise ValueError(f"input_ids ({input_ids.device}) must be on the target's device ({device})")
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise ValueError(f"input_ids hold token ids outside the vocabulary [0, {vocab})")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"attention_mask must be a torch.Tensor [B, T] of 0/1 or None, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool and not _integer_dtype(attention_mask):
        raise ValueError(f"attention_mask must hold 0/1 (an integer or bool tensor), got {attention_mask.dtype}")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (prompt token)")
    m = attention_mask.bool()
    if bool((m.sum(1) == 0).any()):
        raise ValueError("attention_mask: every sequence needs at least one prompt token (empty prompt)")
    if bool((m[:, 1:] < m[:, :-1]).any()):
        raise ValueError("attention_mask: prompts must be left-padded (each row zeros, then ones)")


def check_sampling(max_new_tokens, temperature, seed) -> float:
    """max_new_tokens an int >= 1, temperature a finite real >= 0, seed None or an int in [0, 2**64).
    Returns the temperature as a float."""
    if not is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r} ({type(max_new_tokens).__name__})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not is_real(temperature):
        raise TypeError(
            f"temperature must be a float >= 0 (0: greedy), got {temperature!r} ({type(temperature).__name__})"
        )
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite float >= 0 (0: greedy), got {temperature}")
    if seed is not None and not is_int(seed):
        raise TypeError(f"seed must be None or an int in [0, 2**64), got {seed!r} ({type(seed).__name__})")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValueError(f"seed must be None or an int in [0, 2**64), got {seed}")
    return float(temperature)


def check_token_ids(eos_token_id, pad_token_id, vocab: int) -> list[int]:
    """eos_token_id: None, one id or a list/tuple/set of ids in [0, vocab); pad_token_id: None or an int.
    Returns the EOS ids as a list (empty: no EOS)."""
    allowed = f"None, an int in [0, {vocab}) or a list of them"
    if eos_token_id is None:
        eos = []
    elif is_int(eos_token_id):
        eos = [eos_token_id]
    elif isinstance(eos_token_id, torch.Tensor) and eos_token_id.dim() <= 1 and _integer_dtype(eos_token_id):
        eos = eos_token_id.reshape(-1).tolist()
    elif isinstance(eos_token_id, (list, tuple, set, frozenset)) and all(is_int(e) for e in eos_token_id):
        eos = list(eos_token_id)
    else:
        raise TypeError(f"eos_token_id must be {allowed}, got {eos_token_id!r}")
    bad = [e for e in eos if not 0 <= e < vocab]
    if bad:
        raise ValueError(f"eos_token_id must be {allowed}: {bad} outside the vocabulary would never stop a sequence")
    if pad_token_id is not None and not is_int(pad_token_id):
        raise TypeError(f"pad_token_id must be None or an int, got {pad_token_id!r} ({type(pad_token_id).__name__})")
    return [int(e) for e in eos]


def check_streamer(streamer) -> None:
    """None, a callable taking a list of new token ids, or a transformers streamer (put/end)."""
    if streamer is None or callable(streamer):
        return
    if callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None)):
        return
    raise TypeError(
        f"streamer must be None, a callable (given each list of row 0's new token ids) or a "
        f"transformers streamer with put()/end(), got {type(streamer).__name__}"
    )


def check_strategy_fits(strategy, vocab: int) -> None:
    """What the kernels and the vocabulary cannot hold, refused before the first forward: a verify
    or draft forward wider than tree attention's node limit, more top-ranked candidates per node than
    the vocabulary has."""
    name = type(strategy).__name__
    for attr, lo in (("max_nodes", 1), ("max_fed", 0)):  # max_fed 0: no draft forwards (prompt lookup)
        n = getattr(strategy, attr)
        if not is_int(n) or not lo <= n <= MAX_TREE_NODES:
            raise ValueError(
                f"strategy {name}: {attr} = {n!r} must be an int in [{lo}, {MAX_TREE_NODES}] "
                f"(the tree-attention node limit)"
            )
    ranks = getattr(strategy, "top_ranks", 1)
    if ranks > vocab:
        raise ValueError(
            f"strategy {name}: takes the top {ranks} draft tokens of a node, but the vocabulary has only {vocab}"
        )
