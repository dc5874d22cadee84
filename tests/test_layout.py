"""The package's shape, read from the source with `ast` (nothing imported): no import circle inside `slm_hf`; every
module under 400 lines and every function under 60, but for the exceptions docs/architecture.md names with why.

Every `import` counts, those under `if TYPE_CHECKING:` and inside functions included: a module that needs another
only for an annotation still cannot be read without it, and two modules that need each other are one module in two
files.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "slm_hf"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
# docs/architecture.md, "Module and function size", says why each is longer.
LONGER = {"slm_hf/modeling_slm.py", "slm_hf/data/prepare.py:prepare_data"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the slm_hf modules it imports} (a package is its __init__)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from . import x` imports the module x
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = {target for target in targets if target in paths and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert {"slm_hf.training.trainer", "slm_hf.data"} <= graph["slm_hf.training.run"]  # relative, absolute
    assert "slm_hf.exporting.to_llama" in graph["slm_hf.exporting"]  # an import inside a function counts


def test_no_import_circle_inside_slm_hf():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(component) for component in found)


def test_modules_and_functions_are_short_enough_to_read():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES and name not in LONGER:
            too_long.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in LONGER:
                    too_long.append(f"{name}:{node.name} ({lines} lines)")
    assert not too_long, "longer than docs/architecture.md allows: " + ", ".join(too_long)
