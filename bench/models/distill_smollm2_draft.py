#!/usr/bin/env python
"""Distill a small draft model for SmolLM2-135M-Instruct, offline, on 2 CPU cores (~60 minutes).

The draft is a 30 -> 3 layer cut of the target itself: a Llama with the target's hidden size that
reuses the target's frozen token embeddings both as input embeddings and as output head, and whose
decoder layers start as copies of target layers (the first ones and the last one) and are then
distilled from the target. Only the draft's decoder layers and final norm are trained and committed.

The output head only scores a frequency-ranked subset of the vocabulary (default 8192 of 49152 tokens,
the idea of FR-Spec, Zhao et al. 2025): on a bandwidth-bound CPU the full 576 x 49152 head would cost
more than the three layers together. Tokens outside the subset get logit -inf-like minimum, so the
draft never proposes them; verification stays exact (greedy) / lossless (sampling, q = 0 there).

Phases (each under a wall-clock budget, resumable through the work directory):
  1. collect: chat prompts built from sources on every machine -- functions of the CPython standard
     library's training-split files (the held-out split of train_pair.py is never used) under a dozen
     code instructions, and paragraphs of the Python reference's prose (pydoc_data.topics, every 10th
     topic held out) under summary/explanation instructions, plus free questions. The target answers
     them in batches (2/3 greedy, 1/3 sampled at T=0.8): the draft learns on the target's own
     generations. Every position -- prompt and answer -- is labelled with the target's top-16 logits.
  2. label: plain code and prose windows, teacher-labelled in batched forwards (cheap extra tokens).
  3. train: soft cross-entropy against the teacher's top-16 distribution, AdamW with a time-based
     cosine schedule; held-out greedy agreement reported as it goes.

Usage:
  python bench/models/distill_smollm2_draft.py                       # all phases, ~60 min on 2 cores
  python bench/models/distill_smollm2_draft.py --phase train --train-minutes 5   # retrain from the data
Writes python_api/specdec/assets/smollm2_draft/{config.json,model.safetensors,training.json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

# train_pair.py sits beside this script: Python puts a script's own folder first on sys.path
from train_pair import functions, prose_paragraphs, read_text, split_files, stdlib_files

REPO = Path(__file__).resolve().parents[2]

DEFAULT_OUT = REPO / "python_api" / "specdec" / "assets" / "smollm2_draft"
TOPK = 16

CODE_TASKS = [
    "Add type hints to this Python function and return the complete function:",
    "Add a short docstring to this Python function and return the complete function:",
    "Explain what this Python function does:",
    "Rewrite this function with clearer variable names and return the complete function:",
    "Write a unit test with pytest for this function:",
    "Summarize this code in two sentences:",
    "Is there a bug or an edge case this function does not handle? Explain briefly.",
    "Add comments to this function and return the complete function:",
    "Describe the inputs and outputs of this function:",
    "Translate this Python function into JavaScript:",
]
PROSE_TASKS = [
    "Summarize the following text in two sentences:",
    "Explain the following passage in simple words:",
    "List the three most important points of this text:",
    "Write a short example in Python that illustrates this text:",
    "What question does this passage answer? Then answer it briefly.",
]
QUESTIONS = [
    "Explain {} in Python with a short example.",
    "What is the difference between {} and a function?",
    "When should I use {}?",
    "Write a short tutorial paragraph about {}.",
    "Give two common mistakes with {}.",
]
CONCEPTS = [
    "list comprehensions",
    "generators",
    "decorators",
    "context managers",
    "dataclasses",
    "type hints",
    "exceptions",
    "closures",
    "the GIL",
    "async and await",
    "dictionaries",
    "sets",
    "f-strings",
    "virtual environments",
    "unit tests",
    "recursion",
    "classes and inheritance",
    "iterators",
    "lambda",
    "the logging module",
    "regular expressions",
    "file handling",
    "sorting with a key",
    "slicing",
    "binary search",
    "hash tables",
    "linked lists",
    "big-O notation",
    "JSON parsing",
    "HTTP requests",
]


def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}")  # above a running progress bar, not through it


def time_bar(budget_s: float, desc: str) -> tqdm:
    """A progress bar over a wall-clock budget, in seconds (advanced with :func:`advance`)."""
    return tqdm(total=int(budget_s), desc=desc, unit="s")


def advance(bar: tqdm, t0: float, what: str) -> None:
    """Move ``bar`` to the seconds elapsed since ``t0`` and show ``what`` beside it."""
    bar.n = min(int(time.time() - t0), bar.total)
    bar.set_postfix_str(what, refresh=False)
    bar.refresh()


# ------------------------------------------------------------------------------------------ sources
def build_prompts(held_out: bool, rng: random.Random) -> list[str]:
    root, rel = stdlib_files()
    train, held = split_files(rel, 50)
    prompts = []
    for f in held if held_out else train:
        for fn in functions(read_text(root / f).splitlines(), 5, 30):
            prompts.append(f"{rng.choice(CODE_TASKS)}\n\n```python\n{fn}\n```")
    for para in prose_paragraphs(held_out):
        prompts.append(f"{rng.choice(PROSE_TASKS)}\n\n{para}")
    if not held_out:
        prompts += [q.format(c) for q in QUESTIONS for c in CONCEPTS]
    rng.shuffle(prompts)
    return prompts


def raw_windows(tokenizer, n_tokens: int, rng: random.Random) -> list[list[int]]:
    """Plain code and prose (training split) cut into windows of n_tokens tokens, shuffled."""
    root, rel = stdlib_files()
    train, _ = split_files(rel, 50)
    texts = [read_text(root / f) for f in train] + ["\n\n".join(prose_paragraphs(False))]
    windows = []
    for text in texts:
        ids = tokenizer(text).input_ids
        windows += [ids[i : i + n_tokens] for i in range(0, len(ids) - n_tokens + 1, n_tokens)]
    rng.shuffle(windows)
    return windows


# ----------------------------------------------------------------------------------------- teacher
@torch.no_grad()
def topk_labels(model, hidden: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher top-k logits (fp16) and ids (int32) for hidden states [..., H], in chunks (V is 49k)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    vals, ids = [], []
    for i in range(0, flat.shape[0], chunk):
        v, j = model.lm_head(flat[i : i + chunk]).float().topk(TOPK, dim=-1)
        vals.append(v.half())
        ids.append(j.int())
    shape = tuple(hidden.shape[:-1]) + (TOPK,)
    return torch.cat(vals).reshape(shape), torch.cat(ids).reshape(shape)


@torch.no_grad()
def generate_labelled(model, tokenizer, prompts: list[str], max_new: int, temperature: float, gen: torch.Generator):
    """Batched generation by the target; returns one record per prompt:
    tokens [T] (prompt + answer, EOS included when reached), n_prompt, top-k labels for positions 0..T-2."""
    from transformers import DynamicCache

    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p in prompts],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
        padding=True,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B, P = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    h = model.model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
    ).last_hidden_state
    vals, idx = topk_labels(model, h)  # [B, P, K]
    step_vals, step_ids, toks = [vals], [idx], [ids]
    logits = model.lm_head(h[:, -1]).float()
    done = torch.zeros(B, dtype=torch.bool)
    lengths = torch.full((B,), max_new)
    eos = tokenizer.eos_token_id
    for t in range(max_new):
        if temperature > 0:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_token_id), nxt)
        toks.append(nxt[:, None])
        newly = (~done) & (nxt == eos)
        lengths[newly] = t + 1
        done |= newly
        if bool(done.all()) or t == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)  # finished rows are cut later
        pos = pos[:, -1:] + 1
        h = model.model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
        ).last_hidden_state
        v, j = topk_labels(model, h)
        step_vals.append(v)
        step_ids.append(j)
        logits = model.lm_head(h[:, -1]).float()
    toks = torch.cat(toks, dim=1)
    vals, idx = torch.cat(step_vals, dim=1), torch.cat(step_ids, dim=1)
    records = []
    for b in range(B):
        start = int((enc["attention_mask"][b] == 0).sum())  # left padding
        end = P + int(lengths[b])
        n = end - start
        records.append(
            dict(
                tokens=toks[b, start:end].int().clone(),
                n_prompt=P - start,
                vals=vals[b, start : start + n - 1].clone(),
                ids=idx[b, start : start + n - 1].clone(),
            )
        )
    return records


@torch.no_grad()
def label_windows(model, windows: list[list[int]]):
    x = torch.tensor(windows)
    h = model.model(input_ids=x).last_hidden_state[:, :-1]
    vals, idx = topk_labels(model, h)
    return [dict(tokens=x[b].int(), n_prompt=x.shape[1], vals=vals[b], ids=idx[b]) for b in range(x.shape[0])]


def shard_paths(work: Path, kind: str) -> list[Path]:
    return sorted(work.glob(f"{kind}_*.pt"))


def collect(target, tokenizer, args) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    if not (work / "heldout.pt").exists():  # fixed evaluation set: greedy answers to held-out prompts
        log("held-out set: greedy answers to prompts from held-out files/topics")
        prompts = build_prompts(True, random.Random(args.seed + 1))[: args.heldout_prompts]
        recs = []
        for i in range(0, len(prompts), args.batch):
            recs += generate_labelled(target, tokenizer, prompts[i : i + args.batch], args.max_new, 0.0, gen)
        torch.save(recs, work / "heldout.pt")
    prompts = build_prompts(False, rng)
    done_shards = shard_paths(work, "gen")
    start = len(done_shards) * args.batch
    log(f"{len(prompts)} training prompts; {len(done_shards)} generation shards already there")
    # Sort each chunk of 8 batches by length: less left padding, still a mixed order over time.
    t0, n_tok, budget = time.time(), 0, args.gen_minutes * 60
    i, shard = start, len(done_shards)
    bar = time_bar(budget, "generation (s)")
    while time.time() - t0 < budget and i < len(prompts):
        batch = prompts[i : i + args.batch]
        temp = 0.8 if shard % 3 == 2 else 0.0
        recs = generate_labelled(target, tokenizer, batch, args.max_new, temp, gen)
        torch.save(recs, work / f"gen_{shard:05d}.pt")
        n_tok += sum(len(r["tokens"]) for r in recs)
        i, shard = i + args.batch, shard + 1
        advance(bar, t0, f"{shard} shards, {n_tok} tokens, {n_tok / (time.time() - t0):.0f} tok/s")
    bar.close()
    log(f"generation done: {n_tok} new labelled tokens")
    windows = raw_windows(tokenizer, args.window, rng)
    done_raw = shard_paths(work, "raw")
    t0, n_tok, budget, shard = time.time(), 0, args.label_minutes * 60, len(done_raw)
    i = shard * args.label_batch
    bar = time_bar(budget, "labelling (s)")
    while time.time() - t0 < budget and i < len(windows):
        recs = label_windows(target, windows[i : i + args.label_batch])
        torch.save(recs, work / f"raw_{shard:05d}.pt")
        n_tok += sum(len(r["tokens"]) for r in recs)
        i, shard = i + args.label_batch, shard + 1
        advance(bar, t0, f"{n_tok} tokens, {n_tok / (time.time() - t0):.0f} tok/s")
    bar.close()
    log(f"labelling done: {n_tok} tokens")


# ------------------------------------------------------------------------------------------- draft
def choose_subset(records: list[dict], vocab: int, size: int, always: list[int]) -> torch.Tensor:
    """The `size` token ids the teacher ranks first most often (plus specials), sorted."""
    counts = torch.zeros(vocab, dtype=torch.float64)
    for r in records:
        counts.index_add_(0, r["ids"][:, 0].long(), torch.ones(len(r["ids"]), dtype=torch.float64))
        counts.index_add_(0, r["tokens"].long(), torch.full((len(r["tokens"]),), 0.1, dtype=torch.float64))
    counts[torch.tensor(always)] = float("inf")
    return counts.topk(size).indices.sort().values


def build_draft(target, layers: list[int], subset: torch.Tensor):
    from specdec.models import draft_shell

    cfg = copy.deepcopy(target.config)
    cfg.num_hidden_layers = len(layers)
    cfg._name_or_path = "specdec/smollm2-135m-instruct-draft"
    cfg.tie_word_embeddings = False
    cfg.specdec_vocab_subset = int(len(subset))
    cfg.specdec_init_layers = list(layers)
    draft = draft_shell(target, cfg, subset)  # shared, frozen embeddings; subset head
    draft.model.norm = copy.deepcopy(target.model.norm)
    draft.model.layers = torch.nn.ModuleList(copy.deepcopy(target.model.layers[i]) for i in layers)
    for i, layer in enumerate(draft.model.layers):
        layer.self_attn.layer_idx = i
    for name, p in draft.named_parameters():  # the target's parameters come in frozen
        p.requires_grad_(not name.startswith("model.embed_tokens"))
    return draft


def subset_targets(rec: dict, remap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher top-k as (subset index, probability) pairs; ids outside the subset get probability 0."""
    ids = remap[rec["ids"].long()]
    probs = F.softmax(rec["vals"].float(), dim=-1) * (ids >= 0)
    return ids.clamp(min=0), probs


