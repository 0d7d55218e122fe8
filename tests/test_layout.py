"""The layout rules of docs/architecture.md, checked on the source: the package import
graph of nine has no cycle (imports inside functions count), the codec imports nothing
of ours, the floors below import nothing of the floors above, cmd/ is not a package."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PKG = os.path.join(ROOT, "nine")


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                if rel.endswith(".__init__"):
                    rel = rel[:-9]
                yield rel, path


def _imports(mod, path):
    """The nine modules that module `mod` imports anywhere in its file."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "nine")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = base[:len(base) - (node.level - 1)]
                name = ".".join(target + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "nine":
                out.add(name)
    return out


def _package(mod):
    """The floor a module belongs to: nine.X for nine.X.*, the module itself for a
    top-level module."""
    parts = mod.split(".")
    return ".".join(parts[:2])


def package_graph():
    graph = {}
    for mod, path in _modules():
        src = _package(mod)
        for dst in _imports(mod, path):
            d = _package(dst)
            if d != src and d != "nine":
                graph.setdefault(src, set()).add(d)
        graph.setdefault(src, set())
    return graph


def find_cycle(graph):
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_package_graph_has_no_cycle():
    g = package_graph()
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_floors_import_downwards_only():
    g = package_graph()
    assert g["nine.protocol"] == set(), "the codec imports nothing of ours"
    assert g["nine.server"] <= {"nine.protocol", "nine.addr"}
    for upper in ("nine.mux", "nine.group", "nine.launch", "nine.cli", "nine.assembly"):
        assert upper not in g["nine.final"], "final imports %s" % upper
    for upper in ("nine.mux", "nine.final", "nine.launch", "nine.cli", "nine.assembly"):
        assert upper not in g["nine.group"], "group imports %s" % upper
    assert "nine.group" not in g["nine.mux"], "the mux does not build the group service"


def test_cmd_is_scripts_not_a_package():
    cmd = os.path.join(ROOT, "cmd")
    assert not os.path.exists(os.path.join(cmd, "__init__.py"))
    scripts = [f for f in os.listdir(cmd) if not f.endswith(".md")]
    assert "nine" in scripts
    for f in scripts:
        path = os.path.join(cmd, f)
        assert os.access(path, os.X_OK), f
        assert len(open(path).read().splitlines()) <= 12, "%s is not a thin script" % f
        assert f not in ("pgrep", "pcp", "ptop", "ptail", "psync"), "shadows a command"
