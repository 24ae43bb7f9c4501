"""vLLM (CPU build) serving SmolLM2-135M-Instruct: target alone, with vLLM's n-gram proposer, with
specdec's proposer (:mod:`specdec.integrations.vllm`), with an EAGLE-3 head exported by specdec
(vLLM's own "eagle3" method), and specdec's own loop, on the same chat prompts.

Runs under the vLLM virtual environment (``make vllm-setup`` builds it); specdec's own loop runs in the
project's environment, as a subprocess (``--specdec-python``), in the same run::

    LD_PRELOAD=$VLLM_VENV/lib/libiomp5.so $VLLM_VENV/bin/python bench/vllm_bench.py \\
        --specdec-python .venv/bin/python --out bench/results/vllm_cpu.md
    ... bench/vllm_bench.py --check --eagle-head DIR --specdec-python .venv/bin/python   # CI (below)

The EAGLE-3 leg serves the head in ``--eagle-head`` (a directory written by specdec.eagle.export); the
project's python writes SmolLM2's trained head there with ``python bench/vllm_bench.py --export-head DIR``.

``--check`` (CI): 3 prompts, batch 1: greedy output identical to vLLM alone, and with ``--eagle-head`` and
``--specdec-python`` vLLM's EAGLE-3 drafts (logged from its proposer, engine in-process) against specdec's
HeadDrafter's on the same roots.

Greedy (temperature 0), one request at a time and a batch of 4; tokens/s = generated tokens / wall time.
Every speculative mode must produce exactly the target-only output (checked, the run fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DTYPE = "float32"  # --dtype sets it: vLLM's and specdec's loop's
MIN_FIRST_DRAFT_MATCH = 0.95  # --check: share of steps whose first EAGLE draft vLLM and specdec agree on


def speculative_configs(k: int, eagle_head: str | None = None) -> dict:
    """Configuration name -> speculative_config (None: target alone), with ``k`` draft tokens at most;
    ``eagle_head``: an exported EAGLE-3 head directory for vLLM's "eagle3" method."""
    configs = {
        "vLLM target only": None,
        f"vLLM n-gram (k={k})": {
            "method": "ngram",
            "num_speculative_tokens": k,
            "prompt_lookup_min": 2,
            "prompt_lookup_max": 3,
        },
        f"vLLM + specdec proposer (k<={k})": {
            "model": "specdec.integrations.vllm.SpecdecProposer",
            "num_speculative_tokens": k,
        },
    }
    if eagle_head:
        configs[f"vLLM eagle3, specdec-exported head (k={k})"] = {
            "method": "eagle3",
            "model": str(eagle_head),
            "num_speculative_tokens": k,
        }
    return configs


def export_smollm2_head(out: str) -> None:
    """In the project's environment: SmolLM2's shipped EAGLE-3 head, in vLLM's format at ``out``."""
    import specdec
    from specdec.eagle import export
    from specdec.models import load_pair_head

    target, _ = specdec.load_smollm2()
    export(load_pair_head(target, "smollm2"), out, runtime="vllm")
    log(f"wrote SmolLM2's trained EAGLE-3 head to {out}")


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def chat_token_ids(n_prompts: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from specdec.bench import load_prompts
    from specdec.models import _smollm2_cache_dir

    tok = AutoTokenizer.from_pretrained(_smollm2_cache_dir(), local_files_only=True)
    prompts = load_prompts("chat_mixed")[:n_prompts]
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for p in prompts
    ]


def spec_counts(llm) -> dict:
    """vLLM's spec-decode counters so far: ``drafts`` (steps that drafted), ``drafted`` / ``accepted``
    tokens, and ``per_pos`` (tokens accepted at draft position 1, 2, ...); all zero without speculation."""
    c = {"drafts": 0, "drafted": 0, "accepted": 0, "per_pos": []}
    names = {
        "vllm:spec_decode_num_drafts": "drafts",
        "vllm:spec_decode_num_draft_tokens": "drafted",
        "vllm:spec_decode_num_accepted_tokens": "accepted",
    }
    for m in llm.get_metrics():
        if m.name in names:
            c[names[m.name]] += int(m.value)
        elif m.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            c["per_pos"] = [a + b for a, b in zip(c["per_pos"], m.values)] if c["per_pos"] else list(m.values)
    return c


def acceptance(before: dict, after: dict) -> tuple[float | None, list[float]]:
    """Accepted / proposed draft tokens between two :func:`spec_counts`, and per position the share of
    drafting steps whose draft was accepted up to that position (vLLM's per-position acceptance)."""
    drafted = after["drafted"] - before["drafted"]
    if drafted <= 0:
        return None, []
    drafts = max(after["drafts"] - before["drafts"], 1)
    prev = before["per_pos"] or [0] * len(after["per_pos"])
    per_pos = [(a - b) / drafts for a, b in zip(after["per_pos"], prev)]
    return (after["accepted"] - before["accepted"]) / drafted, per_pos


