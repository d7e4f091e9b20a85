"""Live updates: after a commit, tell the live pages which runs changed.

`changed(run_id)` is called by whatever commits a change to a run or its journal. After the
commit, the run's id goes to a publisher thread, which sends a "run.changed" message to the
Channels group of that run and to the group of the run list; the consumers (runs/consumers.py)
then render what changed from the database and push it to the browser. The message carries only
the id, so a page always shows what the database holds. `chrome_changed()` does the same for
what every page shows (the freeze banner, the approvals badge), through the "chrome" group.

The publisher is a thread with an event loop of its own, so a worker's step costs a queue put,
not a round trip to Redis (and not a new event loop per message, which async_to_sync would
make). It drains its queue in batches, sending one message per changed run.
"""

import asyncio
import logging
import os
import queue
import threading

import redis
from channels.layers import get_channel_layer
from django.db import connection, transaction

from runs.outages import Outage

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.05


def _database():
    return connection.settings_dict["NAME"]


# Group names are per database, like the run queue: the tests never hear the dashboard's runs.


def run_group(run_id, database=None):
    return f"run.{database or _database()}.{run_id}"


def list_group(database=None):
    return f"runs.{database or _database()}"


def chrome_group(database=None):
    """Every open page: its freeze banner and approvals badge."""
    return f"chrome.{database or _database()}"


# The item that stands for "the freeze or the pending approvals changed" in the publisher's queue.
CHROME = "chrome"


class Publisher(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True, name="live-publisher")
        self.queue = queue.Queue()
        self.hurry = threading.Event()  # held while flush() waits: no batching at all
        self.soon = threading.Event()  # send the batch being gathered without waiting more
        self.outage = Outage("Redis (live updates)")

    def run(self):
        loop = asyncio.new_event_loop()
        layer = get_channel_layer()
        while True:
            items = [self.queue.get()]
            # Gather what else changes in the next moment: a run taking steps quickly sends
            # one message per batch, not one per step, and the steps do not wait for Redis.
            if not self.hurry.is_set():
                self.soon.wait(BATCH_SECONDS)
            self.soon.clear()
            try:
                while True:
                    items.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            batch = set(items)  # one message per changed run, however many changes
            try:
                loop.run_until_complete(self._send(layer, batch))
            except BaseException:
                # A page that misses this message catches up at its next one or its reconnect;
                # a publisher that died would silence this process for good.
                log.exception("could not publish the changes of %d run(s)", len(batch))
            finally:
                for _ in items:
                    self.queue.task_done()

    async def _send(self, layer, batch):
        for database, run_id in batch:
            if run_id == CHROME:
                await self._send_chrome(layer, database)
                continue
            message = {"type": "run.changed", "run_id": run_id}
            for group in (run_group(run_id, database), list_group(database)):
                try:
                    await layer.group_send(group, message)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                    # Redis is away: the pages catch up when they reconnect. Say so once, and
                    # drop the rest of the batch rather than fail at every message.
                    self.outage.failed(error)
                    return
                except Exception:
                    log.exception("could not tell %s that run %s changed", group, run_id)
        self.outage.recovered()

    async def _send_chrome(self, layer, database):
        try:
            await layer.group_send(chrome_group(database), {"type": "chrome.changed"})
        except Exception:
            log.exception("could not tell the open pages that the freeze or the approvals changed")


_publisher = None
_publisher_pid = None
_lock = threading.Lock()


def _after_fork_in_child():
    # A lock held by another thread at fork time would stay held forever in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _get_publisher():
    global _publisher, _publisher_pid
    with _lock:
        # A forked work horse inherits the variable but not the thread: start its own.
        if _publisher is None or _publisher_pid != os.getpid() or not _publisher.is_alive():
            _publisher = Publisher()
            _publisher_pid = os.getpid()
            _publisher.start()
        return _publisher


def changed(run_id):
    """After the current transaction commits, tell the live pages that the run changed."""
    item = (_database(), str(run_id))
    transaction.on_commit(lambda: _get_publisher().queue.put(item))


def chrome_changed():
    """After the current transaction commits, tell every open page that the freeze or the
    pending approvals changed (its banner and badge follow). One message per batch, however
    many changes."""
    item = (_database(), CHROME)
    transaction.on_commit(lambda: _get_publisher().queue.put(item))


def send_soon():
    """Send what this process changed without waiting for the batch to fill (a job's end: the
    pages should not wait for the next job's changes). Does not block."""
    publisher = _publisher if _publisher_pid == os.getpid() else None
    if publisher is not None:
        publisher.soon.set()


def flush(timeout=2.0):
    """Wait (a little) until every change of this process is published; for a job's end."""
    publisher = _publisher if _publisher_pid == os.getpid() else None
    if publisher is None:
        return
    publisher.hurry.set()  # no batching while we wait
    done = threading.Event()
    threading.Thread(target=lambda: (publisher.queue.join(), done.set()), daemon=True).start()
    if not done.wait(timeout):
        log.warning("live updates not yet published after %gs; open pages see them at their next change", timeout)
    publisher.hurry.clear()
