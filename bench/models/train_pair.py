#!/usr/bin/env python
"""Train the default (target, draft) model pair shipped in specdec/assets/default_pair.

What it does, deterministically (seeded; fixed file split):
  1. collects the CPython standard library's .py sources of the running interpreter (test dirs and
     site-packages excluded), sorted by relative path; every file whose sorted index % 50 == 0 is
     held out for evaluation (the list is written to heldout_files.json);
  2. trains a byte-level BPE tokenizer (vocab 4096, <|endoftext|> = BOS = EOS = PAD) on the training
     files and wraps it as a transformers PreTrainedTokenizerFast;
  3. trains a Llama target (4 layers x 256 hidden, ~4.2M params) under a wall-clock budget;
  4. trains a Llama draft (1 layer x 128 hidden, ~0.7M params): first plain next-token loss, then
     distillation (KL to the target's softmax, mixed with next-token loss) for the rest of its budget;
  5. saves everything with save_pretrained (safetensors, fp32) into
     python_api/specdec/assets/default_pair/{target,draft,tokenizer}.

Usage:
  python bench/models/train_pair.py --target-minutes 15 --draft-minutes 6
  python bench/models/train_pair.py --skip-target      # retrain only the draft against the saved target
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "python_api" / "specdec" / "assets" / "default_pair"
EOT = "<|endoftext|>"
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- data
def stdlib_files() -> tuple[Path, list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if not (EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1]))
    )
    return root, rel


def split_files(rel: list[str], every: int) -> tuple[list[str], list[str]]:
    held = [f for i, f in enumerate(rel) if i % every == 0]
    train = [f for i, f in enumerate(rel) if i % every != 0]
    return train, held


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def functions(lines: list[str], min_lines: int = 6, max_lines: int = 22):
    """Whole top-level or method functions of min_lines..max_lines lines, dedented, as text."""
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped.startswith("def "):
            continue
        indent = len(line) - len(stripped)
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            j += 1
        body = [ln[indent:] for ln in lines[i:j]]
        while body and not body[-1].strip():
            body.pop()
        if min_lines <= len(body) <= max_lines:
            yield "\n".join(body)


def prose_paragraphs(held_out: bool) -> list[str]:
    """Paragraphs of the Python reference's prose (pydoc_data.topics, on every machine); every 10th
    topic in sorted order is held out."""
    from pydoc_data.topics import topics

    out = []
    for i, name in enumerate(sorted(topics)):
        if (i % 10 == 0) != held_out:
            continue
        for para in topics[name].split("\n\n"):
            para = " ".join(para.split())
            if 200 <= len(para) <= 1200 and not para.startswith(("*", "-", ">>>", "[")):
                out.append(para)
    return out


# ------------------------------------------------------------------------------------------ tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=None,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts):
        ids.append(eot)
        ids.extend(enc.ids)
    ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------- models
def make_config(vocab_size: int, eot_id: int, layers: int, hidden: int, heads: int, inter: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        initializer_range=0.02,
    )


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def batch_iter(data: torch.Tensor, ctx: int, bsz: int, gen: torch.Generator):
    hi = data.numel() - ctx - 1
    while True:
        starts = torch.randint(0, hi, (bsz,), generator=gen)
        yield torch.stack([data[s : s + ctx + 1] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model, data: torch.Tensor, ctx: int, max_windows: int) -> float:
    model.eval()
    n = min((data.numel() - 1) // ctx, max_windows)
    tot, cnt = 0.0, 0
    for i in range(0, n, 8):
        rows = [data[j * ctx : j * ctx + ctx + 1] for j in range(i, min(n, i + 8))]
        x = torch.stack(rows)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        cnt += x[:, 1:].numel()
    model.train()
    return tot / cnt


@torch.no_grad()
def agreement(draft, target, data: torch.Tensor, ctx: int, max_windows: int) -> float:
    draft.eval(), target.eval()
    n = min((data.numel() - 1) // ctx, max_windows)
    agree, cnt = 0, 0
    for i in range(0, n, 8):
        x = torch.stack([data[j * ctx : j * ctx + ctx] for j in range(i, min(n, i + 8))])
        a = draft(input_ids=x).logits.argmax(-1)
        b = target(input_ids=x).logits.argmax(-1)
        agree += (a == b).sum().item()
        cnt += a.numel()
    draft.train()
    return agree / cnt


def train_model(model, data, heldout, args, *, minutes, lr, name, teacher=None, distill_after=1.0, seed_offset=0):
    """Train under a wall-clock budget; lr = warmup then cosine over the *elapsed time fraction*.

    If teacher is given, once elapsed/budget >= distill_after the loss becomes
    alpha * KL(teacher || model) + (1 - alpha) * CE.
    """
    gen = torch.Generator().manual_seed(args.seed + (1 if teacher is not None else 0) + seed_offset)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    budget = minutes * 60.0
    t0 = time.time()
    model.train()
    step, tokens, ema = 0, 0, None
    last_log = t0
    for batch in batch_iter(data, args.ctx, args.batch_size, gen):
        frac = (time.time() - t0) / budget
        if frac >= 1.0:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        cur_lr = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=x).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        distilling = teacher is not None and frac >= distill_after
        if distilling:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=x).logits.float(), -1)
            logp = F.log_softmax(logits, -1)
            kl = (t_logp.exp() * (t_logp - logp)).sum(-1).mean()
            loss = args.distill_alpha * kl + (1 - args.distill_alpha) * ce
        else:
            loss = ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += y.numel()
        ema = ce.item() if ema is None else 0.95 * ema + 0.05 * ce.item()
        now = time.time()
        if now - last_log >= args.log_every or step == 1:
            last_log = now
            el = now - t0
            log(
                f"{name} step {step:5d} | {100 * el / budget:5.1f}% of {minutes:.1f} min | "
                f"ce(ema) {ema:.3f} | lr {cur_lr:.2e} | {tokens / el:6.0f} tok/s" + (" | distill" if distilling else "")
            )
    el = time.time() - t0
    hl = evaluate(model, heldout, args.ctx, args.eval_windows)
    log(f"{name} done: {step} steps, {tokens} tokens, {el / 60:.1f} min, held-out loss {hl:.3f}")
    model.eval()
    return {"steps": step, "tokens": tokens, "minutes": round(el / 60, 2), "heldout_loss": round(hl, 4)}


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--heldout-every", type=int, default=50, help="hold out files with sorted index %% N == 0")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=30, help="warmup steps")
    ap.add_argument("--target-minutes", type=float, default=15.0)
    ap.add_argument("--draft-minutes", type=float, default=6.0)
    ap.add_argument("--target-lr", type=float, default=2e-3)
    ap.add_argument("--draft-lr", type=float, default=3e-3)
    ap.add_argument(
        "--distill-after",
        type=float,
        default=0.35,
        help="fraction of the draft budget after which distillation from the target starts (1 = never)",
    )
    ap.add_argument("--distill-alpha", type=float, default=0.8, help="weight of the KL term while distilling")
    ap.add_argument("--skip-target", action="store_true", help="load the saved target instead of training it")
    ap.add_argument(
        "--resume-target",
        action="store_true",
        help="load the saved target and train it --target-minutes more (fresh optimizer and schedule)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=float, default=20.0, help="seconds between log lines")
    ap.add_argument("--eval-windows", type=int, default=160)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    from transformers import AutoTokenizer, LlamaForCausalLM

    t_start = time.time()
    root, rel = stdlib_files()
    train_files, held_files = split_files(rel, args.heldout_every)
    log(f"stdlib {root}: {len(rel)} files, {len(train_files)} train, {len(held_files)} held out")
    train_texts = [read_text(root / f) for f in train_files]
    held_texts = [read_text(root / f) for f in held_files]

    out: Path = args.out
    tok_dir, tgt_dir, dft_dir = out / "tokenizer", out / "target", out / "draft"
    if args.skip_target or args.resume_target:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        tokenizer = train_tokenizer(train_texts, args.vocab_size)
        tokenizer.save_pretrained(tok_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    vocab = len(tokenizer)
    train_ids = encode_corpus(tokenizer, train_texts)
    held_ids = encode_corpus(tokenizer, held_texts)
    nbytes = sum(len(t.encode()) for t in train_texts)
    log(
        f"tokenizer: vocab {vocab}; train {train_ids.numel()} tokens ({nbytes / train_ids.numel():.2f} bytes/token), "
        f"held-out {held_ids.numel()} tokens"
    )

    (out).mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "stdlib": str(root),
        "heldout_every": args.heldout_every,
        "excluded_dirs": sorted(EXCLUDED_DIRS),
        "heldout_files": held_files,
        "n_train_files": len(train_files),
        "train_tokens_available": int(train_ids.numel()),
        "heldout_tokens": int(held_ids.numel()),
    }

    prev = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    if args.skip_target:
        target = LlamaForCausalLM.from_pretrained(tgt_dir, local_files_only=True, torch_dtype=torch.float32).eval()
        tstats = prev.get("target", {})
    elif args.resume_target:
        target = LlamaForCausalLM.from_pretrained(tgt_dir, local_files_only=True, torch_dtype=torch.float32)
        log(f"target: resumed from {tgt_dir}")
        tstats = train_model(
            target,
            train_ids,
            held_ids,
            args,
            minutes=args.target_minutes,
            lr=args.target_lr,
            name="target",
            seed_offset=2,
        )
        before = prev.get("target", {})
        tstats["params"] = n_params(target)
        tstats["previous_runs"] = before.get("previous_runs", []) + (
            [{k: v for k, v in before.items() if k != "previous_runs"}] if before else []
        )
        target.save_pretrained(tgt_dir, safe_serialization=True)
        tokenizer.save_pretrained(tgt_dir)
    else:
        torch.manual_seed(args.seed)
        target = LlamaForCausalLM(make_config(vocab, eot, layers=4, hidden=256, heads=4, inter=688))
        log(f"target: {n_params(target) / 1e6:.2f}M params")
        tstats = train_model(
            target, train_ids, held_ids, args, minutes=args.target_minutes, lr=args.target_lr, name="target"
        )
        tstats["params"] = n_params(target)
        target.save_pretrained(tgt_dir, safe_serialization=True)
        tokenizer.save_pretrained(tgt_dir)
    if not args.skip_target:
        meta["target"] = tstats
        (out / "training.json").write_text(json.dumps(meta, indent=1) + "\n")
        (out / "heldout_files.json").write_text(json.dumps(held_files, indent=1) + "\n")
    for p in target.parameters():
        p.requires_grad_(False)

    torch.manual_seed(args.seed + 1)
    draft = LlamaForCausalLM(make_config(vocab, eot, layers=1, hidden=128, heads=2, inter=344))
    log(f"draft: {n_params(draft) / 1e6:.2f}M params")
    dstats = train_model(
        draft,
        train_ids,
        held_ids,
        args,
        minutes=args.draft_minutes,
        lr=args.draft_lr,
        name="draft",
        teacher=target,
        distill_after=args.distill_after,
    )
    dstats["params"] = n_params(draft)
    dstats["agreement"] = round(agreement(draft, target, held_ids, args.ctx, args.eval_windows), 4)
    log(f"draft/target greedy agreement on held-out: {dstats['agreement']:.3f}")
    draft.save_pretrained(dft_dir, safe_serialization=True)
    tokenizer.save_pretrained(dft_dir)

    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["target"], meta["draft"] = tstats, dstats
    meta["total_minutes"] = round((time.time() - t_start) / 60, 2)
    (out / "heldout_files.json").write_text(json.dumps(held_files, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"saved to {out} ({meta['total_minutes']} min total)")


if __name__ == "__main__":
    main()
