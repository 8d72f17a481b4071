"""The benchmarks never import the tools, and no module of benchmarks/ or tools/ imports itself back
through a cycle (read from the sources' import statements, nothing imported)."""
import ast
import os

from tools.gpu.runs import ROOT

PACKAGES = ("benchmarks", "tools")


def _modules() -> dict:
    """{dotted name: path} of every module under PACKAGES."""
    found = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    found[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return found


def _imports(path: str, known) -> set:
    """The modules of ``known`` that the file at ``path`` imports (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def _graph() -> dict:
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def test_the_benchmarks_never_import_the_tools():
    graph = _graph()
    assert "benchmarks.kernels" in graph and "tools.gpu.bars" in graph
    wrong = {m: sorted(d for d in deps if d.startswith("tools")) for m, deps in graph.items()
             if m.startswith("benchmarks")}
    assert not any(wrong.values()), wrong


def test_no_import_cycles():
    graph = _graph()
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
