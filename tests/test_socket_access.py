"""Who may keep a live socket open (issue 11, "sessions and sockets"): only a page of this
site (same host and port), and only while the session stands; a password change ends it, as
it ends the session's next request."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections

from agentops.asgi import application
from runs import live
from runs.consumers import ACCESS_RECHECK_SECONDS, CLOSED_NO_ACCESS

pytestmark = pytest.mark.django_db(transaction=True)
HOST = "127.0.0.1:8000"


def in_own_loop(coroutine):
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def socket(origin, cookie=""):
    headers = [(b"host", HOST.encode()), (b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, "/ws/runs/", headers=headers)


async def opens(communicator):
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    await sync_to_async(connections.close_all)()
    return connected


def test_a_socket_opens_from_the_sites_own_origin_only(client, operator):
    client.force_login(operator)
    cookie = client.cookies["sessionid"].value
    assert in_own_loop(opens(socket(f"http://{HOST}", cookie)))
    assert not in_own_loop(opens(socket("http://127.0.0.1:9999", cookie)))  # another port
    assert not in_own_loop(opens(socket("http://evil.example", cookie)))


def test_an_open_socket_closes_once_the_password_changes(client, operator):
    client.force_login(operator)
    cookie = client.cookies["sessionid"].value

    def change_password():
        operator.set_password("a-new-password-after-a-leak")
        operator.save()

    async def talk():
        communicator = socket(f"http://{HOST}", cookie)
        connected, _ = await communicator.connect()
        assert connected
        await communicator.receive_from(timeout=10)  # the table, sent at connect
        await sync_to_async(change_password)()
        await asyncio.sleep(ACCESS_RECHECK_SECONDS + 0.5)
        # The next live message makes the consumer look at the session again.
        await get_channel_layer().group_send(await sync_to_async(live.list_group)(), {"type": "run.changed", "run_id": "none"})
        closed = await communicator.receive_output(timeout=10)
        await communicator.wait()
        await sync_to_async(connections.close_all)()
        return closed

    assert in_own_loop(talk()) == {"type": "websocket.close", "code": CLOSED_NO_ACCESS}
