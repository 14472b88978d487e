"""The executor options that ``clbench run`` and ``clbench report`` share (``--executor``,
``--ray-address``, the resources of a group, ``--retries``, the ``--slurm-*`` options), checked
before anything is written."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import typer

from clbench.cli.common import UsageProblem
from clbench.sweep.executors import EXECUTORS, Executor, ExecutorUnavailable, make_executor


def executor_option():
    return typer.Option(
        "local",
        "--executor",
        metavar="EXECUTOR",
        help="Where groups train: local (this process, one after another), ray (a Ray cluster) or slurm "
        "(one SLURM job per group, through submitit).",
    )


def threads_option():
    return typer.Option(
        None,
        "--threads",
        metavar="N",
        help="CPU threads for torch. [default: before each group, the cores that other processes leave free (said at "
        "the first group and when it changes)] A fixed N gives bit-for-bit repeats on a busy machine.",
    )


def ray_address_option():
    return typer.Option(
        None,
        "--ray-address",
        metavar="ADDRESS",
        help="With --executor ray: auto (the cluster this machine is in) or HOST:PORT of the head. "
        "[default: start a local Ray cluster]",
    )


def gpus_per_group_option():
    return typer.Option(
        None,
        "--gpus-per-group",
        metavar="F",
        help="With --executor ray or slurm: GPUs a group takes (ray: 0.25 means four groups share one; "
        "slurm: whole GPUs, asked as GRES gpu:N). "
        "[default: 1 with --device cuda, else 0]",
    )


def cpus_per_group_option():
    return typer.Option(
        None,
        "--cpus-per-group",
        metavar="N",
        help="With --executor ray or slurm: CPUs a group takes, and its torch threads. [default: 1]",
    )


def retries_option():
    return typer.Option(
        None,
        "--retries",
        metavar="N",
        help="With --executor ray or slurm: how often a group whose worker, job or node died is started again "
        "(from its checkpoint). [default: 3]",
    )


def slurm_partition_option():
    return typer.Option(None, "--slurm-partition", metavar="NAME", help="With --executor slurm: the partition.")


def slurm_time_option():
    return typer.Option(
        None,
        "--slurm-time",
        metavar="LIMIT",
        help="With --executor slurm: a job's time limit (90, 4:00:00, 1-00:00:00); a job that reaches it is "
        "submitted again and resumes from its checkpoint. [default: the partition's]",
    )


def slurm_account_option():
    return typer.Option(None, "--slurm-account", metavar="NAME", help="With --executor slurm: the account to charge.")


def slurm_qos_option():
    return typer.Option(None, "--slurm-qos", metavar="NAME", help="With --executor slurm: the quality of service.")


def slurm_sbatch_option():
    return typer.Option(
        [],
        "--slurm-sbatch",
        metavar="OPTION",
        help="With --executor slurm: one more sbatch option for every job (e.g. --constraint=a100). Repeatable.",
    )


def slurm_folder_option():
    return typer.Option(
        None,
        "--slurm-folder",
        metavar="DIR",
        help="With --executor slurm: the jobs' folder (their inputs, logs and results), on a filesystem the "
        "nodes share. [default: clbench-slurm in the current folder]",
    )


@dataclass(frozen=True)
class SlurmChoice:
    """The ``--slurm-*`` options (or an experiment file's ``[slurm]`` section, keys without the prefix)."""

    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()
    folder: Path | None = None

    def given(self) -> list[str]:
        return [f"--slurm-{f.name}" for f in fields(self) if getattr(self, f.name) not in (None, ())]

    def over(self, section: dict | None) -> SlurmChoice:
        """These options, each in place of an experiment file's ``[slurm]`` value (``section``)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in (section or {}).items():
            if values.get(name, ()) in (None, ()):
                values[name] = tuple(value) if name == "sbatch" else Path(value) if name == "folder" else value
        return SlurmChoice(**values)


@dataclass(frozen=True)
class ExecutorChoice:
    """The executor options as given on the command line."""

    executor: str = "local"
    ray_address: str | None = None
    gpus_per_group: float | None = None
    cpus_per_group: int | None = None
    retries: int | None = None
    slurm: SlurmChoice = field(default_factory=SlurmChoice)


def build_executor(choice: ExecutorChoice, device: str, threads: int | None, check_device: bool = True) -> Executor:
    """The executor, its options and (``check_device``: a command that trains) the device checked
    together; every problem is a one-line :class:`UsageProblem`. Nothing is connected yet (the
    session starts it)."""
    if choice.executor not in EXECUTORS:
        raise UsageProblem(f"invalid --executor {choice.executor!r}: valid executors are {', '.join(EXECUTORS)}")
    cluster_only = {
        "--ray-address": choice.ray_address,
        "--gpus-per-group": choice.gpus_per_group,
        "--cpus-per-group": choice.cpus_per_group,
        "--retries": choice.retries,
    }
    if choice.executor != "slurm" and choice.slurm.given():
        raise UsageProblem(
            f"{choice.slurm.given()[0]} applies to --executor slurm only (this sweep runs with --executor "
            f"{choice.executor})"
        )
    if choice.executor == "slurm" and choice.ray_address is not None:
        raise UsageProblem("--ray-address applies to --executor ray only (this sweep runs with --executor slurm)")
    if choice.executor == "local":
        given = [name for name, value in cluster_only.items() if value is not None]
        if given:
            where = "ray" if given[0] == "--ray-address" else "ray or slurm"
            raise UsageProblem(f"{given[0]} applies to --executor {where} only (this sweep runs with --executor local)")
        executor = make_executor("local", threads=threads if threads is not None else "auto")
    else:
        executor = _cluster_executor(choice, device, threads)
    try:
        if check_device:
            executor.check_device(device)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    except RuntimeError:  # torch's own error for a string that names no device type at all
        raise UsageProblem(f"unsupported device {device!r}: valid devices are cpu, cuda") from None
    _require_backend(choice.executor)
    return executor


def _cluster_executor(choice: ExecutorChoice, device: str, threads: int | None) -> Executor:
    """The Ray or SLURM executor of ``choice``, its resources per group defaulted."""
    if threads is not None:
        raise UsageProblem(
            f"--threads applies to --executor local; with --executor {choice.executor} a group gets "
            "--cpus-per-group threads"
        )
    is_cuda = device.split(":")[0] == "cuda"  # torch.device's type; check_device below names the valid devices
    gpus = choice.gpus_per_group if choice.gpus_per_group is not None else (1.0 if is_cuda else 0.0)
    resources = dict(
        gpus_per_group=gpus,
        cpus_per_group=choice.cpus_per_group if choice.cpus_per_group is not None else 1,
        retries=choice.retries if choice.retries is not None else 3,
    )
    try:
        if choice.executor == "ray":
            executor = make_executor("ray", address=choice.ray_address, **resources)
        else:
            executor = make_executor("slurm", **_slurm_options(choice.slurm), **resources)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    return executor


def _require_backend(executor: str) -> None:
    """Every value is valid: now, is Ray (submitit) there at all?"""
    try:
        if executor == "ray":
            from clbench.sweep.executors.ray import require_ray

            require_ray()
        elif executor == "slurm":
            from clbench.sweep.executors.slurm import require_submitit

            require_submitit()
    except ExecutorUnavailable as exc:
        raise UsageProblem(str(exc)) from None


def _slurm_options(slurm: SlurmChoice) -> dict:
    """``SlurmExecutor``'s cluster options from the ``--slurm-*`` choice (and ``CLBENCH_SLURM_POLL_S``:
    how often the driver asks the cluster about its jobs, 5 s unless set, e.g. by the tests)."""
    poll = os.environ.get("CLBENCH_SLURM_POLL_S", "5")
    try:
        poll_s = float(poll)
    except ValueError:
        poll_s = -1.0
    if not 0 < poll_s < 3600:
        raise UsageProblem(f"invalid CLBENCH_SLURM_POLL_S {poll!r}: give seconds between 0 and 3600")
    return dict(
        poll_s=poll_s,
        folder=slurm.folder if slurm.folder is not None else Path("clbench-slurm"),
        partition=slurm.partition,
        time_limit=slurm.time,
        account=slurm.account,
        qos=slurm.qos,
        sbatch=slurm.sbatch,
    )


def start_executor(executor: Executor) -> None:
    """Connect the executor and check it (a Ray cluster: reachable, same versions on every node,
    room for a group) before the database is opened; a problem is a one-line :class:`UsageProblem`.
    ``clbench tune`` needs this; ``run`` and ``report`` start theirs in ``run_session``."""
    try:
        executor.start()
    except ExecutorUnavailable as exc:
        raise UsageProblem(str(exc)) from None
