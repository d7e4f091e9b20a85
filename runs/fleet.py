"""The run queue's workers, its depth and its scheduler, as RQ keeps them in Redis.

For the workers page and the Prometheus endpoint. Reads only: nothing here changes a worker, a
job or a run.

A worker is *probably dead* when the heartbeat it promised has not come. Each RQ heartbeat sets
the worker's key to expire RQ's 60 s of slack after the next one is due, so the key's time to
live, read next to the heartbeat's age, says when the next heartbeat was due, whatever the
worker's settings. A worker advancing a run without a fork (runs.workers.ReusingWorker) does not
heartbeat in Redis during the job; its run's lease is its heartbeat (runs.engine.Heartbeat), so
a lease that lapsed under it says the same, and so does a job that goes on after its run went to
another worker or stopped running (a live worker ends the job as soon as its run leaves it).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.timezone import localtime
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.exceptions import SchedulerNotFound

from runs.models import Run, RunStatus
from runs.queue import ADVANCE_JOB, WAKE_JOB, run_queue

# RQ sets a worker's key to expire this long after its next heartbeat is due.
RQ_HEARTBEAT_SLACK_SECONDS = 60
# A heartbeat this late is not yet a death: Redis round trips, a busy machine.
GRACE_SECONDS = 3
# RQ's scheduler heartbeats every second (its interval) while it holds the lock.
SCHEDULER_SILENCE_SECONDS = 10


@dataclass
class WorkerView:
    name: str
    hostname: str
    pid: int | None
    state: str
    started_at: datetime | None
    last_heartbeat: datetime | None
    heartbeat_due_at: datetime | None
    job_id: str
    job_started_at: datetime | None
    run: Run | None  # the run its current job advances, with its lease columns
    # "host:pid" of the other workers: the lease owner a no-fork worker writes (runs.engine).
    other_owners: frozenset
    successful_jobs: int
    failed_jobs: int
    now: datetime

    @property
    def heartbeat_age(self) -> timedelta | None:
        return None if self.last_heartbeat is None else self.now - self.last_heartbeat

    @property
    def heartbeat_overdue(self) -> bool:
        return self.heartbeat_due_at is not None and self.now > self.heartbeat_due_at + timedelta(seconds=GRACE_SECONDS)

    @property
    def holds_run(self) -> bool:
        """Its job's run is running under a lease that is not another worker's."""
        run = self.run
        return run is not None and run.status == RunStatus.RUNNING and run.lease_owner not in self.other_owners

    @property
    def lease_lapsed(self) -> bool:
        """It holds a running run whose lease expired: the job's heartbeat stopped."""
        return (
            self.holds_run and self.run.lease_expires_at is not None
            and self.run.lease_expires_at + timedelta(seconds=GRACE_SECONDS) < self.now
        )

    @property
    def lost_run(self) -> bool:
        """Its job goes on, but its run went elsewhere a while ago: to another worker (the
        sweeper handed it back after the lease expired), or out of running. A live worker ends
        the job as soon as its run leaves it."""
        run = self.run
        if run is None or self.holds_run:
            return False
        if run.status == RunStatus.RUNNING:
            return True
        since = max(run.updated_at, self.job_started_at or run.updated_at)
        return since + timedelta(seconds=GRACE_SECONDS) < self.now

    @property
    def probably_dead(self) -> bool:
        return self.heartbeat_overdue or self.lease_lapsed or self.lost_run

    @property
    def why_dead(self) -> str:
        if self.lease_lapsed:
            return f"the lease on the run it holds expired at {localtime(self.run.lease_expires_at):%H:%M:%S %Z}"
        if self.lost_run and self.run.status == RunStatus.RUNNING:
            return f"its run went to {self.run.lease_owner} after its lease expired"
        if self.lost_run:
            return f"its run left it at {localtime(self.run.updated_at):%H:%M:%S %Z}, but its job goes on"
        if self.heartbeat_overdue:
            return f"its heartbeat was due at {localtime(self.heartbeat_due_at):%H:%M:%S %Z}"
        return ""


def workers() -> list[WorkerView]:
    """The workers registered for this database's run queue, newest first."""
    queue = run_queue()
    connection = queue.connection
    found = [worker for worker in Worker.all(queue=queue) if worker is not None]
    now = timezone.now()
    job_ids = {worker.name: worker.get_current_job_id() for worker in found}
    jobs = {name: _job(job_id, connection) for name, job_id in job_ids.items() if job_id}
    run_ids = {name: _run_of_job(job) for name, job in jobs.items()}
    runs = Run.objects.in_bulk([run_id for run_id in run_ids.values() if run_id])
    owners = {worker.name: f"{worker.hostname}:{worker.pid}" for worker in found}
    views = []
    for worker in found:
        ttl = connection.ttl(worker.key)
        due = None
        if worker.last_heartbeat is not None and ttl is not None and ttl >= 0:
            due = now + timedelta(seconds=ttl - RQ_HEARTBEAT_SLACK_SECONDS)
        run_id = run_ids.get(worker.name)
        job = jobs.get(worker.name)
        views.append(WorkerView(
            name=worker.name, hostname=worker.hostname or "", pid=worker.pid, state=worker.get_state(),
            started_at=worker.birth_date, last_heartbeat=worker.last_heartbeat, heartbeat_due_at=due,
            job_id=job_ids.get(worker.name) or "",
            job_started_at=job.started_at if job else None,
            run=runs.get(run_id) if run_id else None,
            other_owners=frozenset(owner for name, owner in owners.items() if name != worker.name),
            successful_jobs=worker.successful_job_count, failed_jobs=worker.failed_job_count, now=now,
        ))
    views.sort(key=lambda view: view.started_at or now, reverse=True)
    return views


def _job(job_id, connection):
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None


def _run_of_job(job):
    """The run a job of ours advances or wakes (its one argument is the run's id)."""
    if job is None:
        return None
    if job.func_name in (ADVANCE_JOB, WAKE_JOB) and job.args:
        try:
            return uuid.UUID(str(job.args[0]))
        except ValueError:
            return None
    return None


@dataclass
class QueueDepth:
    queued: int
    scheduled: int
    started: int
    failed: int


def queue_depth() -> QueueDepth:
    queue = run_queue()
    return QueueDepth(
        queued=queue.count,
        scheduled=queue.scheduled_job_registry.count,
        started=queue.started_job_registry.count,
        failed=queue.failed_job_registry.count,
    )


@dataclass
class SchedulerView:
    name: str
    hostname: str
    pid: int | None
    last_heartbeat: datetime | None
    now: datetime

    @property
    def heartbeat_age(self):
        return None if self.last_heartbeat is None else self.now - self.last_heartbeat

    @property
    def silent(self) -> bool:
        age = self.heartbeat_age
        return age is None or age > timedelta(seconds=SCHEDULER_SILENCE_SECONDS)


def scheduler() -> SchedulerView | None:
    """The RQ scheduler that holds the lock of this database's queue (it moves sleeps that are
    due back to the queue), or None when none does."""
    queue = run_queue()
    holder = queue.connection.get(RQScheduler.get_locking_key(queue.name))
    if holder is None:
        return None
    name = holder.decode()
    now = timezone.now()
    try:
        found = RQScheduler.fetch(name, queue.connection)
    except SchedulerNotFound:
        return SchedulerView(name=name, hostname="", pid=None, last_heartbeat=None, now=now)
    return SchedulerView(name=name, hostname=found.hostname or "", pid=found.pid,
                         last_heartbeat=found.last_heartbeat, now=now)