def make_batches(records: list[dict], max_len: int, tokens_per_batch: int, rng: random.Random):
    """Crop to max_len, bucket by length (less padding), shuffle the batches."""
    recs = sorted(records, key=lambda r: min(len(r["tokens"]), max_len))
    batches, cur = [], []
    for r in recs:
        cur.append(r)
        if len(cur) * min(len(cur[-1]["tokens"]), max_len) >= tokens_per_batch:
            batches.append(cur)
            cur = []
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch: list[dict], max_len: int, remap: torch.Tensor):
    T = min(max(len(r["tokens"]) for r in batch), max_len)
    B = len(batch)
    x = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    tid = torch.zeros(B, T - 1, TOPK, dtype=torch.long)
    tp = torch.zeros(B, T - 1, TOPK)
    for b, r in enumerate(batch):
        n = min(len(r["tokens"]), T)
        x[b, :n] = r["tokens"][:n].long()
        mask[b, :n] = 1
        ids, probs = subset_targets(dict(ids=r["ids"][: n - 1], vals=r["vals"][: n - 1]), remap)
        tid[b, : n - 1], tp[b, : n - 1] = ids, probs
    return x, mask, tid, tp


def draft_subset_logits(draft, x, mask):
    h = draft.model(input_ids=x, attention_mask=mask).last_hidden_state[:, :-1]
    return draft.lm_head.subset_logits(h)


