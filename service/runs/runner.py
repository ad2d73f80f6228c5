from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Row,
    String,
    Table,
    bindparam,
    exists,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.types import TypeEngine

from .. import metrics
from ..db import autocommit, rowcount, run_statement, utcnow
from ..errors import AppError, NonRetryable, ServiceUnavailable, Unauthorized
from ..logs import log_context
from ..models import DeliveryToken, JobRun
from .jobs import Delivery, Job, JobContext, JobError, RunOutcome

log = logging.getLogger("eleva.jobs")

# Share of the job's timeout a run may spend claiming new work; the rest is headroom to finish.
BUDGET_SHARE = 0.8
MAX_STORED_ERROR = 500  # characters of a failed run's error kept in job_runs.error


def run_job(
    engine: Engine, job: Job, delivery: Delivery, *, scrub: Callable[[str], str]
) -> RunOutcome:
    """Run a job once for this delivery: dedup by message id, guard overlap, record the run.

    `scrub` removes secrets from a failed run's error before it is stored.

    Raise AppError for outcomes that are not a 200: 503 while an earlier attempt runs or the
    job is busy under the `retry` policy, 500 on a retryable failure, 489 on a permanent one.
    The job is framed by two statements on one connection, each its own transaction: one
    claims the run and the job, the other records the outcome and so frees the job.
    """
    with log_context(job=job.name, message_id=delivery.message_id), \
            autocommit(engine.connect()) as conn:
        start = _start(conn, job, delivery)
        if isinstance(start, RunOutcome):
            if start.duplicate:
                log.info("duplicate delivery; returning the stored outcome",
                         extra={"event": {"run_id": start.run_id, "status": start.status}})
            else:
                log.info("run skipped: %s", start.reason, extra={"event": {"run_id": start.run_id}})
            return start
        run_id, attempts = start
        with log_context(run_id=run_id):
            return _execute(conn, job, delivery, run_id, attempts, scrub)


# The statements every delivery runs, in SQL that SQLite and PostgreSQL share, run on the
# driver's cursor (db.run_statement): compiling them through SQLAlchemy on each delivery took
# longer than running them. Values are converted by the column types' processors, as SQLAlchemy
# would.
# A running run is the job's lease: the unique index uq_job_runs_running_job admits one running
# run per job, so claiming the message and the job is one INSERT, and recording the outcome
# releases the job. The same INSERT records a delivery that finds the job held by a live run as
# not run, so a busy job also costs one statement. Each hot-path statement is its own
# transaction (autocommit): one round trip on PostgreSQL, and SQLite's writer lock is held only
# while the statement runs. Both do nothing when the request's token was already used (a
# replay): its id is then in job_runs (uq_job_runs_token_id) or in delivery_tokens.
_UNSPENT = " NOT EXISTS (SELECT 1 FROM delivery_tokens WHERE token_id = :token_id)"
_START_RUN = (  # the message's run: running if the job is free, else ended unrun (blocked)
    # MATERIALIZED: looked up once, where PostgreSQL would otherwise inline it at each use.
    "WITH job_state AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM job_runs WHERE job = :job"
    " AND status = 'running' AND expires_at > :now) AS held)"
    " INSERT INTO job_runs (id, message_id, job, schedule_id, retried, attempts, trigger,"
    " status, started_at, expires_at, finished_at, duration_ms, error, token_id)"
    " SELECT :run_id, :message_id, :job, :schedule_id, :retried, 1, :trigger,"
    " CASE WHEN held THEN :status ELSE 'running' END, :now,"
    " CASE WHEN held THEN :now ELSE :expires END, CASE WHEN held THEN :now END,"
    " CASE WHEN held THEN 0 END, CASE WHEN held THEN :error END,"
    " CAST(:token_id AS VARCHAR(128))"
    " FROM job_state WHERE" + _UNSPENT + " ON CONFLICT DO NOTHING RETURNING status"
)
_FINISH_RUN = (
    "UPDATE job_runs SET status = :status, result = :result, error = :error,"
    " finished_at = :now, duration_ms = :duration_ms"
    " WHERE id = :run_id AND status = 'running' AND attempts = :attempts"
)
_runs = cast(Table, JobRun.__table__)
_tokens = cast(Table, DeliveryToken.__table__)
_FIND_RUN = select(_runs).where(_runs.c.message_id == bindparam("message_id"))
# Written into the SQL, not bound: only then can a generic plan (psycopg prepares a statement
# after a few executions) use the partial index uq_job_runs_running_job rather than walk the
# job's whole history through ix_job_runs_job_started.
_RUNNING = literal_column("'running'", String)
_TOKEN_SPENT = select(
    exists().where(_runs.c.token_id == bindparam("token_id"))
    | exists().where(_tokens.c.token_id == bindparam("token_id"))
)
# Claims of a delivery whose message or job changes state under it between its statements.
_CLAIM_ATTEMPTS = 3
_EXPIRED = "expired: no outcome was recorded before the run's lease ended; a later run took over"


