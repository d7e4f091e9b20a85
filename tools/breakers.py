"""The circuit breaker of each tool, shared by every worker through Redis.

A tool that is down must not be hammered by every worker at once. Each attempt of a tool step
is reported here (`record`), and each attempt asks first (`check`). Within a sliding window of
BREAKER_WINDOW_SECONDS, once at least BREAKER_MIN_CALLS attempts were recorded and at least
BREAKER_FAILURE_PERCENT of them failed transiently, the breaker opens: nobody calls the tool
for BREAKER_COOLDOWN_SECONDS. Then it is half-open: one caller, across all processes, gets the
probe; its success closes the breaker (the window starts empty), its failure opens it for
another cooldown. A probe that never reports (its worker died) is replaced after a cooldown.

Each tool's breaker is three Redis keys, changed only by the two Lua scripts below, so two
workers racing can neither both probe nor lose a count: the state (a hash: `until`, when it
half-opens, and `probe_until`, the lease of the probe out; no hash means closed) and the
window's attempts and failures (two sorted sets scored by time). Every key expires: a breaker
nobody uses leaves nothing behind. The time is this process's clock, passed to the scripts, so
the journal fallback and the tests (a controlled `clock`) use the same one.

A healthy tool's calls cost no round trip to Redis (the journal's hot path): a process that
found a tool's breaker closed remembers it for FRESH_SECONDS, unless it saw one of the tool's
calls fail within the window, and sends the successes it records in a batch at most
FRESH_SECONDS late (at once with a failure, and at the end of every job: `flush`). A failure is
reported at once. So a breaker opened by another process is seen at most FRESH_SECONDS late by a
process whose own calls succeed, and at once by one whose calls fail.

Redis down: `check` and `record` never raise and never wait long (half-second socket timeouts,
no retries). `check` then counts the journal's own outcome rows of the tool in the window (the
recorder marks a transiently failed attempt's error with "transient": true); the outage is
logged once, and Redis is not tried again for a short while, so that a Redis that does not
answer costs each call nothing.
"""

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from django.db.models import Count, Max, Q
from redis.backoff import NoBackoff
from redis.retry import Retry

from runs.models import AuditEntry, JournalEntry
from runs.moments import moment_text
from runs.outages import Outage
from tools.models import Tool

log = logging.getLogger(__name__)

# Seconds: a Redis that does not answer within this costs a call no more than this.
SOCKET_TIMEOUT = 0.5
# A caller turned away while another holds the probe looks again this soon (or after the
# cooldown, if shorter): the probe's outcome is usually known by then.
HALF_OPEN_RETRY_SECONDS = 5
# How long a process trusts that a breaker it found closed is still closed, and how long it
# keeps successes before it sends them.
FRESH_SECONDS = 1.0

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
UNKNOWN = "unknown"  # Redis unreachable: states() cannot tell


def clock():
    """Seconds since the epoch. Tests replace it with a controlled clock."""
    return time.time()


@dataclass(frozen=True)
class Verdict:
    allowed: bool  # may the caller make the call now?
    probe: bool = False  # the caller is the one half-open probe
    until: datetime | None = None  # when not allowed: when to ask again (aware UTC)
    state: str = CLOSED  # "closed" | "open" | "half_open"
    reason: str = ""  # for people


@dataclass(frozen=True)
class BreakerState:
    """A breaker as the tools page shows it."""

    state: str  # "closed" | "open" | "half_open" | "unknown"
    calls: int = 0  # attempts recorded in the window
    failed: int = 0  # of which failed transiently
    window_seconds: int = 0
    until: datetime | None = None  # open: when it half-opens
    probing: bool = False  # half-open: a probe call is out


class BreakerError(ValueError):
    pass


# KEYS: state. ARGV: now, probe lease, ttl of the state (ms).
# Returns {"closed"}, {"open", until, failed, calls, probe_failed}, {"probe"} or
# {"half_open", probe_until}.
_CHECK = """
local now = tonumber(ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'until', 'probe_until', 'failed', 'calls', 'probe_failed')
if not s[1] then return {'closed'} end
if now < tonumber(s[1]) then return {'open', s[1], s[3], s[4], s[5]} end
if now >= tonumber(s[2] or '0') then
  redis.call('HSET', KEYS[1], 'probe_until', string.format('%d', now + tonumber(ARGV[2])))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'probe'}
end
return {'half_open', s[2]}
"""

