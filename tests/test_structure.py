"""The house as read from the code: the import direction between folders, no import loops, the depth of import
chains, and file and function sizes (docs/architecture.md is the map).

Known departures are listed below; an entry that is no longer needed fails too, so the lists only shrink."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffsynth"

# Folder (or top-level module) -> layer. A folder may import its own layer or lower ones, never a higher one.
LAYERS = {
    "configs": 0, "data": 0,
    "models": 1, "pose": 1, "schedulers": 1, "prompters": 1, "acceleration": 1, "distributed": 1,
    "loading": 2, "tiny": 2,
    "pipelines": 3, "training": 3,
    "animate": 4, "app": 4, "cli": 4, "demo": 4, "inference": 4, "convert_lora": 4,
    "download": 4, "__main__": 4, "__init__": 5,
}
MAX_DEPTH = 7            # folders crossed by the longest chain of module-level imports
MAX_FILE_LINES = 400     # model definitions (models/) excepted
MAX_FUNCTION_LINES = 80

# Known departures, to shrink: files over MAX_FILE_LINES and functions over MAX_FUNCTION_LINES.
KNOWN_UPWARD: set = set()      # (importer folder, imported folder) pairs that reach up a layer
KNOWN_LOOPS: set = set()       # frozensets of two folders that import each other
KNOWN_LONG_FILES: set = set()
KNOWN_LONG_FUNCTIONS: set = set()


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        name = ".".join(("diffsynth", *rel.with_suffix("").parts))
        yield (name[: -len(".__init__")] if name.endswith(".__init__") else name), path, rel


MODULES = {name: (path, rel) for name, path, rel in modules()}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str, top_level_only: bool = False):
    """The package modules `module` imports (all imports, or only those run when it is imported)."""
    path, _ = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:       # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("diffsynth"):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in MODULES:
                    yield target
                elif base in MODULES:
                    yield base


def folder_edges():
    edges = defaultdict(set)
    for module in MODULES:
        for target in imports(module):
            a, b = folder(module), folder(target)
            if a != b:
                edges[a].add(b)
    return edges


def test_every_folder_has_a_layer():
    assert {folder(m) for m in MODULES} <= set(LAYERS)


def check_layers(edges) -> None:
    upward = {(a, b) for a, targets in edges.items() for b in targets if LAYERS[b] > LAYERS[a]}
    assert upward - KNOWN_UPWARD == set(), "an import reaches up a layer (see LAYERS)"
    assert KNOWN_UPWARD - upward == set(), "a known departure is gone: remove it from KNOWN_UPWARD"


def test_imports_point_down():
    check_layers(folder_edges())


def test_no_import_loops_between_folders():
    edges = folder_edges()
    loops = {frozenset({a, b}) for a in edges for b in edges[a] if a in edges.get(b, ())}
    assert loops - KNOWN_LOOPS == set(), "two folders import each other"
    assert KNOWN_LOOPS - loops == set(), "a known loop is gone: remove it from KNOWN_LOOPS"


def test_import_chains_are_short():
    """No module-level import loop, and the longest chain of module-level imports crosses at most MAX_DEPTH
    folders (a step inside one folder does not count)."""
    graph = {m: set(imports(m, top_level_only=True)) - {m} for m in MODULES}
    depth: dict = {}

    def longest(m, stack=()):
        if m in stack:
            raise AssertionError(f"module import loop: {' -> '.join(stack + (m,))}")
        if m not in depth:
            depth[m] = max((longest(t, stack + (m,)) + (folder(t) != folder(m)) for t in graph[m]), default=1)
        return depth[m]
    deepest = max(MODULES, key=longest)
    assert depth[deepest] <= MAX_DEPTH, f"{deepest} sits on a chain of imports through {depth[deepest]} folders"


def test_file_sizes():
    long_files = {str(rel) for _, (path, rel) in MODULES.items()
                  if rel.parts[0] != "models" and len(path.read_text().splitlines()) > MAX_FILE_LINES}
    assert long_files - KNOWN_LONG_FILES == set(), f"files over {MAX_FILE_LINES} lines"
    assert KNOWN_LONG_FILES - long_files == set(), "a known long file is short now: remove it from the list"


def test_function_sizes():
    long_functions = set()
    for _, (path, rel) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long_functions.add(f"{rel}:{node.name}")
    assert long_functions - KNOWN_LONG_FUNCTIONS == set(), f"functions over {MAX_FUNCTION_LINES} lines"
    assert KNOWN_LONG_FUNCTIONS - long_functions == set(), "a known long function is short now: remove it"


@pytest.mark.parametrize("importer, imported", [("data", "pipelines"), ("models", "loading"), ("loading", "animate")])
def test_the_checker_sees_an_upward_import(importer, imported):
    """The layer check itself: an upward edge added to the real graph is reported."""
    edges = folder_edges()
    edges[importer].add(imported)
    with pytest.raises(AssertionError, match="reaches up"):
        check_layers(edges)
