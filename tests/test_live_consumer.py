"""The run page's websocket: what it pushes first, against what the page already shows.

Fault seen under load: the page said "waiting" 10 s after Cancel. The consumer's first push
after connecting always replaced the controls, so a reason typed before the socket's first
message arrived was wiped, and the Cancel form, its reason now empty, was not submitted. The
page now hands the consumer fingerprints of what it shows; the first push leaves those alone.
"""

import asyncio
import html
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from runs.engine import advance_run
from runs.moves import start_run
from runs.routing import websocket_urlpatterns
from tests.agents import TEST

pytestmark = pytest.mark.django_db(transaction=True)


def first_push(path, user):
    async def talk():
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
        communicator.scope["user"] = user
        connected, _ = await communicator.connect()
        assert connected
        try:
            return await communicator.receive_from(timeout=10)
        finally:
            await communicator.disconnect()
            # The consumer's database work ran in asgiref's one thread for sync code: close
            # its connection there, so the test database can be dropped at the end.
            await sync_to_async(connections.close_all)()

    # In a thread of its own: a browser test may have left an event loop in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, talk()).result()


def test_the_first_push_leaves_alone_the_controls_and_steps_the_page_already_shows(client, operator):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    advance_run(run.id)
    client.force_login(operator)
    page = client.get(f"/runs/{run.id}/").content.decode()
    path = html.unescape(re.search(r'ws-connect="(/ws/runs/[^"]+)"', page).group(1))

    push = first_push(path, operator)

    assert 'id="run-header"' in push  # the live sections, as always
    assert 'id="run-controls"' not in push  # a reason being typed stays
    assert 'id="steps"' not in push


def test_a_page_rendered_before_a_change_gets_the_controls_and_steps_anew(operator):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    advance_run(run.id)

    push = first_push(f"/ws/runs/{run.id}/?controls=0&steps=0", operator)

    assert 'id="run-controls"' in push and 'id="steps"' in push