# KEYS: state, calls, fails. ARGV: now, failed (0/1), probe (0/1), a unique member, window,
# min calls, failure percent, cooldown, ttl of the state (ms), successes recorded earlier by
# this process and sent with this call. Returns the state after.
_RECORD = """
local now = tonumber(ARGV[1])
local failed = ARGV[2] == '1'
local window = tonumber(ARGV[5])
local cooldown = tonumber(ARGV[8])
local function int(x) return string.format('%d', x) end
local opens_at = tonumber(redis.call('HGET', KEYS[1], 'until') or '-1')
-- A probe's report decides only while the breaker is half-open; otherwise (reset meanwhile,
-- or another probe already reopened it) it is one more attempt in the window.
if ARGV[3] == '1' and opens_at >= 0 and now >= opens_at then
  if failed then
    redis.call('HSET', KEYS[1], 'until', int(now + cooldown), 'failed', '1', 'calls', '1', 'probe_failed', '1')
    redis.call('HDEL', KEYS[1], 'probe_until')
    redis.call('PEXPIRE', KEYS[1], ARGV[9])
    return 'open'
  end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return 'closed'
end
for i = 1, tonumber(ARGV[10] or '0') do
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4] .. ':' .. i)
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
if failed then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[4]) end
for i = 2, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. int(now - window))
  redis.call('PEXPIRE', KEYS[i], int(window))
end
if opens_at >= 0 then return 'open' end
if failed then
  local calls = redis.call('ZCARD', KEYS[2])
  local fails = redis.call('ZCARD', KEYS[3])
  if calls >= tonumber(ARGV[6]) and fails * 100 >= tonumber(ARGV[7]) * calls then
    redis.call('HSET', KEYS[1], 'until', int(now + cooldown), 'failed', fails, 'calls', calls, 'probe_failed', '0')
    redis.call('PEXPIRE', KEYS[1], ARGV[9])
    return 'open'
  end
end
return 'closed'
"""

class _Link:
    """This process's way to the breakers in one Redis: a client of its own, with short
    timeouts and no retries (redis-py's default retries a failed command three times, with
    backoff of up to seconds), its two scripts, and its outage: while Redis does not answer, it
    is tried again only after the outage's backoff, and the outage is logged once."""

    def __init__(self, url):
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self.check = self.client.register_script(_CHECK)
        self.record = self.client.register_script(_RECORD)
        self.outage = Outage(f"Redis at {url} (the tools' circuit breakers)")
        self.skip_until = 0.0  # monotonic
        # By state key, in monotonic seconds: when a check found the breaker closed, when this
        # process last recorded a failure, when it last sent its successes; and how many
        # successes wait to be sent.
        self.closed_at = {}
        self.failed_at = {}
        self.sent_at = {}
        self.pending = {}

    def known_closed(self, key, now, window):
        return (now - self.closed_at.get(key, -FRESH_SECONDS) < FRESH_SECONDS
                and now - self.failed_at.get(key, -window) >= window)

    def forget(self, key=None):
        """Drop what this process remembers of one breaker (None: of all)."""
        for memory in (self.closed_at, self.failed_at, self.sent_at, self.pending):
            if key is None:
                memory.clear()
            else:
                memory.pop(key, None)

    @property
    def usable(self):
        return time.monotonic() >= self.skip_until

    def failed(self, error):
        self.skip_until = time.monotonic() + self.outage.failed(error)

    def answered(self):
        if self.outage.ongoing:
            self.outage.recovered()


_links = {}


def _link():
    """The link to the configured REDIS_URL (one per URL, so a test's private Redis has its own)."""
    url = settings.REDIS_URL
    if url not in _links:
        _links[url] = _Link(url)
    return _links[url]


_KEYS = {}


def _keys(tool_name):
    # Named after the database, as the run queue is (runs.queue), so that the test suite's and
    # the benchmarks' databases never share a breaker with `make up`. Asked for at every step:
    # kept once made.
    database = connections.settings[DEFAULT_DB_ALIAS]["NAME"]  # connection's own dict, without its proxy
    keys = _KEYS.get((database, tool_name))
    if keys is None:
        base = f"breaker:{database}:{tool_name}"
        keys = _KEYS[(database, tool_name)] = [f"{base}:state", f"{base}:calls", f"{base}:fails"]
    return keys


