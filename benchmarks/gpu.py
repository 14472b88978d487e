"""The GPU check, one command: every GPU check the benchmarks and issues name, in one call of at most
8 minutes on one GPU, writing one results file (``benchmarks/results/gpu.json``) and a summary.

Parts (``--parts``; all by default, in this order):

- ``groups``: ResNet-18 (width 64) lockstep groups of 1, 4, 10 and 20 runs of ER on
  seq-cifar10-shaped synthetic data: images/s, peak device memory against clbench's own estimate
  of the group (``clbench.sweep.ram``, what a sweep sizes its groups by) and the speed round's
  target, a group of 10 at least 5x the images/s of single runs (``benchmarks/resnet.py``'s code).
- ``methods``: each replay method's ResNet-18 group against ER's (``benchmarks/methods_resnet.py``).
- ``resume``: a ResNet-18 group training with checkpoints in a fresh process is killed with -9
  inside a task after its first (as soon as a checkpoint there is seen), then resumed by the same
  code in another fresh process: its results must equal those of an uninterrupted run, bit for
  bit. Every process runs with torch's
  deterministic algorithms (``warn_only``: an operation without a deterministic kernel is named
  in the summary instead of failing).
- ``determinism``: the uninterrupted run computed again in a fresh process, deterministic
  algorithms on: equal bit for bit.
- ``cifar``: a short seq-cifar10 sweep through ``clbench run`` on data written in the real CIFAR-10
  format (protocol-2 pickles with bytes keys): the real readers, normalisation, crop + flip and
  the width-64 ResNet-18, into a fresh registry.
- ``ray``: ``clbench run --executor ray --gpus-per-group 0.5`` on a local Ray cluster: two groups
  share the GPU; every run must finish on it.

``--device cuda`` (the default) runs the sizes above. ``--device cpu`` runs every part at a toy size
(what ``tests/test_gpu_check.py`` runs in CI, so that this script cannot rot): the GPU targets are
then recorded unchecked, the Ray part runs without a GPU share, and the file goes to
``benchmarks/results/quick/`` as every toy-size run's does. ``--toy`` runs the toy sizes on CUDA.

Usage: python benchmarks/gpu.py [--device cuda] [--parts groups,methods,resume,determinism,cifar,ray]
       [--budget-s 420] [--toy]
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from _common import REPO, begin, chosen, load_line, output_options, say_targets, table, target, write_result
from methods_resnet import METHODS, against_er, method_throughput
from resnet import by_group_size, group_targets, images_per_run, resnet_configs, resnet_data

PARTS = ("groups", "methods", "resume", "determinism", "cifar", "ray")
GROUPS_BUDGET_S = 200.0  # the groups part's share of the budget (on an H100 it is planned to take well under)
GRACE_S = 60.0  # a part started within the budget may run this long past it (its child processes are stopped then)
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Sizes:
    width: int  # ResNet-18 width of the groups and methods parts
    side: int  # their images' side (32: seq-cifar10's)
    batch: int  # stream batch = replay minibatch
    group_steps: int  # steps per task, groups part
    groups: tuple[int, ...]
    method_runs: int
    method_steps: int
    gdumb_epochs: int
    resume_width: int
    resume_runs: int
    resume_side: int  # image side of the resume part's synthetic data
    resume_steps: int  # steps per task
    resume_every_s: float  # checkpoint interval within a task
    cifar_per_file: int  # images in each of the 6 CIFAR-10 files
    cifar_batch: int  # stream batch = replay minibatch (seq-cifar10's: 32)
    cifar_seeds: int
    ray_train_per_class: int
    timeout_s: float  # each child process


# On one H100 the whole check is planned to take about 4-5 minutes; --budget-s skips what would not fit.
GPU = Sizes(
    width=64,
    side=32,
    batch=32,
    group_steps=20,
    groups=(1, 4, 10, 20),
    method_runs=4,
    method_steps=10,
    gdumb_epochs=4,
    resume_width=64,
    resume_runs=2,
    resume_side=32,
    resume_steps=60,
    resume_every_s=0.25,
    cifar_per_file=500,
    cifar_batch=32,
    cifar_seeds=2,
    ray_train_per_class=1000,
    timeout_s=240,
)
TOY = Sizes(
    width=4,
    side=8,
    batch=8,
    group_steps=1,
    groups=(1, 2),
    method_runs=2,
    method_steps=1,
    gdumb_epochs=1,
    resume_width=4,
    resume_runs=2,
    resume_side=8,
    resume_steps=12,
    resume_every_s=0.01,
    cifar_per_file=10,
    cifar_batch=8,
    cifar_seeds=1,
    ray_train_per_class=20,
    timeout_s=240,
)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for every part at a toy size")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=390.0,
        help="seconds after which the parts not yet started are skipped (recorded unchecked); a part's "
        f"processes are stopped {GRACE_S:g} s after it",
    )
    ap.add_argument("--toy", action="store_true", help="the toy sizes on any device")
    output_options(ap)
    args = begin(ap)
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                f"--device {args.device}: torch sees no CUDA device here (torch {torch.__version__}); give "
                "--device cpu for the toy-size check"
            )
    toy = args.toy or not cuda
    args.quick = args.quick or toy  # a toy-size file never lands among the real results
    sizes = TOY if toy else GPU
    if not cuda:
        import torch

        torch.set_num_threads(1)  # a toy check on a CPU that others share: spinning threads would cost minutes
    parts = chosen(args.parts, PARTS, "part")
    print(
        f"GPU check on {args.device}, {'toy' if toy else 'full'} sizes: {', '.join(parts)}; budget {args.budget_s:g} s",
        flush=True,
    )
    started = time.perf_counter()
    args.deadline = started + args.budget_s + GRACE_S
    targets, data, spent = [], {"sizes": asdict(sizes), "toy": toy}, {}
    with tempfile.TemporaryDirectory(prefix="clbench-gpu-check-") as tmp:
        runs_dir = Path(tmp)
        children = Children(args, sizes, runs_dir, parts)
        try:
            run_parts(args, sizes, parts, runs_dir, children, started, targets, data, spent)
        finally:
            children.close()
    total = time.perf_counter() - started
    data["seconds"] = {**spent, "total": total}
    print("\n== summary")
    from benchmarks.tables import verdict_text

    print(table(["check", "measured", "verdict"], [[t["target"], t["shown"], verdict_text(t)] for t in targets]))
    print(f"parts: {', '.join(f'{p} {s:.0f} s' for p, s in spent.items())}; total {total:.0f} s")
    say_targets(targets)
    print(load_line())
    write_result("gpu", targets, data, args)


def run_parts(
    args,
    sizes: Sizes,
    parts: list[str],
    tmp: Path,
    children: Children,
    started: float,
    targets: list[dict],
    data: dict,
    spent: dict,
) -> None:
    """Each part in turn, appending to ``targets``, ``data`` and ``spent``; a part that would start
    after the budget is recorded unchecked."""
    for part in parts:
        if time.perf_counter() - started > args.budget_s:
            targets.append(
                target(f"{part}: not run", None, "", None, why=f"skipped: the {args.budget_s:g} s budget was spent")
            )
            print(f"\n== {part}: skipped (budget spent)", flush=True)
            continue
        print(f"\n== {part}", flush=True)
        t0 = time.perf_counter()
        got_targets, got_data = PART_FUNCTIONS[part](args, sizes, tmp, children)
        spent[part] = time.perf_counter() - t0
        targets += got_targets
        data[part] = got_data
        print(f"({part}: {spent[part]:.0f} s)", flush=True)


# -- groups and methods: in this process ----------------------------------------------------------


def part_groups(args, sizes: Sizes, tmp: Path, children: Children) -> tuple[list[dict], dict]:
    from clbench import train_group

    syn, bench_data = resnet_data(sizes.group_steps, sizes.batch, args.device, sizes.side)
    cfgs = resnet_configs(syn, max(sizes.groups), width=sizes.width, batch=sizes.batch)
    train_group(cfgs[:1], bench_data)  # warm-up (allocator, cuDNN kernel selection)
    # One size at a time: a size whose predicted time (the last one's, scaled by the runs) would
    # take the part past GROUPS_BUDGET_S is skipped and said so, leaving time to the other parts.
    measured, skipped, t0, last = {}, [], time.perf_counter(), None
    for size in sizes.groups:
        elapsed = time.perf_counter() - t0
        if last is not None and elapsed + last[1] * size / last[0] > GROUPS_BUDGET_S:
            skipped.append(size)
            print(f"group of {size}: skipped (it would take the part past {GROUPS_BUDGET_S:g} s)", flush=True)
            continue
        t1 = time.perf_counter()
        measured.update(
            by_group_size(cfgs, bench_data, [size], 1, args.device, images_per_run(sizes.group_steps, sizes.batch))
        )
        last = (size, time.perf_counter() - t1)
    what = f"ResNet-18 width {sizes.width} ER groups of {', '.join(map(str, measured))} ({args.device})"
    text, targets = group_targets(measured, args.device, what)
    if 10 not in measured:
        targets.insert(
            0,
            target(
                f"{what}: a group of 10 >= 5x the images/s of single runs",
                None,
                "",
                None,
                why="skipped for time" if 10 in skipped else "no group of 10 at this size",
            ),
        )
    print(text)
    return targets, {"groups": {str(k): v for k, v in measured.items()}, "skipped": skipped}


def part_methods(args, sizes: Sizes, tmp: Path, children: Children) -> tuple[list[dict], dict]:
    syn, bench_data = resnet_data(sizes.method_steps, sizes.batch, args.device, sizes.side)
    throughput = method_throughput(
        METHODS.split(","),
        bench_data,
        syn,
        runs=sizes.method_runs,
        width=sizes.width,
        batch=sizes.batch,
        buffer=200,
        steps_per_task=sizes.method_steps,
        gdumb_epochs=sizes.gdumb_epochs,
        repeats=1,
        device=args.device,
    )
    text, targets = against_er(
        throughput, f"ResNet-18 width {sizes.width}, groups of {sizes.method_runs} ({args.device})"
    )
    print(text)
    return targets, {"stream_images_per_s": throughput}


# -- resume and determinism: fresh processes ------------------------------------------------------

CHILD = r"""
import json, pickle, sys, warnings
spec = json.loads(sys.argv[1])
import torch
torch.use_deterministic_algorithms(True, warn_only=True)
torch.backends.cudnn.benchmark = False
if spec["device"] == "cpu":
    torch.set_num_threads(1)
