"""The packages' import graph: no cycles (imports inside functions count: a lazy import hides a cycle, it
does not remove it) and no private name (``_x``) of one module imported by another. Read from the source
with ``ast``, nothing is imported."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"specdec_kernels": ROOT, "specdec": ROOT / "python_api"}


def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of both packages."""
    found = {}
    for pkg, base in PACKAGES.items():
        for path in (base / pkg).rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, mods: dict[str, Path]):
    """(imported module, imported name or None) for every import statement of a module."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in mods:
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in mods:  # a submodule
                    yield f"{source}.{alias.name}", None
                elif source in mods:
                    yield source, alias.name


def graph():
    mods = modules()
    edges = {m: set() for m in mods}
    private = []
    for m, path in mods.items():
        for target, name in imports(m, path, mods):
            if target == m:
                continue
            if name is None or not name.startswith("_") or name.startswith("__"):
                edges[m].add(target)
            elif name == "_C":  # the compiled extension: a module, not a name of the package
                pass
            else:
                edges[m].add(target)
                private.append(f"{m} imports {name} from {target}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    edges, _ = graph()
    assert len(edges) > 30  # both packages were found
    assert cycles(edges) == []


def test_no_private_names_cross_modules():
    _, private = graph()
    assert private == []


def test_the_checker_sees_a_cycle_and_a_private_import():
    """The checks above can fail: a made-up graph with a cycle is reported, and so is a private import."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges, _ = graph()
    assert "specdec.proposer" in edges["specdec.decoder"]  # lazy and top-level imports are both read
