"""The house's rules, checked: layers in folders (a module imports only from its own layer or below),
no import circle, the shipped methods' cards current. docs/architecture.md explains the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clbench.methods.catalogue import catalogue_source

PACKAGE = Path(__file__).resolve().parents[1] / "clbench"

# Bottom to top; a module's layer is that of the longest prefix listed. docs/architecture.md says why.
LAYERS = (
    ("clbench.version", "clbench.errors", "clbench.files"),
    ("clbench.data", "clbench.metrics", "clbench.masking"),
    ("clbench.lockstep",),
    ("clbench.methods",),
    ("clbench.runs",),
    ("clbench.engine",),
    ("clbench.store",),
    ("clbench.sweep",),
    ("clbench.reports",),
    ("clbench.cli", "clbench", "clbench.__main__"),
)


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")
    return level


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """The clbench modules ``path`` imports (``from clbench.x import y`` counts ``clbench.x.y`` when
    that is a module), with the line; ``top_level_only``: the imports run when the module loads."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "clbench"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clbench":
            assert node.level == 0, f"{path}:{node.lineno}: a relative import (write from clbench... import)"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*sub.split("."))
                ).is_dir()
                found.append((sub if is_module else node.module, node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def _type_checking_only(path: Path) -> set[int]:
    """Lines of imports under ``if TYPE_CHECKING:`` (annotations only: they never run)."""
    lines = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    lines.add(inner.lineno)
    return lines


def upward_imports(path: Path, me: str) -> list[str]:
    """The imports of ``path`` (the module ``me``) from a layer above its own."""
    mine = layer_of(me)
    skip = _type_checking_only(path)
    return [
        f"line {line}: {other} (layer {layer_of(other)})"
        for other, line in imports(path)
        if line not in skip and layer_of(other) > mine
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_a_module_imports_only_from_its_own_layer_or_below(path):
    me = module_name(path)
    upward = upward_imports(path, me)
    assert not upward, f"{me} (layer {layer_of(me)}) imports from a layer above it: " + "; ".join(upward)


def test_the_layer_check_sees_an_upward_import_even_inside_a_function(tmp_path):
    """The check itself can fail: a resolution module importing the trainer, lazily, is reported;
    an import for annotations only (under TYPE_CHECKING) is not."""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from clbench.cli import main\n"
        "def f():\n    from clbench.engine.trainer import train_group\n    return train_group\n"
    )
    found = upward_imports(fake, "clbench.runs.fake")
    assert len(found) == 1 and "clbench.engine.trainer" in found[0]


def test_no_import_circle():
    """The modules' load-time imports form no circle (a module's function may import lazily, but
    even then not from a layer above: the test above)."""
    graph = {}
    for path in MODULES:
        me = module_name(path)
        graph[me] = {other for other, _ in imports(path, top_level_only=True) if other != me}
    seen, on_stack, circles = set(), [], []

    def visit(node):
        if node in on_stack:
            circles.append(on_stack[on_stack.index(node) :] + [node])
            return
        if node in seen or node not in graph:
            return
        seen.add(node)
        on_stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") and node == "clbench":  # the package face loads nothing eagerly
                continue
            visit(nxt)
        on_stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_method_catalogue_is_current():
    """The cards planning reads without torch are the classes' own attributes: after changing or
    adding a method, run `python -m clbench.methods.catalogue`."""
    import clbench.methods.catalogue as catalogue

    assert Path(catalogue.__file__).read_text() == catalogue_source(), (
        "the method catalogue is out of date: run `python -m clbench.methods.catalogue`"
    )


SCREEN_PACKAGES = ("engine", "store", "cli")


def is_command(node: ast.FunctionDef) -> bool:
    """A CLI command: its parameters are typer options (declarations, measured apart from its body)."""
    defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
    return bool(defaults) and all(
        isinstance(d, ast.Call)
        and ast.unparse(d.func).split(".")[-1] in ("Option", "Argument")
        or isinstance(d, ast.Call)
        and ast.unparse(d.func).endswith("_option")
        for d in defaults
    )


def too_long_in(package: str, root: Path = PACKAGE) -> list[str]:
    """Modules over 500 lines and functions over 60 in ``clbench/PACKAGE`` (a command's typer option
    declarations are not counted: its body is, from the docstring down)."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > 500:
            found.append(f"{package}/{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0].lineno if is_command(node) else node.lineno
                if node.end_lineno - first >= 60:
                    found.append(f"{package}/{path.name}: {node.name} {node.end_lineno - first + 1} lines")
    return found


@pytest.mark.parametrize("package", SCREEN_PACKAGES)
def test_the_engine_store_and_cli_read_in_screens(package):
    """No module over 500 lines and no function over 60 in the engine, the store and the CLI."""
    assert not too_long_in(package), too_long_in(package)


def test_the_screen_rule_counts_a_long_function(tmp_path):
    """The check can fail: a 61-line function is found, a command's option declarations are not counted."""
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    options = "".join(f"    a{i}=typer.Option(1),\n" for i in range(70))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def f():\n{body}\n\n\ndef cmd(\n{options}):\n    pass\n")
    assert too_long_in("pkg", tmp_path) == ["pkg/m.py: f 61 lines"]


def test_checkpoint_files_and_progress_reports_need_no_torch():
    """The sweep and the CLI list, describe and delete checkpoints and name progress reports without torch."""
    import subprocess
    import sys

    code = (
        "import sys, clbench.engine.checkpoint, clbench.engine.progress; "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
