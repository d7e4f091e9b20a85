"""Heartbeats of the long-lived processes (workers, the sweeper), for health checks.

Each process writes a key in Redis, named after the database like the run queue, every few
seconds: `agentops:alive:DBNAME:KIND:HOST:PID`, holding the time of the beat and expiring soon
after. A worker beats from a thread of its own while its process lives; the sweeper beats after
each pass it completes. `manage.py health worker|sweeper` (docker-compose.yml's healthchecks)
is healthy while a process of that kind on this host beat recently. Redis keeps nothing that
matters here: a lost key only makes the check fail until the next beat.

(The run's own lease heartbeat, in the journal, is another thing: it says a worker still holds
a run; this one says the process is there at all, whether it holds a run or not.)
"""

import logging
import os
import socket
import threading
import time

from django.db import connection

from runs.outages import Outage
from runs.queue import redis_connection

log = logging.getLogger(__name__)

# A worker's thread beats this often; a beat is kept in Redis this long.
BEAT_SECONDS = 2
KEPT_SECONDS = 60
# A process of a kind is healthy if it beat within this many seconds (`health --max-age`).
HEALTHY_WITHIN_SECONDS = 10
KINDS = ("worker", "sweeper")


def _prefix(kind):
    return f"agentops:alive:{connection.settings_dict['NAME']}:{kind}:"


def beat(kind):
    """Record that this process, of `kind`, is alive now."""
    key = f"{_prefix(kind)}{socket.gethostname()}:{os.getpid()}"
    redis_connection().set(key, f"{time.time():.3f}", ex=KEPT_SECONDS)


def last_beats(kind, host=None):
    """{"HOST:PID": unix time of its last beat} for the processes of `kind` (on `host` only, if
    given) that beat within KEPT_SECONDS."""
    pattern = f"{_prefix(kind)}{host or '*'}:*"
    redis = redis_connection()
    keys = list(redis.scan_iter(pattern))
    values = redis.mget(keys) if keys else []
    return {
        key.decode()[len(_prefix(kind)):]: float(value)
        for key, value in zip(keys, values) if value is not None
    }


def newest_beat_age(kind, host=None):
    """Seconds since the newest beat of a process of `kind` (on `host`), or None if none."""
    beats = last_beats(kind, host)
    return time.time() - max(beats.values()) if beats else None


class BeatingThread(threading.Thread):
    """Beats for `kind` every BEAT_SECONDS while the process lives (a daemon thread)."""

    def __init__(self, kind):
        super().__init__(daemon=True, name=f"alive-{kind}")
        self.kind = kind

    def run(self):
        outage = Outage(f"Redis (the {self.kind}'s heartbeat)")
        while True:
            try:
                beat(self.kind)
            except Exception as error:  # Redis away for a moment: the next beat tries again
                outage.failed(error)
            else:
                outage.recovered()
            time.sleep(BEAT_SECONDS)