def _config():
    window = settings.BREAKER_WINDOW_SECONDS
    cooldown = settings.BREAKER_COOLDOWN_SECONDS
    return window, settings.BREAKER_MIN_CALLS, settings.BREAKER_FAILURE_PERCENT, cooldown


def _ms(seconds):
    return int(seconds * 1000)


def _moment(ms):
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _state_ttl_ms(window, cooldown):
    # Set when it opens and when a probe starts: long enough for the cooldown or the probe's
    # lease (one cooldown) and a window after it. A half-open breaker that nobody asks for that
    # long is forgotten: closed, as if its tool had not been called.
    return _ms(2 * cooldown + window)


def check(tool_name: str) -> Verdict:
    """May the caller make an attempt of this tool now? Never raises."""
    now = clock()
    link = _link()
    if link.usable:
        window, _, _, cooldown = _config()
        keys, moment = _keys(tool_name), time.monotonic()
        if link.known_closed(keys[0], moment, window):
            return Verdict(allowed=True)
        try:
            answer = link.check(keys=keys[:1], args=[_ms(now), _ms(cooldown), _state_ttl_ms(window, cooldown)])
        except redis.RedisError as error:
            link.failed(error)
        else:
            link.answered()
            answer = [part.decode() if part is not None else "" for part in answer]
            if answer[0] == CLOSED:
                link.closed_at[keys[0]] = moment
            return _verdict(tool_name, now, answer)
    return _verdict_from_journal(tool_name, now)


def _verdict(tool_name, now, answer):
    window, _, _, cooldown = _config()
    kind = answer[0]
    if kind == "closed":
        return Verdict(allowed=True)
    if kind == "probe":
        return Verdict(allowed=True, probe=True, state=HALF_OPEN,
                       reason=f"breaker of {tool_name!r} half-open: this call is its probe")
    if kind == "open":
        until = _moment(answer[1])
        why = ("its probe call failed" if answer[4] == "1"
               else f"{answer[2]} of {answer[3]} calls failed in the last {window} s")
        return Verdict(allowed=False, until=until, state=OPEN,
                       reason=f"breaker of {tool_name!r} open: {why}; half-opens at {moment_text(until)}")
    retry = _moment(_ms(now + min(cooldown, HALF_OPEN_RETRY_SECONDS)))
    return Verdict(allowed=False, until=retry, state=HALF_OPEN,
                   reason=f"breaker of {tool_name!r} half-open: its probe call is under way; "
                          f"asking again at {moment_text(retry)}")


def _verdict_from_journal(tool_name, now):
    """Redis unreachable: the breaker fails open to the journal's own counts of the window.

    Without Redis there is no shared probe: once the newest failure is a cooldown old, every
    caller may try, and their failures close the door again. The query finds the window's rows
    through the journal's BRIN index on created_at (no index of its own: it would cost every
    journal write)."""
    window, min_calls, percent, cooldown = _config()
    since = datetime.fromtimestamp(now - window, tz=UTC)
    transient = Q(error__transient=True)
    try:
        # A savepoint: a failed query must not break a transaction the caller is in.
        with transaction.atomic():
            counts = JournalEntry.objects.filter(
                phase=JournalEntry.Phase.OUTCOME, kind=JournalEntry.Kind.TOOL, name=tool_name, created_at__gte=since,
            ).aggregate(calls=Count("id"), failed=Count("id", filter=transient),
                        newest=Max("created_at", filter=transient))
    except DatabaseError:
        log.warning("breaker of %r: neither Redis nor the journal answers; the call goes ahead", tool_name)
        return Verdict(allowed=True)
    calls, failed = counts["calls"], counts["failed"]
    if calls < min_calls or failed * 100 < percent * calls:
        return Verdict(allowed=True)
    until = counts["newest"] + timedelta(seconds=cooldown)
    if until <= datetime.fromtimestamp(now, tz=UTC):
        return Verdict(allowed=True)
    return Verdict(allowed=False, until=until, state=OPEN,
                   reason=f"breaker of {tool_name!r} open (Redis unreachable, counted from the journal): "
                          f"{failed} of {calls} calls failed in the last {window} s; "
                          f"calls go ahead again at {moment_text(until)}")