def record_eagle_proposals() -> list[list[int]]:
    """From now on, every batch-1 proposal of vLLM's EAGLE proposer (its k draft ids, target vocabulary)
    is appended to the returned list. Needs the engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    from vllm.v1.spec_decode.eagle import EagleProposer

    proposals: list[list[int]] = []
    inner = EagleProposer.propose

    def propose(self, *args, **kwargs):
        drafts = inner(self, *args, **kwargs)
        if drafts.shape[0] == 1:
            proposals.append(drafts[0].tolist())
        return drafts

    EagleProposer.propose = propose
    return proposals


def run_vllm(
    mode: str, config, ids: list[list[int]], max_tokens: int, batches: list[int], proposals: list | None = None
) -> dict:
    """One vLLM engine over the prompts at each batch size; ``proposals`` (from
    :func:`record_eagle_proposals`): the EAGLE drafts of each batch-1 request go to ``row["proposals"]``."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from specdec.models import _smollm2_cache_dir

    t0 = time.perf_counter()
    llm = LLM(
        model=str(_smollm2_cache_dir()),
        dtype=DTYPE,
        enforce_eager=True,
        max_model_len=2048,
        gpu_memory_utilization=float(os.environ.get("VLLM_MEM_FRACTION", "0.25")),
        speculative_config=config,
        disable_log_stats=False,
    )
    log(f"{mode}: loaded in {time.perf_counter() - t0:.0f} s")
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=False)
    llm.generate([TokensPrompt(prompt_token_ids=ids[0])], params, use_tqdm=False)  # warm-up
    before = spec_counts(llm)
    row = {"mode": mode, "outputs": None, "proposals": []}
    for batch in batches:
        outputs, tokens, wall = [], 0, 0.0
        for i in range(0, len(ids), batch):
            chunk = [TokensPrompt(prompt_token_ids=x) for x in ids[i : i + batch]]
            if proposals is not None:
                proposals.clear()
            t = time.perf_counter()
            res = llm.generate(chunk, params, use_tqdm=False)
            wall += time.perf_counter() - t
            if proposals is not None and batch == 1:
                row["proposals"].append(list(proposals))
            outputs += [list(r.outputs[0].token_ids) for r in res]
            tokens += sum(len(r.outputs[0].token_ids) for r in res)
        row[f"tok_s_b{batch}"] = tokens / wall
        row["outputs"] = row["outputs"] or outputs
        log(f"{mode}: batch {batch}: {tokens / wall:.1f} tokens/s")
    row["acceptance"], row["per_pos"] = acceptance(before, spec_counts(llm))
    return row


# specdec's own loop, in the project's environment (its transformers and torch), one request at a time.
# Each leg: (name, how). "hf" legs are transformers' own generate; the others are specdec strategies,
# "@compiled" ones through specdec.compiled. The first leg is the reference for the divergence columns.
LOOP_LEGS = (
    ("transformers generate", "hf"),
    ("transformers generate, static cache compiled", "hf-static"),
    ("specdec prompt lookup", "lookup:8:1:first:2"),
    ("specdec prompt lookup, compiled", "lookup:8:1:first:2@compiled"),
    ("specdec EAGLE head chain:3", "head:chain:3"),
    ("specdec EAGLE head gate:4", "head:gate:4"),
    ("specdec EAGLE head chain:3, compiled", "head:chain:3@compiled"),
    ("specdec EAGLE head gate:3, compiled", "head:gate:3@compiled"),
    ("specdec EAGLE head hybrid:3, compiled", "head:hybrid:3@compiled"),
)

