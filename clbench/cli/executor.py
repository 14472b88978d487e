"""The executor options that ``clbench run`` and ``clbench report`` share (``--executor``,
``--ray-address``, the resources of a group, ``--retries``), checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from clbench.cli.common import UsageProblem
from clbench.sweep.executors import EXECUTORS, Executor, ExecutorUnavailable, make_executor


def executor_option():
    return typer.Option(
        "local",
        "--executor",
        metavar="EXECUTOR",
        help="Where groups train: local (this process, one after another) or ray (a Ray cluster).",
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
        help="With --executor ray: GPUs a group takes (0.25: four groups share one). "
        "[default: 1 with --device cuda, else 0]",
    )


def cpus_per_group_option():
    return typer.Option(
        None,
        "--cpus-per-group",
        metavar="N",
        help="With --executor ray: CPUs a group takes, and its torch threads. [default: 1]",
    )


def retries_option():
    return typer.Option(
        None,
        "--retries",
        metavar="N",
        help="With --executor ray: how often a group whose worker or node died is started again. [default: 3]",
    )


@dataclass(frozen=True)
class ExecutorChoice:
    """The executor options as given on the command line."""

    executor: str = "local"
    ray_address: str | None = None
    gpus_per_group: float | None = None
    cpus_per_group: int | None = None
    retries: int | None = None


def build_executor(choice: ExecutorChoice, device: str, threads: int | None, check_device: bool = True) -> Executor:
    """The executor, its options and (``check_device``: a command that trains) the device checked
    together; every problem is a one-line :class:`UsageProblem`. Nothing is connected yet (the
    session starts it)."""
    if choice.executor not in EXECUTORS:
        raise UsageProblem(f"invalid --executor {choice.executor!r}: valid executors are {', '.join(EXECUTORS)}")
    ray_only = {
        "--ray-address": choice.ray_address,
        "--gpus-per-group": choice.gpus_per_group,
        "--cpus-per-group": choice.cpus_per_group,
        "--retries": choice.retries,
    }
    if choice.executor == "local":
        given = [name for name, value in ray_only.items() if value is not None]
        if given:
            raise UsageProblem(f"{given[0]} applies to --executor ray only (this sweep runs with --executor local)")
        executor = make_executor("local", threads=threads if threads is not None else "auto")
    else:
        if threads is not None:
            raise UsageProblem(
                "--threads applies to --executor local; with --executor ray a group gets --cpus-per-group threads"
            )
        is_cuda = device.split(":")[0] == "cuda"  # torch.device's type; check_device below names the valid devices
        gpus = choice.gpus_per_group if choice.gpus_per_group is not None else (1.0 if is_cuda else 0.0)
        try:
            executor = make_executor(
                "ray",
                address=choice.ray_address,
                gpus_per_group=gpus,
                cpus_per_group=choice.cpus_per_group if choice.cpus_per_group is not None else 1,
                retries=choice.retries if choice.retries is not None else 3,
            )
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    try:
        if check_device:
            executor.check_device(device)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    except RuntimeError:  # torch's own error for a string that names no device type at all
        raise UsageProblem(f"unsupported device {device!r}: valid devices are cpu, cuda") from None
    if choice.executor == "ray":  # every value is valid: now, is Ray there at all?
        from clbench.sweep.executors.ray import require_ray

        try:
            require_ray()
        except ExecutorUnavailable as exc:
            raise UsageProblem(str(exc)) from None
    return executor
