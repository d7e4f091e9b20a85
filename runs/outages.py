"""Riding out an outage of Redis or Postgres: try again with backoff, and say so once.

A long-lived process (a worker, the sweeper) that meets a service that does not answer keeps
going: it waits, longer each time up to a cap, and logs the outage when it begins and when it
ends, not at every attempt.
"""

import logging
import time

log = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 0.5
# An attempt every 2 s costs a waiting process nothing, and a service that comes back is noticed
# within 2 s (with a 10 s cap, `manage.py faults` saw runs wait 5 to 8 s more after an outage).
MAX_DELAY_SECONDS = 2.0


class Outage:
    def __init__(self, what):
        self.what = what
        self.since = None
        self.delay = FIRST_DELAY_SECONDS

    @property
    def ongoing(self):
        return self.since is not None

    def failed(self, error):
        """An attempt failed; returns the seconds to wait before the next one."""
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s does not answer (%s): trying again with backoff, up to every %g s, "
                        "until it is back", self.what, str(error).strip() or type(error).__name__,
                        MAX_DELAY_SECONDS)
            self.delay = FIRST_DELAY_SECONDS
            return self.delay
        self.delay = min(self.delay * 2, MAX_DELAY_SECONDS)
        return self.delay

    def recovered(self):
        if self.since is not None:
            log.warning("%s answers again, after %.0f s", self.what, time.monotonic() - self.since)
        self.since = None
        self.delay = FIRST_DELAY_SECONDS
