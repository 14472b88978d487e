"""The SLURM executor: each lockstep group is one SLURM job, submitted through submitit.

Nothing here imports submitit until an executor starts (``require_submitit``): clbench works without it.

- The driver (the process running ``clbench.sweep.execute``) stays the registry's only writer and
  the only reader of dataset files. It writes each benchmark once, loaded, into the job folder; a
  job receives the group's configs, the path of that data and the training options, and returns
  the group's results (or its one-line error and traceback) through submitit's result file in the
  job folder, which the driver reads and saves. **The job folder (and the checkpoint folder) must
  be on a filesystem that the driver and every node share** (NFS, Lustre, GPFS, a home folder):
  a job checks that it sees the marker the driver wrote there, and a job that ends without a
  result names the folder in its error.
- A job asks for ``cpus_per_group`` CPUs (its torch threads), ``gpus_per_group`` whole GPUs as a
  GRES (``gpu:N``) and the group's memory as clbench estimates it (``clbench.sweep.ram``), plus the
  cluster's options: partition, time limit, account, QoS and any extra ``#SBATCH`` lines.
- A job that dies (scancel, node failure, time limit, preemption, out of memory: anything that ends
  it without a result) is submitted again, up to ``retries`` times; it resumes from the group's
  checkpoint (``--checkpoint-every``), so its results are those of an uninterrupted run. An
  exception raised by training is not retried (it would be raised again): it is the group's outcome.
- Every submitted job id is reported (:class:`GroupSubmitted`); the driver records it with the
  runs' claims. A driver that was killed and is started again hands the recorded job back
  (``GroupTask.job``): a job still queued or running is waited for, a finished one's result is
  collected, and only a dead one is submitted again.
- Jobs write their latest training report to the job folder; the driver forwards it as progress.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import torch

from clbench.engine.environment import resolve_device
from clbench.engine.progress import Progress
from clbench.errors import first_line
from clbench.files import OutputError, atomic_file, write_once
from clbench.sweep import ram
from clbench.sweep.executors.base import (
    DataChanged,
    DataSource,
    Executor,
    ExecutorUnavailable,
    GroupEvent,
    GroupOutcome,
    GroupProgress,
    GroupStarted,
    GroupSubmitted,
    GroupTask,
    ProgressSink,
    TrainOptions,
    compute_group,
    failed,
)
from clbench.version import code_identity

INSTALL_HINT = "pip install -e '.[slurm]'"
PROCESS_MB = 1024  # the Python process around a group: interpreter, torch's libraries, submitit
# SLURM's job states: still to come or going on (anything else has ended).
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING", "CONFIGURING", "STAGE_OUT")
_REPORT_EVERY_S = 1.0  # a job writes its training report at most this often (phase changes always)
_UNSEEN_GRACE_S = 60.0  # a job unknown to sacct and squeue this long after its submission is gone
_RESULT_GRACE_S = 10.0  # a completed job's result file may appear late on a network filesystem
_MARKER = "clbench-shared-folder"


def require_submitit():
    """The ``submitit`` module, or :class:`ExecutorUnavailable` naming the extra to install."""
    try:
        import submitit
    except ImportError as exc:
        raise ExecutorUnavailable(
            f"--executor slurm needs submitit, which is not installed here ({first_line(exc, with_type=True)}): "
            f"{INSTALL_HINT}"
        ) from None
    return submitit


def parse_slurm_time(text: str | None) -> str | None:
    """A SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``),
    returned as given; ``ValueError`` with one line for anything else."""
    if text is None:
        return None
    t = text.strip()
    days, dash, rest = t.partition("-")
    parts = (rest if dash else t).split(":")
    ok = all(p.isdigit() for p in parts) and (not dash or days.isdigit())
    ok = ok and (len(parts) <= 3 if dash else 1 <= len(parts) <= 3) and t not in ("", "0")
    if not ok:
        raise ValueError(
            f"invalid --slurm-time {text!r}: give a SLURM time limit such as 90 (minutes), 4:00:00 or 2-00:00:00"
        )
    return t


def parse_sbatch_line(line: str) -> tuple[str, str | bool]:
    """An extra ``#SBATCH`` option (``--constraint=a100``, ``--exclusive``, ``#SBATCH --mail-type END``)
    as submitit's (name, value); ``ValueError`` with one line for anything else."""
    text = line.strip().removeprefix("#SBATCH").strip()
    name, sep, value = text.partition("=")
    if not sep and " " in name:
        name, _, value = name.partition(" ")
        sep = " "
    name = name.strip()
    if not name.startswith("--") or len(name) < 3 or any(c.isspace() for c in name):
        raise ValueError(
            f"invalid --slurm-sbatch {line!r}: give one long sbatch option, e.g. --constraint=a100 or --exclusive"
        )
    return name[2:], (value.strip() if sep else True)


