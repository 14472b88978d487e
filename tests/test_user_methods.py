"""Methods of your own: a file outside the repository (``PATH.py:CLASS``) or an installed entry point
of the group ``clbench.methods``, run like the shipped ones, with the file's hash in the run's identity."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_config

from clbench import RunConfig, SyntheticOptions, train_runs
from clbench.methods import find_method
from clbench.store import open_store
from clbench.sweep.plan import plan_sweep

# The README's example, verbatim (README.md, "Methods of your own").
README_EXAMPLE = textwrap.dedent('''\
    """ER whose replayed rows learn from smoothed labels: a method of your own for clbench."""

    import torch
    import torch.nn.functional as F

    from clbench.methods import ER, MethodOutput
    from clbench.lockstep.step import per_run_mean


    class ERLabelSmoothing(ER):
        name = "er_ls"  # its name in tables and filters
        options = {"smoothing": 0.1}  # --option smoothing=0.2
        option_ranges = {"smoothing": "0..1"}  # checked before any run: ">= LOW", "> LOW", "LOW..HIGH" or "LOW..<HIGH"
        mask_acts_on = ("stream",)  # the general mask acts on the stream's cross-entropy only
        loss_terms_names = ("ce", "replay_smooth_ce")

        def loss_terms(self, step):
            # Incoming rows: the loss layer's cross-entropy, where --mask applies.
            ce = step.cross_entropy(step.forward(step.stream), step.stream)
            if not step.replay:
                return MethodOutput({"ce": ce, "replay_smooth_ce": torch.zeros_like(ce)})
            # Replayed rows: cross-entropy against smoothed labels, per run (R runs side by side).
            buf = step.replay[0]
            z = step.forward(buf)
            per_row = F.cross_entropy(
                z.flatten(0, 1), buf.y.flatten(), reduction="none", label_smoothing=float(step.options["smoothing"])
            ).view(buf.y.shape)
            return MethodOutput({"ce": ce, "replay_smooth_ce": per_run_mean(per_row, buf.valid)})
''')

SYN = ["--dataset", "synthetic", "--synthetic-train-per-class", "30"]


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index('```python\n"""ER whose replayed rows')
    return text[start + len("```python\n") : text.index("```", start + 10)]


def cli(args, cwd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CLBENCH_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "clbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw
    )


@pytest.fixture
def method_file(tmp_path):
    path = tmp_path / "elsewhere" / "my_method.py"
    path.parent.mkdir()
    path.write_text(README_EXAMPLE)
    return path


def test_the_readme_example_is_the_one_tested():
    assert readme_example() == README_EXAMPLE


def test_a_method_file_runs_under_the_mask_and_records_its_source_and_hash(method_file):
    spec = f"{method_file}:ERLabelSmoothing"
    syn = SyntheticOptions(train_per_class=30, test_per_class=10)
    cfgs = [
        RunConfig(
            method=spec,
            benchmark="synthetic",
            seed=s,
            buffer_size=20,
            synthetic=syn,
            mask=synthetic_config(mask=m).mask,
        )
        for s in range(2)
        for m in (None, float("-inf"))
    ]
    resolved = cfgs[1].resolve()
    assert resolved.method == "er_ls" and resolved.method_source == f"{method_file.resolve()}:ERLabelSmoothing"
    assert len(resolved.method_sha256) == 64 and dict(resolved.options) == {"smoothing": 0.1}
    assert resolved.mask.label == "-inf"
    assert any("using the presets of er" in n for n in resolved.notes)
    results = train_runs(cfgs)
    assert {r.group_size for r in results} == {4}
    assert set(results[0].train_loss) == {"ce", "replay_smooth_ce", "total"}
    alone = train_runs([cfgs[1]])[0]  # lockstep holds for methods of your own too
    np.testing.assert_array_equal(alone.class_il_correct, results[1].class_il_correct)


def test_an_edited_method_file_is_a_new_run_never_the_cached_one(method_file, tmp_path):
    spec = f"{method_file}:ERLabelSmoothing"
    before = synthetic_config(spec, buffer=20).resolve()
    moved = tmp_path / "copy.py"
    moved.write_text(method_file.read_text())
    assert synthetic_config(f"{moved}:ERLabelSmoothing", buffer=20).resolve().identity() == before.identity()
    method_file.write_text(method_file.read_text().replace("0.1}", "0.2}"))
    after = synthetic_config(spec, buffer=20).resolve()
    assert after.method_sha256 != before.method_sha256 and after.identity() != before.identity()
    # A run planned before the edit is not trained with the edited code.
    with pytest.raises(ValueError, match="changed since the run was planned"):
        before.method_instance()


