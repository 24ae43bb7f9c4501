#!/usr/bin/env python
"""Train an EAGLE-3 draft head (specdec.eagle.EagleHead) for SmolLM2-135M or the bundled tiny pair, on 2 CPU cores.

The head is in EAGLE-3's exact layout (what vLLM and SGLang serve as LlamaForCausalLMEagle3): the token
embedding (the target's, shared) and the target's hidden states of the previous position after a low, a
middle and a high layer (aux ids as vLLM taps them), fused by ``fc``, enter one decoder layer
(``midlayer``, initialised from the target's last layer), then the final norm and the head's ``lm_head``
over its draft vocabulary (rows of the target's LM head, kept frozen: SmolLM2 the 8192-token subset of
the distilled draft, tiny the whole vocabulary).

Phases (resumable through the work directory; each under a wall-clock budget):
  1. collect: the target answers training-split chat prompts in batches (3/4 greedy, 1/4 sampled at
     T=0.8; the prompt recipe of distill_smollm2_draft.py) and its hidden states at the feature layers
     are kept for every position (prompt and answer) from the same forwards -- no extra target pass.
     Then plain code and prose windows (training split) go through the target for more features.
     For the tiny pair: the target continues training-split code snippets, then plain code windows.
  2. train: training-time test (EAGLE-3 / HASS): each batch is unrolled for ``--ttt`` draft steps;
     step s feeds the head its own hidden state of step s-1 and attends to the true-feature entries up to
     the anchor plus its own earlier steps, exactly the cache a chain draft sees at depth s+1. Soft
     cross-entropy against the target's distribution (over the head's vocabulary), step weights 0.8^s.
     Resumable: the head, the optimiser and the clock are saved to the work directory every
     ``--checkpoint-every`` seconds, and a new run continues from there (``--fresh`` starts over).
  3. evaluate: held-out greedy answers, acceptance per draft depth (the head's argmax at depth j equals
     the target's greedy token, given depths 1..j-1 were right), expected accepted length for k = 4.

Usage:
  python bench/models/train_eagle_head.py --target smollm2            # ~75 min on 2 cores
  python bench/models/train_eagle_head.py --target tiny               # a few minutes
  python bench/models/train_eagle_head.py --target smollm2 --phase train --train-minutes 5 --ttt 5
Writes python_api/specdec/assets/{smollm2_eagle,default_pair_eagle}/{config.json,model.safetensors,training.json}:
an EAGLE-3 checkpoint in vLLM's format (specdec.eagle.export; serve it with vLLM's "eagle3" method).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# distill_smollm2_draft.py and train_pair.py sit beside this script: Python puts a script's own folder first
# on sys.path, so they import by name (training-data and optimiser helpers of these scripts, not library code)
from distill_smollm2_draft import build_prompts, make_batches, optimizer_step, raw_windows, schedule
from tqdm import tqdm
from train_pair import functions, read_text, split_files, stdlib_files

from specdec.eagle import FeatureTap, eagle3_layers, new_head, unrolled_forward

REPO = Path(__file__).resolve().parents[2]

ASSETS = REPO / "python_api" / "specdec" / "assets"
OUT_NAMES = {"smollm2": "smollm2_eagle", "tiny": "default_pair_eagle"}


def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}")


def load_target(name: str):
    import specdec

    if name == "smollm2":
        target, tok = specdec.load_smollm2()
    else:
        target, _, tok = specdec.load_default_pair()
    for p in target.parameters():
        p.requires_grad_(False)
    return target, tok


def tap_layers(target) -> tuple[int, ...]:
    """Every hidden_states index the script reads: the EAGLE-3 trio (the head's input) and the final
    (normed) state (the target's distribution, the training signal)."""
    L = target.config.num_hidden_layers
    return tuple(sorted(set(eagle3_layers(L)) | {L}))


# ------------------------------------------------------------------------------------------ collect
@torch.no_grad()
def generate_with_features(
    target, tap, ids, mask, max_new: int, temperature: float, eos: int | None, pad: int, gen: torch.Generator
) -> list[dict]:
    """Batched generation (left-padded prompts); the tap's features of every forwarded position are kept.
    Records: tokens [n] (prompt + answer), features [n - 1, F] fp16 (the last token never ran), n_prompt."""
    from transformers import DynamicCache

    B, P = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    h = target.model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
    ).last_hidden_state
    feats, toks = [tap.features().half()], [ids]
    logits = target.lm_head(h[:, -1]).float()
    done = torch.zeros(B, dtype=torch.bool)
    lengths = torch.full((B,), max_new)
    for t in range(max_new):
        if temperature > 0:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        toks.append(nxt[:, None])
        if eos is not None:
            newly = (~done) & (nxt == eos)
            lengths[newly] = t + 1
            done |= newly
        if bool(done.all()) or t == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
        pos = pos[:, -1:] + 1
        h = target.model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
        ).last_hidden_state
        feats.append(tap.features().half())
        logits = target.lm_head(h[:, -1]).float()
    toks, feats = torch.cat(toks, 1), torch.cat(feats, 1)
    P0 = ids.shape[1]
    out = []
    for b in range(B):
        start = int((mask[b, :P0] == 0).sum())  # left padding
        end = P0 + int(lengths[b])
        out.append(
            dict(
                tokens=toks[b, start:end].int().clone(), features=feats[b, start : end - 1].clone(), n_prompt=P0 - start
            )
        )
    return out


