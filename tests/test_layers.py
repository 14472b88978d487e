"""The house's rules, checked: the shipped methods' cards are current."""

from clbench.methods.catalogue import catalogue_source


def test_the_method_catalogue_is_current():
    """The cards planning reads without torch are the classes' own attributes: after changing or
    adding a method, run `python -m clbench.methods.catalogue`."""
    from pathlib import Path

    import clbench.methods.catalogue as catalogue

    assert Path(catalogue.__file__).read_text() == catalogue_source(), (
        "the method catalogue is out of date: run `python -m clbench.methods.catalogue`")


def test_the_engine_reads_in_screens():
    """No module over 500 lines and no function over 60 in the training engine (clbench/engine)."""
    import ast
    from pathlib import Path

    import clbench.engine

    too_long = []
    for path in sorted(Path(clbench.engine.__file__).parent.glob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > 500:
            too_long.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.name}: {node.name} {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_checkpoint_files_and_progress_reports_need_no_torch():
    """The sweep and the CLI list, describe and delete checkpoints and name progress reports without torch."""
    import subprocess
    import sys

    code = ("import sys, clbench.engine.checkpoint, clbench.engine.progress; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
