"""The Ray executor on a real two-node Ray cluster, no mocks.

The cluster lives in a network namespace with nothing but loopback (``unshare -n``, as root): Ray
replaces 127.0.0.1 by the machine's primary address unless that is all there is, and test traffic
must stay on loopback. The namespace is held by one process for the module; the head (one CPU,
its own temp dir under pytest's), a second node joining it (one CPU), and every driver run inside
it (``nsenter``). At the end every process in the namespace is ended: the nodes, their workers,
anything left. (``ray stop`` is not used: it stops every Ray process of the machine, whoever
started it, and the machine is shared.)

Without Ray, ``unshare``/``nsenter``/``ip`` or root these tests are skipped, except under ``CI``,
where they fail: CI must prove them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clbench.store import open_store
from clbench.store.queries import load_runs

BIN = Path(sys.executable).parent
CLBENCH = BIN / "clbench"
RAY = BIN / "ray"
# 12 synthetic ER runs in 6 lockstep groups of 2, each group ~1-2 s on one thread.
SWEEP = [
    "--dataset",
    "synthetic",
    "--synthetic-train-per-class",
    "2500",
    "--method",
    "er",
    "--mask",
    "none,-inf",
    "--seeds",
    "6",
    "--group-size",
    "2",
]
N_RUNS, N_GROUPS = 12, 6
DONE = re.compile(r"^done: group (\d+)/\d+, .* on (\S+) \(node (\w+)\) pid (\d+), saved$", re.M)
STARTED = re.compile(r"^started: group (\d+)/\d+, .* on \S+ \(node \w+\) pid (\d+)$", re.M)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_DB", "RAY_ADDRESS")}
    # No token authentication: the cluster is reachable from its own network namespace only.
    return {
        **env,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        **extra,
    }


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {why}")
        pytest.skip(why)


class NetNamespace:
    """A network namespace with only loopback, kept alive by one process, and commands run in it."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 100000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.holder.stdout.readline().strip()
        if line != "up":
            self.holder.kill()
            raise RuntimeError(f"could not create a network namespace with loopback (got {line!r})")
        self.net = os.readlink(f"/proc/{self.holder.pid}/ns/net")

    def command(self, args) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *map(str, args)]

    def run(self, args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), env=_env(), capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, args, **kw) -> subprocess.Popen:
        """A process whose stderr is to be read (``Lines``); its stdout is dropped."""
        return subprocess.Popen(
            self.command(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw
        )

    def pids(self) -> list[int]:
        """Every process in the namespace (the holder included)."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == self.net:
                        out.append(int(entry))
                except OSError:
                    pass
        return out

    def busy_workers(self) -> list[int]:
        """Ray worker processes executing a group: Ray names a worker's process after the task it runs."""
        busy = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::_train_on_worker"):
                        busy.append(pid)
            except OSError:
                pass
        return busy

    def stop(self) -> None:
        """End every process in the namespace: politely, then with SIGKILL."""
        for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        self.holder.wait(timeout=10)


class Cluster:
    def __init__(self, ns: NetNamespace, address: str):
        self.ns, self.address = ns, address

    def clbench(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.ns.run([CLBENCH, *args, "--executor", "ray", "--ray-address", self.address], timeout=timeout)

    def clbench_popen(self, *args: str) -> subprocess.Popen:
        return self.ns.popen([CLBENCH, *args, "--executor", "ray", "--ray-address", self.address])

    def python(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.ns.run([sys.executable, "-c", script, self.address, *args], timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _require(importlib.util.find_spec("ray") is not None, "Ray is not installed (pip install -e '.[ray]')")
    _require(
        all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")),
        "unshare, nsenter and ip are needed (apt-get install util-linux iproute2)",
    )
    _require(os.geteuid() == 0, "a network namespace needs root (unshare --net)")
    temp = tmp_path_factory.mktemp("ray")
    assert len(str(temp)) < 50, f"{temp}: Ray's socket paths under it would exceed the 107-byte limit"
    ns = NetNamespace()
    try:
        port = ns.run(
            [
                sys.executable,
                "-c",
                "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])",
            ]
        ).stdout.strip()
        head = ns.run(
            [
                RAY,
                "start",
                "--head",
                "--port",
                port,
                "--num-cpus",
                "1",
                "--temp-dir",
                temp,
                "--include-dashboard=false",
                "--disable-usage-stats",
            ]
        )
        assert head.returncode == 0, head.stdout + head.stderr
        # The second node shares the head's temp dir: on one machine, Ray finds the session there.
        second = ns.run(
            [
                RAY,
                "start",
                "--address",
                f"127.0.0.1:{port}",
                "--num-cpus",
                "1",
                "--temp-dir",
                temp,
                "--disable-usage-stats",
            ]
        )
        assert second.returncode == 0, second.stdout + second.stderr
        yield Cluster(ns, f"127.0.0.1:{port}")
    finally:
        ns.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep computed by the local executor, one thread, in a registry of its own."""
    d = tmp_path_factory.mktemp("local")
    done = subprocess.run(
        [str(CLBENCH), "run", *SWEEP, "--threads", "1", "--db", str(d / "local.db")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return d / "local.db"


def assert_same_results(db, reference_db) -> None:
    """Every run of ``db`` is finished, and equal bit for bit to the local executor's."""
    runs = load_runs(db)
    assert len(runs) == N_RUNS and set(runs["status"]) == {"finished"}, runs["status"].value_counts()
    with open_store(db, readonly=True) as store, open_store(reference_db, readonly=True) as ref:
        for run_id in runs["run_id"]:
            a, b = store.load_result(run_id), ref.load_result(run_id)
            for name in ("class_il", "task_il", "class_il_correct", "per_class_accuracy", "confidence"):
                assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), (run_id, name)
            assert a.train_loss.keys() == b.train_loss.keys()
            for term in a.train_loss:
                assert np.array_equal(a.train_loss[term], b.train_loss[term], equal_nan=True), (run_id, term)


def _statuses(db) -> dict[str, int]:
    return load_runs(db)["status"].value_counts().to_dict()


class Lines:
    """A process's stderr, read line by line in a thread, so the test can wait for a line."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, pattern: re.Pattern, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if m := pattern.match(line):
                        return m
                left = deadline - time.monotonic()
                assert left > 0 and self.thread.is_alive(), f"no line matching {pattern.pattern}:\n" + "\n".join(
                    self.lines
                )
                self.changed.wait(min(left, 0.5))

    @property
    def text(self) -> str:
        self.thread.join(timeout=30)
        return "\n".join(self.lines)


# ---------------------------------------------------------------------------------------------


def test_a_sweep_runs_on_both_nodes_and_equals_the_local_executor_bit_for_bit(cluster, reference, tmp_path):
    db = tmp_path / "ray.db"
    done = cluster.clbench("run", *SWEEP, "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "2 node(s) with 2 CPU(s)" in done.stderr and "12 runs: 12 computed" in done.stdout
    groups = DONE.findall(done.stderr)
    assert sorted(int(g) for g, *_ in groups) == list(range(1, N_GROUPS + 1)), done.stderr  # each saved once
    assert len({node for _, _, node, _ in groups}) == 2, f"the groups ran on one node only:\n{done.stderr}"
    assert_same_results(db, reference)
    # The registry was written by the driver alone: every run is owned by one process, on this machine,
    # and it is none of the workers that trained the groups.
    import sqlite3

    with sqlite3.connect(db) as conn:
        owners = set(conn.execute("SELECT host, pid FROM runs").fetchall())
    workers = {int(pid) for *_, pid in groups}
    assert len(owners) == 1 and len(workers) >= 2, (owners, workers)
    ((host, pid),) = owners
    assert host == socket.gethostname() and pid not in workers, (owners, workers)


def _checkpoint_keys() -> list[str]:
    """The checkpoint key of each group of SWEEP, in plan order (as ``clbench run`` plans it)."""
    from clbench.data.specs import SyntheticOptions
    from clbench.engine.checkpoint import checkpoint_key
    from clbench.sweep.plan import plan_sweep, sweep_configs

    configs = sweep_configs(
        methods=["er"],
        masks=["none", "-inf"],
        seeds=range(6),
        benchmark="synthetic",
        synthetic=SyntheticOptions(train_per_class=2500),
    )
    plan = plan_sweep(configs, max_group_size=2)
    return [checkpoint_key([plan.runs[i].run_id for i in g]) for g in plan.groups]


def test_a_worker_killed_while_it_trains_is_retried_from_its_checkpoint_and_every_run_finishes_once(
    cluster, reference, tmp_path
):
    db, shared = tmp_path / "ray.db", tmp_path / "shared-checkpoints"  # one machine: every node sees it
    proc = cluster.clbench_popen("run", *SWEEP, "--db", str(db), "--retries", "2", "--checkpoint-dir", str(shared))
    lines = Lines(proc)
    try:
        started = lines.wait_for(STARTED)
        group, victim = int(started.group(1)), int(started.group(2))
        assert os.readlink(f"/proc/{victim}/ns/net") == cluster.ns.net  # a worker of this test's cluster
        # Kill it once its group has checkpointed a task (on the worker), while it trains the next one.
        checkpoint = shared / f"{_checkpoint_keys()[group - 1]}.json"
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checkpoint.exists(), lines.text
        assert victim in cluster.ns.busy_workers()  # it runs a group right now
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = lines.text
    assert proc.returncode == 0, err
    # The group started over on another worker process, from its checkpoint.
    assert re.search(rf"^retrying: group {group}/{N_GROUPS}, .* attempt 2 on ", err, re.M), err
    assert re.search(
        rf"^resumed: group {group}/{N_GROUPS}, .* on .*, from its checkpoint at task [2-5]/5", err, re.M
    ), err
    groups = sorted(int(g) for g, *_ in DONE.findall(err))
    assert groups == list(range(1, N_GROUPS + 1)), err  # every group saved exactly once
    assert not list(shared.glob("*.pt"))  # each deleted once its group was saved
    assert_same_results(db, reference)  # resumed on another worker: bit for bit


def test_ctrl_c_cancels_the_cluster_work_keeps_finished_runs_and_a_rerun_computes_the_rest(
    cluster, reference, tmp_path
):
    db = tmp_path / "ray.db"
    proc = cluster.clbench_popen("run", *SWEEP, "--db", str(db))
    lines = Lines(proc)
    try:
        lines.wait_for(DONE)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = lines.text
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "Traceback" not in err
    statuses = _statuses(db)
    assert set(statuses) == {"finished", "interrupted"} and sum(statuses.values()) == N_RUNS, statuses
    # The cancelled groups do not go on in the cluster: no worker runs a group any more.
    deadline = time.monotonic() + 15
    while cluster.ns.busy_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not cluster.ns.busy_workers()
    rerun = cluster.clbench("run", *SWEEP, "--db", str(db))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{statuses['interrupted']} to compute" in rerun.stderr and f"{statuses['finished']} cached" in rerun.stderr
    assert_same_results(db, reference)


def test_sigterm_then_kill_9_of_the_driver_keep_what_finished_and_a_rerun_computes_the_rest(
    cluster, reference, tmp_path
):
    """A scheduler's SIGTERM stops the sweep as Ctrl-C does; a driver killed with -9 leaves no work
    running in the cluster, and the next run takes over its runs (issue 23, section 3)."""
    db = tmp_path / "ray.db"
    proc = cluster.clbench_popen("run", *SWEEP, "--db", str(db))
    lines = Lines(proc)
    try:
        lines.wait_for(DONE)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted:" in lines.text and "Traceback" not in lines.text, lines.text
    finished = _statuses(db).get("finished", 0)
    assert 0 < finished < N_RUNS
    _wait_idle(cluster)
    # Again, killed with -9 while a group trains: nothing is said, nothing can be; the cluster stops its work.
    proc = cluster.clbench_popen("run", *SWEEP, "--db", str(db))
    lines = Lines(proc)
    try:
        lines.wait_for(STARTED)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_idle(cluster, timeout=60)
    rerun = cluster.clbench("run", *SWEEP, "--db", str(db))
    assert rerun.returncode == 0, rerun.stderr
    assert _statuses(db) == {"finished": N_RUNS}
    assert_same_results(db, reference)


def _wait_idle(cluster, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while cluster.ns.busy_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not cluster.ns.busy_workers(), "a group still runs in the cluster"


EXPERIMENT = """kind = "fig4"
benchmark = "synthetic"
methods = ["er"]
masks = ["none", "-inf"]
buffers = [50]
seeds = 2
[overrides]
synthetic = { train_per_class = 500, test_per_class = 50 }
"""


def test_report_trains_on_the_cluster_and_renders_what_the_local_executor_renders(cluster, tmp_path):
    """`clbench report --executor ray` end to end: the experiment's runs train on the cluster and its
    data files equal those of the same report computed by the local executor."""
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(EXPERIMENT)
    done = cluster.clbench("report", str(experiment), "--db", str(tmp_path / "ray.db"), "--out", str(tmp_path / "ray"))
    assert done.returncode == 0, done.stderr
    assert DONE.search(done.stderr), done.stderr  # trained by cluster workers
    local = subprocess.run(
        [str(CLBENCH), "report", str(experiment), "--threads", "1", "--db", str(tmp_path / "local.db")]
        + ["--out", str(tmp_path / "local")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr
    data = sorted(p.name for p in (tmp_path / "local").glob("*.csv"))
    assert data, list((tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.csv")) == data
    for name in data:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


PROGRESS = """
import json, sys
from clbench.sweep.executors.ray import RayExecutor
from clbench.store import open_store
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs
from clbench.data.specs import SyntheticOptions

configs = sweep_configs(methods=["er"], masks=["none", "-inf"], seeds=[0, 1], benchmark="synthetic",
                        synthetic=SyntheticOptions(train_per_class=1500))
events = []
with RayExecutor(sys.argv[1]) as executor, open_store(sys.argv[2]) as store:
    plan = plan_sweep(configs, store, max_group_size=2)
    execute(plan, store, executor=executor, progress=events.append)
print(json.dumps([dict(event=p.event, group=p.group, where=p.where, running=[r.where for r in p.running],
                       trained=p.train is not None, done=p.groups_done,
                       fraction=p.fraction) for p in events]))
"""

CHECK_VERSIONS = """
import os, sys, torch, ray
from pathlib import Path
from clbench.sweep.executors import ExecutorUnavailable
from clbench.sweep.executors.ray import _node_report, check_node_versions
ray.init(address=sys.argv[1], logging_level="ERROR")
print(len(check_node_versions()), "nodes agree")
try:
    check_node_versions({"clbench": "0.0.1", "torch": torch.__version__})
except ExecutorUnavailable as exc:
    print("refused:", exc)
folder = sys.argv[2]

def crash_once():  # the worker dies the first time it checks its node, as a killed worker would
    marker = Path(folder) / ray.get_runtime_context().get_node_id()
    if not marker.exists():
        marker.write_text("crashed")
        os._exit(1)
    return _node_report()

print(len(check_node_versions(probe=crash_once)), "nodes agree after", len(os.listdir(folder)), "crashes")

def always_crash():
    os._exit(1)

try:
    check_node_versions(probe=always_crash)
except ExecutorUnavailable as exc:
    print("crashing:", exc)
"""


def test_progress_comes_from_the_workers_while_they_train(cluster, tmp_path):
    import json

    done = cluster.python(PROGRESS, str(tmp_path / "ray.db"))
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = [e["event"] for e in events]
    assert kinds.count("group_start") == 2 and kinds.count("group_done") == 2
    # Training reports of each group arrive between its start and its end, from a worker.
    for g in (0, 1):
        mine = [e for e in events if e["group"] == g]
        assert mine[0]["event"] == "group_start" and mine[-1]["event"] == "group_done"
        assert any(e["event"] == "train" and e["trained"] for e in mine[1:-1]), mine
        assert all(re.fullmatch(r"\S+ \(node \w{8}\) pid \d+", e["where"]) for e in mine if e["event"] != "train")
    assert max(len(e["running"]) for e in events) == 2  # both groups at once: one per node
    fractions = [e["fraction"] for e in events]
    assert fractions[-1] == pytest.approx(1.0) and events[-1]["done"] == 2


TWO_DRIVERS = [
    "--dataset",
    "synthetic",
    "--synthetic-train-per-class",
    "300",
    "--mask",
    "none,-inf",
    "--group-size",
    "2",
]


def test_two_drivers_sharing_one_registry_compute_each_run_once(cluster, tmp_path):
    db = str(tmp_path / "shared.db")
    a = cluster.clbench_popen("run", *TWO_DRIVERS, "--seed", "0,1,2,3", "--db", db)
    b = cluster.clbench_popen("run", *TWO_DRIVERS, "--seed", "2,3,4,5", "--db", db)
    err_a, err_b = a.communicate(timeout=180)[1], b.communicate(timeout=180)[1]
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    runs = load_runs(db)
    assert len(runs) == 12 and runs["run_id"].is_unique and set(runs["status"]) == {"finished"}
    # Every run was trained and saved by exactly one of the two drivers: 12 runs in all.
    saved = [int(n) for n in re.findall(r"^done: group \d+/\d+, .*\((\d+) runs?\) on ", err_a + "\n" + err_b, re.M)]
    assert sum(saved) == 12, err_a + err_b


def test_every_node_is_checked_for_the_drivers_clbench_code_and_torch(cluster, tmp_path):
    """Nodes must run the driver's code (its version, results version and source digest) and torch;
    a worker that dies during the check is asked again, and only repeated deaths refuse the cluster
    (issue 23, section 3: a worker killed during the check failed the whole sweep)."""
    import torch

    from clbench.version import code_identity

    crashes = tmp_path / "crashes"
    crashes.mkdir()
    done = cluster.python(CHECK_VERSIONS, str(crashes), timeout=240)
    assert done.returncode == 0, done.stderr
    assert "2 nodes agree" in done.stdout
    refused = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    assert len(refused) == 1, done.stdout
    line = refused[0]
    assert re.search(
        r"node \S+ \(127\.0\.0\.1, node \w{8}\) runs clbench "
        + re.escape(code_identity())
        + " with torch "
        + re.escape(torch.__version__),
        line,
    ), line
    assert "this driver runs clbench 0.0.1 with torch " + torch.__version__ in line, line
    assert "2 nodes agree after 2 crashes" in done.stdout, done.stdout + done.stderr
    crashing = [line for line in done.stdout.splitlines() if line.startswith("crashing:")]
    assert len(crashing) == 1 and "died 3 times (WorkerCrashedError" in crashing[0], done.stdout


def test_the_code_identity_changes_with_any_source_but_not_with_where_it_lies(tmp_path):
    """Two installs of the same clbench version whose code differs do not agree (a node running the
    code from before a results change used to pass the check, which compared only "0.1.0")."""
    import shutil

    import clbench
    from clbench.version import source_digest

    package = Path(clbench.__file__).parent
    a, b = tmp_path / "a" / "clbench", tmp_path / "b" / "clbench"
    shutil.copytree(package, a, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(package, b, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(a) == source_digest(b) == source_digest(package)
    (b / "engine" / "loop.py").write_text((b / "engine" / "loop.py").read_text() + "\n# a change\n")
    assert source_digest(a) != source_digest(b)


FAILING_GROUP = """
import sys
from dataclasses import dataclass
from clbench.sweep.executors import GroupFailed, TrainOptions
from clbench.sweep.executors.ray import RayExecutor
from clbench.store import open_store
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs

@dataclass(frozen=True)
class WithAnOption(TrainOptions):
    an_option_train_group_lacks: int = 7  # reaches train_group on the worker, which raises TypeError

configs = sweep_configs(methods=["er", "sgd"], seeds=[0], benchmark="synthetic")
with RayExecutor(sys.argv[1]) as executor, open_store(sys.argv[2]) as store:
    try:
        execute(plan_sweep(configs, store), store, executor=executor, options=WithAnOption())
    except GroupFailed as exc:
        print("failed:", exc)
"""


def test_a_group_that_raises_on_a_worker_marks_its_runs_failed_with_the_workers_error(cluster, tmp_path):
    db = tmp_path / "ray.db"
    done = cluster.python(FAILING_GROUP, str(db))
    assert done.returncode == 0, done.stderr
    message = [line for line in done.stdout.splitlines() if line.startswith("failed:")]
    assert len(message) == 1, done.stdout + done.stderr
    assert re.search(
        r"failed on \S+ \(node \w{8}\) pid \d+: TypeError: .*unexpected keyword argument "
        r"'an_option_train_group_lacks'",
        message[0],
    ), message[0]
    runs = load_runs(db)
    assert sorted(runs["status"]) == ["failed", "interrupted"]  # the first failure stops the sweep
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert "Traceback" in failed["error"] and "an_option_train_group_lacks" in failed["error"]
    assert re.match(r"on \S+ \(node \w{8}\) pid \d+: ", failed["error"])


def test_without_ray_installed_the_ray_executor_is_refused_in_one_line(tmp_path):
    # A `ray` that cannot be imported, ahead of the installed one on the path.
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "ray.py").write_text("raise ImportError('No module named ray (hidden by the test)')\n")
    done = subprocess.run(
        [str(CLBENCH), "run", "--dataset", "synthetic", "--executor", "ray"],
        cwd=tmp_path,
        env=_env(PYTHONPATH=str(tmp_path / "fake")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "pip install -e '.[ray]'" in done.stderr
    assert not (tmp_path / "results.db").exists()
    # The local executor does not need Ray at all.
    local = subprocess.run(
        [str(CLBENCH), "run", "--dataset", "synthetic", "--method", "sgd"],
        cwd=tmp_path,
        env=_env(PYTHONPATH=str(tmp_path / "fake")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert local.returncode == 0, local.stderr


def test_an_unreachable_cluster_is_one_line_and_writes_nothing(cluster, tmp_path):
    db = tmp_path / "ray.db"
    done = cluster.ns.run(
        [CLBENCH, "run", "--dataset", "synthetic", "--executor", "ray", "--ray-address", "127.0.0.1:9", "--db", db],
        timeout=180,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot connect to the Ray cluster at 127.0.0.1:9" in errors[0], done.stderr
    assert not db.exists()
