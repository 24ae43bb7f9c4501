"""``python -m specdec demo`` (the main job) and ``python -m specdec bench`` (end-to-end comparison)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from specdec_kernels.benchmarking import machine_description

# What the demo runs by default, per pair: the drafter and strategy that were fastest in the measured
# end-to-end tables (bench/results/e2e_smollm2.md, bench/results/e2e.md).
# SmolLM2 on chat_mixed (bench/results/e2e_smollm2_rerun.md): prompt lookup from 2-gram matches 1.44x
# (transformers' prompt lookup 1.35x). With the EAGLE-3 head trained to tau 2.21 it still leads: in bf16
# (the demo's dtype here; bench/results/vllm_cpu_bf16.md) eager lookup 30.7 tokens/s against the head's
# chain:3 26.0, compiled 53.1 against the head's hybrid:3 45.5 and chain:3 43.6; in fp32 eager
# (bench/results/e2e_smollm2_eagle3_head.md) the head's hybrid 1.22x against lookup's 1.21x, a tie.
DEMO_DEFAULTS = {"smollm2": ("eagle", "lookup:8:1:first:2"), "tiny": ("model", "heuristic")}
# Compiled forwards by default only where they win end to end with their compile time counted. They do
# not in a demo of a few prompts: on the 2-core AVX512-BF16 VM a SmolLM2 bf16 token costs 34.8 ms
# compiled against 68.8 ms eager, but each bucket width compiles for 88-118 s in every new process
# (bench/results/regimes_cpu_avx512.md), and 3 prompts of 128 tokens save ~13 s of forwards.
DEMO_COMPILE = False


def _load(args):
    """(target, draft model or None, EAGLE head or None, tokenizer, chat?, prompt set, label) for --pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdec.models import load_default_pair, load_pair_head, load_smollm2, load_smollm2_draft

    if args.target or args.draft:
        if not (args.target and args.draft):
            sys.exit("--target and --draft go together")
        print("loading models ...", file=sys.stderr)
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=args.dtype).eval()
        draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=args.dtype).eval()
        return target, draft, None, AutoTokenizer.from_pretrained(args.target), False, "heldout_code", args.target
    if args.pair == "smollm2":  # a real pretrained target: its EAGLE head, its distilled draft, prompt lookup
        print("loading SmolLM2-135M-Instruct, its EAGLE head and its distilled draft ...", file=sys.stderr)
        target, tok = load_smollm2(dtype=args.dtype)
        draft, head = load_smollm2_draft(target), load_pair_head(target, "smollm2")
        return target, draft, head, tok, True, "chat_mixed", "SmolLM2-135M-Instruct"
    print("loading the bundled pair ...", file=sys.stderr)
    target, draft, tok = load_default_pair(dtype=args.dtype)
    return target, draft, load_pair_head(target, "default"), tok, False, "heldout_code", "bundled pair"


class _Printer:
    """Streams decoded text as tokens are accepted (the loop calls it with each row-0 token batch)."""

    def __init__(self, tokenizer, prompt_ids):
        self.tok, self.ids = tokenizer, prompt_ids.tolist()
        self.shown = len(self._text())  # the prompt is printed by the caller

    def _text(self) -> str:
        # special tokens (the chat template's <|im_end|>, EOS) are markup, not text
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def __call__(self, tokens: list[int]) -> None:
        self.ids += tokens
        text = self._text()
        sys.stdout.write(text[self.shown :])
        sys.stdout.flush()
        self.shown = len(text)


