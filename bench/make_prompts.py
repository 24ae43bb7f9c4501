"""Build the held-out prompt sets used by the demo and the benchmarks.

    python bench/make_prompts.py

writes python_api/specdec/assets/prompts/{heldout_code,input_grounded,chat_mixed}.json

Prompts come only from the bundled pair's held-out files (CPython stdlib files whose sorted index
% 50 == 0, see bench/models/train_pair.py), so the models never saw them in training. Each prompt is
the 12 lines before a function definition plus its ``def`` line: the model continues the body.
"""

import json
from pathlib import Path

from specdec_kernels.benchmarking import import_script

ROOT = Path(__file__).resolve().parents[1]
# the corpus helpers of the pair's training script (bench/models is not a package)
train_pair = import_script(ROOT / "bench" / "models" / "train_pair.py")

OUT = ROOT / "python_api" / "specdec" / "assets" / "prompts" / "heldout_code.json"
GROUNDED = OUT.with_name("input_grounded.json")
TASKS = [
    "Add type hints to this Python function and return the complete function:",
    "Add a short docstring to this Python function and return the complete function:",
]


SUMMARY_TASK = "Summarize the following text in two sentences:"
MIXED = OUT.with_name("chat_mixed.json")
# Open questions about topics and in phrasings that are in none of the drafters' training prompts
# (bench/models/distill_smollm2_draft.py QUESTIONS x CONCEPTS): answers prompt lookup cannot copy.
OPEN_QUESTIONS = [
    "What is the difference between a process and a thread? Answer briefly.",
    "Explain how a Bloom filter works and when to use one.",
    "Why is floating-point arithmetic sometimes inexact? Give an example.",
    "Describe what a REST API is to a beginner.",
    "How does garbage collection work in Python?",
    "What are the pros and cons of a relational database compared with a key-value store?",
]


def grounded(held, root, n: int = 6) -> None:
    """Input-grounded tasks (edit a given function, summarize a given text): the answer repeats or
    condenses the prompt, the case prompt lookup drafting is for. Functions come from the held-out files,
    texts from the held-out topics of the Python reference (pydoc_data.topics, see train_pair.py)."""
    edits, sources = [], []
    for f in held:
        fn = next(train_pair.functions(train_pair.read_text(root / f).splitlines()), None)
        if fn is None:
            continue
        edits.append(f"{TASKS[len(edits) % len(TASKS)]}\n\n```python\n{fn}\n```")
        sources.append(f)
        if len(edits) == n:
            break
    paras = [p for p in train_pair.prose_paragraphs(held_out=True) if len(p) <= 900]
    summaries = [f"{SUMMARY_TASK}\n\n{paras[i * len(paras) // n]}" for i in range(n)]
    prompts = [p for pair in zip(edits, summaries) for p in pair]  # alternate, so --prompts N takes both kinds
    sources = [s for f in sources for s in (f, "pydoc_data.topics (held-out topic)")]
    GROUNDED.write_text(
        json.dumps({"about": grounded.__doc__.split(".")[0], "sources": sources, "prompts": prompts}, indent=1) + "\n"
    )
    print(f"{len(prompts)} prompts -> {GROUNDED}")
    mixed(prompts, sources)


def mixed(grounded_prompts: list[str], grounded_sources: list[str]) -> None:
    """Chat prompts of three kinds in turn: a code edit, a summary, an open question. Edits and summaries
    are the input-grounded ones (held-out functions and topics); the questions are OPEN_QUESTIONS."""
    prompts, sources = [], []
    for i, q in enumerate(OPEN_QUESTIONS):
        prompts += [grounded_prompts[2 * i], grounded_prompts[2 * i + 1], q]
        sources += [grounded_sources[2 * i], grounded_sources[2 * i + 1], "open question (make_prompts.OPEN_QUESTIONS)"]
    MIXED.write_text(
        json.dumps({"about": mixed.__doc__.split(".")[0], "sources": sources, "prompts": prompts}, indent=1) + "\n"
    )
    print(f"{len(prompts)} prompts -> {MIXED}")


def main(n: int = 16) -> None:
    root, rel = train_pair.stdlib_files()
    _, held = train_pair.split_files(rel, 50)
    prompts, sources = [], []
    for f in held:
        lines = train_pair.read_text(root / f).splitlines()
        defs = [
            i for i, ln in enumerate(lines) if i >= 15 and ln.lstrip().startswith("def ") and ln.rstrip().endswith(":")
        ]
        if not defs:
            continue
        i = defs[len(defs) // 2]
        prompts.append("\n".join(lines[i - 12 : i + 1]) + "\n")
        sources.append(f"{f}:{i + 1}")
        if len(prompts) == n:
            break
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"about": __doc__.strip().splitlines()[0], "sources": sources, "prompts": prompts}, indent=1) + "\n"
    )
    print(f"{len(prompts)} prompts -> {OUT}")
    grounded(held, root)


if __name__ == "__main__":
    main()
