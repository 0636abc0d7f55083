"""The layout is the architecture: each package of harness/ imports only what its ``__init__`` docstring allows
("May import: ..."), no module imports itself back through others, the spine reaches ``methods/`` only through the
method registry's loader, and no module of the spine names a method."""
import ast
import re
from pathlib import Path

import pytest

from harness.training.method import load_methods

ROOT = Path(__file__).parents[1]
REGISTRY_LOADER = "harness.training.method"
TOP_LEVEL = {"harness", "harness._compat", "harness.registry", "harness.fetching", "harness.cli", "harness.api",
             "harness.doctor", "harness.docsgen"}  # not stages; cli, api and doctor, the fronts, use them all


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function (a lazy import is still an arrow)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


HARNESS = modules("harness")
METHODS = modules("methods")
KNOWN = set(HARNESS) | set(METHODS) | {"methods"}


def internal_imports(path: Path) -> set[str]:
    return {name for name in imports(path) if name in KNOWN}


def package_of(module: str) -> str:
    parts = module.split(".")
    if module in TOP_LEVEL:
        return module
    if parts[0] == "methods":  # the method files are one package; their shared blocks another
        return "methods.common" if parts[1:2] == ["common"] else "methods"
    return ".".join(parts[:2])


def allowed(package: str) -> list[str]:
    """The ``May import:`` line of a package's docstring, as module prefixes."""
    doc = ast.get_docstring(ast.parse((ROOT / Path(*package.split(".")) / "__init__.py").read_text()))
    match = re.search(r"May import: (.*?)\.\s*$", doc or "", re.S)
    assert match, f"{package}/__init__.py: its docstring has no 'May import: ...' line"
    return re.findall(r"\b(?:harness|methods)(?:\.\w+)*", match.group(1))


PACKAGES = sorted({package_of(m) for m in HARNESS} - TOP_LEVEL) + ["methods", "methods.common"]


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_what_its_docstring_allows(package):
    rules = allowed(package)
    wrong = []
    for module, path in {**HARNESS, **METHODS}.items():
        if package_of(module) != package:
            continue
        for target in internal_imports(path):
            if target == "harness" or package_of(target) == package:
                continue  # the package root (the torchvision shim, the version) and the package's own modules
            if target.startswith("methods") and module == REGISTRY_LOADER:
                continue
            if not any(target == rule or target.startswith(rule + ".") for rule in rules):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_registry_and_compat_import_nothing_of_the_harness():
    for module in ("harness.registry", "harness._compat"):
        assert not internal_imports(HARNESS[module]), module


def test_the_spine_reaches_methods_only_through_the_registry_loader():
    reach = {module for module, path in HARNESS.items()
             if any(t == "methods" or t.startswith("methods.") for t in internal_imports(path))}
    assert reach == {REGISTRY_LOADER}


def test_no_import_cycle():
    graph = {m: {t for t in internal_imports(p) if t in HARNESS} for m, p in HARNESS.items()}
    state: dict[str, int] = {}

    def visit(module, path):
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for target in sorted(graph[module]):
            if target not in module.split(".")[:1] and not module.startswith(target + "."):  # a package's own __init__
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


def test_no_package_cycle():
    """The packages form layers: no package imports one that imports it back, however far round."""
    graph: dict[str, set[str]] = {}
    for module, path in HARNESS.items():
        graph.setdefault(package_of(module), set()).update(
            package_of(t) for t in internal_imports(path) if t in HARNESS and t != "harness")
    order, state = [], {}

    def visit(package, path):
        assert state.get(package) != 1, "package cycle: " + " -> ".join(path[path.index(package):] + [package])
        if package not in state:
            state[package] = 1
            for target in sorted(graph.get(package, ()) - {package}):
                visit(target, path + [package])
            state[package] = 2
            order.append(package)

    for package in sorted(graph):
        visit(package, [])
    assert order.index("harness.config") < order.index("harness.training") < order.index("harness.scheduling")


def test_the_spine_names_no_method():
    """No string in harness/ is a registered method's name: the spine asks the method, never which one it is."""
    names = set(load_methods())
    named = [(module, node.value) for module, path in HARNESS.items() for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]
    assert not named, named


def test_no_method_building_block_is_left_in_the_spine():
    blocks = {p.stem for p in (ROOT / "methods" / "common").glob("*.py")} - {"__init__"}
    assert not blocks & {m.rsplit(".", 1)[-1] for m in HARNESS}


# What the repository root may hold: the design card's top level, the documentation (docs/, its mkdocs.yml, the
# changelog), the CI script, the install's constraints and the repository's own files; a development run's leftovers
# (a suite file, a report folder) have no place here.
ROOT_ENTRIES = {"harness", "methods", "suites", "reports", "tests", "benchmarks", "docs", "mkdocs.yml", "CHANGELOG.md",
                "pyproject.toml", "README.md", "constraints.txt", ".ci", ".gitignore"}


def test_the_repository_root_holds_only_what_it_may():
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {line.split("/", 1)[0] for line in tracked.splitlines() if line}
    assert top <= ROOT_ENTRIES, sorted(top - ROOT_ENTRIES)
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "reports").rglob("*") if p.is_file()
            and p.relative_to(ROOT).as_posix() in tracked.splitlines()} == {"reports/README.md"}