def record(tool_name: str, *, failed: bool, probe: bool = False) -> None:
    """After an attempt: `failed` when it failed transiently (TransientError, a timeout, a
    connection error); a success or a permanent error is failed=False. Never raises: while
    Redis is out the journal's rows are the record."""
    link = _link()
    if not link.usable:
        return
    window, min_calls, percent, cooldown = _config()
    keys, moment = _keys(tool_name), time.monotonic()
    earlier = link.pending.pop(keys[0], 0)
    if not failed and not probe and moment - link.sent_at.get(keys[0], -FRESH_SECONDS) < FRESH_SECONDS:
        link.pending[keys[0]] = earlier + 1  # sent with the next failure, or within FRESH_SECONDS
        return
    if failed:
        link.failed_at[keys[0]] = moment
    try:
        after = link.record(keys=keys, args=[
            _ms(clock()), int(failed), int(probe), uuid.uuid4().hex, _ms(window), min_calls, percent,
            _ms(cooldown), _state_ttl_ms(window, cooldown), earlier,
        ])
    except redis.RedisError as error:
        link.failed(error)
    else:
        link.answered()
        link.sent_at[keys[0]] = moment
        if after != CLOSED.encode():
            link.closed_at.pop(keys[0], None)


def flush() -> None:
    """Send the successes this process holds back (record), in one round trip. Called at the end
    of every job (runs.engine.advance_run): a forked work horse ends with its job, and a worker
    may not call the same tool again for a long while. Never raises."""
    link = _link()
    if not link.pending or not link.usable:
        link.pending.clear()
        return
    window, min_calls, percent, cooldown = _config()
    now, moment = _ms(clock()), time.monotonic()
    held = list(link.pending.items())
    link.pending.clear()
    try:
        pipe = link.client.pipeline(transaction=False)
        for state_key, count in held:
            base = state_key.removesuffix(":state")
            link.record(keys=[state_key, f"{base}:calls", f"{base}:fails"], args=[
                now, 0, 0, uuid.uuid4().hex, _ms(window), min_calls, percent, _ms(cooldown),
                _state_ttl_ms(window, cooldown), count - 1,
            ], client=pipe)
        pipe.execute()
    except redis.RedisError as error:
        link.failed(error)
    else:
        link.answered()
        for state_key, _ in held:
            link.sent_at[state_key] = moment


def states(tool_names) -> dict[str, BreakerState]:
    """Each tool's breaker, read in one round trip; state "unknown" for all when Redis does
    not answer (or did not, a moment ago: the page does not wait for it each time)."""
    tool_names = list(tool_names)
    window, _, _, _ = _config()
    now = _ms(clock())
    since = now - _ms(window)
    link = _link()
    if not link.usable:
        return {name: BreakerState(UNKNOWN, window_seconds=window) for name in tool_names}
    try:
        pipe = link.client.pipeline(transaction=True)
        for name in tool_names:
            state, calls, fails = _keys(name)
            pipe.hmget(state, "until", "probe_until")
            pipe.zcount(calls, since, "+inf")
            pipe.zcount(fails, since, "+inf")
        answers = pipe.execute()
    except redis.RedisError as error:
        link.failed(error)
        return {name: BreakerState(UNKNOWN, window_seconds=window) for name in tool_names}
    link.answered()
    found = {}
    for index, name in enumerate(tool_names):
        (until, probe_until), calls, failed = answers[3 * index: 3 * index + 3]
        if until is None:
            state = CLOSED
        elif now < int(until):
            state = OPEN
        else:
            state = HALF_OPEN
        found[name] = BreakerState(
            state, calls=calls, failed=failed, window_seconds=window,
            until=_moment(until) if until is not None else None,
            probing=state == HALF_OPEN and probe_until is not None and now < int(probe_until),
        )
    return found


def reset(tool_name: str, *, actor) -> None:
    """An admin closes the breaker: its window and any probe are forgotten, the next call goes
    through. Audited here, whichever door it comes through."""
    if not Tool.objects.filter(name=tool_name).exists():
        raise BreakerError(f"there is no tool named {tool_name!r}")
    with transaction.atomic():
        before = states([tool_name])[tool_name]
        if before.state == UNKNOWN:
            raise BreakerError("Redis does not answer, and the breakers live there; try again once it is back")
        # The audit row first, in the transaction: if Redis fails now, it is rolled back.
        AuditEntry.record(actor, "reset_breaker", target=tool_name, details={
            "state_before": before.state, "calls": before.calls, "failed": before.failed,
        })
        _link().forget(_keys(tool_name)[0])
        try:
            _link().client.delete(*_keys(tool_name))
        except redis.RedisError as error:
            raise BreakerError(f"Redis did not take the reset ({error})") from None