_LOOP_CODE = r"""
import json, sys, time, torch, specdec
from transformers import CompileConfig, StaticCache
from specdec import compiled
from specdec.bench import first_divergence
from specdec.strategies import from_name
from specdec.models import load_pair_head
ids, max_tokens, dtype, legs = json.loads(sys.stdin.read())
dtype = getattr(torch, dtype)
target, tok = specdec.load_smollm2(dtype=dtype)
target32 = target if dtype == torch.float32 else specdec.load_smollm2()[0]
head = None
eos = tok.eos_token_id
def runner(how):
    if how == "hf":
        return lambda x: target.generate(x, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
                                         pad_token_id=eos)[0, x.shape[1]:]
    if how == "hf-static":  # a static cache of one fixed length, so the decode graph is one shape
        cfg = CompileConfig(fullgraph=False, mode="default", dynamic=False)
        cfg._compile_all_devices = True
        return lambda x: target.generate(x, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
                                         pad_token_id=eos, past_key_values=StaticCache(target.config, 1024),
                                         compile_config=cfg)[0, x.shape[1]:]
    global head
    name, _, mode = how.partition("@")
    drafter = None
    if name.startswith("head:"):
        head = head or load_pair_head(target, "smollm2")
        drafter, name = head, name.removeprefix("head:")
    strategy = from_name(name)
    def run(x):
        out = specdec.generate(target, drafter, x, max_new_tokens=max_tokens, strategy=strategy, eos_token_id=eos,
                               compile=mode == "compiled")
        steps.append((out.stats["tau"], out.stats["steps"]))
        return out.sequences[0, x.shape[1]:]
    return run
rows = []
for name, how in legs:
    run = runner(how)
    c0 = compiled.compile_stats()
    t = time.perf_counter(); run(torch.tensor([ids[0]])); warm = time.perf_counter() - t  # compiles here
    c1 = compiled.compile_stats()
    steps = []  # (tau, steps) of each timed request (the warm-up's dropped)
    outs, n, wall = [], 0, 0.0
    for x in ids:
        t = time.perf_counter(); o = run(torch.tensor([x])); wall += time.perf_counter() - t
        o = o.tolist(); o = o[: o.index(eos) + 1] if eos in o else o
        outs.append(o); n += len(o)
    # a width or capacity the warm-up did not meet compiles inside a timed request: its compile time is
    # taken out of the wall time (and reported), so tokens/s is the steady state
    c2 = compiled.compile_stats()
    late_s = c2["compile_s"] - c1["compile_s"]
    wall -= late_s
    tau = sum(t * n_steps for t, n_steps in steps) / max(sum(n_steps for _, n_steps in steps), 1) if steps else None
    rows.append({"mode": name, "tok_s_b1": n / wall, "outputs": outs, "acceptance": None, "tau": tau, "warmup_s": warm,
                 "graphs": c1["graphs"] - c0["graphs"], "compile_s": c1["compile_s"] - c0["compile_s"],
                 "late_graphs": c2["graphs"] - c1["graphs"], "late_s": late_s})
    print(f"{name}: {n / wall:.1f} tok/s (warm-up {warm:.0f} s)", file=sys.stderr, flush=True)
# where each leg parts from the first (transformers' plain greedy), and the fp32 target's top-2 gap there
ref = rows[0]["outputs"]
for r in rows[1:]:
    parts = []
    for x, a, b in zip(ids, ref, r["outputs"]):
        pos = first_divergence(torch.tensor(a), torch.tensor(b))
        if pos is None or pos >= min(len(a), len(b)):
            continue
        with torch.inference_mode():
            logits = target32(torch.tensor([x + a[:pos]])).logits[0, -1].float()
        top2 = logits.topk(2).values
        parts.append([pos, float(top2[0] - top2[1]), float((logits[a[pos]] - logits[b[pos]]).abs())])
    r["divergence"] = parts
print(json.dumps(rows))
"""


def in_project(python: str, code: str, payload):
    """Run ``code`` under the project's python (its torch and transformers, not vLLM's preloaded OpenMP)
    with ``payload`` as JSON on stdin; the JSON on its last stdout line."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    res = subprocess.run(
        [python, "-c", code], input=json.dumps(payload), stdout=subprocess.PIPE, text=True, env=env, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_specdec_loop(python: str, ids: list[list[int]], max_tokens: int, dtype: str, legs=LOOP_LEGS) -> list[dict]:
    """specdec's own loop and transformers' generate in the project's environment (LOOP_LEGS)."""
    return in_project(python, _LOOP_CODE, [ids, max_tokens, dtype, legs])


# specdec's HeadDrafter on the same prompts, fp32, a k-token chain: the drafts of every step.
_DRAFTS_CODE = r"""
import json, sys, torch, specdec
from specdec.models import load_pair_head
from specdec.strategies import Chain
ids, max_tokens, k = json.loads(sys.stdin.read())
target, tok = specdec.load_smollm2()
head = load_pair_head(target, "smollm2")
class Recorded(Chain):
    def propose(self, ctx):
        tree = super().propose(ctx)
        self.log.append(tree.tokens[0, 1 : 1 + int(tree.lens[0])].tolist())
        return tree
res = []
for x in ids:
    s = Recorded(k)
    s.log = []
    out = specdec.generate(target, head, torch.tensor([x]), max_new_tokens=max_tokens, strategy=s,
                           eos_token_id=tok.eos_token_id).sequences[0, len(x):].tolist()
    res.append({"output": out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out, "drafts": s.log})
print(json.dumps(res))
"""