def job_memory_mb(configs: Sequence) -> int:
    """The memory a group's job asks for: clbench's estimate of the group, with its margin, and the
    process around it."""
    return int(ram.SAFETY * ram.group_bytes(configs) / 2**20) + PROCESS_MB


def _data_file(folder: Path, group: GroupTask) -> Path:
    return folder / "data" / f"{sha256(repr(group.data_key).encode()).hexdigest()[:16]}.pkl"


def _progress_file(folder: Path, job_id: str) -> Path:
    return folder / "progress" / f"{job_id}.pkl"


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass(frozen=True)
class _JobInputs:
    """What a job needs besides its group: where its data and marker are, the device, its threads
    and the versions the driver runs."""

    folder: str
    data_path: str
    options: TrainOptions
    device: str
    threads: int
    versions: tuple[tuple[str, str], ...]
    token: str  # the shared-folder marker's content


class _JobReporter:
    """A job's progress callback: in the job folder, every phase change so far (resumed, evaluated,
    task done...) and the latest training report, rewritten at most every ``_REPORT_EVERY_S`` (and
    at every phase change)."""

    def __init__(self, path: Path):
        self.path, self.last = path, 0.0
        self.changes: list[Progress] = []

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase == "train" and now - self.last < _REPORT_EVERY_S:
            return
        self.last = now
        if p.phase != "train":
            self.changes.append(p)
        try:
            _write_pickle(self.path, (self.changes, p if p.phase == "train" else None))
        except Exception:  # noqa: BLE001 - progress is best effort
            pass