sys.path.insert(0, spec["bench_dir"])
from resnet import resnet_configs
from clbench import SyntheticOptions, load_benchmark, train_group
from clbench.engine.checkpoint import CheckpointPolicy
syn = SyntheticOptions(n_tasks=5, classes_per_task=2, train_per_class=spec["train_per_class"], test_per_class=16,
                       input_shape=(3, spec["side"], spec["side"]), augment=True, backbone="resnet18")
data = load_benchmark("synthetic", synthetic=syn, device=spec["device"])
cfgs = resnet_configs(syn, spec["runs"], width=spec["width"], batch=spec["batch"], method="derpp", lr=0.05)
policy = CheckpointPolicy(spec["checkpoints"], spec["every_s"]) if spec["checkpoints"] else None
first = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = train_group(cfgs, data, checkpoint=policy, progress=lambda p: first.append(p) if not first else None)
resumed = [first[0].task, first[0].step] if first and first[0].phase == "resume" else None
nondeterministic = sorted({str(w.message).splitlines()[0][:200] for w in caught if "determinis" in str(w.message)})
with open(spec["out"], "wb") as fh:
    pickle.dump({"results": results, "resumed": resumed, "nondeterministic": nondeterministic,
                 "versions": results[0].versions}, fh)
"""


def child_spec(args, sizes: Sizes, out: Path, checkpoints: Path | None) -> dict:
    return {
        "device": args.device,
        "bench_dir": BENCH_DIR,
        "train_per_class": sizes.resume_steps * sizes.batch // 2,
        "side": sizes.resume_side,
        "runs": sizes.resume_runs,
        "width": sizes.resume_width,
        "batch": sizes.batch,
        "checkpoints": str(checkpoints) if checkpoints else None,
        "every_s": sizes.resume_every_s,
        "out": str(out),
    }


def child_env() -> dict[str, str]:
    # cuBLAS needs a fixed workspace for deterministic products (torch's deterministic-algorithms note).
    return {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def time_left(args, sizes: Sizes) -> float:
    """Seconds a child process may take: its size's limit, within the budget and its grace."""
    return max(10.0, min(sizes.timeout_s, args.deadline - time.perf_counter()))