@torch.no_grad()
def window_features(target, tap, windows: list[list[int]]) -> list[dict]:
    x = torch.tensor(windows)
    target.model(input_ids=x)
    f = tap.features().half()
    return [dict(tokens=x[b].int(), features=f[b, :-1].clone(), n_prompt=0) for b in range(x.shape[0])]


def chat_batches(tok, prompts: list[str], batch: int):
    tok.padding_side = "left"
    for i in range(0, len(prompts), batch):
        enc = tok.apply_chat_template(
            [[{"role": "user", "content": p}] for p in prompts[i : i + batch]],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
            padding=True,
        )
        yield enc["input_ids"], enc["attention_mask"]


def code_prompts(tok, held_out: bool, rng: random.Random, n_tokens: int = 48) -> list[list[int]]:
    """Tiny pair: the first tokens of standard-library functions (train or held-out split) as prompts."""
    root, rel = stdlib_files()
    train, held = split_files(rel, 50)
    out = []
    for f in held if held_out else train:
        for fn in functions(read_text(root / f).splitlines(), 5, 40):
            ids = tok(fn).input_ids[:n_tokens]
            if len(ids) >= 16:
                out.append(ids)
    rng.shuffle(out)
    return out


def code_batches(prompts: list[list[int]], batch: int, pad: int):
    for i in range(0, len(prompts), batch):
        rows = prompts[i : i + batch]
        T = max(map(len, rows))
        ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
        yield ids, mask


