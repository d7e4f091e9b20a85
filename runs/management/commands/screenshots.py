"""Screenshots of every page, from the demo data, for docs/screenshots/: the runs page, a run
page, the approvals inbox, an approval page, the start pages, a rollback plan, the workers page,
the activity page, the tools page, the audit log and the demo world.

    make screenshots

Works in its own database (agentops_screens, or DBNAME_screens; made afresh): starts the demo runs, serves them
with daphne, two workers and the sweeper, waits for the runs to get somewhere, and takes the
pictures in Chromium as the demo operator.
"""

import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError

from runs.actors import Actor
from runs.management.commands.seed_demo import DEMO_RUNS
from runs.services import start_run_by
from runs.models import Run, RunStatus
from runs.processes import (
    CHROMIUM, CHROMIUM_FLAGS, free_port, kill_worker, project_env, start_manage,
    use_scratch_database, wait_for_port,
)
from runs.roles import OPERATOR
from tools.demo import require_demo
from tools.approvals import decide
from tools.models import Approval

PASSWORD = "screenshots-only-password"


class Command(BaseCommand):
    help = "Take docs/screenshots/*.png from the demo data."

    def handle(self, *args, **options):
        require_demo("screenshots")
        if not Path(CHROMIUM).exists():
            raise CommandError(f"{CHROMIUM} is missing: apt-get install chromium")
        from playwright.sync_api import sync_playwright

        use_scratch_database("screens")
        user = User.objects.create_user("operator", password=PASSWORD)
        user.groups.set([Group.objects.get(name=OPERATOR)])
        approver = User.objects.create_user("approver", password=PASSWORD)
        approver.groups.set([Group.objects.get(name=OPERATOR)])
        for key, agent, data in DEMO_RUNS:
            start_run_by(agent, data, actor=Actor.for_user(user), idempotency_key=key)
        batch = Run.objects.get(idempotency_key="demo-batch-1")

        out = settings.BASE_DIR / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        logs = Path(tempfile.mkdtemp(prefix="agentops-screens-"))
        env = project_env(DEBUG="0", SWEEP_INTERVAL_SECONDS="1")
        port = free_port()
        processes = [
            start_manage(["serve", "--port", str(port), "--workers", "2"], env, open(logs / "serve.log", "w")),
        ]
        try:
            wait_for_port(port)
            # The demo's emails wait for approval: wait until every run has got as far as it can.
            deadline = time.monotonic() + 60
            while Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists() or \
                    Approval.objects.filter(run__parent=batch).count() < 2:
                if time.monotonic() > deadline:
                    raise CommandError(f"the demo runs did not settle; see {logs}")
                time.sleep(0.5)
            # Order A-1003's email approved: its run goes on and fails at the locked ticket, a run
            # to roll back (its plan is a screenshot).
            locked = Run.objects.get(parent=batch, input__order_id="A-1003")
            email = Approval.objects.get(run=locked, status="pending")
            decide(email.id, "approve", actor=Actor.for_user(approver), shown_hash=email.form_hash)
            while Run.objects.get(id=locked.id).status != RunStatus.FAILED:
                if time.monotonic() > deadline:
                    raise CommandError(f"the run of order A-1003 did not fail at its ticket; see {logs}")
                time.sleep(0.5)
            # (Playwright keeps an event loop in this thread: ask the database before it starts.)
            approval = Approval.objects.filter(status="pending").order_by("requested_at").first()
            if approval is None:
                raise CommandError("no approval request was made by the demo runs")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                base = f"http://127.0.0.1:{port}"
                page.goto(f"{base}/login/")
                page.get_by_label("Username").fill("operator")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_selector("#run-rows")
                page.wait_for_selector("#runs-per-minute svg")  # the summary, fetched after the page
                page.screenshot(path=out / "runs.png", full_page=True)
                page.goto(f"{base}/runs/{batch.id}/")
                page.wait_for_selector("#steps li")
                page.screenshot(path=out / "run.png", full_page=True)
                page.goto(f"{base}/tools/approvals/")
                page.screenshot(path=out / "approvals.png", full_page=True)
                page.goto(f"{base}/tools/approvals/{approval.id}/")
                page.screenshot(path=out / "approval.png", full_page=True)
                page.goto(f"{base}/runs/start/")
                page.screenshot(path=out / "start.png", full_page=True)
                page.goto(f"{base}/runs/start/refund_customer/")
                page.screenshot(path=out / "start-run.png", full_page=True)
                page.goto(f"{base}/runs/{locked.id}/rollback/")
                page.wait_for_selector("table.plan")
                page.screenshot(path=out / "rollback-plan.png", full_page=True)
                page.goto(f"{base}/workers/")
                page.wait_for_selector("table.workers")
                page.screenshot(path=out / "workers.png", full_page=True)
                page.goto(f"{base}/activity/")
                page.wait_for_selector("#runs-per-minute svg rect")
                page.screenshot(path=out / "activity.png", full_page=True)
                page.goto(f"{base}/tools/")
                page.screenshot(path=out / "tools.png", full_page=True)
                page.goto(f"{base}/audit/")
                page.screenshot(path=out / "audit.png", full_page=True)
                page.goto(f"{base}/demo/")
                page.screenshot(path=out / "demo-world.png", full_page=True)
                browser.close()
        finally:
            for process in processes:
                process.send_signal(2)  # Ctrl-C: serve stops what it started
                try:
                    process.wait(timeout=20)
                except Exception:
                    kill_worker(process)
        self.stdout.write(f"screenshots: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}")