class Children:
    """The fresh processes of the resume and determinism parts. The two uninterrupted runs (the
    reference, and the same run again) are independent of the run that is killed: they start in
    the background as soon as either part begins and run beside it."""

    def __init__(self, args, sizes: Sizes, tmp: Path, parts: list[str]) -> None:
        self.args, self.sizes, self.tmp = args, sizes, tmp
        self.uninterrupted = ["reference"] + (["again"] if "determinism" in parts else [])
        self.running: dict[str, tuple[subprocess.Popen, dict, float]] = {}
        self.finished: dict[str, dict] = {}

    def start(self, name: str, checkpoints: Path | None = None) -> subprocess.Popen:
        spec = child_spec(self.args, self.sizes, self.tmp / f"{name}.pkl", checkpoints)
        with open(self.tmp / f"{name}.err", "w") as err:  # a file, not a pipe: a chatty child never blocks
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(spec)],
                cwd=REPO,
                env=child_env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.running[name] = (proc, spec, time.perf_counter())
        return proc

    def start_uninterrupted(self) -> None:
        for name in self.uninterrupted:
            if name not in self.running and name not in self.finished:
                self.start(name)

    def result(self, name: str) -> dict:
        """The finished child's results (starting it if it is not running); raises ``RuntimeError``
        naming the failure, or ``subprocess.TimeoutExpired``."""
        if name in self.finished:
            return self.finished[name]
        if name not in self.running:
            self.start(name)
        proc, spec, t0 = self.running.pop(name)
        try:
            proc.wait(timeout=time_left(self.args, self.sizes))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            err = (self.tmp / f"{name}.err").read_text().strip()
            raise RuntimeError(f"the {name} run failed (exit status {proc.returncode}): {err[-1500:]}")
        with open(spec["out"], "rb") as fh:
            self.finished[name] = pickle.load(fh)
        print(f"{name} run done in {time.perf_counter() - t0:.1f} s (fresh process)", flush=True)
        return self.finished[name]

    def close(self) -> None:
        for proc, _, _ in self.running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.running.clear()


