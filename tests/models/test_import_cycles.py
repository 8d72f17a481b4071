"""No import cycles among the vimd_models modules, and the subpackages depend on each other one way
along the layers of docs/architecture.md (models -> tasks -> engine -> commands: a layer never
imports one above it), read from the import statements of the source (function-level imports
included)."""
import ast
import os

PKG = "vimd_models"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), PKG)


def _modules() -> dict[str, str]:
    """module name -> file; a package is named by its __init__.py."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return out


def _imported(name: str, path: str, modules: dict) -> set[str]:
    """The vimd_models modules that importing ``name`` executes: each imported module and the
    packages above it that ``name`` is not inside (those are already being imported)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    with open(path) as f:
        source = f.read()
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
                assert base in modules, f"{path}:{node.lineno}: no module {base}"
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    out = set()
    for t in targets:
        parts = t.split(".")
        for i in range(1, len(parts) + 1):
            m = ".".join(parts[:i])
            if m in modules and m != name and not (name + ".").startswith(m + "."):
                out.add(m)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imported(m, p, modules) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_module_import_cycles():
    graph = _graph()
    assert len(graph) > 30 and "vimd_models.engine.trainer" in graph["vimd_models.engine"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_subpackages_import_one_way():
    def group(m):
        return ".".join(m.split(".")[:2])
    graph = {}
    for m, deps in _graph().items():
        graph.setdefault(group(m), set()).update(group(d) for d in deps if group(d) != group(m))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    layers = [{"vimd_models.layers", "vimd_models.models", "vimd_models.registry", "vimd_models.factory",
               "vimd_models.weights", "vimd_models.data", "vimd_models.distill"},
              {"vimd_models.tasks"}, {"vimd_models.engine"}, {"vimd_models.commands", "vimd_models.cli"}]
    for i, low in enumerate(layers):
        above = set().union(*layers[i + 1:])
        for m in low:
            assert not graph[m] & above, f"{m} imports {sorted(graph[m] & above)}, a layer above it"