def collect(target, tok, args) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tap = FeatureTap(target, tap_layers(target))
    (work / "layers.json").write_text(json.dumps(list(tap.layers)))
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    eos, pad = tok.eos_token_id, (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    smol = args.target == "smollm2"

    def batches(held_out: bool):
        if smol:
            return chat_batches(tok, build_prompts(held_out, random.Random(args.seed + held_out)), args.batch)
        return code_batches(code_prompts(tok, held_out, random.Random(args.seed + held_out)), args.batch, pad)

    if not (work / "heldout.pt").exists():
        recs = []
        for ids, mask in tqdm(
            batches(True), total=math.ceil(args.heldout_prompts / args.batch), desc="held-out answers"
        ):
            recs += generate_with_features(target, tap, ids, mask, args.max_new, 0.0, eos, pad, gen)
            if len(recs) >= args.heldout_prompts:
                break
        torch.save(recs[: args.heldout_prompts], work / "heldout.pt")
    done = sorted(work.glob("gen_*.pt"))
    t0, n_tok, budget = time.time(), 0, args.gen_minutes * 60
    bar = tqdm(total=int(budget), desc="generation (s)", unit="s")
    for shard, (ids, mask) in enumerate(batches(False)):
        if shard < len(done):
            continue  # resumed: this batch was answered by an earlier run
        if time.time() - t0 >= budget:
            break
        temp = 0.8 if shard % 4 == 3 else 0.0
        recs = generate_with_features(target, tap, ids, mask, args.max_new, temp, eos, pad, gen)
        torch.save(recs, work / f"gen_{shard:05d}.pt")
        n_tok += sum(len(r["tokens"]) for r in recs)
        bar.n = min(int(time.time() - t0), int(budget))
        bar.set_postfix(tokens=n_tok, tok_s=f"{n_tok / (time.time() - t0):.0f}")
        bar.refresh()
    bar.close()
    log(f"generation: {n_tok} new tokens with features")
    windows = raw_windows(tok, args.window, rng)
    done = sorted(work.glob("raw_*.pt"))
    t0, n_tok, budget = time.time(), 0, args.window_minutes * 60
    bar = tqdm(total=int(budget), desc="windows (s)", unit="s")
    shard = len(done)
    for i in range(shard * args.window_batch, len(windows), args.window_batch):
        if time.time() - t0 >= budget:
            break
        recs = window_features(target, tap, windows[i : i + args.window_batch])
        torch.save(recs, work / f"raw_{shard:05d}.pt")
        shard += 1
        n_tok += sum(len(r["tokens"]) for r in recs)
        bar.n = min(int(time.time() - t0), int(budget))
        bar.set_postfix(tokens=n_tok, tok_s=f"{n_tok / (time.time() - t0):.0f}")
        bar.refresh()
    bar.close()
    tap.remove()
    log(f"windows: {n_tok} tokens with features")


# -------------------------------------------------------------------------------------------- model
def head_vocab(target, args, records) -> torch.Tensor | None:
    """SmolLM2: the distilled draft's 8192-token subset (the target's most frequent argmaxes); tiny: all."""
    if args.subset_from is None:
        return None
    from safetensors.torch import load_file

    return load_file(str(args.subset_from / "model.safetensors"))["lm_head.token_ids"].long()


def head_weight(head) -> torch.Tensor:
    """Rows of the LM head the head scores ([Vh, d])."""
    return head.lm_head.weight


def select_features(rec_feats: torch.Tensor, tapped: list[int], layers, d: int) -> torch.Tensor:
    cols = [rec_feats[..., tapped.index(i) * d : (tapped.index(i) + 1) * d] for i in layers]
    return torch.cat(cols, -1)


def collate(batch: list[dict], max_len: int, tapped, layers, final_col: int, d: int):
    T = min(max(len(r["features"]) for r in batch), max_len)
    B = len(batch)
    x = torch.zeros(B, T, dtype=torch.long)
    feats = torch.zeros(B, T, len(layers) * d)
    final = torch.zeros(B, T, d)
    mask = torch.zeros(B, T)
    for b, r in enumerate(batch):
        n = min(len(r["features"]), T)
        x[b, :n] = r["tokens"][:n].long()
        f = r["features"][:n].float()
        feats[b, :n] = select_features(f, tapped, layers, d)
        final[b, :n] = f[..., final_col * d : (final_col + 1) * d]
        mask[b, :n] = 1
    return x, feats, final, mask


def chain_acceptance(ok: torch.Tensor, n_prompt: int, stats: dict, depths: int = 5) -> None:
    """Add one answer's chain-drafting outcomes to ``stats``: ``ok[s, p]`` says whether the depth-(s+1)
    draft made at position p (anchor p - s) is the target's greedy token. Every answer position is an
    anchor; depth s+1 is reached when depths 1..s were right."""
    T = ok.shape[1]
    for a in range(max(n_prompt - 1, 1), T):  # anchors in the answer (token 0 has no head entry)
        for s in range(min(depths, T - a)):
            stats["reach"][s] += 1
            if not bool(ok[s, a + s]):
                break
            stats["right"][s] += 1
            stats["accepted"] += s < 4
        stats["anchors"] += 1


def summary(stats: dict) -> dict:
    per_depth = (stats["right"] / stats["reach"].clamp(min=1)).tolist()
    return dict(
        acceptance_per_depth=[round(a, 4) for a in per_depth],
        tau_k4=round(1 + stats["accepted"] / max(stats["anchors"], 1), 3),
        anchors=stats["anchors"],
    )


def new_stats(depths: int = 5) -> dict:
    return dict(right=torch.zeros(depths), reach=torch.zeros(depths), accepted=0, anchors=0)


@torch.no_grad()
def evaluate(head, target, held, tapped, layers, final_col, depths: int = 5) -> dict:
    """Held-out greedy answers: per depth j, P(depth j right | depths < j right) and E[accepted | k=4]."""
    head.eval()
    d = head.config.hidden_size
    full_W = target.get_output_embeddings().weight
    stats = new_stats(depths)
    for r in held:
        x, feats, final, _ = collate([r], 10**6, tapped, layers, final_col, d)
        hs = unrolled_forward(head, x, head.project_features(feats), depths)
        tgt = (final[0] @ full_W.T).argmax(-1)  # the target's greedy token after p
        chain_acceptance(torch.stack([head.logits(h[0]).argmax(-1) == tgt for h in hs]), r["n_prompt"], stats, depths)
    head.train()
    return summary(stats)


@torch.no_grad()
def evaluate_draft_model(draft, target, held, tapped, final_col, depths: int = 5) -> dict:
    """The same measure for a draft model: given that earlier drafts were right, its depth-j draft
    sees the true prefix, so one teacher-forced forward over each answer gives every depth."""
    full_W = target.get_output_embeddings().weight
    d = target.config.hidden_size
    stats = new_stats(depths)
    for r in held:
        x = r["tokens"][: len(r["features"])].long()[None]
        final = r["features"][:, final_col * d : (final_col + 1) * d].float()
        ok = draft(x).logits[0].argmax(-1) == (final @ full_W.T).argmax(-1)  # [T]
        # a draft model's draft at p does not depend on the anchor (the prefix is the true one)
        chain_acceptance(torch.stack([ok] * depths), r["n_prompt"], stats, depths)
    return summary(stats)


def compare(target, tok, args) -> None:
    """bench/results/eagle_heads.md: held-out acceptance per depth of the committed head(s) and the draft model."""
    from specdec.eagle import load_head

    held = torch.load(args.work / "heldout.pt")
    tapped = json.loads((args.work / "layers.json").read_text())
    final_col = tapped.index(target.config.num_hidden_layers)
    rows = []
    path = args.out or ASSETS / OUT_NAMES[args.target]
    head = load_head(target, path).float()
    info = json.loads((path / "training.json").read_text())
    rows.append(
        (
            f"EAGLE-3 head ({type(head).__name__}), features {list(head.config.feature_layers)}, "
            f"{info['train_minutes']} min, {info['tokens_seen']} tokens seen",
            evaluate(head, target, held, tapped, head.config.feature_layers, final_col),
        )
    )
    import specdec

    draft = specdec.load_smollm2_pair()[1] if args.target == "smollm2" else specdec.load_default_pair()[1]
    rows.append(("distilled draft model", evaluate_draft_model(draft, target, held, tapped, final_col)))
    lines = [
        f"Held-out acceptance per draft depth, {args.target}: {len(held)} greedy answers of the target to held-out "
        f"prompts, every answer position an anchor (P(depth j right | depths < j right)); tau_k4 = 1 + expected "
        f"accepted drafts of a 4-token chain. Command: `python bench/models/train_eagle_head.py --target "
        f"{args.target} --phase compare`",
        "",
        "| drafter | depth 1 | depth 2 | depth 3 | depth 4 | depth 5 | tau (k=4) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ev in rows:
        a = ev["acceptance_per_depth"]
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in a) + f" | {ev['tau_k4']:.2f} |")
    out = REPO / "bench" / "results" / f"eagle_{args.target}.md"
    out.write_text("\n".join(lines) + "\n")
    log(f"wrote {out}")
    print("\n".join(lines))