def _job_folder_token(folder: Path) -> str:
    """The token of the job folder's marker, which a job must see to know it shares the folder with
    the driver; written once, by whichever driver comes first."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_once(folder / _MARKER, os.urandom(8).hex())


def _versions() -> tuple[tuple[str, str], ...]:
    return (("clbench", code_identity()), ("torch", torch.__version__))


def _train_in_job(group: GroupTask, inputs: _JobInputs) -> GroupOutcome:
    """The SLURM job: one group, its data read from the job folder; never touches the registry."""
    job_id = os.environ.get("SLURM_JOB_ID", "?")
    where = f"slurm job {job_id} on {socket.gethostname()}"
    try:
        folder = Path(inputs.folder)
        marker = folder / _MARKER
        if not marker.is_file() or marker.read_text() != inputs.token:
            raise RuntimeError(
                f"{folder} is not the driver's job folder here: put it on a filesystem every node shares"
            )
        if _versions() != inputs.versions:
            raise RuntimeError(f"this node runs {dict(_versions())}, the driver {dict(inputs.versions)}")
        torch.set_num_threads(inputs.threads)
        data = pickle.loads(Path(inputs.data_path).read_bytes()).to(resolve_device(inputs.device))
        results = compute_group(
            group.configs, data, inputs.options, progress=_JobReporter(_progress_file(folder, job_id))
        )
    except Exception as exc:  # noqa: BLE001 - returned as the group's outcome, never retried
        return failed(group.index, exc, where)
    return GroupOutcome(group.index, tuple(results), where)


@dataclass
class _Job:
    """The driver's view of one group's current job."""

    group: GroupTask
    job_id: str
    attempt: int
    submitted: float  # time.monotonic() of the submission (or of the adoption)
    started: bool = False
    ended_at: float | None = None  # when the driver first saw it ended without a result
    reported: int = 0  # phase changes of the job forwarded so far


class SlurmExecutor(Executor):
    """Groups as SLURM jobs, through submitit, with their job files in ``folder`` (shared with the nodes).

    ``cpus_per_group`` (a job's CPUs and torch threads), ``gpus_per_group`` (whole GPUs, as GRES),
    ``retries`` (how often a job that died is submitted again), ``partition``, ``time`` (a SLURM time
    limit), ``account``, ``qos`` and ``sbatch`` (extra long sbatch options) are validated here.
    ``poll_s``: how often the driver asks the cluster (``sacct``) how its jobs are.
    """

    name = "slurm"

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        cpus_per_group: int = 1,
        gpus_per_group: float = 0,
        retries: int = 3,
        partition: str | None = None,
        time_limit: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        sbatch: Sequence[str] = (),
        poll_s: float = 5.0,
    ):
        if int(cpus_per_group) != cpus_per_group or cpus_per_group < 1:
            raise ValueError(f"invalid --cpus-per-group {cpus_per_group}: give a whole number N >= 1")
        if not gpus_per_group >= 0 or int(gpus_per_group) != gpus_per_group:
            raise ValueError(
                f"invalid --gpus-per-group {gpus_per_group:g}: give a whole number >= 0 (SLURM gives whole GPUs)"
            )
        if int(retries) != retries or retries < 0:
            raise ValueError(f"invalid --retries {retries}: give a whole number N >= 0")
        for option, value in (("--slurm-partition", partition), ("--slurm-account", account), ("--slurm-qos", qos)):
            if value is not None and (not value.strip() or any(c.isspace() for c in value.strip())):
                raise ValueError(f"invalid {option} {value!r}: give one name without spaces")
        self.folder = Path(folder).absolute()
        self.cpus_per_group = int(cpus_per_group)
        self.gpus_per_group = int(gpus_per_group)
        self.retries = int(retries)
        self.partition, self.account, self.qos = partition, account, qos
        self.time_limit = parse_slurm_time(time_limit)
        self.sbatch = dict(parse_sbatch_line(line) for line in sbatch)
        self.poll_s = float(poll_s)
        self._submitit = None
        self._token = ""
        self._default_time = "UNLIMITED"

    def check_device(self, device: str) -> None:
        """The device of the jobs (the driver needs no GPU): ``cpu`` or ``cuda``, consistent with
        ``gpus_per_group``."""
        try:
            dev = torch.device(device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda") or dev.index is not None:
            raise ValueError(
                f"unsupported device {device!r} for the SLURM executor: valid devices are cpu, cuda "
                "(SLURM assigns each job its GPUs)"
            )
        if dev.type == "cuda" and self.gpus_per_group == 0:
            raise ValueError("--device cuda with --gpus-per-group 0: a job would get no GPU; give --gpus-per-group 1")
        if dev.type == "cpu" and self.gpus_per_group > 0:
            raise ValueError(
                f"--gpus-per-group {self.gpus_per_group} with --device cpu: the GPU would sit idle; "
                "give --device cuda or --gpus-per-group 0"
            )

    # -- connecting ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._submitit is not None:
            return
        submitit = require_submitit()
        for tool in ("sbatch", "sacct", "squeue", "scancel", "srun"):
            if shutil.which(tool) is None:
                raise ExecutorUnavailable(
                    f"--executor slurm needs SLURM's {tool}, which is not on PATH here: run clbench on a "
                    "machine that submits jobs to the cluster (a login node)"
                )
        try:
            partitions = _slurm(["sinfo", "-h", "-o", "%P|%L|%l"])
        except RuntimeError as exc:
            raise ExecutorUnavailable(f"the SLURM cluster does not answer: {exc}") from None
        self._default_time = _partition_default_time(partitions, self.partition)
        try:
            self._token = _job_folder_token(self.folder)
        except OSError as exc:
            raise ExecutorUnavailable(f"cannot write the job folder {self.folder}: {exc.strerror or exc}") from None
        except OutputError as exc:
            raise ExecutorUnavailable(str(exc)) from None
        self._submitit = submitit

    def describe(self) -> str:
        cluster = ", ".join(
            f"{name} {value}"
            for name, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos))
            if value
        )
        return (
            f"slurm: one job per group{f' ({cluster})' if cluster else ''}, {self.cpus_per_group} CPU(s) and "
            f"{self.gpus_per_group} GPU(s) each, time limit {self.time_limit or 'the partition default'}; "
            f"job files in {self.folder} (on a filesystem every node must share); a job that dies is "
            f"submitted again up to {self.retries} time(s)"
        )

    # -- submitting ----------------------------------------------------------------------------

    def _submit(self, group: GroupTask, inputs: _JobInputs) -> str:
        executor = self._submitit.SlurmExecutor(folder=self.folder / "jobs" / "%j", max_num_timeout=0)
        extra = dict(self.sbatch)
        if self.time_limit is not None:
            extra["time"] = self.time_limit
        if self.gpus_per_group:
            extra.setdefault("gres", f"gpu:{self.gpus_per_group}")
        params = dict(
            job_name=f"clbench-g{group.index + 1}",
            cpus_per_task=self.cpus_per_group,
            mem=f"{job_memory_mb(group.configs)}M",
            partition=self.partition,
            account=self.account,
            qos=self.qos,
            additional_parameters=extra,
        )
        # submitit always writes a --time line: without --slurm-time, the partition's default limit.
        extra.setdefault("time", self._default_time)
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return str(executor.submit(_train_in_job, group, inputs).job_id)

    def _cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            try:
                _slurm(["scancel", *job_ids], check=False)
            except RuntimeError:
                pass

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
        jobs: dict[int, _Job] = {}
        try:
            for group in groups:
                if group.job:  # submitted by an earlier driver of these runs: adopted, not submitted again
                    jobs[group.index] = _Job(group, group.job, 1, time.monotonic())
                    continue
                try:
                    inputs = self._inputs(group, source, options, device)
                except DataChanged as exc:  # the group fails with that line; the others go on
                    yield GroupStarted(group.index, "")
                    yield failed(group.index, exc, keep=True)
                    continue
                job_id = self._submit(group, inputs)
                jobs[group.index] = _Job(group, job_id, 1, time.monotonic())
                yield GroupSubmitted(group.index, job_id)
            while jobs:
                yield from self._poll(jobs, source, options, device, progress)
                if jobs:
                    time.sleep(self.poll_s)
        finally:
            self._cancel([job.job_id for job in jobs.values()])

    def _inputs(self, group: GroupTask, source: DataSource, options: TrainOptions, device: str) -> _JobInputs:
        path = _data_file(self.folder, group)
        if not path.is_file():  # loaded once on the CPU, here; the jobs read it from the job folder
            _write_pickle(path, source.load(group, "cpu"))
        return _JobInputs(str(self.folder), str(path), options, device, self.cpus_per_group, _versions(), self._token)

    def _poll(self, jobs: dict[int, _Job], source, options, device: str, progress: ProgressSink | None):
        """One look at every job: yield what started and what ended; submit again what died."""
        states = job_states([job.job_id for job in jobs.values()])
        now = time.monotonic()
        for index, job in list(jobs.items()):
            state, node = states.get(job.job_id, ("", ""))
            outcome = self._result(job)
            unseen = not state and now - job.submitted < _UNSEEN_GRACE_S  # not in sacct yet
            if outcome is None and (state in ACTIVE_STATES or unseen):
                if state == "RUNNING" and not job.started:
                    job.started = True
                    yield GroupStarted(index, f"slurm job {job.job_id} on {node}", job.attempt)
                if job.started and progress is not None:
                    self._forward_progress(job, progress)
                continue
            if outcome is None and state.startswith("COMPLETED"):  # the result file may be on its way
                job.ended_at = job.ended_at or now
                if now - job.ended_at < _RESULT_GRACE_S:
                    continue
            if not job.started:
                job.started = True
                yield GroupStarted(index, f"slurm job {job.job_id} on {node or '?'}", job.attempt)
            if outcome is not None:
                if progress is not None:  # what a quick job did since the last look (its resume) comes first
                    self._forward_progress(job, progress)
                del jobs[index]
                yield outcome
                continue
            yield from self._died(jobs, job, state or "gone from the cluster", source, options, device)

    def _died(self, jobs: dict[int, _Job], job: _Job, state: str, source, options, device: str):
        """A job ended without a result: submit the group again, or give up after ``retries``."""
        index = job.group.index
        if job.attempt > self.retries:
            del jobs[index]
            log = self.folder / "jobs" / job.job_id
            yield GroupOutcome(
                index,
                None,
                f"slurm job {job.job_id}",
                error=f"slurm job {job.job_id} ended ({state}) without a result after {job.attempt} attempt(s); "
                f"its log is in {log} (is {self.folder} on a filesystem every node shares?)",
            )
            return
        job_id = self._submit(job.group, self._inputs(job.group, source, options, device))
        jobs[index] = _Job(job.group, job_id, job.attempt + 1, time.monotonic())
        yield GroupSubmitted(index, job_id)

    def _result(self, job: _Job) -> GroupOutcome | None:
        """The job's outcome from its result file, or ``None`` while there is none."""
        path = self.folder / "jobs" / job.job_id / f"{job.job_id}_0_result.pkl"
        if not path.is_file():
            return None
        try:
            status, value = pickle.loads(path.read_bytes())
        except Exception:  # noqa: BLE001 - being written, or damaged: treated as no result yet
            return None
        where = f"slurm job {job.job_id}"
        if status != "success":
            return GroupOutcome(job.group.index, None, where, error=f"submitit failed in {where}", detail=str(value))
        run_ids = [c.identity() for c in job.group.configs]
        if not value.ok or [r.run_id for r in value.results] == run_ids:
            return GroupOutcome(job.group.index, value.results, value.where, value.error, value.detail)
        return None  # an adopted job of another group: never the case with a driver's own records

    def _forward_progress(self, job: _Job, progress: ProgressSink) -> None:
        try:
            changes, latest = pickle.loads(_progress_file(self.folder, job.job_id).read_bytes())
        except Exception:  # noqa: BLE001 - none yet, or being replaced
            return
        for report in changes[job.reported :]:  # each phase change counts
            progress(GroupProgress(job.group.index, report))
        job.reported = len(changes)
        if latest is not None:
            progress(GroupProgress(job.group.index, latest))


def _partition_default_time(sinfo: str, partition: str | None) -> str:
    """The default time limit of ``partition`` (``None``: the cluster's default partition) from
    ``sinfo -o %P|%L|%l``: its DefaultTime, else its MaxTime; raises :class:`ExecutorUnavailable`
    for a partition the cluster lacks."""
    rows = {}
    for line in sinfo.splitlines():
        name, _, limits = line.strip().partition("|")
        default, _, most = limits.partition("|")
        rows[name] = (default, most)
    name = partition if partition is not None else next((n for n in rows if n.endswith("*")), None)
    found = rows.get(name) or rows.get(f"{name}*")
    if found is None:
        shown = ", ".join(n.rstrip("*") for n in rows) or "none"
        what = f"no partition {partition!r}" if partition is not None else "no default partition"
        raise ExecutorUnavailable(f"the SLURM cluster has {what}: its partitions are {shown} (--slurm-partition)")
    limit = found[0] if found[0] not in ("n/a", "") else found[1]
    return "UNLIMITED" if limit in ("infinite", "n/a", "") else limit


def _slurm(command: list[str], check: bool = True) -> str:
    """Run a SLURM command; its output, or ``RuntimeError`` with one line."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{command[0]}: {first_line(exc)}") from None
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {(done.stderr.strip() or done.stdout.strip())[:300]}")
    return done.stdout


def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, node list) as ``sacct`` (and, for jobs it does not know yet, ``squeue``)
    reports them; jobs neither knows are left out."""
    if not job_ids:
        return {}
    out: dict[str, tuple[str, str]] = {}
    try:
        text = _slurm(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j", ",".join(job_ids)])
    except RuntimeError:
        text = ""
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) >= 3:
            out[fields[0]] = (fields[1].split()[0] if fields[1] else "", fields[2])
    missing = [j for j in job_ids if j not in out]
    if missing:
        try:
            text = _slurm(["squeue", "-h", "-o", "%i|%T|%N", "-j", ",".join(missing)], check=False)
        except RuntimeError:
            text = ""
        for line in text.splitlines():
            fields = line.split("|")
            if len(fields) >= 3:
                out[fields[0]] = (fields[1], fields[2])
    return out
