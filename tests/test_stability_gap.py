"""Evaluation during training and the stability gap (issue 21, item 2): ``--eval-every N`` evaluates
every N steps of a task on a fixed subset, drawn from the seed, of each seen task's test (or
validation) data, in lockstep, without touching the training's randomness; the curves are stored;
the stability gap (De Lange et al., ICLR 2023), average anytime accuracy and worst-case accuracy
are computed from them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clbench import cli
from clbench.data.loading import load_benchmark
from clbench.data.specs import SyntheticOptions
from clbench.engine.checkpoint import CheckpointPolicy
from clbench.engine.loop import train_group
from clbench.runs.checks import InvalidValue
from clbench.runs.config import RunConfig

SYN = SyntheticOptions(n_tasks=3, train_per_class=20, test_per_class=10)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cfg(seed=0, mask=None, **kw):
    from clbench.runs.mask import MaskSpec

    base = dict(method="er", benchmark="synthetic", synthetic=SYN, buffer_size=10, epochs=2)
    return RunConfig(seed=seed, mask=MaskSpec(mask), **{**base, **kw}).resolve()


def assert_same_training(a, b):
    for x, y in zip(a, b, strict=True):
        for name in ("class_il_correct", "task_il_correct", "class_il_seen_correct", "confidence"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
        for k in x.train_loss:
            np.testing.assert_array_equal(x.train_loss[k], y.train_loss[k], err_msg=k)


def assert_same_curve(x, y):
    assert x.split == y.split
    for name in ("steps", "tasks", "class_il_correct", "task_il_correct", "counts"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


def test_off_keeps_every_identity_and_on_is_part_of_it():
    plain = cfg()
    assert cfg(eval_every=None) == plain and "eval_every" not in plain.to_dict()
    on = cfg(eval_every=3, eval_samples=5)
    assert (on.eval_every, on.eval_samples) == (3, 5) and on.identity() != plain.identity()
    assert on.group_key() != plain.group_key()
    assert cfg(eval_every=3).eval_samples == 20  # the default 1000, capped at a task's 2 x 10 test samples


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"eval_every": 0}, "invalid eval_every 0"),
        ({"eval_every": 9}, "trains 8 steps: give 1 <= N <= 8"),  # 40 rows / batch 10 x 2 epochs
        ({"eval_every": 2, "eval_samples": 21}, "has 20 test samples"),
        ({"eval_every": 2, "eval_samples": 0}, "invalid eval_samples 0"),
        ({"eval_samples": 5}, "give --eval-every N"),
        ({"eval_every": 2, "eval_samples": 5, "validation": 0.1}, "has 4 validation samples"),
    ],
)
def test_bad_evaluation_schedules_are_refused(kw, message):
    with pytest.raises(InvalidValue, match=message):
        cfg(**kw)


@pytest.mark.parametrize(
    "args", [["--eval-every", "0"], ["--eval-every", "99"], ["--eval-every", "2", "--eval-samples", "500"]]
)
def test_a_bad_schedule_on_the_command_line_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["run", "--dataset", "synthetic", "--epochs", "1", "--dry-run", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--eval-" in err
    assert list(tmp_path.iterdir()) == []


def test_evaluating_during_training_changes_no_number_of_the_training():
    plain = [cfg(seed=s, mask=m) for s, m in ((0, None), (1, -float("inf")))]
    on = [cfg(seed=s, mask=m, eval_every=3, eval_samples=7) for s, m in ((0, None), (1, -float("inf")))]
    data = load_benchmark("synthetic", synthetic=SYN)
    without, with_curve = train_group(plain, data), train_group(on, data)
    assert_same_training(without, with_curve)
    assert all(r.curve is None for r in without)
    curve = with_curve[0].curve
    # every 3 steps of a task's 8 and after its last: 3, 6, 8; global steps; seen tasks only
    assert (
        curve.steps.tolist() == [3, 6, 8, 11, 14, 16, 19, 22, 24]
        and curve.tasks.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    )
    assert curve.counts.tolist()[0] == [7, 0, 0] and curve.counts.tolist()[-1] == [7, 7, 7]
    acc = curve.accuracy()
    assert np.isnan(acc[0, 1]) and not np.isnan(acc[3, 1])
    # the point after a task's last step is the model the task-end evaluation sees (ER: no end-of-task change);
    # on its subset of the test set; the whole test set gives the matrix
    assert with_curve[0].curve.split == "test" and with_curve[0].curve.class_il_correct.shape == (9, 3)


def test_a_subset_is_drawn_from_the_seed_alone():
    from clbench.engine.evaluation import curve_subsets

    data = load_benchmark("synthetic", synthetic=SYN)
    a, b = curve_subsets(data, [0, 1], 5), curve_subsets(data, [1], 5)
    assert a.shape == (2, 3, 5) and np.array_equal(a[1].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), a[1].numpy())
    for t in range(3):  # each a subset of its task's test rows, without repetition
        rows = set(data.test_task_idx[t].tolist())
        assert set(a[0, t].tolist()) <= rows and len(set(a[0, t].tolist())) == 5


def test_a_group_evaluates_each_run_as_alone():
    runs = [cfg(seed=s, mask=m, eval_every=2, eval_samples=9) for s, m in ((0, None), (1, -float("inf")), (2, None))]
    data = load_benchmark("synthetic", synthetic=SYN)
    together = train_group(runs, data)
    for r, res in zip(runs, together):
        alone = train_group([r], data)[0]
        assert_same_curve(res.curve, alone.curve)


def test_a_validation_split_is_what_is_evaluated_during_training():
    runs = [cfg(seed=0, eval_every=4, eval_samples=3, validation=0.2)]
    res = train_group(runs, load_benchmark("synthetic", synthetic=SYN))[0]
    assert res.curve.split == "validation" and res.curve.counts.max() == 3


class Stop(Exception):
    pass


def test_a_resumed_group_keeps_its_curve(tmp_path):
    runs = [cfg(seed=s, eval_every=3, eval_samples=6, method=m) for s, m in ((0, "derpp"), (1, "derpp"))]
    data = load_benchmark("synthetic", synthetic=SYN)
    reference = train_group(runs, data)
    reports = []
    train_group(runs, data, progress=reports.append)
    where = [(p.phase, p.task, p.epoch, p.step) for p in reports]
    policy = CheckpointPolicy(tmp_path / "ckpt", every_s=1e-9)  # a checkpoint after every step
    for stop_at in sorted(random.Random(21).sample(range(3, len(where) - 2), 3), key=where.__getitem__):

        def interrupt(p, stop_at=where[stop_at]):
            if (p.phase, p.task, p.epoch, p.step) == stop_at:
                raise Stop

        with pytest.raises(Stop):
            train_group(runs, data, progress=interrupt, checkpoint=policy)
    resumed = train_group(runs, data, checkpoint=policy)
    assert_same_training(resumed, reference)
    for x, y in zip(resumed, reference):
        assert_same_curve(x.curve, y.curve)


def test_curves_are_stored_read_back_and_loaded(tmp_path):
    import clbench
    from clbench.store import open_store
    from clbench.sweep.driver import execute
    from clbench.sweep.plan import plan_sweep

    runs = [cfg(seed=s, eval_every=3, eval_samples=6) for s in (0, 1)] + [cfg(seed=0)]
    db = tmp_path / "r.db"
    with open_store(db) as store:
        execute(plan_sweep(runs, store), store)
        trained = train_group(runs[:2], load_benchmark("synthetic", synthetic=SYN))
        for res in trained:
            assert_same_curve(store.load_result(res.run_id).curve, res.curve)
        assert store.load_result(runs[2].identity()).curve is None
    df = clbench.load_curves(db, [r.identity() for r in runs])
    assert set(df["run_id"]) == {runs[0].identity(), runs[1].identity()}
    one = df[df["run_id"] == runs[0].identity()]
    curve = trained[0].curve
    assert len(one) == int((curve.counts > 0).sum()) and set(one["split"]) == {"test"}
    last = one[one["step"] == curve.steps[-1]].sort_values("on_task")
    np.testing.assert_allclose(last["class_il"], curve.accuracy()[-1])
    np.testing.assert_allclose(last["task_il"], curve.accuracy("task_il")[-1])
    assert set(one[one["step"] == 3]["task_trained"]) == {0}


# A hand-made curve: 3 tasks, 3 evaluations each (steps 10..90).
STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 90]
TASKS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
NAN = float("nan")
ACC = [
    [50, NAN, NAN],
    [70, NAN, NAN],
    [80, NAN, NAN],  # old tasks' accuracy before the switch to task 1: 80
    [40, 60, NAN],  # old: 40, the minimum (10 steps after the switch)
    [60, 80, NAN],  # old: 60
    [85, 90, NAN],  # old: 85 >= 80, recovered 30 steps after the switch; before the switch to task 2: 87.5
    [50, 50, 70],  # old: 50, the minimum
    [60, 70, 80],  # old: 65
    [70, 80, 90],  # old: 75 < 87.5: never recovers
]


def test_stability_gaps_by_hand():
    from clbench.metrics import old_tasks_accuracy, stability_gaps

    np.testing.assert_allclose(old_tasks_accuracy(TASKS, ACC), [NAN] * 3 + [40, 60, 85, 50, 65, 75])
    first, second = stability_gaps(STEPS, TASKS, ACC)
    assert first == {
        "task": 1,
        "switch_step": 30,
        "before": 80.0,
        "minimum": 40.0,
        "gap": -40.0,
        "steps_to_minimum": 10,
        "steps_to_recover": 30,
    }
    assert second["task"] == 2 and second["switch_step"] == 60 and second["before"] == 87.5
    assert second["gap"] == -37.5 and second["steps_to_minimum"] == 10 and second["steps_to_recover"] is None


def test_no_drop_is_a_gap_of_zero_or_more_recovered_at_once():
    from clbench.metrics import stability_gaps

    (only,) = stability_gaps([1, 2, 3, 4], [0, 0, 1, 1], [[50, NAN], [60, NAN], [65, 10], [70, 40]])
    assert only["gap"] == 5.0 and only["steps_to_recover"] == 0 and only["steps_to_minimum"] == 1


def test_anytime_and_worst_case_accuracy_by_hand():
    from clbench.metrics import average_anytime_accuracy, curve_summary, worst_case_accuracy

    # means over the seen tasks: 50, 70, 80, 50, 70, 87.5, 170/3, 70, 80
    expected = (50 + 70 + 80 + 50 + 70 + 87.5 + 170 / 3 + 70 + 80) / 9
    assert average_anytime_accuracy(TASKS, ACC) == pytest.approx(expected)
    # task 0 once learned (tasks 1, 2): min 40; task 1 once learned (task 2): min 50
    assert worst_case_accuracy(TASKS, ACC) == pytest.approx(45.0)
    assert np.isnan(worst_case_accuracy([0, 0], [[1.0], [2.0]]))
    summary = curve_summary(STEPS, TASKS, ACC)
    assert summary["stability_gap"] == pytest.approx(-38.75) and summary["recovered"] == 0.5
    assert summary["steps_to_minimum"] == 10 and summary["aaa"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="a curve is"):
        curve_summary([1], [0, 0], [[1.0]])


EXPERIMENT = """
kind = "stability-gap"
benchmark = "synthetic"
methods = ["er"]
masks = ["none", "-inf"]
buffers = [10]
seeds = 3
eval_every = 2
eval_samples = 8
[overrides]
epochs = 1
synthetic = { n_tasks = 3, train_per_class = 20, test_per_class = 10 }
"""


def test_the_stability_gap_experiment_trains_stores_and_renders(tmp_path):
    import pandas as pd

    from clbench.metrics import curve_summary
    from clbench.reports import load_experiment, render_report
    from clbench.reports.stability_gap import curve_arrays
    from clbench.store import open_store
    from clbench.store.measures import load_curves
    from clbench.store.queries import load_runs
    from clbench.sweep.driver import execute
    from clbench.sweep.plan import plan_sweep

    path = tmp_path / "t-gap.toml"
    path.write_text(EXPERIMENT)
    spec = load_experiment(path)
    assert {c.resolve().eval_every for c in spec.configs()} == {2} and len(spec.configs()) == 6
    db = tmp_path / "results.db"
    with open_store(db) as store:
        execute(plan_sweep(spec.configs(), store), store, experiment=spec.name)
    written = {p.name for p in render_report(spec, db, tmp_path / "out")}
    expected = {"t-gap-metrics.md", "t-gap-metrics.csv", "t-gap-compare.csv", "t-gap.data.csv", "t-gap.png"}
    assert expected <= written
    runs = load_runs(db)
    curves = load_curves(db, list(runs["run_id"]))
    # the metrics table is the mean over seeds of each run's curve_summary
    per_run = {rid: curve_summary(*curve_arrays(rows)) for rid, rows in curves.groupby("run_id")}
    metrics = pd.read_csv(tmp_path / "out" / "t-gap-metrics.csv")
    ids = runs[runs["mask"] == "none"]["run_id"]
    row = metrics[(metrics["mask"] == "none") & (metrics["metric"] == "aaa")].iloc[0]
    assert row["n_seeds"] == 3 and row["mean"] == pytest.approx(np.mean([per_run[r]["aaa"] for r in ids]))
    compared = pd.read_csv(tmp_path / "out" / "t-gap-compare.csv")
    assert set(compared["metric"]) == {"aaa", "min_acc", "stability_gap", "steps_to_minimum", "recovered"}
    assert set(compared["n_seeds"]) == {3} and len(compared) == 5  # one variant, -inf, per metric
    data = pd.read_csv(tmp_path / "out" / "t-gap.data.csv")
    assert set(data["task"]) == {1, 2} and set(data["mask"]) == {"none", "-inf"}
    at_switch = data[(data["since_switch"] == 0) & (data["task"] == 1) & (data["mask"] == "none")]
    assert len(at_switch) == 1 and at_switch["n_seeds"].iloc[0] == 3
    # `clbench compare --curves` (issue 21, item 4) gives the report's comparison of the curve metrics.
    from clbench.cli import main

    out = tmp_path / "compare.csv"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["compare", "--curves", "--db", str(db), "--format", "csv"]) == 0
    out.write_text(buf.getvalue())
    cli = pd.read_csv(out)
    assert list(cli["metric"]) == list(compared["metric"])
    for col in ("difference", "p_value", "baseline_mean", "variant_mean"):
        np.testing.assert_allclose(cli[col].to_numpy(float), compared[col].to_numpy(float), equal_nan=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["compare", "--curves", "--db", str(db), "--format", "md"]) == 0
    assert "| min-ACC |" in buf.getvalue() and "| average anytime accuracy |" in buf.getvalue()
    # ... and the HTML page's paired comparison shows them beside the matrices' metrics.
    from clbench.reports import write_html

    write_html([spec], db, tmp_path / "html", out_dirs={spec.name: tmp_path / "out"})
    page = (tmp_path / "html" / f"{spec.name}.html").read_text()
    comparison = page[page.index("Paired comparison") :]
    assert "min-ACC" in comparison and "FAA class-IL" in comparison, comparison[:2000]


def test_a_stability_gap_experiment_without_an_interval_is_refused(tmp_path):
    from clbench.reports import load_experiment

    path = tmp_path / "x.toml"
    path.write_text(EXPERIMENT.replace("eval_every = 2\n", ""))
    with pytest.raises(ValueError, match="give eval_every = N"):
        load_experiment(path)
    path.write_text(EXPERIMENT.replace("eval_every = 2\n", "eval_every = 0\n"))
    with pytest.raises(ValueError, match="invalid eval_every 0"):
        load_experiment(path)


def test_a_resnet_group_with_batchnorm_and_augmentation_trains_the_same_with_evaluations():
    syn = SyntheticOptions(
        n_tasks=2, train_per_class=12, test_per_class=4, input_shape=(3, 8, 8), backbone="resnet18", augment=True
    )
    common = dict(synthetic=syn, width=4, epochs=2, batch_size=4, minibatch_size=4, method="derpp", buffer_size=12)
    data = load_benchmark("synthetic", synthetic=syn)
    without = train_group([cfg(seed=s, **common) for s in (0, 1)], data)
    with_curve = train_group([cfg(seed=s, eval_every=2, **common) for s in (0, 1)], data)
    assert_same_training(without, with_curve)
    assert len(with_curve[0].curve.steps) == 12  # 6 steps per task, every 2


def test_compare_curves_without_curves_is_one_line_exit_2(tmp_path, capsys):
    from test_startup import fake_result

    from clbench.cli import main
    from clbench.store import open_store
    from clbench.store.ownership import Owner
    from clbench.sweep.plan import sweep_configs

    db = str(tmp_path / "runs.db")
    configs = [c.resolve() for c in sweep_configs(methods=["er"], masks=["none", "0"], seeds=range(2))]
    with open_store(db) as store:
        store.claim(configs, Owner.current())
        store.save_results([fake_result(c) for c in configs], Owner.current())
    assert main(["compare", "--curves", "--db", db]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --curves: none of the runs compared has accuracy curves") and "\n" not in err


def test_the_mlflow_export_carries_the_curves_and_their_summary():
    """Issue 21, item 4: a run trained with --eval-every gets its curves (one metric per seen task and
    setting, step = the global step) and the curve summary in MLflow; a run without curves gets none."""
    from clbench.metrics import curve_summary
    from clbench.runs.results import AccuracyCurve
    from clbench.store.mlflow import curve_metrics

    steps, tasks = np.array([0, 5, 10, 15]), np.array([0, 0, 1, 1])
    counts = np.array([[10, 0], [10, 0], [10, 10], [10, 10]])
    cil = np.array([[5, 0], [9, 0], [4, 2], [6, 8]])
    curve = AccuracyCurve("test", steps, tasks, cil, cil, counts)
    logged = curve_metrics(curve, last=1)
    task0 = [(v, s) for k, v, s in logged if k == "curve/class_il/task_0"]
    assert task0 == [(50.0, 0), (90.0, 5), (40.0, 10), (60.0, 15)]
    assert [(v, s) for k, v, s in logged if k == "curve/class_il/task_1"] == [(20.0, 10), (80.0, 15)]
    summary = {k[len("curve/") :]: v for k, v, s in logged if k.count("/") == 1}
    expected = curve_summary(steps, tasks, curve.accuracy("class_il"))
    assert summary.keys() == expected.keys()
    assert all(summary[k] == pytest.approx(expected[k], nan_ok=True) for k in expected)


def test_each_subset_is_prepared_once_and_gives_the_points_of_every_point_preparing_it(monkeypatch):
    """``CurveInputs`` prepares a task's subset when the task is first evaluated and keeps it (issue 21:
    preparing the chunks again at every point cost twice the MLP's forward pass); the points are those of
    the path that prepares them at every point (the code before it), bit for bit, across chunk edges."""
    import torch

    import clbench.engine.evaluation as ev
    from clbench.lockstep.backbones import BatchedMLP

    data = load_benchmark("synthetic", synthetic=SYN)
    subsets = ev.curve_subsets(data, [0, 1], 9)
    net = BatchedMLP(int(np.prod(data.test_x.shape[1:])), data.n_classes)
    params, buffers = net.init([torch.Generator().manual_seed(s) for s in (0, 1)])
    real, prepared = ev.prepare_inputs, []
    monkeypatch.setattr(ev, "prepare_inputs", lambda x, spec: prepared.append(x.shape[:2]) or real(x, spec))
    cache, tasks = ev.CurveInputs(data, subsets), (0, 1, 1, 2, 2)
    new = [ev.evaluate_curve(net, params, buffers, data, cache, step=0, task=t, chunk_size=7) for t in tasks]
    assert prepared == [(2, 9)] * 3  # one task's subset of each run, once per task
    old = [ev.evaluate_curve(net, params, buffers, data, subsets, step=0, task=t, chunk_size=7) for t in tasks]
    assert len(prepared) > 3 + len(tasks)  # the other path: every chunk of every point
    for a, b in zip(new, old, strict=True):
        np.testing.assert_array_equal(a.class_il_correct, b.class_il_correct)
        np.testing.assert_array_equal(a.task_il_correct, b.task_il_correct)


@pytest.mark.parametrize("extra", [{}, {"validation": 0.2}, {"method": "icarl"}])
def test_the_curves_and_matrices_are_those_of_preparing_at_every_point(monkeypatch, extra):
    """A group's curves and everything else it stores, with the prepared subsets kept and without
    (``CURVE_CACHE_BYTES`` 0: every point prepares its chunks, as before issue 21), bit for bit."""
    import clbench.engine.evaluation as ev

    runs = [cfg(seed=s, eval_every=2, eval_samples=7, **extra) for s in (0, 1)]
    data = load_benchmark("synthetic", synthetic=SYN)
    kept = train_group(runs, data)
    monkeypatch.setattr(ev, "CURVE_CACHE_BYTES", 0)
    every_point = train_group(runs, data)
    assert_same_training(kept, every_point)
    for a, b in zip(kept, every_point, strict=True):
        assert_same_curve(a.curve, b.curve)


def test_the_memory_estimate_counts_the_kept_subsets():
    """A run's prepared subsets are kept for the whole group (``CurveInputs``), so a sweep's groups are
    sized with them: within ``CURVE_CACHE_BYTES`` per run they are counted, beyond it none are kept."""
    from clbench.sweep import ram

    def group(benchmark, **kw):
        return [RunConfig(method="er", benchmark=benchmark, seed=s, buffer_size=200, **kw).resolve() for s in range(10)]

    on = dict(eval_every=50, eval_samples=1000)
    extra = ram.group_bytes(group("seq-fmnist", **on)) - ram.group_bytes(group("seq-fmnist"))
    assert extra == 10 * 5 * 1000 * 784 * 4  # float32 inputs of 5 tasks' 1,000 samples, each run its own
    # seq-cifar100: 10 tasks of 1,000 samples of 3,072 floats, 123 MB a run: prepared at every point instead
    assert ram.group_bytes(group("seq-cifar100", **on)) == ram.group_bytes(group("seq-cifar100"))