def specdec_drafts(python: str, ids: list[list[int]], max_tokens: int, k: int) -> list[dict]:
    """Per prompt: specdec's greedy output with its EAGLE head (chain of ``k``) and each step's drafts."""
    return in_project(python, _DRAFTS_CODE, [ids, max_tokens, k])


def drafts_by_root(output: list[int], proposals: list[list[int]]) -> dict[int, list[int]]:
    """Each step's drafts keyed by the index in ``output`` of the root they were drafted after. Greedy
    verification accepts the drafts' longest prefix that the output continues with, then one token, so
    the steps' roots follow from the output alone; the first proposal follows output[0] (the prefill's)."""
    keyed, r = {}, 0
    for d in proposals:
        if r >= len(output) - 1:
            break
        keyed[r] = d
        a = 0
        while a < len(d) and r + 1 + a < len(output) and d[a] == output[r + 1 + a]:
            a += 1
        r += a + 1
    return keyed


def compare_drafts(vllm_row: dict, ours: list[dict], k: int) -> dict:
    """vLLM's EAGLE drafts against specdec's for the same roots: steps compared, steps whose drafts are
    identical, and per depth the share of equal tokens (over steps where both drafted that deep)."""
    steps = same = 0
    depth_eq, depth_n = [0] * k, [0] * k
    for out, theirs, mine in zip(vllm_row["outputs"], vllm_row["proposals"], ours):
        a, b = drafts_by_root(out, theirs), drafts_by_root(mine["output"], mine["drafts"])
        for root in sorted(a.keys() & b.keys()):
            n = min(len(a[root]), len(b[root]), k)
            steps += 1
            same += a[root][:n] == b[root][:n]
            for j in range(n):
                depth_n[j] += 1
                depth_eq[j] += a[root][j] == b[root][j]
    return {"steps": steps, "same": same, "per_depth": [e / max(n, 1) for e, n in zip(depth_eq, depth_n)]}


def _partings(parts: list, prompts: int) -> str:
    """'k of n prompts: pos p (gap g), ...' for the divergence column."""
    shown = ", ".join(f"{pos} ({top2:.3f})" for pos, top2, _ in parts)
    return f"{len(parts)} of {prompts}: {shown}"


