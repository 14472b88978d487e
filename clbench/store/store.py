"""The registry's handle: :class:`Store` reads and writes runs in one clbench database (open it with
``clbench.store.opening.open_store``).

A run's row moves ``pending -> running -> finished | diverged | failed | interrupted``. Results are
written in one transaction together with ``status = finished`` (or ``diverged``: the run's loss or
weights became non-finite, see ``clbench.engine.divergence``), so a finished row always has its matrices
and nothing interrupted can leave half a result behind. The process that claims a run records its
host, pid and process start time and keeps a heartbeat (``clbench.store.ownership``); a
``pending``/``running`` row whose process is gone is abandoned, and :meth:`Store.mark_stale_runs`
marks it ``interrupted``. A run held by a live process is never claimed by another one: each run is
computed once across processes.

Every row records the ``RESULTS_VERSION`` of the engine that computed it (part of the run's
identity, ``clbench.runs.resolved``). Rows of an older version are reported with the derived status
``stale``: never reused as cached, left out of reports unless asked for.

Concurrency: every transaction is retried on transient conflicts, and claims and saves take turns
(``clbench.store.connection``): two processes never both insert or both compute the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.engine import URL

from clbench.runs.checks import check_label
from clbench.runs.resolved import ResolvedConfig
from clbench.runs.results import RunResult
from clbench.store.connection import StoreError, describe_url, in_chunks, run_transaction, serialize_writers
from clbench.store.ownership import Owner, holder_alive, row_owner, shown_status
from clbench.store.rows import finished_run_columns, read_result, result_rows, run_columns
from clbench.store.schema import (
    ACTIVE_STATUSES,
    DONE_STATUSES,
    RESULT_TABLES,
    MlflowRun,
    Run,
    RunExperiment,
    utc_now,
)

T = TypeVar("T")


class Store:
    """An open registry (one clbench database). Open it with :func:`clbench.store.opening.open_store`; close
    it (or use ``with``) when done."""

    def __init__(self, engine: Engine, url: URL, *, readonly: bool):
        self.engine = engine
        self.url = url
        self.readonly = readonly

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({describe_url(self.url)!r}{', readonly' if self.readonly else ''})"

    @property
    def where(self) -> str:
        return describe_url(self.url)

    # -- transactions ---------------------------------------------------------------------------

    def transaction(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)`` in one transaction, retrying transient conflicts."""
        return run_transaction(self.engine, work, self.where)

    def _write(self, work: Callable[[Any], T]) -> T:
        if self.readonly:
            raise StoreError(f"the store {self.where} was opened read-only")
        return self.transaction(work)

    # -- reading --------------------------------------------------------------------------------

    def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Status of each of ``run_ids`` that has a row, as listings show it (:func:`shown_status`:
        an abandoned ``pending``/``running`` run is ``interrupted``)."""

        def work(conn):
            out = {}
            now = utc_now()
            for chunk in in_chunks(list(run_ids)):
                stmt = select(Run.run_id, Run.status, Run.host, Run.pid, Run.process_start, Run.heartbeat_at)
                for row in conn.execute(stmt.where(Run.run_id.in_(chunk))).mappings():
                    out[row["run_id"]] = shown_status(row, now)
            return out

        return self.transaction(work)

    def find_run_id(self, prefix: str) -> str:
        """The run id that starts with ``prefix`` (like git: any unique prefix of 4+ characters)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
            raise KeyError(f"invalid run id {prefix!r}: give 4 or more hex digits of a run id (see clbench runs)")
        ids = self.transaction(
            lambda conn: conn.execute(select(Run.run_id).where(Run.run_id.startswith(prefix)).limit(3)).scalars().all()
        )
        if not ids:
            raise KeyError(f"no run {prefix!r} in {self.where} (see clbench runs)")
        if len(ids) > 1:
            raise KeyError(f"run id {prefix!r} is ambiguous ({', '.join(ids)}, ...): give more digits")
        return ids[0]

    def run_row(self, run_id: str) -> dict:
        """The ``runs`` row of ``run_id`` as a dict, with its experiment labels; ``status`` is the one
        listings show (:func:`shown_status`), ``stored_status`` the column's."""

        def work(conn):
            row = conn.execute(select(Run.__table__).where(Run.run_id == run_id)).mappings().first()
            if row is None:
                raise KeyError(f"no run {run_id!r} in {self.where}")
            out = dict(row)
            out["stored_status"], out["status"] = row["status"], shown_status(row)
            out["experiments"] = sorted(
                conn.execute(select(RunExperiment.experiment).where(RunExperiment.run_id == run_id)).scalars()
            )
            return out

        return self.transaction(work)

    def load_result(self, run_id: str) -> RunResult:
        """The full :class:`RunResult` of a finished run, exactly as it was saved."""

        def work(conn):
            run = conn.execute(select(Run.__table__).where(Run.run_id == run_id)).mappings().first()
            if run is None:
                raise KeyError(f"no run {run_id!r} in {self.where}")
            if run["status"] not in DONE_STATUSES:
                raise KeyError(f"run {run_id} has no results: its status is {run['status']}")
            rows = {
                table: conn.execute(select(table.__table__).where(table.run_id == run_id)).all()
                for table in RESULT_TABLES
            }
            return run, rows

        return read_result(*self.transaction(work))

    # -- MLflow exports -------------------------------------------------------------------------

    def mlflow_runs(self, tracking_uri: str) -> dict[tuple[str, str], tuple[str, str]]:
        """(entity, key) -> (MLflow run id, experiment id) of what was exported to ``tracking_uri``."""
        stmt = select(MlflowRun.entity, MlflowRun.key, MlflowRun.mlflow_run_id, MlflowRun.experiment_id).where(
            MlflowRun.tracking_uri == tracking_uri
        )
        return {
            (r.entity, r.key): (r.mlflow_run_id, r.experiment_id)
            for r in self.transaction(lambda conn: conn.execute(stmt).all())
        }

    def remember_mlflow_runs(self, tracking_uri: str, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Record (entity, key, MLflow run id, experiment id) rows for ``tracking_uri`` (replacing any)."""
        now = utc_now()

        def work(conn):
            for entity, key, run_id, experiment_id in rows:
                conn.execute(
                    delete(MlflowRun).where(
                        MlflowRun.tracking_uri == tracking_uri, MlflowRun.entity == entity, MlflowRun.key == key
                    )
                )
                conn.execute(
                    insert(MlflowRun).values(
                        tracking_uri=tracking_uri,
                        entity=entity,
                        key=key,
                        mlflow_run_id=run_id,
                        experiment_id=experiment_id,
                        exported_at=now,
                    )
                )

        self._write(work)

    # -- the lifecycle --------------------------------------------------------------------------

    def claim(
        self,
        configs: Sequence[ResolvedConfig],
        owner: Owner,
        *,
        experiment: str | None = None,
        tag: Sequence[ResolvedConfig] = (),
        force: bool = False,
    ) -> Claim:
        """Make ``configs`` ``pending`` runs of ``owner`` and label them and ``tag`` (e.g. cached runs
        of the same sweep) with ``experiment``.

        New runs get a row; failed, interrupted and abandoned ones (their owner is gone) are taken
        over; runs that another live process holds are left to it (``Claim.held``), so concurrent
        sweeps compute each run once. Finished and diverged runs are claimed only with ``force``
        (they keep their results until new ones replace them).
        """
        if experiment is not None:
            check_label(experiment)  # what every backend stores, checked before anything is written
        now = utc_now()

        def work(conn):
            serialize_writers(conn)
            ids = [c.identity() for c in configs]
            existing = _ownership_rows(conn, ids)
            claimed, held, takeover = _sort_claims(ids, existing, owner, now, force)
            new_rows = [run_columns(c, "pending", owner, now) for c in configs if c.identity() not in existing]
            if new_rows:
                conn.execute(insert(Run), new_rows)
            for chunk in in_chunks(takeover):
                conn.execute(
                    update(Run)
                    .where(Run.run_id.in_(chunk), Run.status.not_in(DONE_STATUSES))
                    .values(
                        status="pending",
                        host=owner.host,
                        pid=owner.pid,
                        process_start=owner.process_start,
                        started_at=None,
                        finished_at=None,
                        error=None,
                        heartbeat_at=now,
                    )
                )
            if experiment:
                self._tag(conn, ids + [c.identity() for c in tag], experiment)
            return Claim(tuple(claimed), held)

        return self._write(work)

    def heartbeat(self, owner: Owner) -> None:
        """``owner`` is alive: refresh the heartbeat of the runs it holds (see ``HEARTBEAT_TIMEOUT_S``)."""
        self._write(
            lambda conn: conn.execute(
                update(Run)
                .where(
                    Run.status.in_(ACTIVE_STATUSES),
                    Run.host == owner.host,
                    Run.pid == owner.pid,
                )
                .values(heartbeat_at=utc_now())
            )
        )

    def _tag(self, conn, run_ids: list[str], experiment: str) -> None:
        have: set[str] = set()
        for chunk in in_chunks(run_ids):
            have.update(
                conn.execute(
                    select(RunExperiment.run_id).where(
                        RunExperiment.experiment == experiment, RunExperiment.run_id.in_(chunk)
                    )
                ).scalars()
            )
        rows = [{"run_id": i, "experiment": experiment} for i in dict.fromkeys(run_ids) if i not in have]
        if rows:
            conn.execute(insert(RunExperiment), rows)

    def mark_running(self, run_ids: Sequence[str], owner: Owner) -> None:
        """The group ``run_ids`` starts training in ``owner`` (finished rows stay as they are)."""
        now = utc_now()

        def work(conn):
            for chunk in in_chunks(list(run_ids)):
                conn.execute(
                    update(Run)
                    .where(Run.run_id.in_(chunk), Run.status != "finished")
                    .values(
                        status="running",
                        started_at=now,
                        host=owner.host,
                        pid=owner.pid,
                        process_start=owner.process_start,
                    )
                )

        self._write(work)

    def save_results(self, results: Sequence[RunResult], owner: Owner) -> None:
        """Write finished runs, each with all its results, in one transaction (replacing any
        earlier results of the same run: the same identity gives the same results). A run that
        diverged is stored with status ``diverged``, where it happened and its last finite loss."""
        now = utc_now()
        payload = [(res, result_rows(res)) for res in results]

        def work(conn):
            serialize_writers(conn)
            ids = [res.run_id for res, _ in payload]
            for table in RESULT_TABLES:
                for chunk in in_chunks(ids):
                    conn.execute(delete(table).where(table.run_id.in_(chunk)))
            present: set[str] = set()
            for chunk in in_chunks(ids):
                present.update(conn.execute(select(Run.run_id).where(Run.run_id.in_(chunk))).scalars())
            for res, rows in payload:
                values = finished_run_columns(res, owner, now)
                if res.run_id in present:
                    values.pop("created_at")
                    conn.execute(update(Run).where(Run.run_id == res.run_id).values(**values))
                else:
                    conn.execute(insert(Run).values(**values))
                for table, table_rows in rows.items():
                    if table_rows:
                        conn.execute(insert(table), table_rows)

        self._write(work)

    def record_job(self, run_ids: Sequence[str], owner: Owner, job_id: str) -> None:
        """The cluster job ``job_id`` computes the runs ``run_ids`` of ``owner`` (a resubmission
        replaces the id). Cleared when the runs finish or fail."""

        def work(conn):
            for chunk in in_chunks(list(run_ids)):
                conn.execute(
                    update(Run)
                    .where(
                        Run.run_id.in_(chunk),
                        Run.status.in_(ACTIVE_STATUSES),
                        Run.host == owner.host,
                        Run.pid == owner.pid,
                    )
                    .values(job_id=job_id)
                )

        self._write(work)

    def recorded_jobs(self, run_ids: Sequence[str]) -> dict[str, str]:
        """run id -> the cluster job recorded for it (by this process or one before it that died),
        for those of ``run_ids`` that have one and are not done."""

        def work(conn):
            out = {}
            for chunk in in_chunks(list(run_ids)):
                stmt = select(Run.run_id, Run.job_id).where(
                    Run.run_id.in_(chunk), Run.job_id.is_not(None), Run.status.not_in(DONE_STATUSES)
                )
                out.update({row.run_id: row.job_id for row in conn.execute(stmt)})
            return out

        return self.transaction(work)

    def mark_interrupted(self, run_ids: Sequence[str], owner: Owner) -> None:
        """Runs of ``owner`` that were stopped before finishing (never another process's runs)."""
        self._finish_unfinished(run_ids, owner, "interrupted", None)

    def mark_failed(self, run_ids: Sequence[str], owner: Owner, error: str) -> None:
        """Runs of ``owner`` whose group raised ``error`` (the traceback)."""
        self._finish_unfinished(run_ids, owner, "failed", error)

    def _finish_unfinished(self, run_ids: Sequence[str], owner: Owner, status: str, error: str | None) -> None:
        now = utc_now()

        def work(conn):
            for chunk in in_chunks(list(run_ids)):
                conn.execute(
                    update(Run)
                    .where(
                        Run.run_id.in_(chunk),
                        Run.status.in_(ACTIVE_STATUSES),
                        Run.host == owner.host,
                        Run.pid == owner.pid,
                    )
                    .values(status=status, finished_at=now, error=error, **({"job_id": None} if error else {}))
                )

        self._write(work)

    def mark_stale_runs(self) -> list[str]:
        """Mark ``interrupted`` the pending/running rows whose owner is gone: on this host, its
        process has ended; on another, its heartbeat is older than ``HEARTBEAT_TIMEOUT_S``.
        Returns their run ids."""
        now = utc_now()

        def work(conn):
            rows = conn.execute(
                select(Run.run_id, Run.host, Run.pid, Run.process_start, Run.heartbeat_at).where(
                    Run.status.in_(ACTIVE_STATUSES)
                )
            ).all()
            stale = [r for r in rows if r.pid is not None and not holder_alive(r, now)]
            for r in stale:
                conn.execute(
                    update(Run)
                    .where(
                        Run.run_id == r.run_id,
                        Run.status.in_(ACTIVE_STATUSES),
                        Run.pid == r.pid,
                        Run.host == r.host,
                    )
                    .values(status="interrupted", error=f"process {r.pid} on {r.host} ended before the run finished")
                )
            return [r.run_id for r in stale]

        return self._write(work)


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` got: the runs this owner now computes, and those another live
    process holds (run id -> ``host pid N``), which this owner must leave alone."""

    claimed: tuple[str, ...]
    held: dict[str, str]


def _ownership_rows(conn, ids: list[str]) -> dict:
    """Run id -> its status and owner's row, for the runs of ``ids`` the registry has."""
    existing = {}
    for chunk in in_chunks(ids):
        for row in conn.execute(
            select(Run.run_id, Run.status, Run.host, Run.pid, Run.process_start, Run.heartbeat_at).where(
                Run.run_id.in_(chunk)
            )
        ):
            existing[row.run_id] = row
    return existing


def _sort_claims(ids: list[str], existing: dict, owner: Owner, now, force: bool) -> tuple[list, dict, list]:
    """``Store.claim``'s decision per run: claimed (new, or taken over: ``takeover``), held by another
    live process (run id -> who), or left alone (finished or diverged, without ``force``)."""
    claimed, held, takeover = [], {}, []
    for rid in ids:
        row = existing.get(rid)
        if row is None:
            claimed.append(rid)
        elif row.status in DONE_STATUSES:
            if force:
                claimed.append(rid)
        elif row.status in ACTIVE_STATUSES and row_owner(row) != owner and holder_alive(row, now):
            held[rid] = f"{row.host} pid {row.pid}"
        else:
            claimed.append(rid)
            takeover.append(rid)
    return claimed, held, takeover
