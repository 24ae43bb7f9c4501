"""Sampling controls of :func:`specdec.generate`: repetition penalty, temperature, top-k, top-p, min-p.

They define the *target distribution* the output follows: at each position, the target's logits, with
the repetition penalty of that position's own prefix (prompt + tokens before it), then temperature,
top-k, top-p and min-p, in transformers' order and with transformers' definitions (``top_k=0`` and
``top_p=1`` mean off; at least one token is always kept). Verification is lossless with respect to
that warped distribution: the loop hands the verifier the warped target probabilities of every tree
node, each node penalised by its own prefix (the committed context and its ancestors in the tree).
Drafts keep their own distribution (temperature only): speculative sampling is exact for any draft
distribution, as long as the verifier sees the one the drafts were drawn from.

Greedy (temperature 0) is the argmax of the penalised logits; top-k/top-p/min-p never remove it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from specdec.validation import is_int, is_real

# GenerationConfig fields generate reads; the others must keep transformers' default value.
_READ = {
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
    "eos_token_id",
    "pad_token_id",
}
# Fields that carry no sampling meaning here (bookkeeping, ids of special tokens, output formats).
_IGNORED = {
    "bos_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "use_cache",
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
    "cache_implementation",
    "_from_model_config",
    "_commit_hash",
    "_original_object_hash",
    "generation_kwargs",
    "num_return_sequences",
    "max_length",
    "cache_config",
    "compile_config",
    "min_tokens_to_keep",
}


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Validated sampling settings. ``plain``: none of the controls is active (temperature only)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self):
        _check("top_k", self.top_k, is_int, lambda k: k >= 0, "None or an int >= 0 (0: off)")
        _check("top_p", self.top_p, is_real, lambda p: 0 < p <= 1, "None or a float in (0, 1] (1: off)")
        _check("min_p", self.min_p, is_real, lambda p: 0 <= p <= 1, "None or a float in [0, 1] (0: off)")
        _check(
            "repetition_penalty",
            self.repetition_penalty,
            is_real,
            lambda r: 0 < r < math.inf,
            "None or a finite float > 0 (1: off)",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty not in (None, 1.0)

    @property
    def plain(self) -> bool:
        """True when the verifier can take the raw logits (softmax(logits / temperature) fused in)."""
        warps = (self.top_k or 0) > 0 or (self.top_p or 1.0) < 1 or (self.min_p or 0.0) > 0
        return not self.penalised and (self.greedy or not warps)

    def penalise(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """transformers' repetition penalty: a token already in the prefix (``seen`` bool, logits'
        shape) has its logit divided by the penalty if positive, multiplied if negative."""
        if not self.penalised:
            return logits
        r = self.repetition_penalty
        return torch.where(seen, torch.where(logits < 0, logits * r, logits / r), logits)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution (fp32) from (penalised) logits [..., V]: temperature, top-k, top-p,
        min-p, softmax."""
        x = logits.float() / self.temperature
        if self.top_k:
            kth = x.topk(min(self.top_k, x.shape[-1]), dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, -math.inf)
        if self.top_p is not None and self.top_p < 1:
            x = _top_p(x, self.top_p)
        if self.min_p:
            p = torch.softmax(x, -1)
            x = x.masked_fill(p < self.min_p * p.amax(-1, keepdim=True), -math.inf)
        return torch.softmax(x, -1)


def _top_p(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (transformers' rule:
    drop the tail whose cumulative mass, in ascending order, is <= 1 - top_p; the top token always stays)."""
    sorted_x, order = x.sort(-1)
    drop = sorted_x.softmax(-1).cumsum(-1) <= 1 - top_p
    drop[..., -1] = False
    return x.masked_fill(drop.scatter(-1, order, drop), -math.inf)


def seen_tokens(history: list[list[int]], vocab: int, device) -> torch.Tensor:
    """[B, V] bool: which tokens occur in each row's committed context."""
    seen = torch.zeros(len(history), vocab, dtype=torch.bool, device=device)
    for b, h in enumerate(history):
        seen[b, torch.tensor(h, dtype=torch.int64, device=device)] = True
    return seen


def seen_per_node(context: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, N, V] bool: the tokens of each tree node's own prefix: the context [B, V] plus the node and
    its ancestors (``mask`` [N, N] or [B, N, N], True where j is i or an ancestor of i)."""
    B, N = tokens.shape
    onehot = torch.zeros(B, N, context.shape[-1], device=tokens.device)
    onehot.scatter_(2, tokens[..., None], 1.0)
    mask = mask.expand(B, N, N).float()
    return context[:, None, :] | (torch.bmm(mask, onehot) > 0)


def resolve(temperature, top_k, top_p, min_p, repetition_penalty, generation_config):
    """A :class:`Sampling` and the generation config's max_new_tokens / eos / pad (None where it has
    none) from generate's arguments; explicit arguments win over the config, as in transformers.
    A config field generate cannot honour, set to a non-default value, is refused by name."""
    explicit = dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty
    )
    extra = {}
    if generation_config is not None:
        from_config, extra = _read_config(generation_config)
        explicit = {k: (v if v is not None else from_config.get(k)) for k, v in explicit.items()}
    if explicit["temperature"] is None:
        explicit["temperature"] = 0.0
    return Sampling(**explicit), extra


def _read_config(config) -> tuple[dict, dict]:
    from transformers import GenerationConfig

    if not isinstance(config, GenerationConfig):
        raise TypeError(f"generation_config must be a transformers.GenerationConfig, got {type(config).__name__}")
    default = GenerationConfig().to_dict()
    for name, value in config.to_dict().items():
        if name in _READ or name in _IGNORED or value == default.get(name, value):
            continue
        raise ValueError(
            f"generation_config.{name}={value!r} is not supported by specdec.generate (it reads "
            f"{sorted(_READ)}); unset it rather than have it ignored"
        )
    if config.num_beams not in (None, 1):
        raise ValueError(
            f"generation_config.num_beams={config.num_beams} is not supported: speculative decoding "
            f"here samples or decodes greedily"
        )
    sampled = bool(config.do_sample)
    values = {"temperature": (config.temperature if config.temperature is not None else 1.0) if sampled else 0.0}
    if sampled:
        values.update(top_k=config.top_k, top_p=config.top_p, min_p=config.min_p)
    values["repetition_penalty"] = config.repetition_penalty
    extra = {k: getattr(config, k) for k in ("max_new_tokens", "eos_token_id", "pad_token_id")}
    return values, extra


def _check(name: str, value, kind, in_range, allowed: str) -> None:
    """None passes; the wrong kind is a TypeError, a value out of range (NaN included) a ValueError."""
    if value is None:
        return
    if not kind(value):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if not in_range(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