@dataclass(frozen=True)
class _RunSql:
    """The hot-path statements and value conversions for one database driver."""

    start_run: str
    finish_run: str
    instant: Callable[[datetime | None], Any]
    json: Callable[[Mapping[str, Any] | None], Any]

    @classmethod
    @functools.lru_cache(maxsize=8)
    def of(cls, dialect: Dialect) -> _RunSql:
        if dialect.paramstyle == "pyformat":
            def style(sql: str) -> str:
                return re.sub(r":(\w+)", r"%(\1)s", sql)
        elif dialect.name == "sqlite":  # the sqlite3 module takes :name with a dict
            def style(sql: str) -> str:
                return sql
        else:
            raise RuntimeError(f"no run record SQL for the {dialect.name} driver {dialect.driver}")
        return cls(
            start_run=style(_START_RUN),
            finish_run=style(_FINISH_RUN),
            instant=_processor(_runs.c.started_at.type, dialect),
            json=_processor(_runs.c.result.type, dialect),
        )


def _processor(kind: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """Convert a value as SQLAlchemy would for a column of this type; None stays SQL NULL."""
    process = kind.dialect_impl(dialect).bind_processor(dialect)

    def convert(value: Any) -> Any:
        return value if value is None or process is None else process(value)

    return convert


@dataclass(frozen=True)
class _InProgress:
    """An earlier attempt of the message still runs: answered 503 once the transaction ends."""

    run_id: str
    retry_after: int


@dataclass(frozen=True)
class _Busy:
    """The job's running run holds it: this delivery's run was recorded as not run."""

    run_id: str


def _start(conn: Connection, job: Job, delivery: Delivery) -> tuple[str, int] | RunOutcome:
    sql = _RunSql.of(conn.dialect)
    for _ in range(_CLAIM_ATTEMPTS):
        now = utcnow()
        run_id = uuid.uuid4().hex
        params = {"job": job.name, "run_id": run_id, "message_id": delivery.message_id,
                  "schedule_id": delivery.schedule_id, "retried": delivery.retried,
                  "trigger": delivery.trigger, "now": sql.instant(now),
                  "expires": sql.instant(now + job.lease_duration),
                  "token_id": delivery.token_id}
        rows = run_statement(conn, sql.start_run, {
            **params, "status": _blocked_status(job), "error": _busy(job)})[0]
        if rows:
            return (run_id, 1) if rows[0][0] == "running" else _blocked(job, run_id)
        # The message already has a run, the job's running run has expired, a concurrent
        # delivery took the job meanwhile, or the request is a replay: settle it in one
        # transaction.
        try:
            with conn.engine.begin() as transaction:
                claim = _settle(transaction, job, delivery, run_id, now)
        except IntegrityError:
            # PostgreSQL: a concurrent delivery claimed the message or the job meanwhile.
            continue
        if isinstance(claim, _InProgress):
            raise ServiceUnavailable(
                f"an earlier attempt of message {delivery.message_id} is still running",
                code="attempt_in_progress", retry_after=claim.retry_after,
                extra={"run_id": claim.run_id},
            )
        return _blocked(job, claim.run_id) if isinstance(claim, _Busy) else claim
    log.warning("could not claim the run: concurrent deliveries kept changing the job's state;"
                " answering 503 so that QStash retries")
    raise ServiceUnavailable(
        f"concurrent deliveries kept claiming message {delivery.message_id} or job {job.name}",
        code="attempt_in_progress", retry_after=5,
    )


def _blocked(job: Job, run_id: str) -> RunOutcome:
    """Answer a run recorded as not run because the job's running run holds the job."""
    metrics.observe_run(job.name, "skipped", None)
    if job.overlap == "skip":
        return RunOutcome(job=job.name, run_id=run_id, status="skipped", duplicate=False,
                          result=None, reason=_busy(job))
    log.info("run deferred: %s; QStash will retry", _busy(job),
             extra={"event": {"run_id": run_id}})
    raise ServiceUnavailable(_busy(job) + "; retry later", code="job_busy", retry_after=60,
                             extra={"run_id": run_id})


def _busy(job: Job) -> str:
    return f"another run of {job.name} is still running"


def _blocked_status(job: Job) -> str:
    return "skipped" if job.overlap == "skip" else "failed"


def _settle(
    conn: Connection, job: Job, delivery: Delivery, run_id: str, now: datetime
) -> tuple[str, int] | RunOutcome | _Busy | _InProgress:
    """Report the run this delivery's message already has, or start or block a run for it."""
    existing = None
    if delivery.message_id is not None:
        existing = conn.execute(_FIND_RUN, {"message_id": delivery.message_id}).one_or_none()
    if existing is not None:
        if existing.job != job.name:
            log.warning("message id replayed for another job",
                        extra={"event": {"first_job": existing.job}})
            raise NonRetryable(
                f"message {delivery.message_id} already ran job {existing.job!r}; "
                "a message cannot target two jobs",
                code="replayed_message",
            )
        # Answered without a run, the request's token is still spent: replayed under another
        # message id, it must not start one.
        if existing.status in ("succeeded", "skipped"):
            _spend(conn, delivery, existing.id, now)
            return RunOutcome(job=job.name, run_id=existing.id, status=existing.status,
                              duplicate=True, result=existing.result, reason=existing.error)
        if existing.status == "running" and existing.expires_at > now:
            _spend(conn, delivery, existing.id, now)
            wait = int((existing.expires_at - now).total_seconds()) + 1
            return _InProgress(existing.id, retry_after=max(1, min(wait, 300)))
    if _spent(conn, delivery):
        log.warning("rejected request: its signature was already used",
                    extra={"event": {"check": "replayed_signature"}})
        raise Unauthorized(
            "this signed request was already delivered; a QStash signature is acted on once",
            code="replayed_signature",
        )
    # A running run past its lease has lost its worker: it ends as failed and frees the job.
    conn.execute(
        update(_runs)
        .where(_runs.c.job == job.name, _runs.c.status == _RUNNING, _runs.c.expires_at <= now)
        .values(status="failed", error=_EXPIRED, finished_at=now)
    )
    holder = conn.execute(
        select(_runs.c.id).where(_runs.c.job == job.name, _runs.c.status == _RUNNING)
    ).first()
    if existing is not None:
        # A failed attempt, or a running one whose worker died: this delivery takes it over.
        run_id, attempts = existing.id, existing.attempts + 1
    else:
        # A message's first delivery, or a run without a message (admin or command line).
        attempts = 1
    common = {"attempts": attempts, "retried": delivery.retried, "trigger": delivery.trigger,
              "started_at": now, "result": None}
    if holder is None:
        try:
            with conn.begin_nested():
                _write_run(conn, job, delivery, existing, run_id, {
                    **common, "status": "running", "expires_at": now + job.lease_duration,
                    "finished_at": None, "duration_ms": None, "error": None})
            return run_id, attempts
        except IntegrityError:
            # PostgreSQL: a concurrent delivery's run took the job meanwhile, so it is busy.
            # (A concurrent delivery of this same message fails the write below too.)
            pass
    _write_run(conn, job, delivery, existing, run_id, {
        **common, "status": _blocked_status(job), "expires_at": now, "finished_at": now,
        "duration_ms": 0, "error": _busy(job)})
    return _Busy(run_id)


def _write_run(conn: Connection, job: Job, delivery: Delivery, existing: Row[Any] | None,
               run_id: str, values: dict[str, Any]) -> None:
    """Insert the delivery's run, or update the attempt it takes over."""
    if existing is None:
        conn.execute(insert(_runs).values(id=run_id, message_id=delivery.message_id,
                                          job=job.name, schedule_id=delivery.schedule_id,
                                          token_id=delivery.token_id, **values))
        return
    _spend(conn, delivery, run_id, values["started_at"])
    taken = conn.execute(update(_runs)
                         .where(_runs.c.id == run_id, _runs.c.attempts == existing.attempts)
                         .values(**values))
    if rowcount(taken) != 1:
        raise ServiceUnavailable(
            f"another attempt of message {delivery.message_id} just started",
            code="attempt_in_progress",
            retry_after=5,
        )


def _spent(conn: Connection, delivery: Delivery) -> bool:
    """Tell whether the request's token already went to a run (this message's or another's)."""
    return delivery.token_id is not None and bool(
        conn.execute(_TOKEN_SPENT, {"token_id": delivery.token_id}).scalar())


def _spend(conn: Connection, delivery: Delivery, run_id: str, now: datetime) -> None:
    """Record the request's token as used by this run, so that it can start no other."""
    if delivery.token_id is not None and not _spent(conn, delivery):
        conn.execute(insert(_tokens).values(token_id=delivery.token_id, run_id=run_id,
                                            used_at=now))


def _execute(
    conn: Connection,
    job: Job,
    delivery: Delivery,
    run_id: str,
    attempts: int,
    scrub: Callable[[str], str],
) -> RunOutcome:
    started = time.monotonic()
    context = JobContext(
        job=job, run_id=run_id, trigger=delivery.trigger,
        message_id=delivery.message_id, retried=delivery.retried, payload=delivery.payload,
        deadline=started + job.timeout * BUDGET_SHARE,
    )
    log.info("run started", extra={"event": {"trigger": delivery.trigger,
                                              "retried": delivery.retried, "attempt": attempts}})
    try:
        result = dict(job.handler(context))
        json.dumps(result)  # fail here, not at commit, if the handler returned non-JSON data
    except JobError as exc:
        _finish(conn, job, run_id, attempts, status="failed",
                error=scrub(f"{exc.code}: {exc}")[:MAX_STORED_ERROR], started=started)
        log.warning("run failed: %s", exc, extra={"event": {"retryable": exc.retryable}})
        if not exc.retryable:
            raise NonRetryable(str(exc), code=exc.code, extra={"run_id": run_id}) from exc
        raise AppError(str(exc), code=exc.code, status=500, extra={"run_id": run_id}) from exc
    except Exception as exc:
        _finish(conn, job, run_id, attempts, status="failed",
                error=scrub(f"{type(exc).__name__}: {exc}")[:MAX_STORED_ERROR], started=started)
        log.exception("run crashed; QStash will retry")
        raise AppError(f"job {job.name} failed; see the logs for run {run_id}",
                       code="job_failed", status=500, extra={"run_id": run_id}) from exc
    _finish(conn, job, run_id, attempts, status="succeeded", result=result, started=started)
    log.info("run succeeded", extra={"event": {"result": result}})
    return RunOutcome(job=job.name, run_id=run_id, status="succeeded", duplicate=False,
                      result=result)


def _finish(
    conn: Connection,
    job: Job,
    run_id: str,
    attempts: int,
    *,
    status: str,
    started: float,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record the run's outcome, which also frees the job for its next run."""
    sql = _RunSql.of(conn.dialect)
    params = {"run_id": run_id, "attempts": attempts, "status": status,
              "result": sql.json(result), "error": error, "now": sql.instant(utcnow()),
              "duration_ms": int((time.monotonic() - started) * 1000)}
    metrics.observe_run(job.name, status, time.monotonic() - started)
    try:
        written = run_statement(conn, sql.finish_run, params)[1]
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        # The connection died while the job ran (a database restart, a proxy's idle timeout).
        log.warning("database connection lost during the run; recording its outcome anew")
        with autocommit(conn.engine.connect()) as fresh:
            written = run_statement(fresh, sql.finish_run, params)[1]
    if written != 1:
        # The run expired and another attempt took it over; its outcome stands.
        log.warning("run outcome not recorded: the run was taken over by a later attempt")
