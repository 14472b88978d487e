"""The Ray executor: each lockstep group is one Ray task on a cluster (or a local one).

Nothing here imports Ray until an executor starts (``require_ray``): clbench works without it.

- The driver (the process running ``clbench.sweep.execute``) is the only one that touches the
  registry or the dataset files. It loads each benchmark once and puts it in Ray's object store;
  a task receives the group's configs, that data and the training options, and returns the
  group's results (or its one-line error and traceback) to the driver, which saves them.
- A task declares ``cpus_per_group`` CPUs and ``gpus_per_group`` GPUs (0.25: four groups share a
  GPU) and gives torch exactly ``cpus_per_group`` threads, so groups sharing a node do not spin
  against each other.
- A task whose worker process or node dies is retried by Ray, from the start, up to ``retries``
  times. An exception raised by training is not retried (it would be raised again): it is
  returned as the group's outcome.
- Workers report training progress to a small actor on the driver's node, which the driver drains
  while it waits for results.
- ``start`` checks that every node runs the driver's clbench and torch (one tiny task pinned to
  each node) and that some node can hold a group.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from clbench.engine.environment import resolve_device
from clbench.engine.progress import Progress
from clbench.errors import first_line
from clbench.sweep.executors.base import (
    DataChanged,
    DataSource,
    Executor,
    ExecutorUnavailable,
    GroupEvent,
    GroupOutcome,
    GroupProgress,
    GroupStarted,
    GroupTask,
    ProgressSink,
    TrainOptions,
    compute_group,
    failed,
)
from clbench.version import code_identity

INSTALL_HINT = "pip install -e '.[ray]'"
CHECKED_PACKAGES = ("clbench", "torch")
_POLL_S = 0.2  # how often the driver looks for finished groups and progress while it waits
_REPORT_EVERY_S = 0.25  # a worker forwards at most this often a training report (phase changes always)
_VERSION_CHECK_TIMEOUT_S = 180.0
_CANCEL_GRACE_S = 5.0  # a cancelled group's time to stop before its worker is killed
_VERSION_CHECK_ATTEMPTS = 3  # a worker that dies during the node check is asked again, as for a group
_CONNECT_TIMEOUT_S = 15.0


def require_ray():
    """The ``ray`` module, or :class:`ExecutorUnavailable` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorUnavailable(
            f"--executor ray needs Ray, which is not installed here ({first_line(exc, with_type=True)}): {INSTALL_HINT}"
        ) from None
    return ray


def parse_ray_address(address: str | None) -> str | None:
    """``None`` (start a local cluster), ``auto`` (the cluster this machine belongs to) or
    ``HOST:PORT``; raises ``ValueError`` with one line for anything else."""
    if address is None:
        return None
    text = address.strip()
    if text == "auto":
        return text
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and 1 <= int(port) <= 65535 and not any(c.isspace() for c in host):
        return text
    raise ValueError(
        f"invalid --ray-address {address!r}: give auto, HOST:PORT (the head's GCS address, e.g. "
        "10.0.0.5:6379), or leave it out to start a local Ray cluster"
    )


def local_versions() -> dict[str, str]:
    """What every node must agree on with the driver: clbench's code (``version.code_identity``: a
    node running other code under the same version number is refused) and torch."""
    return {"clbench": code_identity(), "torch": torch.__version__}


def _node_report() -> dict[str, str]:
    """Runs on a node: its versions and who it is."""
    import ray

    return {**local_versions(), "where": _where(ray)}


def _where(ray) -> str:
    return f"{socket.gethostname()} (node {ray.get_runtime_context().get_node_id()[:8]}) pid {os.getpid()}"


def _node_name(node: Mapping[str, Any]) -> str:
    return f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}, node {node['NodeID'][:8]})"


def _versions_text(versions: Mapping[str, str]) -> str:
    return " with ".join(f"{name} {versions.get(name, '?')}" for name in CHECKED_PACKAGES)


