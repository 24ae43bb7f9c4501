"""The guides' code runs: every ```python block of docs/integration.md, in order, in one namespace."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("name", ["integration.md"])
def test_guide_snippets_run(name):
    blocks = python_blocks(DOCS / name)
    assert len(blocks) >= 5, "the guide lost its examples"
    namespace: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message says which block broke
            raise AssertionError(f"{name}: code block {i} fails: {type(e).__name__}: {e}") from e
