"""The shape of the code itself: what the developers' guide promises about the modules.

These read the source with `ast` (nothing is imported), so they are fast and see every import,
also those inside functions, which run only on some paths."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlp_cli"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (inside functions too).
    `from mlp_cli import x` imports the module mlp_cli.x when there is one, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # importing a.b.c runs a/__init__ and a/b/__init__ too, except those that are already
            # running: the packages the importer itself is in
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and (prefix == target or not name.startswith(prefix + ".")):
                    found.add(prefix)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_finds_imports_inside_functions_and_from_the_package():
    graph = import_graph()
    assert "mlp_cli.errors" in graph["mlp_cli.config"]
    assert "mlp_cli.system" in graph["mlp_cli.pictures"]  # imported inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_among_the_modules():
    """Nothing below imports what stands above it; a circle would make the order of imports matter."""
    cycle = _cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_one_softmax_in_the_engine_and_one_in_the_reference_tier():
    """predict, pictures and the loss share nn/losses.py's; reference.py keeps the plain derivation."""
    defined = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") == "softmax")
    assert defined == ["nn/losses.py", "nn/reference.py"]


def test_the_shared_softmax_is_the_loss_s_softmax():
    import numpy as np

    from mlp_cli.nn.losses import softmax, softmax_cross_entropy

    logits = np.random.default_rng(0).normal(0, 30, (5, 4)).astype(np.float32)
    probs = softmax(logits)
    assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1)
    exact = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True)
    assert np.allclose(probs, exact, rtol=1e-12, atol=0)
    labels = np.array([0, 1, 2, 3, 0])
    _, dlogits = softmax_cross_entropy(logits, labels)  # (y^ - y) / N in float32
    onehot = np.eye(4)[labels]
    assert np.allclose(dlogits, (probs - onehot) / 5, atol=1e-7)


MAX_FUNCTION_LINES = 80
# Files whose long functions are being restructured elsewhere; empty once they are.
LONG_FUNCTIONS_ALLOWED_IN: set[str] = set()


def test_no_function_over_80_lines():
    """From its `def` to its last line, docstring and comments included (decorators not)."""
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(PACKAGE.rglob("*.py")) if str(path.relative_to(PACKAGE)) not in LONG_FUNCTIONS_ALLOWED_IN
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def _files_using(predicate) -> list[str]:
    return sorted({str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text())) if predicate(node)})


def test_one_console_and_one_place_for_the_signal_handlers():
    """Progress bars (tqdm) only in console.py; signal handlers installed only by console.py
    (StopSignals, inside a command), errors.py (the exit codes' handlers) and entry.py (the
    console script's first milliseconds); no other class calls itself a console."""
    def imports_tqdm(node):
        return (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tqdm")) or \
            (isinstance(node, ast.Import) and any(a.name.startswith("tqdm") for a in node.names))

    def sets_a_handler(node):
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "signal" \
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "signal"

    assert _files_using(imports_tqdm) == ["console.py"]
    assert _files_using(sets_a_handler) == ["console.py", "entry.py", "errors.py"]
    assert _files_using(lambda n: isinstance(n, ast.ClassDef) and "console" in n.name.lower()) == ["console.py"]