def test_cli_runs_a_method_file_from_outside_the_repository_and_caches_it(method_file, tmp_path):
    args = ["run", "-m", f"{method_file}:ERLabelSmoothing", "--mask", "none,-inf", "--seeds", "2", "-b", "20", *SYN]
    first = cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "er_ls" in first.stdout and "4 computed" in first.stdout
    again = cli(args, tmp_path)
    assert again.returncode == 0 and "0 computed" in again.stdout and "4 cached" in again.stdout
    with open_store(tmp_path / "results.db", readonly=True) as store:
        plan = plan_sweep(
            [
                synthetic_config(
                    f"{method_file}:ERLabelSmoothing", seed=s, buffer=20, synthetic=SyntheticOptions(train_per_class=30)
                )
                for s in range(2)
            ],
            store,
        )
        assert [r.action for r in plan.runs] == ["cached", "cached"]
        method_file.write_text(method_file.read_text() + "\n# edited\n")
        plan = plan_sweep(
            [
                synthetic_config(
                    f"{method_file}:ERLabelSmoothing", seed=s, buffer=20, synthetic=SyntheticOptions(train_per_class=30)
                )
                for s in range(2)
            ],
            store,
        )
        assert [r.action for r in plan.runs] == ["run", "run"]
    listed = cli(["runs", "--method", "er_ls"], tmp_path)
    assert listed.returncode == 0 and listed.stdout.count("er_ls") >= 4


@pytest.mark.parametrize(
    "body,spec,message",
    [
        (None, "{dir}/missing.py:X", "no method file"),
        ("class Other:\n    pass\n", "{file}:Nope", "no class Nope in the method file"),
        ("class NotAMethod:\n    pass\n", "{file}:NotAMethod", "is not a method"),
        ("import no_such_package_anywhere\n", "{file}:X", "cannot import the method file"),
        (
            "from clbench.methods import Method\nclass Empty(Method):\n    name = 'empty'\n",
            "{file}:Empty",
            "does not define loss_terms",
        ),
        (
            "from clbench.methods import ER\nclass Mine(ER):\n    name = 'er'\n",
            "{file}:Mine",
            "like the shipped method",
        ),
    ],
)
def test_bad_method_files_are_one_line_and_exit_2_before_any_database(body, spec, message, tmp_path):
    file = tmp_path / "m.py"
    if body is not None:
        file.write_text(body)
    out = cli(["run", "-m", spec.format(dir=tmp_path, file=file), *SYN], tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "results.db").exists()


def test_an_exception_inside_the_method_during_training_is_a_failed_run(tmp_path):
    file = tmp_path / "boom.py"
    file.write_text(
        textwrap.dedent("""\
        from clbench.methods import ER

        class Boom(ER):
            name = "boom"

            def loss_terms(self, step):
                if step.task == 1:
                    raise RuntimeError("boom at task 2")
                return super().loss_terms(step)
    """)
    )
    out = cli(["run", "-m", f"{file}:Boom", *SYN], tmp_path)
    assert out.returncode == 1
    assert "failed: RuntimeError: boom at task 2; its runs are marked failed" in out.stderr
    with open_store(tmp_path / "results.db", readonly=True) as store:
        from clbench.store.queries import load_runs

        runs = load_runs(store, method="boom")
        assert runs["status"].tolist() == ["failed"] and "boom at task 2" in runs["error"].iloc[0]


def test_an_installed_entry_point_is_a_method(tmp_path, monkeypatch):
    package = tmp_path / "site" / "my_cl_methods"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(README_EXAMPLE)
    dist = tmp_path / "site" / "my_cl_methods-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-cl-methods\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clbench.methods]\nsmooth_er = my_cl_methods:ERLabelSmoothing\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ref = find_method("smooth_er")
    assert ref.name == "er_ls" and ref.source == "entry-point:smooth_er" and len(ref.sha256) == 64
    cfg = synthetic_config("smooth_er", buffer=20, synthetic=SyntheticOptions(train_per_class=20)).resolve()
    assert cfg.method == "er_ls" and cfg.method_source == "entry-point:smooth_er"
    (result,) = train_runs([cfg])
    assert result.config.identity() == cfg.identity()
    with pytest.raises(ValueError, match=r"installed \(clbench.methods\): smooth_er"):
        find_method("nothing_like_it")


def test_a_method_file_missing_where_a_group_trains_says_every_node_needs_it(method_file, tmp_path):
    """A run planned on one machine and trained on another (a Ray worker, a SLURM job) needs the file
    at the same path there (issue 23, section 3): the group's error says so, naming the machine."""
    import socket

    moved = tmp_path / "elsewhere.py"
    moved.write_text(method_file.read_text())
    planned = synthetic_config(f"{moved}:ERLabelSmoothing", buffer=20).resolve()
    moved.unlink()  # as on a node without it
    with pytest.raises(ValueError) as caught:
        planned.method_instance()
    message = str(caught.value)
    assert f"the method file {moved} of " in message and socket.gethostname() in message, message
    assert "same path on every machine that trains" in message and "\n" not in message, message
