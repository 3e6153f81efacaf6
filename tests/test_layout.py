"""The package layout stays a stack: no import cycles between modules, and no module imports a layer above it.

Every import counts, also those inside functions (a lazy import is still a dependency: `bot.retrain` and
`bot.runner` once imported each other that way). The layers, lowest first, follow the data flow; a layer may
import any layer below it and, within itself, any module that does not import it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "classifier", "explain", "bot")

# Lowest first. `bot.sources` and `bot.ingest` share a layer: the sources use ingest's one HTTP client
# (`bot.ingest.fetch`, retries and rate limits for every network), and ingest stores what sources yield.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("storage",),
    ("classifier",),
    ("explain",),
    ("bot.config",),
    ("bot.sources", "bot.ingest"),
    ("bot.feed.queries", "bot.feed.render", "bot.feed.thumbnails", "bot.feed.channel", "bot.feed.server", "bot.feed"),
    ("bot.review",),
    ("bot.classify",),
    ("bot.status",),
    ("bot.app",),
    ("bot.retrain",),
    ("bot.chat",),
    ("bot.run",),
    ("bot.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules `path` imports (`from a.b import c` counts `a.b.c` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from bot import review` depends on bot.review; `from bot.app import load_model` on bot.app.
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found - {module_name(path)} if path.is_relative_to(ROOT) else found


def layer_of(module: str) -> int:
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def graph() -> dict[str, set[str]]:
    modules = product_modules()
    # A package's __init__ importing its own submodules is how it re-exports them, not a dependency cycle.
    return {
        name: {dep for dep in imports_of(path, modules) if not dep.startswith(name + ".")}
        for name, path in modules.items()
    }


def test_no_module_imports_a_layer_above_it():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})"
        for module, deps in graph().items()
        for dep in deps
        if layer_of(dep) > layer_of(module)
    ]
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(edges.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(
                    " -> ".join(path[path.index(dep) :] + [module, dep]) if dep in path else f"{module} -> {dep}"
                )
            elif dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from bot.review import enqueue\n    import storage.blobs\n")
    assert imports_of(source, product_modules()) >= {"bot.review", "storage.blobs"}
