"""End-to-end benchmark: target-only decoding, transformers' assisted generation and every specdec
strategy, on the same prompts, in one run (``python -m specdec bench``).

Reported per configuration: tokens/s (new tokens over wall time, all prompts, median of repeats),
speedup over target-only measured in the same run, tau (tokens emitted per target forward after the
prefill, bonus included — as Spec-Bench counts it; for transformers' assisted generation counted with a
forward hook on the target), and whether greedy output equals target-only output token for token.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import specdec
from specdec.strategies import from_name

PROMPTS = Path(__file__).parent / "assets" / "prompts"


def load_prompts(name: str = "heldout_code") -> list[str]:
    path = PROMPTS / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"prompt set {name!r} not found at {path}")
    return json.loads(path.read_text())["prompts"]


@dataclasses.dataclass
class Config:
    name: str
    kind: str  # "target", "hf-assisted", "specdec"
    run: Callable[[torch.Tensor], tuple[torch.Tensor, int]]  # ids [1, T] -> (sequences, target forwards)


class _CallCounter:
    """Counts forward calls of a module (transformers' assisted generation hides its own count)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


HEAD = "head:"  # a configuration name with this prefix drafts with the EAGLE head instead of the draft model


def make_configs(
    target, draft, names: list[str], max_new_tokens: int, eos_token_id: int | None = None, head=None
) -> list[Config]:
    """Runners for each configuration name. Without ``eos_token_id`` every run makes exactly
    max_new_tokens (EOS suppressed in transformers, never special in specdec); with it, all stop
    after EOS, so outputs stay comparable token for token. Names starting with ``head:`` draft with
    ``head`` (an EAGLE head), the others with ``draft``."""
    counter = _CallCounter(target)
    stop = dict(min_new_tokens=max_new_tokens) if eos_token_id is None else dict(eos_token_id=eos_token_id)

    def hf_generate(**kw):
        def run(ids):
            counter.n = 0
            out = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, **stop, **kw)
            return out, counter.n

        return run

    def ours(strategy, drafter):
        def run(ids):
            out = specdec.generate(
                target, drafter, ids, max_new_tokens=max_new_tokens, strategy=strategy, eos_token_id=eos_token_id
            )
            return out.sequences, out.stats["target_calls"]

        return run

    configs = [Config("target-only (HF generate, greedy)", "target", hf_generate())]
    hf = {
        "hf-assisted k=4 constant": dict(
            assistant_model=draft,
            num_assistant_tokens=4,
            num_assistant_tokens_schedule="constant",
            assistant_confidence_threshold=0.0,
        ),
        "hf-assisted heuristic": dict(
            assistant_model=draft,
            num_assistant_tokens=5,
            num_assistant_tokens_schedule="heuristic_transient",
            assistant_confidence_threshold=0.0,
        ),
        "hf-assisted confidence 0.4": dict(
            assistant_model=draft,
            num_assistant_tokens=20,
            num_assistant_tokens_schedule="constant",
            assistant_confidence_threshold=0.4,
        ),
        "hf-prompt-lookup k=8": dict(prompt_lookup_num_tokens=8),
    }
    for name in names:
        if name in hf:
            configs.append(Config(name, "hf-assisted", hf_generate(**hf[name])))
        elif name.startswith(HEAD):
            if head is None:
                raise ValueError(f"configuration {name!r} needs an EAGLE head")
            configs.append(Config(f"specdec {name}", "specdec", ours(from_name(name[len(HEAD) :]), head)))
        else:
            configs.append(Config(f"specdec {name}", "specdec", ours(from_name(name), draft)))
    return configs


def first_divergence(a: torch.Tensor, b: torch.Tensor, start: int = 0) -> int | None:
    """The first position >= ``start`` where two 1-D token sequences differ (a length difference counts
    at the shorter one's end); None when they are identical."""
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    diff = diff[diff >= start]
    if diff.numel():
        return int(diff[0])
    return None if a.numel() == b.numel() else n