def demo(args) -> None:
    import specdec
    from specdec.bench import encode, load_prompts
    from specdec.compiled import compile_stats as compiled_stats
    from specdec.strategies import from_name

    pair = "tiny" if args.pair == "default" else args.pair
    target, draft, head, tok, chat, prompt_set, label = _load(args)
    kind, default_strategy = DEMO_DEFAULTS[pair]
    kind = args.drafter or (kind if head is not None else "model")
    drafter = head if kind == "eagle" else draft
    name = args.strategy or default_strategy
    strategy = name if name == "auto" else from_name(name)
    prompts = load_prompts(args.prompt_set or prompt_set)[: args.prompts]
    needs = strategy == "auto" or strategy.needs_drafter
    how = ("its EAGLE head" if kind == "eagle" else "the draft model") if needs else "prompt lookup (no draft model)"
    regime = f"{str(args.dtype).removeprefix('torch.')}, {'compiled' if args.compile else 'eager'}"
    print(f"{label} ({regime}), drafting with {how}, strategy {name}", file=sys.stderr)
    # Warm-up (first-call allocations, kernel set-up, compiles) so that neither side's timing carries it;
    # what compiling cost is said, not hidden.
    warm = encode(tok, prompts[0], chat)
    target.generate(warm, max_new_tokens=4, do_sample=False, pad_token_id=0)
    t0 = time.perf_counter()
    warm_tokens = args.max_new_tokens if args.compile else 8  # compiled: meet every width the prompts will use
    specdec.generate(target, drafter, warm, max_new_tokens=warm_tokens, strategy=strategy, compile=args.compile)
    if not args.compile:
        print(
            "eager forwards; --compile runs them compiled (about 2x faster a token in bf16 once compiled, "
            "after ~1.5 min of compiling per bucket width on 2 cores: docs/performance.md)",
            file=sys.stderr,
        )
    if args.compile:
        c = compiled_stats()
        print(
            f"compiled {c['graphs']} graphs (one per bucket width used) in {c['compile_s']:.0f} s, once per "
            f"process (inductor's disk cache shortens the next one); warm-up {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    total_new = total_plain = total_spec = 0.0
    exact_all = True
    taus = []
    for i, prompt in enumerate(prompts):
        ids = encode(tok, prompt, chat)
        t0 = time.perf_counter()
        plain = target.generate(
            ids, max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0
        )
        t_plain = time.perf_counter() - t0
        print(f"\n===== prompt {i + 1}/{len(prompts)} ({name}) =====")
        sys.stdout.write(prompt + "\n")
        out = specdec.generate(
            target,
            drafter,
            ids,
            max_new_tokens=args.max_new_tokens,
            strategy=strategy,
            temperature=args.temperature,
            seed=args.seed,
            eos_token_id=tok.eos_token_id,
            streamer=_Printer(tok, ids[0]),
            compile=args.compile,
        )
        t_spec = out.stats["wall_s"]
        exact = torch.equal(out.sequences, plain) if args.temperature == 0 else None
        exact_all &= bool(exact) if exact is not None else True
        new = out.sequences.shape[1] - ids.shape[1]
        total_new += new
        total_plain += t_plain
        total_spec += t_spec
        taus.append(out.stats["tau"])
        print(
            f"\n----- tau {out.stats['tau']:.2f} | specdec {new / t_spec:.1f} tok/s | target-only "
            f"{new / t_plain:.1f} tok/s | speedup {t_plain / t_spec:.2f}x"
            + ("" if exact is None else f" | greedy output identical to target-only: {'yes' if exact else 'NO'}")
        )
    print(
        f"\n===== {len(prompts)} prompts, {int(total_new)} new tokens: specdec {total_new / total_spec:.1f} tok/s, "
        f"target-only {total_new / total_plain:.1f} tok/s, speedup {total_plain / total_spec:.2f}x, "
        f"mean tau {sum(taus) / len(taus):.2f}"
        + ("" if args.temperature else f", all outputs identical to target-only: {'yes' if exact_all else 'NO'}")
    )
    # fp32 greedy output must be identical; bf16 may part at near-ties (docs/performance.md, "Exactness")
    if args.temperature == 0 and not exact_all and args.dtype == torch.float32:
        sys.exit(1)
    if args.temperature == 0 and not exact_all:
        print(
            f"({str(args.dtype).removeprefix('torch.')}: a verify of several tokens rounds differently from a "
            "one-token forward, so greedy output can part from target-only decoding where two logits tie "
            "within that precision, as vLLM's does; --dtype float32 is exact. docs/performance.md)"
        )


BENCH_DEFAULT = [
    "hf-assisted k=4 constant",
    "hf-assisted heuristic",
    "hf-assisted confidence 0.4",
    "chain:2",
    "chain:4",
    "chain:6",
    "heuristic",
    "confidence",
    "disco",
    "static-tree",
    "eagle2:16",
    "eagle2:32",
    "eagle2:64",
    "dyspec:16",
    "dyspec:32",
    "dyspec:64",
    "ddd:16",
    "ddd:32",
    "ddd:64",
    "eagle2:12:4:4",
    "ddd:10:2:8",
    "lookup:8",
]


SMOLLM2_DEFAULT = [
    "hf-assisted heuristic",
    "hf-prompt-lookup k=8",
    "chain:3",
    "heuristic",
    "head:chain:2",
    "head:chain:3",
    "head:chain:4",
    "head:chain:5",
    "head:heuristic",
    "head:confidence",
    "head:eagle2:8:2:4",
    "head:eagle2:16",
    "lookup:8",
]
BENCH_DEFAULT = BENCH_DEFAULT + ["head:chain:4", "head:heuristic", "head:eagle2:16"]


def bench(args) -> None:
    from specdec import bench as b

    pair = "tiny" if args.pair == "default" else args.pair
    target, draft, head, tok, chat, prompt_set, label = _load(args)
    eos = tok.eos_token_id  # everyone stops at EOS, so outputs compare token for token
    prompt_set = args.prompt_set or prompt_set
    prompts = b.load_prompts(prompt_set)[: args.prompts]
    names = args.configs.split(",") if args.configs else (SMOLLM2_DEFAULT if pair == "smollm2" else BENCH_DEFAULT)
    rows = b.run(
        target,
        draft,
        tok,
        prompts,
        names,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        chat=chat,
        eos_token_id=eos,
        head=head,
    )
    rho = None
    if not args.no_cost_model:
        print("cost model: calibrating on other prompts ...", file=sys.stderr)
        calib = b.load_prompts(prompt_set)[args.prompts : args.prompts + 4]
        rho = b.add_predictions(rows, target, draft, tok, calib, names, chat=chat, head=head)
    machine = machine_description("cuda" if torch.cuda.is_available() else "cpu")
    header = (
        f"End to end, {label}, {len(prompts)} prompts ({prompt_set}) x up to {args.max_new_tokens} new tokens, greedy, "
        f"median of {args.repeats} repeats; {machine}; `head:` rows draft with the EAGLE head, the others "
        f"with the draft model; command: `python -m specdec bench {' '.join(sys.argv[2:])}`"
    )
    table = b.markdown(rows, header)
    if rho is not None:
        table += (
            f"\n\nCost model (specdec.tune, calibrated on 4 other prompts): Spearman rank correlation of "
            f"predicted vs measured tokens/s over the specdec rows = {rho:.2f}"
        )
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "e2e" if pair == "tiny" else f"e2e_{pair}"
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(
        json.dumps({"header": header, "rows": rows, "cost_model_spearman": rho}, indent=1) + "\n"
    )
    b.plot(rows, str(out / f"{stem}.png"), f"{label}: speedup and tau per strategy")
    print(f"wrote {out}/{stem}.md, .json, .png", file=sys.stderr)


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "int >= 1"  # what argparse names in "invalid int >= 1 value"


def _temperature(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


_temperature.__name__ = "finite float >= 0"


def _check_strategy_names(parser, args) -> None:
    """Refuse unknown or malformed strategy names before any model loads (one line, no traceback)."""
    from specdec.bench import HEAD
    from specdec.strategies import from_name

    names = [args.strategy] if getattr(args, "strategy", None) else []
    if getattr(args, "configs", None):
        names += [n for n in args.configs.split(",") if not n.startswith("hf-")]
    for name in names:
        if name == "auto":
            continue
        try:
            from_name(name.removeprefix(HEAD))
        except (ValueError, TypeError) as e:
            parser.error(f"strategy {name!r}: {e}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m specdec", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("demo", "bench"):
        s = sub.add_parser(name)
        s.add_argument("--target", help="path of a transformers causal LM (default: the bundled target)")
        s.add_argument("--draft", help="path of its draft model (default: the bundled draft)")
        s.add_argument("--max-new-tokens", type=_positive_int, default=128)
        s.add_argument("--prompts", type=_positive_int, default=3 if name == "demo" else 8)
        s.add_argument(
            "--pair",
            choices=["smollm2", "tiny", "default"],
            default="smollm2" if name == "demo" else "tiny",
            help="smollm2: SmolLM2-135M-Instruct with its EAGLE head and distilled draft, on chat prompts "
            "(code edits, summaries, open questions); tiny (= default): the bundled pair on held-out code",
        )
        s.add_argument("--prompt-set", help="chat_mixed (smollm2), heldout_code (tiny), input_grounded")
    d = sub.choices["demo"]
    d.add_argument(
        "--strategy",
        help="a strategy name such as chain:4, heuristic, eagle2:16, lookup:8, auto "
        "(default: the fastest measured for the pair)",
    )
    d.add_argument("--drafter", choices=["eagle", "model"], help="draft with the EAGLE head or the draft model")
    d.add_argument("--temperature", type=_temperature, default=0.0)
    d.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="auto: bfloat16 where the CPU/GPU multiplies bf16 natively (AVX512-BF16, AMX, Ampere+), else "
        "float32; greedy output is exact in float32",
    )
    d.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=DEMO_COMPILE,
        help="run the models' forwards compiled (specdec.compiled); each bucket width compiles once",
    )
    d.add_argument("--seed", type=int, default=0)
    bb = sub.choices["bench"]
    bb.add_argument("--configs", help="comma-separated configurations (default: all)")
    bb.add_argument("--repeats", type=_positive_int, default=3)
    bb.add_argument("--out", default="bench/results")
    bb.add_argument("--no-cost-model", action="store_true", help="skip the cost model's predictions")
    args = p.parse_args(argv)
    _check_strategy_names(p, args)
    if args.cmd == "demo":
        from specdec.compiled import fast_dtype

        args.dtype = fast_dtype() if args.dtype == "auto" else getattr(torch, args.dtype)
    else:
        args.dtype = torch.float32
    {"demo": demo, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    main()
