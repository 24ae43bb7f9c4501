"""The docs' code runs: every ```python block of docs/integration.md and of the README, in order, in
one namespace per file."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("name,at_least", [("docs/integration.md", 5), ("README.md", 2)])
def test_doc_snippets_run(name, at_least):
    blocks = python_blocks(ROOT / name)
    assert len(blocks) >= at_least, f"{name} lost its examples"
    namespace: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message says which block broke
            raise AssertionError(f"{name}: code block {i} fails: {type(e).__name__}: {e}") from e
