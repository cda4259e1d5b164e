"""The package's import graph: no cycle among its modules (imports inside functions count), and
the config layer is a leaf, so reading a YAML file imports neither torch nor any method."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "meddistill"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["meddistill", *path.relative_to(PACKAGE).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its text (``from a import b`` is an
    edge to ``a.b`` when that is a module, else to ``a``), plus the packages Python runs first:
    importing ``meddistill.x.y`` from outside ``x`` runs ``meddistill/x/__init__.py`` (the root
    package excepted; inside a package, its ``__init__`` is already running)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:
                        graph[mod].add(sub)
                    elif target in mods:
                        graph[mod].add(target)
    return with_packages(graph)


def with_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b.c`` from outside ``a.b`` first runs the package ``a.b``: that edge too."""
    out = {mod: set(targets) for mod, targets in graph.items()}
    for mod, targets in graph.items():
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts)):
                package = ".".join(parts[:i])
                if package in graph and mod != package and not mod.startswith(package + "."):
                    out[mod].add(package)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_a_cycle_through_a_package_init_counts():
    """identity → distill.base runs distill/__init__, whose method modules import experts, which
    imports identity: the cycle that broke ``meddistill audit`` (a partially initialised module)."""
    g = import_graph()
    g["meddistill.identity"] = g["meddistill.identity"] | {"meddistill.distill.base"}
    assert any("meddistill.identity" in c for c in cycles(with_packages(g)))


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_config_imports_nothing_of_the_package_but_errors():
    assert import_graph()["meddistill.config"] <= {"meddistill.errors", "meddistill.utils"}


def test_reading_a_config_imports_neither_torch_nor_a_method(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("distill: {ipc: 3}\n")
    code = (
        "import sys; from meddistill.config import RunConfig, merge, read_yaml; "
        f"merge(RunConfig(), read_yaml({str(cfg)!r})); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('meddistill.distill')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