def load_records(work: Path):
    held = torch.load(work / "heldout.pt")
    gen = [r for p in sorted(work.glob("gen_*.pt")) for r in torch.load(p)]
    raw = [r for p in sorted(work.glob("raw_*.pt")) for r in torch.load(p)]
    return held, gen, raw


def save_checkpoint(work: Path, head, opt, state: dict) -> None:
    """The head, the optimiser and the loop's counters (resumed by the next run); written then renamed,
    so an interrupted write leaves the previous checkpoint."""
    tmp = work / "train_state.pt.tmp"
    torch.save(dict(head=head.trained_state(), opt=opt.state_dict(), **state), tmp)
    tmp.replace(work / "train_state.pt")


def train(target, tok, args) -> dict:
    work = args.work
    tapped = json.loads((work / "layers.json").read_text())
    held, gen, raw = load_records(work)
    records = [r for r in gen + raw if len(r["features"]) >= 2]
    n_tokens = sum(len(r["features"]) for r in records)
    log(f"training data: {len(gen)} answers + {len(raw)} windows = {n_tokens} positions with features")
    L = target.config.num_hidden_layers
    layers = eagle3_layers(L)
    final_col = tapped.index(L)
    subset = head_vocab(target, args, records)
    head = new_head(target, layers, subset)
    head.lm_head.requires_grad_(False)  # the target's own rows: p_t below is over the same vocabulary
    d = head.config.hidden_size
    params = [p for p in head.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    log(
        f"head: features {layers}, {n_params / 1e6:.2f}M trained parameters, vocabulary "
        f"{head_weight(head).shape[0]}, ttt steps {args.ttt}"
    )
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt = work / "train_state.pt"
    st = dict(step=0, seen=0, epoch=0, elapsed=0.0, history=[], before=None, ttt=args.ttt)
    if ckpt.exists() and not args.fresh:
        saved = torch.load(ckpt)
        if saved["ttt"] != args.ttt:
            raise SystemExit(f"{ckpt} was trained with --ttt {saved['ttt']}; pass it again or --fresh")
        head.load_state_dict(saved.pop("head"), strict=False)
        opt.load_state_dict(saved.pop("opt"))
        st.update(saved)
        log(f"resumed from {ckpt}: {st['elapsed'] / 60:.1f} min, step {st['step']}, {st['seen']} tokens")
    if st["before"] is None:
        st["before"] = evaluate(head, target, held[: args.eval_answers], tapped, layers, final_col)
        log(f"held-out before training: {st['before']}")
    rng = random.Random(args.seed + st["step"])
    budget = args.train_minutes * 60
    t0 = time.time() - st["elapsed"]  # the clock continues where the last run stopped
    next_eval = (int(st["elapsed"] // args.eval_every) + 1) * args.eval_every
    next_ckpt = st["elapsed"] + args.checkpoint_every
    ema = None
    weights = [0.8**s for s in range(args.ttt)]
    W = head_weight(head)
    bar = tqdm(total=int(budget), desc="training (s)", unit="s", initial=int(st["elapsed"]))
    while time.time() - t0 < budget:
        st["epoch"] += 1
        for batch in make_batches(records, args.max_len, args.tokens_per_batch, rng):
            frac = (time.time() - t0) / budget
            if frac >= 1:
                break
            lr = schedule(args.lr, st["step"], args.warmup, frac, floor=0.05)
            x, feats, final, mask = collate(batch, args.max_len, tapped, layers, final_col, d)
            with torch.no_grad():
                p_t = F.softmax(final @ W.T, -1)  # the target's distribution over the head's vocabulary
            hs = unrolled_forward(head, x, head.project_features(feats), args.ttt)
            loss = 0.0
            T = x.shape[1]
            for s, h in enumerate(hs):
                valid = mask * (torch.arange(T) >= s + 1)[None]  # step s has entries from token s + 1 on
                logq = F.log_softmax(head.draft_logits(h), -1)
                loss = loss + weights[s] * (-(p_t * logq).sum(-1) * valid).sum() / valid.sum().clamp(min=1)
            optimizer_step(opt, params, loss, lr)
            st["step"] += 1
            st["seen"] += int(mask.sum())
            ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
            elapsed = st["elapsed"] = time.time() - t0
            bar.n = min(int(elapsed), int(budget))
            bar.set_postfix(epoch=st["epoch"], step=st["step"], loss=f"{ema:.3f}", tok_s=f"{st['seen'] / elapsed:.0f}")
            bar.refresh()
            if elapsed >= next_eval:
                ev = evaluate(head, target, held[: args.eval_answers], tapped, layers, final_col)
                st["history"].append(dict(minutes=round(elapsed / 60, 1), tokens=st["seen"], loss=round(ema, 4), **ev))
                log(f"held-out after {elapsed / 60:.1f} min, {st['seen']} tokens: {ev}")
                next_eval += args.eval_every
            if elapsed >= next_ckpt:
                save_checkpoint(work, head, opt, st)
                next_ckpt += args.checkpoint_every
    bar.close()
    save_checkpoint(work, head, opt, st)
    final_eval = evaluate(head, target, held, tapped, layers, final_col)
    log(f"held-out (all {len(held)} answers): {final_eval}")
    out = args.out or ASSETS / OUT_NAMES[args.target]
    info = dict(
        target=args.target,
        layout="EAGLE-3 (LlamaForCausalLMEagle3)",
        feature_layers=list(layers),
        ttt_steps=args.ttt,
        trained_parameters=n_params,
        positions=n_tokens,
        answers=len(gen),
        windows=len(raw),
        tokens_seen=st["seen"],
        steps=st["step"],
        epochs=st["epoch"],
        train_minutes=args.train_minutes,
        before=st["before"],
        heldout=final_eval,
        heldout_answers=len(held),
        history=st["history"],
        command="python bench/models/train_eagle_head.py " + " ".join(sys.argv[1:]),
    )
    head.save(out, dtype=torch.bfloat16, training=dict(target=args.target, tokens_seen=st["seen"]))
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {out}")
    return info


PRESETS = {  # per target: what fits the budget on 2 cores
    "smollm2": dict(
        gen_minutes=24,
        window_minutes=8,
        train_minutes=36,
        batch=48,
        max_new=160,
        window=256,
        window_batch=16,
        heldout_prompts=48,
        subset_from=ASSETS / "smollm2_draft",
        lr=6e-4,
    ),
    "tiny": dict(
        gen_minutes=1.5,
        window_minutes=1,
        train_minutes=4,
        batch=64,
        max_new=96,
        window=256,
        window_batch=32,
        heldout_prompts=64,
        subset_from=None,
        lr=1e-3,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=sorted(PRESETS), default="smollm2")
    ap.add_argument("--phase", choices=["all", "collect", "train", "compare"], default="all")
    ap.add_argument("--gen-minutes", type=float)
    ap.add_argument("--window-minutes", type=float)
    ap.add_argument("--train-minutes", type=float)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--max-new", type=int)
    ap.add_argument("--window", type=int)
    ap.add_argument("--window-batch", type=int)
    ap.add_argument("--heldout-prompts", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--ttt", type=int, default=4, help="draft steps unrolled per batch (training-time test)")
    ap.add_argument("--checkpoint-every", type=float, default=120, help="seconds between training checkpoints")
    ap.add_argument("--fresh", action="store_true", help="train from scratch, ignoring a saved checkpoint")
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--tokens-per-batch", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--eval-every", type=float, default=300, help="seconds between held-out evaluations")
    ap.add_argument("--eval-answers", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for k, v in PRESETS[args.target].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.work = args.work or Path.home() / ".cache" / "specdec" / f"eagle_{args.target}"
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    target, tok = load_target(args.target)
    if args.phase in ("all", "collect"):
        collect(target, tok, args)
    if args.phase in ("all", "train"):
        train(target, tok, args)
    if args.phase == "compare":
        compare(target, tok, args)


if __name__ == "__main__":
    main()
