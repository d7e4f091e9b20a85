"""Speed of the pages: server-side time of the runs page and of a long run's page.

    python manage.py bench_pages [--samples 30]

Works in its own database, agentops_pages (DBNAME_pages for another DATABASE_URL), seeded
once (and again only if its sizes differ) with --runs runs (default 100,000) holding --journal-rows journal rows (default 1,000,000), and
one run of --big-run-steps steps (default 5,000). Then it requests, through Django's full stack
(middleware, view, template) as a signed-in operator, the first page of runs, a filtered page,
a page deep in the list, and the page of the long run, --samples times each, and prints as its
last line:

    bench_pages: list_p95_ms=A filtered_p95_ms=B deep_p95_ms=C run_p95_ms=D queries_max=Q
"""

import statistics
import time

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from runs.models import Run
from runs.processes import use_scratch_database
from runs.roles import OPERATOR

AGENTS = ["refund_customer", "refund_batch", "triage", "summarise", "reconcile_ledger"]
STATUSES = ["succeeded"] * 14 + ["failed", "cancelled", "waiting", "paused", "needs_attention", "running"]


class Command(BaseCommand):
    help = "Seed 100,000 runs with 1,000,000 journal rows (once) and time the pages."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=100_000)
        parser.add_argument("--journal-rows", type=int, default=1_000_000)
        parser.add_argument("--big-run-steps", type=int, default=5_000)
        parser.add_argument("--samples", type=int, default=30)

    def handle(self, *args, runs, journal_rows, big_run_steps, samples, **options):
        if runs < 100 or journal_rows < runs or big_run_steps < 1 or samples < 1:
            raise CommandError("--runs at least 100, --journal-rows at least --runs, the others at least 1")
        use_scratch_database("pages", keep=True)
        big_run_id = self.seed(runs, journal_rows, big_run_steps)

        client = Client(HTTP_HOST="localhost")
        user, _ = User.objects.get_or_create(username="bench-operator")
        user.groups.set([Group.objects.get(name=OPERATOR)])
        client.force_login(user)

        deep = Run.objects.order_by("-created_at", "-id").values_list("created_at", "id")[int(runs * 0.9)]
        pages = {
            "list": "/",
            "filtered": f"/?status=failed&agent={AGENTS[2]}&q=customer%2042",
            "deep": f"/?after={deep[0].isoformat().replace('+', '%2B')}~{deep[1]}",
            "run": f"/runs/{big_run_id}/",
        }
        figures, queries_max = {}, 0
        for name, url in pages.items():
            times = []
            for _ in range(samples):
                with CaptureQueriesContext(connection) as queries:
                    began = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - began) * 1000)
                if response.status_code != 200:
                    raise CommandError(f"{url} answered {response.status_code}")
                queries_max = max(queries_max, len(queries))
            figures[name] = percentile(times, 95)
            self.stdout.write(
                f"bench_pages: {name} {url} p50_ms={statistics.median(times):.1f} "
                f"p95_ms={figures[name]:.1f} queries={len(queries)} bytes={len(response.content)}"
            )
        self.stdout.write(
            f"bench_pages: list_p95_ms={figures['list']:.0f} filtered_p95_ms={figures['filtered']:.0f} "
            f"deep_p95_ms={figures['deep']:.0f} run_p95_ms={figures['run']:.0f} queries_max={queries_max}"
        )

    def seed(self, runs, journal_rows, big_run_steps):
        """Seed once; the long run is the one with the most steps."""
        big_rows = big_run_steps * 2
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs_run")
            have_runs = cursor.fetchone()[0]
            cursor.execute("SELECT count(*) FROM runs_journalentry")
            have_rows = cursor.fetchone()[0]
            if have_runs == runs + 1 and have_rows == journal_rows + big_rows:
                cursor.execute("SELECT run_id FROM runs_journalentry GROUP BY run_id ORDER BY count(*) DESC LIMIT 1")
                self.stdout.write(f"bench_pages: using the data seeded earlier in {connection.settings_dict['NAME']}")
                return cursor.fetchone()[0]
            self.stdout.write(f"bench_pages: seeding {runs} runs and {journal_rows} journal rows (once)")
            began = time.perf_counter()
            cursor.execute("TRUNCATE runs_journalentry, runs_runevent, runs_auditentry, runs_run CASCADE")
            # Generated rows go straight in, past the status guard (they are not transitions).
            cursor.execute("ALTER TABLE runs_run DISABLE TRIGGER run_status_guard")
            cursor.execute(SEED_RUNS, {"runs": runs, "agents": AGENTS, "statuses": STATUSES})
            steps_per_run = journal_rows // runs // 2
            cursor.execute(SEED_JOURNAL, {"steps": steps_per_run, "runs": runs})
            extra = journal_rows - steps_per_run * 2 * runs
            if extra:
                cursor.execute(SEED_EXTRA_ROWS, {"extra": extra})
            cursor.execute(SEED_BIG_RUN, {"steps": big_run_steps})
            cursor.execute("ALTER TABLE runs_run ENABLE TRIGGER run_status_guard")
            cursor.execute("ANALYZE")
            cursor.execute("SELECT id FROM runs_run WHERE agent = 'long_haul'")
            big_run_id = cursor.fetchone()[0]
        self.stdout.write(f"bench_pages: seeded in {time.perf_counter() - began:.0f} s")
        return big_run_id


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


