"""One-way layers (issue 12, item 7), checked on the source with `ast` (no import-linter dependency).

Layers, from the top:
- composition root: `rigctl.cli`, `rigctl.commands.*`, `rigctl.session`, `rigctl.plate_session`, `rigctl.rigs`, `rigctl.rigfile`,
  `rigctl.maxlab_plate` (a MaxTwo plate's server and per-well drivers),
  `rigctl.benchmarks.*`, `rigctl.gym.*` (the Gymnasium environment opens rigs), `rigctl.twin.*` (the digital twin
  drives a simulated culture): may import anything;
- simulator: `rigctl.sim.*` (folder `sim/`): may import the core (e.g. the drivers' wire modules), not the root;
- core: every other module of the package (types, errors, engine, protocol, loop, store, safety, signal,
  model, protocols, drivers, ...): never imports `rigctl.sim` or the composition root, directly, lazily (inside
  a function) or transitively through other modules.
Also: `rigctl.rigfile` never reaches `rigctl.rigs` (one `Rig`/`open_rig`, no circle), `Rig` and `open_rig` are
defined only in `rigctl.rigs`, and `drivers/_bench.py` (a benchmark, not a driver) does not exist.

Every import counts: `import x`, `from x import y`, relative imports, imports inside functions or
`if TYPE_CHECKING:`, and `importlib.import_module("literal")`. Importing `a.b.c` also runs `a` and `a.b`.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMPOSITION_ROOT = ("rigctl.cli", "rigctl.commands", "rigctl.session", "rigctl.rigs", "rigctl.rigfile",
                    "rigctl.benchmarks", "rigctl.gym", "rigctl.plate_session", "rigctl.maxlab_plate", "rigctl.twin")
SIM = ("rigctl.sim",)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer(module: str) -> str:
    if _within(module, COMPOSITION_ROOT):
        return "root"
    if _within(module, SIM):
        return "sim"
    return "core"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported rigctl module (or a package run on the way to it)
    file: str  # importing file, relative to the repository
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source} imports {self.target}"


def package_files(root: Path) -> dict[str, Path]:
    """module name -> file, for every .py file under the package dirs pyproject maps (`package-dir`)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in package_dir.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if any(part.startswith((".", "__pycache__")) for part in rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module name an import statement (anywhere in the file) may load, with its line."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
            out += [(f"{name}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None)
                   in ("import_module", "__import__"))):
            out.append((node.args[0].value, node.lineno))
    return out


def import_graph(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, list[Edge]]]:
    """The package's modules and, per module, its imports of other package modules."""
    modules = package_files(root)
    graph: dict[str, list[Edge]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(root))
        edges: dict[tuple[str, int], Edge] = {}
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            if not (name == "rigctl" or name.startswith("rigctl.")):
                continue
            parts = name.split(".")
            # `from pkg import attr` (not a module) and `import a.b.c` -> every known package on the way
            for k in range(1, len(parts) + 1):
                target = ".".join(parts[:k])
                if target in modules and target != module:
                    edges.setdefault((target, line), Edge(module, target, rel, line))
        graph[module] = sorted(edges.values(), key=lambda e: (e.line, e.target))
    return modules, graph


def _chain(graph: dict[str, list[Edge]], start: str, bad) -> list[Edge] | None:
    """Shortest import chain from `start` to a module for which `bad(module)` holds (None: unreachable)."""
    seen = {start}
    queue: deque[tuple[str, list[Edge]]] = deque([(start, [])])
    while queue:
        module, path = queue.popleft()
        for edge in graph.get(module, []):
            if edge.target in seen:
                continue
            if bad(edge.target):
                return path + [edge]
            seen.add(edge.target)
            queue.append((edge.target, path + [edge]))
    return None