def table(rows: list[dict], batches: list[int], args) -> str:
    from specdec_kernels.benchmarking import machine_description, markdown_table

    base = {b: rows[0].get(f"tok_s_b{b}") for b in batches}
    columns = ["configuration"]
    for b in batches:
        columns += [f"tokens/s (batch {b})", "vs vLLM target"]
    columns += [
        "draft acceptance",
        "per position",
        "tokens per step",
        "output = vLLM target",
        "first parting from transformers (pos, top-2 gap)",
        "compiles",
    ]
    body = []
    for r in rows:
        cells = [r["mode"]]
        for b in batches:
            v = r.get(f"tok_s_b{b}")
            cells += ["—", "—"] if v is None else [f"{v:.1f}", f"{v / base[b]:.2f}x"]
        parts = r.get("divergence")
        parting = "—" if parts is None else ("none" if not parts else _partings(parts, args.prompts))
        compiles = f"{r['graphs']} graphs, {r['compile_s']:.0f} s" if r.get("graphs") else "—"
        if r.get("late_graphs"):
            compiles += f" (+{r['late_graphs']} in timed requests, {r['late_s']:.0f} s, not counted)"
        acc = "—" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        per_pos = " / ".join(f"{a:.2f}" for a in r.get("per_pos") or []) or "—"
        tau = r.get("tau") or (1 + sum(r["per_pos"]) if r.get("per_pos") else None)
        body.append(cells + [acc, per_pos, "—" if tau is None else f"{tau:.2f}", r["same"], parting, compiles])
    cmd = "LD_PRELOAD=$VLLM_VENV/lib/libiomp5.so $VLLM_VENV/bin/python bench/vllm_bench.py " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            f"# vLLM {args.vllm_version} (CPU build) and specdec, SmolLM2-135M-Instruct {args.dtype}, greedy",
            "",
            f"{args.prompts} chat_mixed prompts (code edits, summaries, open questions; chat template), up to "
            f"{args.max_tokens} new tokens, EOS honoured. Machine: {machine_description()}. Command: `{cmd}`.",
            "",
            markdown_table(columns, body),
            "",
            "tokens/s = generated tokens / wall time of the generate calls (model load and one warm-up request "
            "excluded). Acceptance = accepted / proposed draft tokens (vLLM's spec-decode counters); per position: "
            "the share of drafting steps whose draft was accepted through position 1, 2, ... (its counters per "
            "position over its count of drafts). Tokens per step: 1 + mean accepted drafts per drafting step "
            "(vLLM: 1 + the per-position shares; specdec: its tau). "
            "'output = vLLM target': every prompt's tokens identical to vLLM without speculation. "
            "'first parting': for each prompt whose output differs from transformers' plain greedy generate "
            "(the loop's reference), the first differing position and the fp32 target's gap between its top-2 "
            "logits there. Compiles: graphs compiled during the warm-up request (excluded from tokens/s) and "
            "their seconds; graphs compiled later, inside a timed request, are listed and their compile time is "
            "taken out of that request's wall time.",
        ]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument(
        "--specdec-python",
        help="the project's python: times specdec's own loop in the same run (with --check: its EAGLE drafts)",
    )
    p.add_argument(
        "--check", action="store_true", help="CI: 3 prompts, target vs specdec proposer (and eagle3), batch 1"
    )
    p.add_argument("--spec-tokens", type=int, default=4, help="num_speculative_tokens of every proposer")
    p.add_argument("--eagle-head", help="an EAGLE-3 head exported by specdec.eagle.export: adds the eagle3 leg")
    p.add_argument("--export-head", metavar="DIR", help="(project python) export SmolLM2's EAGLE-3 head to DIR, exit")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--loop-legs", help="comma-separated names of LOOP_LEGS to run (default: all)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    global DTYPE
    DTYPE = args.dtype
    if args.check and args.eagle_head and args.specdec_python:
        # vLLM's engine in this process, so that record_eagle_proposals sees its proposer
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if args.export_head:
        export_smollm2_head(args.export_head)
        return 0
    import torch
    import vllm

    args.vllm_version, args.torch_version = vllm.__version__, torch.__version__
    configs = speculative_configs(args.spec_tokens, args.eagle_head)
    modes = list(configs)
    batches = [1, 4]
    proposals = None
    if args.check:
        args.prompts, args.max_tokens, batches = min(args.prompts, 3), min(args.max_tokens, 48), [1]
        modes = [modes[0], modes[2]] + modes[3:]  # target, specdec proposer, eagle3 when given
        if args.eagle_head and args.specdec_python:
            proposals = record_eagle_proposals()  # the engine runs in this process (set before import)
    ids = chat_token_ids(args.prompts)
    rows = [run_vllm(m, configs[m], ids, args.max_tokens, batches, proposals if "eagle3" in m else None) for m in modes]
    drafts = None
    if proposals is not None:
        drafts = compare_drafts(
            rows[-1], specdec_drafts(args.specdec_python, ids, args.max_tokens, args.spec_tokens), args.spec_tokens
        )
        drafts["line"] = (
            f"EAGLE-3 drafts, vLLM's against specdec's on the same roots (fp32, k={args.spec_tokens}): "
            f"{drafts['same']} of {drafts['steps']} steps identical; equal tokens per depth "
            + " / ".join(f"{x:.3f}" for x in drafts["per_depth"])
        )
        log(drafts["line"])
    elif args.specdec_python and not args.check:
        legs = LOOP_LEGS
        if args.loop_legs:
            wanted = args.loop_legs.split(",")
            legs = [leg for leg in LOOP_LEGS if leg[0] in wanted or leg[1] in wanted]
        rows += run_specdec_loop(args.specdec_python, ids, args.max_tokens, args.dtype, legs)
    reference = rows[0]["outputs"]
    for r in rows:
        r["same"] = (
            "yes"
            if r["outputs"] == reference
            else f"NO ({sum(a != b for a, b in zip(r['outputs'], reference))} of {len(reference)} differ)"
        )
    report = table(rows, batches, args) + (f"\n\n{drafts['line']}." if drafts else "")
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    # vLLM's speculative output must equal vLLM alone in fp32; in bf16 it may part at near-ties (reported)
    bad = [r["mode"] for r in rows if r["same"] != "yes" and r["mode"].startswith("vLLM") and DTYPE == "float32"]
    if bad:
        log(f"FAIL: output differs from vLLM without speculation: {bad}")
        return 1
    # the same head in both runtimes drafts the same tokens, up to fp32 near-ties in the first draft
    if drafts is not None and (drafts["steps"] == 0 or drafts["per_depth"][0] < MIN_FIRST_DRAFT_MATCH):
        log(f"FAIL: vLLM's EAGLE-3 drafts are not specdec's (first-draft match below {MIN_FIRST_DRAFT_MATCH})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