SEED_RUNS = """
INSERT INTO runs_run (id, agent, status, input, status_reason, started_by, requested, lease_owner,
                      lease_expires_at, lease_epoch, created_at, updated_at, started_at, finished_at,
                      wait_kind, wait_ref, during_freeze)
SELECT gen_random_uuid(),
       (%(agents)s::text[])[1 + n %% 5],
       s.status,
       jsonb_build_object('order_id', 'A-' || n, 'note', 'customer ' || (n %% 997) || ' asked about order ' || n),
       '', 'seed', '',
       CASE WHEN s.status = 'running' THEN 'seed-worker' ELSE '' END,
       CASE WHEN s.status = 'running' THEN now() + interval '1 day' END,
       1,
       now() - (n || ' seconds')::interval * 20,
       now() - (n || ' seconds')::interval * 20 + interval '5 seconds',
       now() - (n || ' seconds')::interval * 20 + interval '1 second',
       CASE WHEN s.status IN ('succeeded', 'failed', 'cancelled')
            THEN now() - (n || ' seconds')::interval * 20 + interval '5 seconds' END,
       -- A waiting run says what it waits for (a freeze needs no reference).
       CASE WHEN s.status = 'waiting' THEN 'freeze' ELSE '' END, '', false
FROM generate_series(1, %(runs)s) AS n,
     LATERAL (SELECT (%(statuses)s::text[])[1 + (n * 7) %% 20] AS status) AS s
"""

SEED_JOURNAL = """
INSERT INTO runs_journalentry (run_id, seq, attempt, phase, kind, name, effect, args, args_hash,
                               idempotency_key, status, result, error, actor, lease_epoch, created_at)
SELECT r.id, step, 1, phase.name, 'tool', 'issue_refund', 'write',
       CASE WHEN phase.name = 'intent' THEN jsonb_build_object('order_id', r.input->>'order_id', 'amount_cents', step * 100) END,
       md5(r.id::text || step), r.id::text || ':' || step,
       CASE WHEN phase.name = 'outcome' THEN 'succeeded' ELSE '' END,
       CASE WHEN phase.name = 'outcome' THEN jsonb_build_object('refund_id', step) END,
       NULL, 'worker:seed', 1, r.created_at + (step || ' seconds')::interval
FROM runs_run r, generate_series(1, %(steps)s) AS step,
     (VALUES ('intent'), ('outcome')) AS phase(name)
"""

SEED_EXTRA_ROWS = """
INSERT INTO runs_journalentry (run_id, seq, attempt, phase, kind, name, effect, args, args_hash,
                               idempotency_key, status, result, error, actor, lease_epoch, created_at)
SELECT r.id, 1000, 1, 'outcome', 'tool', 'lookup_order', 'read', '{}'::jsonb, 'seed', '', 'succeeded',
       '{}'::jsonb, NULL, 'worker:seed', 1, r.created_at
FROM (SELECT id, created_at FROM runs_run ORDER BY created_at LIMIT %(extra)s) AS r
"""

SEED_BIG_RUN = """
WITH big AS (
    INSERT INTO runs_run (id, agent, status, input, status_reason, started_by, requested, lease_owner,
                          lease_epoch, created_at, updated_at, started_at, finished_at, wait_kind, wait_ref,
                          during_freeze)
    VALUES (gen_random_uuid(), 'long_haul', 'succeeded', '{"items": 5000}', '', 'seed', '', '', 1,
            now() - interval '3 hours', now(), now() - interval '3 hours', now(), '', '', false)
    RETURNING id, created_at
)
INSERT INTO runs_journalentry (run_id, seq, attempt, phase, kind, name, effect, args, args_hash,
                               idempotency_key, status, result, error, actor, lease_epoch, created_at)
SELECT big.id, step, 1, phase.name, 'tool', 'process_item', 'write',
       CASE WHEN phase.name = 'intent' THEN jsonb_build_object('item', step) END,
       md5(step::text), big.id::text || ':' || step,
       CASE WHEN phase.name = 'outcome' THEN 'succeeded' ELSE '' END,
       CASE WHEN phase.name = 'outcome' THEN jsonb_build_object('done', step) END,
       NULL, 'worker:seed', 1,
       big.created_at + (step * 2 || ' seconds')::interval + (CASE WHEN phase.name = 'outcome' THEN interval '1 second' ELSE interval '0' END)
FROM big, generate_series(1, %(steps)s) AS step, (VALUES ('intent'), ('outcome')) AS phase(name)
"""
