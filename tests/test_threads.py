"""The CPU threads of a group: chosen before each group from what other processes do on the cores
(a real busy process here, no mock), announced, recorded with the runs, and left alone when the
user chose (``--threads N``, ``OMP_NUM_THREADS``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch

from clbench import cli
from clbench.store import open_store
from clbench.store.queries import load_runs
from clbench.sweep.executors.threads import CpuUse, ThreadChooser, choose_threads, cpu_use, others_busy

TINY = ["--dataset", "synthetic", "--synthetic-train-per-class", "20", "--synthetic-test-per-class", "10", "-m", "sgd"]
BUSY = (
    "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end:\n    pass\n"
)


@pytest.fixture
def busy_process():
    """One single-threaded process spinning on this process's cores, for up to 60 s (ends by itself)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY, "60"])
    time.sleep(0.3)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def threads_restored():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "cores, others, threads",
    [
        (2, 0.02, 2),
        (2, 0.2, 2),
        (2, 0.3, 1),
        (2, 0.95, 1),
        (2, 1.9, 1),
        (2, 4.0, 1),
        (4, 1.0, 3),
        (8, 2.1, 6),
    ],
)
def test_choose_threads_leaves_the_cores_others_use(cores, others, threads):
    assert choose_threads(cores, others).threads == threads


def test_unknown_load_keeps_every_core():
    choice = choose_threads(4, None)
    assert choice.threads == 4 and "unknown" in choice.describe()


def test_cpu_use_reads_only_this_process_cores(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    lines = ["cpu  900 0 0 900 0 0 0 0 0 0"]
    lines += [f"cpu{c} 100 10 20 500 30 1 2 3 0 0" for c in cores]
    lines += [f"cpu{max(cores) + 1} 7777 0 0 1 0 0 0 0 0 0", "intr 1 2 3"]  # a core this process may not use
    stat = tmp_path / "stat"
    stat.write_text("\n".join(lines) + "\n")
    ticks = os.sysconf("SC_CLK_TCK")
    reading = cpu_use(str(stat), count_niced=False)  # user, system, irq, softirq: not nice, idle, iowait, steal
    assert reading is not None and reading.busy_s == pytest.approx(len(cores) * (100 + 20 + 1 + 2) / ticks)
    reading = cpu_use(str(stat), count_niced=True)  # a niced process also counts niced processes' time
    assert reading is not None and reading.busy_s == pytest.approx(len(cores) * (100 + 10 + 20 + 1 + 2) / ticks)
    assert cpu_use(str(tmp_path / "missing")) is None


def test_others_busy_subtracts_this_process():
    before, after = CpuUse(10.0, 100.0, 5.0), CpuUse(12.0, 103.0, 6.5)  # 3 s busy in 2 s, 1.5 s of it ours
    assert others_busy(before, after) == pytest.approx(0.75)
    assert others_busy(after, before) == 0.0


def test_a_busy_process_beside_is_seen_and_left_its_core(busy_process):
    chooser = ThreadChooser()
    time.sleep(0.5)
    choice = chooser.look()
    assert choice.others is not None and choice.others > 0.5, choice
    assert choice.threads <= max(1, chooser.cores - 1)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_busy_process_at_nice_19_gives_way_and_takes_no_core():
    proc = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", BUSY, "60"])
    try:
        time.sleep(0.3)
        before = cpu_use(count_niced=False), cpu_use(count_niced=True), cpu_use(), _cpu_seconds(proc.pid)
        time.sleep(1.0)
        after = cpu_use(count_niced=False), cpu_use(count_niced=True), cpu_use(), _cpu_seconds(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    without_niced, with_niced, default = (others_busy(b, a) for b, a in zip(before[:3], after[:3]))
    niced_cores = (after[3] - before[3]) / (after[0].at - before[0].at)
    # The niced process's time is exactly what counting niced time adds (on a quiet machine about a
    # core; on a busy one it gets little), and this unniced process leaves it out.
    assert with_niced - without_niced == pytest.approx(niced_cores, abs=0.15)
    assert default == pytest.approx(without_niced, abs=0.15)


def _versions(db) -> list[dict]:
    with open_store(str(db), readonly=True) as store:
        return [store.run_row(rid)["versions"] for rid in load_runs(store)["run_id"]]


def test_clbench_run_says_and_records_the_threads_it_chose_beside_a_busy_process(
    tmp_path, monkeypatch, capsys, busy_process, threads_restored
):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "results.db"
    assert cli.main(["run", *TINY, "--db", str(db), "--checkpoint-every", "0"]) == 0
    err = capsys.readouterr().err
    cores = len(os.sched_getaffinity(0))
    said = re.search(r"group 1/1: (\d+) threads?: other processes keep [\d.]+ of (\d+) cores busy", err)
    assert said is not None, err
    threads = int(said.group(1))
    assert 1 <= threads <= max(1, cores - 1) and int(said.group(2)) == cores
    assert [v["threads"] for v in _versions(db)] == [str(threads)]


@pytest.mark.parametrize("how", ["--threads", "OMP_NUM_THREADS"])
def test_a_thread_count_the_user_chose_is_kept_and_nothing_is_said(
    tmp_path, monkeypatch, capsys, busy_process, threads_restored, how
):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "results.db"
    extra = ["--threads", "2"] if how == "--threads" else []
    if how == "OMP_NUM_THREADS":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)  # what the variable does when torch starts
    assert cli.main(["run", *TINY, "--db", str(db), "--checkpoint-every", "0", *extra]) == 0
    err = capsys.readouterr().err
    assert "group 1/1:" not in err and "other processes keep" not in err, err
    assert [v["threads"] for v in _versions(db)] == ["2"]