def differences(a, b) -> list[str]:
    """What differs between two groups' results (empty: equal bit for bit)."""
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        for name in (
            "class_il_correct",
            "task_il_correct",
            "class_il_seen_correct",
            "confidence",
            "per_class_accuracy",
        ):
            u, v = getattr(x, name), getattr(y, name)
            if (u is None) != (v is None) or (u is not None and not np.array_equal(u, v, equal_nan=True)):
                out.append(f"run {i}: {name}")
        if x.train_loss.keys() != y.train_loss.keys() or any(
            not np.array_equal(x.train_loss[k], y.train_loss[k], equal_nan=True) for k in x.train_loss
        ):
            out.append(f"run {i}: train_loss")
        if x.divergence != y.divergence:
            out.append(f"run {i}: divergence")
    return out


def part_resume(args, sizes: Sizes, tmp: Path, children: Children) -> tuple[list[dict], dict]:
    from clbench.engine.checkpoint import list_checkpoints

    what = (
        f"kill -9 inside a task after the first, and resume ({args.device}, ResNet-18 width "
        f"{sizes.resume_width}, DER++ group of {sizes.resume_runs})"
    )
    try:
        children.start_uninterrupted()
        ckpt = tmp / "checkpoints"
        proc = children.start("killed", ckpt)
        try:
            deadline = time.monotonic() + time_left(args, sizes)
            while time.monotonic() < deadline and proc.poll() is None:
                summaries = list_checkpoints(ckpt)
                if summaries and summaries[0].task >= 1 and summaries[0].step > 0:  # inside a task after the first
                    break
                time.sleep(0.005)
            if proc.poll() is not None:
                raise RuntimeError(
                    "the group finished (or failed) before it could be killed inside a later task: "
                    + (tmp / "killed.err").read_text().strip()[-500:]
                )
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            children.running.pop("killed", None)
        (summary,) = list_checkpoints(ckpt)
        killed_at = [summary.task, summary.step]
        print(f"killed with -9 after its checkpoint at task {summary.task + 1}, step {summary.step}", flush=True)
        children.start("resumed", ckpt)  # the same code and checkpoint folder: it resumes
        resumed = children.result("resumed")
        ref = children.result("reference")
        diff = differences(ref["results"], resumed["results"])
        ok = resumed["resumed"] is not None and not diff
        why = (
            ""
            if ok
            else (
                "it did not resume from the checkpoint"
                if resumed["resumed"] is None
                else f"differs: {', '.join(diff[:4])}"
            )
        )
        print(
            f"resumed from task {resumed['resumed'][0] + 1}, step {resumed['resumed'][1]}; equal to the "
            f"uninterrupted run: {not diff}"
            if resumed["resumed"]
            else "did not resume",
            flush=True,
        )
        return (
            [
                target(
                    f"{what}: results equal to an uninterrupted run's, bit for bit",
                    None,
                    "",
                    ok,
                    shown=f"killed at task {killed_at[0] + 1} step {killed_at[1]}; equal: "
                    f"{'yes' if not diff else 'no'}",
                    why=why,
                )
            ],
            {
                "killed_at": killed_at,
                "resumed_at": resumed["resumed"],
                "differences": diff,
                "nondeterministic_ops": resumed["nondeterministic"],
            },
        )
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        print(f"failed: {exc}", flush=True)
        return [
            target(
                f"{what}: results equal to an uninterrupted run's",
                None,
                "",
                False,
                shown="failed",
                why=str(exc).splitlines()[0][:300],
            )
        ], {"error": str(exc)}