def layer_violations(root: Path = ROOT) -> list[str]:
    modules, graph = import_graph(root)
    problems: list[str] = []
    for module in sorted(modules):
        kind = layer(module)
        if kind == "root":
            continue
        forbidden = ("sim", "root") if kind == "core" else ("root",)
        direct = [e for e in graph[module] if layer(e.target) in forbidden]  # top-level or lazy imports
        for edge in direct:  # one message per import: `rigctl.sim.rig`, not also the package `rigctl.sim`
            if not any(o.line == edge.line and o.target.startswith(edge.target + ".") for o in direct):
                problems.append(f"{edge} ({kind} may not import the {layer(edge.target)} layer)")
        chain = _chain(graph, module, lambda m: layer(m) in forbidden)
        if chain and len(chain) > 1:  # reached only through other modules
            hops = " -> ".join(str(e) for e in chain)
            problems.append(f"{modules[module].relative_to(root)}: {kind} module {module} reaches "
                            f"{chain[-1].target} ({layer(chain[-1].target)} layer) transitively: {hops}")
    chain = _chain(graph, "rigctl.rigfile", lambda m: m == "rigctl.rigs")
    if chain:
        problems.append("rigctl.rigfile must not import rigctl.rigs (Rig/open_rig circle): "
                        + " -> ".join(str(e) for e in chain))
    return problems


def rig_definitions(root: Path = ROOT) -> list[str]:
    """`file:line: name` of every top-level `class Rig` / `def open_rig` in the package."""
    out = []
    for module, path in package_files(root).items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in ("Rig", "open_rig"):
                out.append(f"{path.relative_to(root)}:{node.lineno}: {node.name}")
    return sorted(out)


def test_the_walk_sees_every_package_dir():
    modules, graph = import_graph()
    for name in ("rigctl", "rigctl.loop", "rigctl.signal.path", "rigctl.model", "rigctl.drivers.base",
                 "rigctl.protocols", "rigctl.sim.rig", "rigctl.commands.run", "rigctl.rigs", "rigctl.rigfile"):
        assert name in modules, name
    # the walker does resolve imports: the simulated rig renders with the sim's own renderer
    assert any(e.target == "rigctl.sim.render" for e in graph["rigctl.sim.rig"])
    # ... and lazy imports inside functions: `bench throughput` loads its harness when it runs
    assert any(e.target == "rigctl.benchmarks.throughput" for e in graph["rigctl.commands.bench"])


def test_relative_and_lazy_imports_are_resolved(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "rigctl" = "pkg", '
                                             '"rigctl.sim" = "simdir" }\n')
    (tmp_path / "pkg" / "signal").mkdir(parents=True)
    (tmp_path / "simdir").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "signal" / "__init__.py").write_text("from .path import x\n")
    (tmp_path / "pkg" / "signal" / "path.py").write_text("def f():\n    from ..helper import y\n")
    (tmp_path / "pkg" / "helper.py").write_text("import importlib\n\n\ndef g():\n"
                                                "    importlib.import_module('rigctl.sim.render')\n")
    (tmp_path / "simdir" / "__init__.py").write_text("")
    (tmp_path / "simdir" / "render.py").write_text("")
    problems = layer_violations(tmp_path)
    assert any(p.startswith("pkg/helper.py:5: rigctl.helper imports rigctl.sim") for p in problems), problems
    transitive = [p for p in problems if p.startswith("pkg/signal/path.py:") and "transitively" in p]
    assert transitive and "pkg/signal/path.py:2: rigctl.signal.path imports rigctl.helper" in transitive[0]
    assert any(p.startswith("pkg/signal/__init__.py:") and "transitively" in p for p in problems), problems


def test_layers_are_one_way():
    problems = layer_violations()
    assert not problems, "import layering violated:\n" + "\n".join(problems)


def test_rig_and_open_rig_live_only_in_rigs():
    assert [d.split(":", 2)[2].strip() for d in rig_definitions()] == ["Rig", "open_rig"], rig_definitions()
    assert all(d.startswith("rigctl/rigs.py:") for d in rig_definitions()), rig_definitions()


def test_drivers_hold_only_drivers():
    assert not (ROOT / "drivers" / "_bench.py").exists(), \
        "drivers/_bench.py is a benchmark, not a driver: it lives in rigctl/benchmarks/drivers.py"


if __name__ == "__main__":  # python tests/test_layers.py [REPO]: list the violations of another checkout
    import sys

    found = layer_violations(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    print("\n".join(found) or "no violations")
    sys.exit(1 if found else 0)