@torch.no_grad()
def agreement(draft, records: list[dict], remap: torch.Tensor, subset: torch.Tensor, answer_only: bool = True):
    """Fraction of (answer) positions where the draft's argmax equals the target's (full-vocab) argmax."""
    draft.eval()
    hit = tot = 0
    for r in records:
        x = r["tokens"].long()[None]
        logits = draft_subset_logits(draft, x, torch.ones_like(x))[0]
        pred = subset[logits.argmax(-1)]
        lo = r["n_prompt"] - 1 if answer_only else 0
        hit += int((pred[lo:] == r["ids"][lo:, 0].long()).sum())
        tot += len(pred) - lo
    draft.train()
    return hit / max(tot, 1)


def coverage(records: list[dict], remap: torch.Tensor) -> float:
    top1 = torch.cat([r["ids"][r["n_prompt"] - 1 :, 0].long() for r in records])
    return float((remap[top1] >= 0).float().mean())


def schedule(peak: float, step: int, warmup: int, frac: float, floor: float) -> float:
    """Learning rate: linear warm-up over ``warmup`` steps, then a cosine over the wall-clock budget
    (``frac`` of it spent) from ``peak`` down to ``floor * peak``."""
    return peak * min(1.0, (step + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def optimizer_step(opt, params, loss, lr: float) -> None:
    """One AdamW step at ``lr`` with gradients clipped to norm 1."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def train(target, tokenizer, args) -> dict:
    work = args.work
    held = torch.load(work / "heldout.pt")
    gen_recs = [r for p in shard_paths(work, "gen") for r in torch.load(p)]
    raw_recs = [r for p in shard_paths(work, "raw") for r in torch.load(p)]
    records = gen_recs + raw_recs
    n_tokens = sum(len(r["tokens"]) for r in records)
    log(f"training data: {len(gen_recs)} generated answers + {len(raw_recs)} raw windows = {n_tokens} labelled tokens")
    specials = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id} - {None})
    subset = choose_subset(records, target.config.vocab_size, args.subset, specials)
    remap = torch.full((target.config.vocab_size,), -1, dtype=torch.long)
    remap[subset] = torch.arange(len(subset))
    cov = coverage(held, remap)
    log(f"vocabulary subset {len(subset)}: covers {cov:.3f} of the target's held-out greedy answer tokens")
    draft = build_draft(target, args.layers, subset)
    params = [p for n, p in draft.named_parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    log(f"draft: layers {args.layers} of the target, {n_params / 1e6:.2f}M trained parameters")
    agree0 = agreement(draft, held, remap, subset)
    log(f"held-out greedy agreement before training: {agree0:.3f}")
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(args.seed)
    t0, budget, step, seen, epoch = time.time(), args.train_minutes * 60, 0, 0, 0
    history, next_eval = [], args.eval_every
    ema = None
    bar = time_bar(budget, "training (s)")
    while time.time() - t0 < budget:
        epoch += 1
        for batch in make_batches(records, args.max_len, args.tokens_per_batch, rng):
            frac = (time.time() - t0) / budget
            if frac >= 1:
                break
            lr = schedule(args.lr, step, args.warmup, frac, floor=0.1)
            x, mask, tid, tp = collate(batch, args.max_len, remap)
            logp = F.log_softmax(draft_subset_logits(draft, x, mask).float(), dim=-1)
            w = mask[:, 1:].float()
            loss = -((logp.gather(-1, tid) * tp).sum(-1) * w).sum() / w.sum()
            optimizer_step(opt, params, loss, lr)
            step += 1
            seen += int(w.sum())
            ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
            elapsed = time.time() - t0
            advance(bar, t0, f"epoch {epoch} step {step} loss {ema:.3f} lr {lr:.1e} {seen / elapsed:.0f} tok/s")
            if elapsed >= next_eval:
                a = agreement(draft, held, remap, subset)
                history.append(
                    dict(minutes=round(elapsed / 60, 1), tokens=seen, loss=round(ema, 4), agreement=round(a, 4))
                )
                log(f"held-out agreement {a:.3f} after {seen} tokens")
                next_eval += args.eval_every
    bar.close()
    final = agreement(draft, held, remap, subset)
    log(f"held-out greedy agreement: {final:.3f} (before training {agree0:.3f}, subset coverage {cov:.3f})")
    save(draft, args.out)
    info = dict(
        layers=args.layers,
        subset=len(subset),
        subset_coverage=round(cov, 4),
        trained_parameters=n_params,
        labelled_tokens=n_tokens,
        generated_answers=len(gen_recs),
        raw_windows=len(raw_recs),
        tokens_seen=seen,
        steps=step,
        epochs=epoch,
        train_minutes=args.train_minutes,
        agreement_before=round(agree0, 4),
        agreement=round(final, 4),
        heldout_answers=len(held),
        history=history,
        command=" ".join(sys.argv),
    )
    (args.out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {args.out}")
    return info


def save(draft, out: Path) -> None:
    """Config + trained tensors (decoder layers, final norm, subset ids) in bf16; no embeddings."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(torch.bfloat16).contiguous()
        for k, v in draft.model.state_dict().items()
        if not k.startswith("embed_tokens") and "rotary" not in k
    }
    state = {f"model.{k}": v for k, v in state.items()}
    state["lm_head.token_ids"] = draft.lm_head.token_ids.to(torch.int32).contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    draft.config.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["all", "collect", "train"], default="all")
    ap.add_argument("--gen-minutes", type=float, default=22)
    ap.add_argument("--label-minutes", type=float, default=6)
    ap.add_argument("--train-minutes", type=float, default=30)
    ap.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[0, 1, 29],
        help="target layers the draft starts from "
        "(3.5-min trials: [0,1,2] 0.292, [0,1,29] 0.306, [0,1,2,29] 0.322 agreement)",
    )
    ap.add_argument("--subset", type=int, default=8192, help="vocabulary entries the draft's head scores")
    ap.add_argument("--batch", type=int, default=48, help="prompts per generation batch")
    ap.add_argument("--label-batch", type=int, default=16)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--max-new", type=int, default=160)
    ap.add_argument("--heldout-prompts", type=int, default=48)
    ap.add_argument("--max-len", type=int, default=448)
    ap.add_argument("--tokens-per-batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--eval-every", type=float, default=300, help="seconds between held-out evaluations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "specdec" / "distill_smollm2")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from specdec.models import load_smollm2

    target, tokenizer = load_smollm2()
    for p in target.parameters():
        p.requires_grad_(False)
    if args.phase in ("all", "collect"):
        collect(target, tokenizer, args)
    if args.phase in ("all", "train"):
        train(target, tokenizer, args)


if __name__ == "__main__":
    main()
