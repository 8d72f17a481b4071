"""The benchmarks (vimd_kernels.bench, vimd_models.bench) never import the tools, the kernel benchmarks
never import vimd_models, and no module of the benchmarks or tools/ imports itself back through a
cycle (read from the sources' import statements, nothing imported)."""
import ast
import os

from tools.gpu.runs import ROOT

# The files read: a folder stands for every module under it.
SOURCES = ("vimd_kernels/bench", "vimd_models/bench.py", "tools")


def _module_name(path: str) -> str:
    return os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")


def _modules() -> dict:
    """{dotted name: path} of every module of SOURCES."""
    found = {}
    for src in SOURCES:
        top = os.path.join(ROOT, src)
        paths = [top] if top.endswith(".py") else [os.path.join(folder, f) for folder, _, files in os.walk(top)
                                                   for f in files if f.endswith(".py")]
        found.update({_module_name(p): p for p in paths})
    return found


def _imports(path: str) -> set:
    """Every module name the file at ``path`` imports (anywhere in it), with each ``from M import n``
    also as ``M.n``; relative imports resolved."""
    package = _module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package.pop()
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return out


def _graph(known) -> dict:
    """{module: the modules of ``known`` it imports}."""
    return {m: (_imports(p) & set(known)) - {m} for m, p in known.items()}


def _imported_from(module: str, prefix: str) -> list:
    return sorted(n for n in _imports(_modules()[module]) if n == prefix or n.startswith(prefix + "."))


def test_the_benchmarks_never_import_the_tools():
    mods = _modules()
    assert {"vimd_kernels.bench.kernels", "vimd_models.bench", "tools.gpu.bars"} <= set(mods)
    wrong = {m: _imported_from(m, "tools") for m in mods if not m.startswith("tools")}
    assert not any(wrong.values()), wrong


def test_the_kernel_benchmarks_never_import_vimd_models():
    wrong = {m: _imported_from(m, "vimd_models") for m in _modules() if m.startswith("vimd_kernels")}
    assert not any(wrong.values()), wrong


def test_no_import_cycles():
    graph = _graph(_modules())
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(graph[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