def part_determinism(args, sizes: Sizes, tmp: Path, children: Children) -> tuple[list[dict], dict]:
    what = (
        f"a re-run in a fresh process with deterministic algorithms ({args.device}, ResNet-18 width "
        f"{sizes.resume_width}, DER++ group of {sizes.resume_runs})"
    )
    try:
        children.start_uninterrupted()
        ref, again = children.result("reference"), children.result("again")
        diff = differences(ref["results"], again["results"])
        ops = sorted(set(ref["nondeterministic"]) | set(again["nondeterministic"]))
        print(f"equal bit for bit: {not diff}; operations without a deterministic kernel: {len(ops)}", flush=True)
        for op in ops:
            print(f"  {op}")
        return (
            [
                target(
                    f"{what}: equal bit for bit",
                    None,
                    "",
                    not diff,
                    shown=f"equal: {'yes' if not diff else 'no'}; {len(ops)} operation(s) warned as nondeterministic",
                    why="" if not diff else f"differs: {', '.join(diff[:4])}",
                )
            ],
            {"differences": diff, "nondeterministic_ops": ops, "versions": again["versions"]},
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"failed: {exc}", flush=True)
        return [
            target(f"{what}: equal bit for bit", None, "", False, shown="failed", why=str(exc).splitlines()[0][:300])
        ], {"error": str(exc)}


# -- cifar and ray: through the command line ------------------------------------------------------


def clbench_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "clbench")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "clbench"]


def run_cli(arguments: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_DB", "CLBENCH_CHECKPOINTS", "RAY_ADDRESS")}
    # This tree's clbench, installed or not (Ray's workers inherit the path from the driver).
    path = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        clbench_command() + arguments,
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def stored_runs(db: Path) -> list[tuple[str, str, str]]:
    """(status, device, the device's name) of every run in a fresh registry."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, device, versions FROM runs").fetchall()
    return [(s, d or "", json.loads(v).get("device_name", "") if v else "") for s, d, v in rows]


def write_cifar10(root: Path, per_file: int) -> Path:
    """Random images in the real CIFAR-10 python format (``cifar-10-batches-py``: five training
    files and a test file, protocol-2 pickles with bytes keys, uint8 rows of 3072, every class in
    every file) and ``batches.meta``: what ``clbench``'s reader opens."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        record = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in range(per_file)],
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_file)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(record, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, fh, protocol=2)
    return root


def part_cifar(args, sizes: Sizes, tmp: Path, children: Children) -> tuple[list[dict], dict]:
    root = write_cifar10(tmp / "cifar-data", sizes.cifar_per_file)
    work = tmp / "cifar-run"
    work.mkdir()
    what = (
        f"seq-cifar10 through `clbench run` on files in the real CIFAR-10 format ({5 * sizes.cifar_per_file} "
        f"training images, 1 epoch, batch {sizes.cifar_batch}, {sizes.cifar_seeds} seed(s), {args.device})"
    )
    cli = [
        "run",
        "--dataset",
        "seq-cifar10",
        "--data-dir",
        str(root),
        "--epochs",
        "1",
        "--seeds",
        str(sizes.cifar_seeds),
        "--method",
        "er",
        "--batch-size",
        str(sizes.cifar_batch),
        "--minibatch-size",
        str(sizes.cifar_batch),
        "--device",
        args.device,
        "--db",
        str(work / "results.db"),
        "--checkpoint-every",
        "0",
    ]
    t0 = time.perf_counter()
    try:
        done = run_cli(cli, work, time_left(args, sizes))
    except subprocess.TimeoutExpired as exc:
        return [target(what, None, "", False, shown="timed out", why=f"stopped after {exc.timeout:.0f} s")], {}
    wall = time.perf_counter() - t0
    runs = stored_runs(work / "results.db") if (work / "results.db").exists() else []
    finished = [r for r in runs if r[0] == "finished"]
    on_device = all(r[1].startswith(args.device.split(":")[0]) for r in finished)
    ok = done.returncode == 0 and len(finished) == sizes.cifar_seeds and on_device
    print(
        f"clbench run exit status {done.returncode} in {wall:.1f} s; runs finished: {len(finished)} of "
        f"{sizes.cifar_seeds}; devices: {sorted({f'{r[1]} ({r[2]})' for r in runs})}",
        flush=True,
    )
    if done.returncode != 0:
        print(done.stderr.strip()[-1500:])
    why = (
        ""
        if ok
        else (
            f"exit status {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:200]}"
            if done.returncode
            else "not every run finished on the device"
        )
    )
    return (
        [
            target(
                what,
                wall,
                "s",
                ok,
                shown=f"{len(finished)} of {sizes.cifar_seeds} run(s) finished in {wall:.1f} s",
                why=why,
            )
        ],
        {"exit_status": done.returncode, "wall_s": wall, "runs": runs},
    )


