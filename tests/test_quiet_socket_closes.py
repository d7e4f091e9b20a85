"""Navigating away while live messages flow logs nothing (issue 10, fault 13).

A page that closes its websocket (the operator clicks a link) while its consumer is rendering a
live message used to print "Exception inside application: Attempt to send on a closed
protocol" with a traceback in daphne's log: autobahn refuses a send between the close
handshake and the disconnect that tells the consumer. Daphne here is the real server, and its
log is read back.
"""

import threading

from django.db import connection

from runs import live
from runs.engine import advance_run
from runs.moves import start_run
from tests.agents import TEST
from tests.conftest import PROJECT_DIR, log_in

DAPHNE_LOG = PROJECT_DIR / ".data" / "test-daphne.log"


def test_navigating_away_while_live_messages_flow_logs_no_closed_protocol(transactional_db, operator, page, live_server_url):
    runs = [start_run("t_sleeper", {"seconds": 3600}, started_by=TEST) for _ in range(8)]
    for run in runs:
        advance_run(run.id)
    log_start = DAPHNE_LOG.stat().st_size
    stop = threading.Event()

    def flow():  # every run "changes" again and again: the pages' consumers are always sending
        try:
            while not stop.is_set():
                for run in runs:
                    live.changed(run.id)
                live.chrome_changed()
                live.flush()
                stop.wait(0.02)  # paced, so the consumers' queues do not overflow
        finally:
            connection.close()  # on_commit opened this thread's own connection

    flowing = threading.Thread(target=flow, daemon=True)
    log_in(page, live_server_url, "otto")
    flowing.start()
    try:
        for i in range(15):
            page.goto(f"{live_server_url}/")
            page.locator(f"#run-{runs[0].id}").wait_for()
            page.goto(f"{live_server_url}/runs/{runs[i % len(runs)].id}/")
            page.locator("#run-header").wait_for()
    finally:
        stop.set()
        flowing.join(timeout=10)
    page.goto(f"{live_server_url}/audit/")  # the last socket closes too

    with open(DAPHNE_LOG) as log:
        log.seek(log_start)
        written = log.read()
    assert "closed protocol" not in written
    assert "Traceback" not in written
