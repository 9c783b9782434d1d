"""Real `python -m bot serve` processes on the websocket path: kill -9 between the ack and the reply, two replicas
with a socket each on one PostgreSQL, and every outbound connection through a real HTTP proxy (proxy.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.fakewebsocket import FakeCloud, SocketWebex
from tests.harness import verb
from tests.procs import (
    Receiver,
    ServeProcess,
    bot_messages,
    free_port,
    fresh_pg_database,
    pg_fetch,
    pg_url,
    requested,
    until,
    until_async,
)

RESTART_ANSWER_BOUND = 8.0  # the worker lease (3 s) plus a start-up
HOLD = 60.0


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_pg_database("test_ws") as name:
        yield name


@pytest.fixture
async def fake() -> AsyncIterator[SocketWebex]:
    webex = SocketWebex()
    await webex.start()
    try:
        yield webex
    finally:
        await webex.close()


@pytest.fixture
async def cloud(fake: SocketWebex) -> AsyncIterator[FakeCloud]:
    side = FakeCloud(fake)
    await side.start()
    try:
        yield side
    finally:
        await side.close()


@pytest.fixture
def world(fake: SocketWebex) -> dict[str, Any]:
    alice = fake.add_person("alice@example.com", "Alice Doe")
    sam = fake.add_person("sam@example.com", "Sam Agent")
    direct = fake.add_room("direct", "Alice")
    fake.add_membership(direct["id"], alice["id"])
    group = fake.add_room("group", "Sales floor")
    helpdesk = fake.add_room("group", "Helpdesk")
    fake.add_membership(helpdesk["id"], sam["id"])
    return {"alice": alice, "direct": direct["id"], "group": group["id"], "helpdesk": helpdesk["id"]}


@pytest.fixture
async def procs() -> AsyncIterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for proc in started:
        await proc.close()
        print(f"----- {proc.log_path.name} (pid {proc.pid}) -----\n{proc.log()[-4000:]}")


def values(
    fake: SocketWebex, cloud: FakeCloud, database_url: str, device: str, **extra: str
) -> dict[str, str]:
    return {
        "WEBEX_ACCESS_TOKEN": fake.token,
        "WEBEX_API_URL": fake.base_url,
        "WEBEX_U2C_URL": cloud.u2c_url,
        "WEBEX_INBOUND": "auto",  # no PUBLIC_URL: the websocket
        "WEBEX_DEVICE_NAME": device,
        "DATABASE_URL": database_url,
        "WORKER_LEASE_SECONDS": "3",
        "HTTPS_PROXY": "",
        "HTTP_PROXY": "",
        "NO_PROXY": "",
        **extra,
    }


async def serve(procs: list[ServeProcess], env: dict[str, str], tmp_path: Path) -> ServeProcess:
    proc = ServeProcess(env, tmp_path, f"serve-{len(procs) + 1}")
    procs.append(proc)
    await proc.start()
    await proc.wait_ready()  # /readyz: identity, database and the socket open
    return proc


def mention(fake: SocketWebex, room: str, person: dict[str, Any], text: str) -> dict[str, Any]:
    html = f'<spark-mention data-object-type="person" data-object-id="{fake.bot["id"]}">Helpdesk</spark-mention> {text}'
    return fake.add_message(room, person, f"Helpdesk {text}", html)


async def test_kill9_after_the_ack_before_the_reply_then_exactly_one_reply(
    fake: SocketWebex,
    cloud: FakeCloud,
    world: dict[str, Any],
    database: str,
    procs: list[ServeProcess],
    tmp_path: Path,
) -> None:
    env = values(fake, cloud, pg_url(database), "helpdesk-bot@replica-a")
    first = await serve(procs, env, tmp_path)
    fake.delay("GET", "/messages/", HOLD)
    msg = fake.add_message(world["direct"], world["alice"], "Error: 1000:1002 when I open phone services")
    envelopes = cloud.post(msg)
    await until(lambda: cloud.acked(envelopes), 10, "the ack (after the inbox insert)")
    await until(lambda: bool(requested(fake, "GET", f"/messages/{msg['id']}")), 10, "the worker to fetch it")
    first.kill9()
    assert await first.wait_exit(10) == -9
    fake.clear_faults()
    [row] = await pg_fetch(
        database, "SELECT status, reply_message_id FROM inbox WHERE event_id = $1", msg["id"]
    )
    assert row["status"] == "working" and row["reply_message_id"] is None
    assert bot_messages(fake) == []

    await serve(procs, env, tmp_path)
    await until(
        lambda: bool(bot_messages(fake, world["direct"])), RESTART_ANSWER_BOUND, "the reply after restart"
    )
    await asyncio.sleep(1.5)  # room for a second reply, which must not come
    assert len(bot_messages(fake, world["direct"])) == 1
    # Acknowledged once, so never sent again; the restart's catch-up found it in the inbox already.
    assert [d.sends for d in cloud.ours()[0].queue] == [1]
    assert len(cloud.ours()) == 1  # the restart reused its device by name


async def test_two_replicas_each_with_a_socket_answer_each_event_once(
    fake: SocketWebex,
    cloud: FakeCloud,
    world: dict[str, Any],
    database: str,
    procs: list[ServeProcess],
    tmp_path: Path,
) -> None:
    await serve(procs, values(fake, cloud, pg_url(database), "helpdesk-bot@replica-a"), tmp_path)
    await serve(procs, values(fake, cloud, pg_url(database), "helpdesk-bot@replica-b"), tmp_path)
    assert sorted(d.name for d in cloud.ours()) == ["helpdesk-bot@replica-a", "helpdesk-bot@replica-b"]
    assert cloud.open_sockets == 2
    fake.delay("GET", "/messages/", 0.1)  # both workers busy at once
    texts = ["Error: 1000:1002", "blank screen when I sign in", "help", "okta setup", "sso failed", "hello"]
    msgs = [fake.add_message(world["direct"], world["alice"], f"{t} ({n})") for n, t in enumerate(texts)]
    msgs += [mention(fake, world["group"], world["alice"], f"{t} [{n}]") for n, t in enumerate(texts)]
    envelopes = [e for m in msgs for e in cloud.post(m)]
    assert len(envelopes) == 2 * len(msgs)  # every event reaches both sockets

    async def all_done() -> bool:
        rows = await pg_fetch(database, "SELECT status FROM inbox")
        return len(rows) == len(msgs) and all(r["status"] == "done" for r in rows)

    await until_async(all_done, 20, "every event handled")
    await until(lambda: cloud.acked(envelopes), 10, "both replicas' acks")
    await asyncio.sleep(0.5)
    direct = bot_messages(fake, world["direct"])
    assert len(direct) == len(texts)
    assert [len(bot_messages(fake, world["group"], parent_id=m["id"])) for m in msgs[len(texts) :]] == [
        1
    ] * len(texts)


# --- through a proxy --------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a certificate for 127.0.0.1: the fakes speak HTTPS and WSS, as Webex does."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return server, bundle


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """proxy.py (from PyPI) on a loopback port; its access log names every tunnel and request."""
    port, log = free_port(), tmp_path / "proxy.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-workers",
        "1",
        "--num-acceptors",
        "1",
        "--log-file",
        str(log),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("proxy.py did not start")
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def ticket_through_the_socket(fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any]) -> None:
    """Alice asks for a person and files the ticket: REST, socket and (with TICKET_WEBHOOK_URL) the ITSM hook."""
    ask = fake.add_message(world["direct"], world["alice"], "talk to a human")
    cloud.post(ask)
    await until(lambda: bool(bot_messages(fake, world["direct"])), 15, "the note card")
    note_card = bot_messages(fake, world["direct"])[0]
    cloud.card_action(
        fake.add_attachment_action(note_card["id"], world["alice"], verb(note_card, "file_ticket"))
    )
    await until(lambda: bool(bot_messages(fake, world["helpdesk"])), 15, "the ticket card")


@pytest.mark.parametrize("bypass", [False, True], ids=["through-the-proxy", "no-proxy-goes-direct"])
async def test_every_outbound_connection_honours_the_proxy_environment(
    bypass: bool,
    tls: tuple[ssl.SSLContext, Path],
    proxy: tuple[str, Path],
    database: str,
    procs: list[ServeProcess],
    tmp_path: Path,
) -> None:
    server_tls, ca_bundle = tls
    proxy_url, proxy_log = proxy
    fake = SocketWebex()
    await fake.start_tls(server_tls)
    cloud = FakeCloud(fake, ssl_context=server_tls)
    await cloud.start()
    receiver = await Receiver().start()
    try:
        world = {
            "alice": fake.add_person("alice@example.com", "Alice Doe"),
            "direct": fake.add_room("direct", "Alice")["id"],
            "helpdesk": fake.add_room("group", "Helpdesk")["id"],
        }
        fake.add_membership(world["direct"], world["alice"]["id"])
        env = values(
            fake,
            cloud,
            pg_url(database),
            "helpdesk-bot@proxied",
            HTTPS_PROXY=proxy_url,
            HTTP_PROXY=proxy_url,
            NO_PROXY="127.0.0.1" if bypass else "",
            SSL_CERT_FILE=str(ca_bundle),  # the bot trusts the fakes' CA, nothing else changes
            HELPDESK_ROOM_ID=world["helpdesk"],
            TICKET_WEBHOOK_URL=receiver.url,
        )
        bot = await serve(procs, env, tmp_path)
        await ticket_through_the_socket(fake, cloud, world)
        await until(lambda: bool(receiver.completed()), 15, "the ITSM delivery")
        assert any(c.authorized for c in cloud.connections)
        # proxy.py logs a tunnel when it closes: stop the bot so that its pooled connections and socket do.
        bot.terminate()
        assert await bot.wait_exit(20) == 0
        await asyncio.sleep(0.5)
        log = proxy_log.read_text() if proxy_log.exists() else ""
        rest, side = fake.base_url.split(":")[2].split("/")[0], cloud.base.rsplit(":", 1)[1]
        itsm = receiver.url.split(":")[2].split("/")[0]
        expected = [
            f"CONNECT 127.0.0.1:{rest} ",  # REST (people/me, messages)
            f"CONNECT 127.0.0.1:{side} ",  # discovery, devices and the websocket
            f"POST 127.0.0.1:{itsm}/itsm",  # the ITSM webhook over plain HTTP
        ]
        connecting = [line for line in bot.log().splitlines() if "websocket connecting to wss://" in line]
        assert connecting and all(("through http://127.0.0.1" in line) != bypass for line in connecting)
        if bypass:
            assert not any(line in log for line in expected), log
        else:
            missing = [line for line in expected if line not in log]
            assert not missing, f"not through the proxy: {missing}\n{log[-3000:]}"
    finally:
        await receiver.close()
        await cloud.close()
        await fake.close()