def part_ray(args, sizes: Sizes, tmp: Path, children: Children) -> tuple[list[dict], dict]:
    try:
        import ray  # noqa: F401
    except ImportError:
        return [
            target(
                "a Ray group with a fractional GPU",
                None,
                "",
                False,
                shown="Ray is not installed",
                why="pip install -e '.[ray]'",
            )
        ], {}
    cuda = args.device.startswith("cuda")
    share = "0.5" if cuda else "0"
    work = tmp / "ray-run"
    work.mkdir()
    cli = [
        "run",
        "--executor",
        "ray",
        "--cpus-per-group",
        "1",
        "--gpus-per-group",
        share,
        "--device",
        args.device,
        "--dataset",
        "synthetic",
        "--synthetic-train-per-class",
        str(sizes.ray_train_per_class),
        "--synthetic-test-per-class",
        "10",
        "--seeds",
        "2",
        "--group-size",
        "1",
        "--db",
        str(work / "results.db"),
        "--checkpoint-every",
        "0",
    ]
    what = f"a Ray sweep of 2 groups with --gpus-per-group {share} ({args.device}): every run finished" + (
        " on the GPU" if cuda else ""
    )
    t0 = time.perf_counter()
    try:
        done = run_cli(cli, work, time_left(args, sizes))
    except subprocess.TimeoutExpired as exc:
        return [target(what, None, "", False, shown="timed out", why=f"stopped after {exc.timeout:.0f} s")], {}
    wall = time.perf_counter() - t0
    runs = stored_runs(work / "results.db") if (work / "results.db").exists() else []
    finished = [r for r in runs if r[0] == "finished"]
    on_device = all(r[1].startswith(args.device.split(":")[0]) for r in finished)
    log = done.stderr + done.stdout
    # Both groups started before either was done: they shared the GPU at once.
    first_done = _index(log, "done: group ")
    at_once = (
        sum(1 for line in log.splitlines() if line.startswith("started: group ") and log.find(line) < first_done) >= 2
    )
    ok = done.returncode == 0 and len(finished) == 2 and on_device
    print(
        f"clbench run --executor ray exit status {done.returncode} in {wall:.1f} s (Ray's start included); runs "
        f"finished: {len(finished)} of 2; devices: {sorted({f'{r[1]} ({r[2]})' for r in runs})}; the two groups "
        f"ran at the same time: {at_once}",
        flush=True,
    )
    if done.returncode != 0:
        print(log.strip()[-1500:])
    why = (
        ""
        if ok
        else (
            f"exit status {done.returncode}: {(log.strip().splitlines() or [''])[-1][:200]}"
            if done.returncode
            else "not every run finished on the device"
        )
    )
    targets = [
        target(
            what,
            wall,
            "s",
            ok,
            shown=f"{len(finished)} of 2 runs finished in {wall:.1f} s; the groups "
            f"ran at the same time: {'yes' if at_once else 'no'}",
            why=why,
        )
    ]
    if not cuda:
        targets.append(target("a Ray group on a fractional GPU", None, "", None, why=f"ran on {args.device}: no GPU"))
    return targets, {"exit_status": done.returncode, "wall_s": wall, "runs": runs, "groups_at_once": at_once}


def _index(text: str, needle: str) -> int:
    i = text.find(needle)
    return i if i >= 0 else len(text) + 1


PART_FUNCTIONS = {
    "groups": part_groups,
    "methods": part_methods,
    "resume": part_resume,
    "determinism": part_determinism,
    "cifar": part_cifar,
    "ray": part_ray,
}


if __name__ == "__main__":
    main()
