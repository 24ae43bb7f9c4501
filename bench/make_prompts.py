"""Build the held-out code prompt set used by the demo and the benchmarks.

    python bench/make_prompts.py     # writes python_api/specdec/assets/prompts/heldout_code.json

Prompts come only from the bundled pair's held-out files (CPython stdlib files whose sorted index
% 50 == 0, see bench/models/train_pair.py), so the models never saw them in training. Each prompt is
the 12 lines before a function definition plus its ``def`` line: the model continues the body.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "models"))
from train_pair import read_text, split_files, stdlib_files  # noqa: E402

OUT = ROOT / "python_api" / "specdec" / "assets" / "prompts" / "heldout_code.json"


def main(n: int = 16) -> None:
    root, rel = stdlib_files()
    _, held = split_files(rel, 50)
    prompts, sources = [], []
    for f in held:
        lines = read_text(root / f).splitlines()
        defs = [i for i, l in enumerate(lines) if i >= 15 and l.lstrip().startswith("def ") and l.rstrip().endswith(":")]
        if not defs:
            continue
        i = defs[len(defs) // 2]
        prompts.append("\n".join(lines[i - 12 : i + 1]) + "\n")
        sources.append(f"{f}:{i + 1}")
        if len(prompts) == n:
            break
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"about": __doc__.strip().splitlines()[0], "sources": sources, "prompts": prompts}, indent=1) + "\n")
    print(f"{len(prompts)} prompts -> {OUT}")


if __name__ == "__main__":
    main()
