"""The package's shape stays as designed: no import cycles between its modules, imports inside functions only for
optional dependencies (and in the command line, which keeps `--help` free of torch), a thin trainer, and a core that
never imports its examples."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_unlearn"
#: Imported only when used: extras a user may not have installed.
OPTIONAL = {"diffusers", "matplotlib", "matplotlib.pyplot", "peft", "peft.tuners.lora", "peft.utils"}


def modules() -> dict[str, tuple[ast.Module, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (ast.parse(path.read_text()), is_package)
    return found


def module_level_imports(name: str, tree: ast.Module, is_package: bool, known) -> set[str]:
    """The package's modules `name` imports when it is imported (TYPE_CHECKING blocks and function bodies excluded)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    edges = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - max(sub.level - 1, 0)] if sub.level else []
                target = ".".join(base + ([sub.module] if sub.module else [])) if sub.level else sub.module
                for alias in sub.names:
                    full = f"{target}.{alias.name}"
                    edges.add(full if full in known else target)
    return {edge for edge in edges if edge in known and edge != name}


def test_no_import_cycles():
    found = modules()
    graph = {name: module_level_imports(name, tree, is_package, found) for name, (tree, is_package) in found.items()}

    def follows(a, b):  # a package's __init__ importing its own modules is how Python packages work, not a cycle
        return not (b.startswith(a + ".") and found[a][1]) and not (a.startswith(b + ".") and found[b][1])

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if not follows(node, nxt):
                    continue
                if nxt == start:
                    return path
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for cycle in map(cycle_from, graph) if cycle]
    assert not cycles, cycles


def test_imports_inside_functions_are_optional_dependencies_or_the_command_line():
    inside = []
    for name, (tree, _) in modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    imported = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if imported not in OPTIONAL and name != "hf_unlearn.cli":
                        inside.append(f"{name}.{function.name}: {imported}")
    assert not inside, inside


def test_the_core_never_imports_the_examples_and_the_trainer_stays_thin():
    found = modules()
    for name, (tree, is_package) in found.items():
        if not name.startswith("hf_unlearn.examples"):
            imports = module_level_imports(name, tree, is_package, found)
            assert not {edge for edge in imports if edge.startswith("hf_unlearn.examples")}, name
    assert len((PACKAGE / "trainer.py").read_text().splitlines()) < 250