def encode(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    """[1, T] token ids; instruct models get their chat template around the prompt."""
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    return tokenizer(prompt, return_tensors="pt").input_ids


def run(
    target,
    draft,
    tokenizer,
    prompts: list[str],
    names: list[str],
    *,
    max_new_tokens: int = 128,
    repeats: int = 3,
    log=print,
    chat: bool = False,
    eos_token_id: int | None = None,
    head=None,
) -> list[dict]:
    """Every configuration on every prompt, ``repeats`` times; returns one result row per configuration.

    The loops are interleaved (repeat -> prompt -> configuration) so that a slow phase of a shared
    machine lands on every configuration alike instead of on whichever ran then; each configuration
    is warmed up once first.
    """
    configs = make_configs(target, draft, names, max_new_tokens, eos_token_id, head)
    encoded = [encode(tokenizer, p, chat) for p in prompts]
    for cfg in configs:
        cfg.run(encoded[0])
    elapsed = {c.name: [0.0] * repeats for c in configs}
    toks = {c.name: [0] * repeats for c in configs}
    calls = {c.name: 0 for c in configs}
    exact = {c.name: True for c in configs}
    reference = {}
    bar = tqdm(total=len(configs) * repeats * len(encoded), desc="runs", unit="run")  # on stderr
    for rep in range(repeats):
        for i, ids in enumerate(encoded):
            for cfg in configs:
                t0 = time.perf_counter()
                seq, n_calls = cfg.run(ids)
                elapsed[cfg.name][rep] += time.perf_counter() - t0
                new = seq[0, ids.shape[1] :]
                toks[cfg.name][rep] += new.numel()
                if rep == 0:
                    calls[cfg.name] += n_calls
                    if cfg.kind == "target":
                        reference[i] = new
                    else:
                        exact[cfg.name] &= torch.equal(new, reference[i])
                bar.set_postfix_str(cfg.name[:40], refresh=False)
                bar.update()
    bar.close()
    rows = []
    for cfg in configs:
        rates = [t / e for t, e in zip(toks[cfg.name], elapsed[cfg.name])]
        new_tokens = toks[cfg.name][0]
        rows.append(
            {
                "config": cfg.name,
                "kind": cfg.kind,
                "tokens_per_s": statistics.median(rates),
                "tokens_per_s_all": rates,
                # tau counts tokens per target forward after the prefill (one forward per prompt)
                "tau": (new_tokens - len(encoded)) / max(calls[cfg.name] - len(encoded), 1),
                "target_calls": calls[cfg.name],
                "new_tokens": new_tokens,
                "exact": exact[cfg.name],
            }
        )
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base
    return rows


def add_predictions(
    rows: list[dict],
    target,
    draft,
    tokenizer,
    calib_prompts: list[str],
    names: list[str],
    chat: bool = False,
    head=None,
) -> float:
    """Cost-model predictions (specdec.tune) for the specdec rows; returns the Spearman rank correlation
    between predicted and measured tokens/s over those rows. Calibration uses other prompts than the
    measured ones; ``head:`` rows are predicted with the EAGLE head as the drafter."""
    from specdec import tune

    ids = [encode(tokenizer, p, chat) for p in calib_prompts]
    measured = {r["config"] for r in rows}
    preds = {}
    for drafter, prefix in ((draft, ""), (head, HEAD)):
        cands = {
            n: from_name(n[len(prefix) :])
            for n in names
            if f"specdec {n}" in measured and n.startswith(HEAD) == bool(prefix)
        }
        if cands and (drafter is not None or not any(s.needs_drafter for s in cands.values())):
            preds.update({p.name: p for p in tune.predict(target, drafter, ids, cands)})
    scored = []
    for r in rows:
        name = r["config"].removeprefix("specdec ")
        if name in preds:
            r["predicted_tokens_per_s"] = preds[name].tokens_per_s
            r["predicted_tau"] = preds[name].tau
            scored.append((preds[name].tokens_per_s, r["tokens_per_s"]))
    return _spearman([a for a, _ in scored], [b for _, b in scored])


def _spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of paired lists (ties get their average rank), as a float in [-1, 1].

    NaN where it is undefined: fewer than two pairs, or either list constant (no ranking to compare)."""
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError(f"a and b must pair up, got lengths {len(a)} and {len(b)}")
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:  # checked here: scipy would warn, then give NaN
        return math.nan
    return float(spearmanr(a, b).statistic)


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| configuration | tokens/s | speedup | tau | greedy output = target-only | "
        "cost model: predicted tokens/s (tau) |",
        "|---|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        pred = f"{r['predicted_tokens_per_s']:.1f} ({r['predicted_tau']:.2f})" if "predicted_tokens_per_s" in r else "-"
        lines.append(
            f"| {r['config']} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | {r['tau']:.2f} | "
            f"{'yes' if r['exact'] else 'NO'} | {pred} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["config"].replace("specdec ", "") for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 1.5), sharey=True)
    a1.barh(names, [r["speedup"] for r in rows], color=["gray" if r["kind"] != "specdec" else "tab:blue" for r in rows])
    a1.axvline(1.0, color="black", lw=0.8)
    a1.set_xlabel("speedup over target-only (same run)")
    a2.barh(names, [r["tau"] for r in rows], color="tab:orange")
    a2.set_xlabel("tau: tokens per target forward")
    a1.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
