"""Log filters the settings name (LOGGING)."""

import logging
import time

import redis
from django.core.exceptions import PermissionDenied


class RefusalsInOneLine(logging.Filter):
    """Django logs a 403 with the PermissionDenied's traceback; a refusal is expected, so one
    line says it ("Forbidden (Permission denied): /runs/.../cancel/")."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info = None
            record.exc_text = None
        return True


class RedisRetriesOnce(logging.Filter):
    """RQ logs each retry of a lost Redis connection, with a traceback from its scheduler: while
    Redis is away, one line a minute per logger says so (runs.outages says when it is back)."""

    WINDOW_SECONDS = 60

    def __init__(self):
        super().__init__()
        self.last = {}

    def filter(self, record):
        if not record.name.startswith("rq.") or not _about_lost_redis(record):
            return True
        now = time.monotonic()
        if now - self.last.get(record.name, float("-inf")) < self.WINDOW_SECONDS:
            return False
        self.last[record.name] = now
        record.exc_info = None
        record.exc_text = None
        return True


def _about_lost_redis(record):
    if record.exc_info and isinstance(record.exc_info[1], (redis.ConnectionError, redis.TimeoutError)):
        return True
    return "could not connect to Redis" in record.getMessage()