def check_node_versions(
    expected: Mapping[str, str] | None = None,
    timeout_s: float = _VERSION_CHECK_TIMEOUT_S,
    *,
    probe: Callable[[], dict[str, str]] = _node_report,
) -> list[dict[str, str]]:
    """Ask every live node of the connected cluster, with a tiny task pinned to it, which clbench code
    and torch it runs; raise :class:`ExecutorUnavailable` naming the first node that differs from
    ``expected`` (default: this process's, :func:`local_versions`). A worker that dies during the
    check is asked again (``_VERSION_CHECK_ATTEMPTS`` in all), as a group's would be; a node that
    leaves the cluster meanwhile is skipped (nothing will be scheduled there). ``probe`` is what runs
    on each node. Returns the reports."""
    ray = require_ray()
    expected = dict(expected or local_versions())
    remote = ray.remote(probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [_probe_on(remote, node) for node in nodes]
    deadline = time.monotonic() + timeout_s
    reports = []
    for node, ref in zip(nodes, refs):
        report = _node_answer(ray, remote, node, ref, deadline, timeout_s, expected)
        if report is None:
            continue
        differs = [name for name in CHECKED_PACKAGES if report.get(name) != expected.get(name)]
        if differs:
            raise ExecutorUnavailable(
                f"node {_node_name(node)} runs {_versions_text(report)}, but this driver runs "
                f"{_versions_text(expected)}: install the same clbench and torch on every node"
            )
        reports.append(report)
    return reports


def _probe_on(remote, node: Mapping[str, Any]):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
    return remote.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote()


def _node_answer(ray, remote, node, ref, deadline: float, timeout_s: float, expected) -> dict[str, str] | None:
    """One node's report, its worker asked again if it dies; ``None`` if the node left the cluster."""
    for attempt in range(1, _VERSION_CHECK_ATTEMPTS + 1):
        try:
            return ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise ExecutorUnavailable(
                f"node {_node_name(node)} did not answer the version check within {timeout_s:.0f} s"
            ) from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            if not _alive(ray, node["NodeID"]):
                return None
            if attempt == _VERSION_CHECK_ATTEMPTS:
                raise ExecutorUnavailable(
                    f"node {_node_name(node)}: the worker running the version check died {attempt} times "
                    f"({first_line(exc, with_type=True)}); see the node's Ray logs"
                ) from None
            ref = _probe_on(remote, node)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise ExecutorUnavailable(
                f"node {_node_name(node)} cannot run clbench ({first_line(cause, with_type=True)}): install "
                f"clbench {expected['clbench']} with torch {expected['torch']} there"
            ) from None
    return None  # pragma: no cover - the loop returns or raises


def _alive(ray, node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def _reachable(address: str, timeout_s: float = _CONNECT_TIMEOUT_S) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(
            f"nothing answers at {address} ({exc.strerror or exc}): is the head running "
            "(ray start --head), and is this its --port?"
        ) from None


class _ProgressBoard:
    """An actor on the driver's node: workers push their groups' events, the driver drains them."""

    def __init__(self):
        self._events: list = []

    def push(self, event) -> None:
        self._events.append(event)

    def drain(self) -> list:
        events, self._events = self._events, []
        return events


class _Reporter:
    """A worker's progress callback: forwards the trainer's reports to the board, at most every
    ``_REPORT_EVERY_S`` (and every phase change), without waiting for the board."""

    def __init__(self, board, group: int):
        self.board, self.group, self.last = board, group, 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase == "train" and now - self.last < _REPORT_EVERY_S:
            return
        self.last = now
        _push(self.board, "progress", self.group, p)


def _push(board, kind: str, group: int, payload) -> None:
    """Send an event to the board: ``board`` is (the actor, the run's token)."""
    actor, token = board
    try:
        actor.push.remote((token, kind, group, payload))
    except Exception:  # noqa: BLE001 - progress is best effort; the driver's node may be going away
        pass


def _train_on_worker(
    group: GroupTask, data, options: TrainOptions, device: str, threads: int, expected: dict[str, str], board
) -> GroupOutcome:
    """The Ray task: one group on a worker, which needs neither the registry nor dataset files."""
    import ray

    where = _where(ray)
    _push(board, "started", group.index, where)
    try:
        mine = local_versions()
        if any(mine[name] != expected[name] for name in CHECKED_PACKAGES):  # a node that joined after the check
            raise RuntimeError(
                f"this node runs {_versions_text(mine)}, the driver {_versions_text(expected)}: "
                "install the same clbench and torch on every node"
            )
        torch.set_num_threads(threads)
        results = compute_group(
            group.configs, data.to(resolve_device(device)), options, progress=_Reporter(board, group.index)
        )
    except Exception as exc:  # noqa: BLE001 - returned as the group's outcome, never retried
        return failed(group.index, exc, where)
    return GroupOutcome(group.index, tuple(results), where)


def _cancel(ray, refs: list) -> None:
    """Stop the groups still in the cluster: first as Ctrl-C would (a KeyboardInterrupt in the task;
    its worker lives on), then, for any still running after ``_CANCEL_GRACE_S``, by killing the
    worker. Killing first raced with Ray's own retry of a task whose worker died (a CHECK failure
    inside Ray's task manager seen once in CI on Ctrl-C)."""
    for force in (False, True):
        for ref in refs:
            try:
                ray.cancel(ref, force=force)
            except Exception:  # noqa: BLE001 - already done, or its node is gone
                pass
        if force or not refs:
            return
        try:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_GRACE_S)
        except Exception:  # noqa: BLE001 - the cluster is going away: nothing left to stop
            return


class RayExecutor(Executor):
    """Groups as Ray tasks on the cluster at ``address`` (``None``: start a local one, ``auto``:
    the cluster this machine belongs to, ``HOST:PORT``: the head's address).

    ``cpus_per_group`` (torch threads of a group), ``gpus_per_group`` (may be fractional below 1)
    and ``retries`` (how often Ray retries a group whose worker or node died) are validated here.
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, *, cpus_per_group: int = 1, gpus_per_group: float = 0.0, retries: int = 3
    ):
        if int(cpus_per_group) != cpus_per_group or cpus_per_group < 1:
            raise ValueError(f"invalid --cpus-per-group {cpus_per_group}: give a whole number N >= 1")
        if not gpus_per_group >= 0 or gpus_per_group != gpus_per_group or gpus_per_group == float("inf"):
            raise ValueError(
                f"invalid --gpus-per-group {gpus_per_group:g}: give a number >= 0 (0.25: four groups share a GPU)"
            )
        if gpus_per_group > 1 and int(gpus_per_group) != gpus_per_group:
            raise ValueError(
                f"invalid --gpus-per-group {gpus_per_group:g}: above 1 it must be a whole number "
                "(Ray shares a GPU only in fractions of one)"
            )
        if int(retries) != retries or retries < 0:
            raise ValueError(f"invalid --retries {retries}: give a whole number N >= 0")
        self.address = parse_ray_address(address)
        self.cpus_per_group = int(cpus_per_group)
        self.gpus_per_group = float(gpus_per_group)
        self.retries = int(retries)
        self._ray = None
        self._owns_connection = False
        self._nodes: list[dict] = []
        self._board = None  # the progress actor

    def check_device(self, device: str) -> None:
        """The device of the workers (the driver needs no GPU): ``cpu`` or ``cuda`` (Ray gives each
        group its GPU share), consistent with ``gpus_per_group``."""
        try:
            dev = torch.device(device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda") or dev.index is not None:
            raise ValueError(
                f"unsupported device {device!r} for the Ray executor: valid devices are cpu, cuda "
                "(Ray assigns each group its GPU)"
            )
        if dev.type == "cuda" and self.gpus_per_group == 0:
            raise ValueError(
                "--device cuda with --gpus-per-group 0: a group would get no GPU; give --gpus-per-group "
                "above 0 (e.g. 1, or 0.25 to share a GPU among four groups)"
            )
        if dev.type == "cpu" and self.gpus_per_group > 0:
            raise ValueError(
                f"--gpus-per-group {self.gpus_per_group:g} with --device cpu: the GPU would sit idle; "
                "give --device cuda or --gpus-per-group 0"
            )

    # -- connecting ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._ray is not None:
            return
        ray = require_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
            if self.address is None:
                kwargs["include_dashboard"] = False
            try:
                if self.address not in (None, "auto"):
                    _reachable(self.address)  # ray.init would retry an unreachable address for minutes
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
                where = (
                    "start a local Ray cluster"
                    if self.address is None
                    else f"connect to the Ray cluster at {self.address}"
                )
                raise ExecutorUnavailable(f"cannot {where}: {first_line(exc, with_type=True)}") from None
            self._owns_connection = True
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # Started now, so that it is up (its process imports torch) when the first group reports.
            self._board = (
                ray.remote(_ProgressBoard)
                .options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        node_id=ray.get_runtime_context().get_node_id(), soft=True
                    ),
                )
                .remote()
            )
            check_node_versions()
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            self._check_resources()
            try:
                ray.get(self._board.drain.remote(), timeout=_VERSION_CHECK_TIMEOUT_S)
            except ray.exceptions.RayError as exc:
                raise ExecutorUnavailable(
                    f"the progress actor did not start on this node ({first_line(exc, with_type=True)})"
                ) from None
        except BaseException:
            self._disconnect(ray)
            raise
        self._ray = ray

    def _check_resources(self) -> None:
        def fits(node) -> bool:
            res = node.get("Resources", {})
            return res.get("CPU", 0) >= self.cpus_per_group and res.get("GPU", 0) >= self.gpus_per_group

        if not any(fits(n) for n in self._nodes):
            have = "; ".join(
                f"{_node_name(n)}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
                for n in self._nodes
            )
            raise ExecutorUnavailable(
                f"no node of the Ray cluster can hold a group of {self.cpus_per_group} CPU(s) and "
                f"{self.gpus_per_group:g} GPU(s) ({have}): lower --cpus-per-group or --gpus-per-group, or add nodes"
            )

    def close(self) -> None:
        if self._ray is not None:
            self._disconnect(self._ray)
            self._ray = None

    def _disconnect(self, ray) -> None:
        if self._board is not None:
            try:
                ray.kill(self._board)
            except Exception:  # noqa: BLE001 - gone already
                pass
            self._board = None
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    def describe(self) -> str:
        cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in self._nodes)
        gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in self._nodes)
        where = "a local Ray cluster" if self.address is None else f"the Ray cluster at {self.address}"
        return (
            f"ray: {where}, {len(self._nodes)} node(s) with {cpus:g} CPU(s) and {gpus:g} GPU(s); a group takes "
            f"{self.cpus_per_group} CPU(s) and {self.gpus_per_group:g} GPU(s), retried up to {self.retries} "
            "time(s) if its worker dies"
        )

    # -- running -------------------------------------------------------------------------------

    def run(
        self,
        groups: Sequence[GroupTask],
        source: DataSource,
        options: TrainOptions,
        device: str,
        progress: ProgressSink | None = None,
    ) -> Iterator[GroupEvent]:
        self.start()
        ray = self._ray
        token = uuid.uuid4().hex  # tells this run's reports from those of an earlier, cancelled one
        task = ray.remote(_train_on_worker).options(
            num_cpus=self.cpus_per_group, num_gpus=self.gpus_per_group, max_retries=self.retries, retry_exceptions=False
        )
        expected = local_versions()
        pending: dict[Any, GroupTask] = {}
        attempts: dict[int, int] = {}
        data_refs: dict[tuple, Any] = {}
        try:
            for group in groups:
                if group.data_key not in data_refs:
                    # Loaded once on the CPU, here; the workers get it from the object store.
                    try:
                        data_refs[group.data_key] = ray.put(source.load(group, "cpu"))
                    except DataChanged as exc:  # the group fails with that line; the others go on
                        yield GroupStarted(group.index, "")
                        yield failed(group.index, exc, keep=True)
                        continue
                ref = task.remote(
                    group,
                    data_refs[group.data_key],
                    options,
                    device,
                    self.cpus_per_group,
                    expected,
                    (self._board, token),
                )
                pending[ref] = group
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
                if ready:  # and whatever else is done by now
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                yield from self._drain(token, attempts, progress)
                for ref in ready:
                    group = pending.pop(ref)
                    outcome = self._outcome(ref, group)
                    if group.index not in attempts:  # finished before its start was drained
                        attempts[group.index] = 1
                        yield GroupStarted(group.index, outcome.where)
                    yield outcome
        finally:
            if pending and self._owns_connection:
                # Disconnecting ends this driver's job, and Ray then stops the job's tasks itself
                # (a later sweep connects again). ray.cancel here raced with a task completing: a
                # CHECK failure in Ray's task manager, "Tried to complete task that was not pending".
                self._disconnect(ray)
                self._ray = None
            elif pending:  # the caller's own connection stays: its groups are stopped one by one
                _cancel(ray, list(pending))

    def _drain(self, token: str, attempts: dict[int, int], progress: ProgressSink | None):
        """Yield the start events the workers reported, forward their latest training reports to
        ``progress``. Without the board (its node died) progress stops; the work goes on."""
        if self._board is None:
            return
        ray = self._ray
        try:
            events = ray.get(self._board.drain.remote(), timeout=30)
        except ray.exceptions.RayError:
            self._board = None
            return
        latest: dict[int, Progress] = {}  # of the reports within training, only the last one matters
        for run, kind, group, payload in events:
            if run != token:
                continue
            if kind == "started":
                attempts[group] = attempts.get(group, 0) + 1
                latest.pop(group, None)  # reports of an earlier attempt
                yield GroupStarted(group, payload, attempts[group])
            elif payload.phase == "train":
                latest[group] = payload
            elif progress is not None:  # a phase change (resumed, evaluated, task done...): each one counts
                latest.pop(group, None)
                progress(GroupProgress(group, payload))
        if progress is not None:
            for group, p in latest.items():
                progress(GroupProgress(group, p))

    def _outcome(self, ref, group: GroupTask) -> GroupOutcome:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            # The task itself never raises: this is Ray's own failure (worker or node died more than
            # ``retries`` times, out of memory, unschedulable...).
            return failed(group.index, exc, "the Ray cluster")
