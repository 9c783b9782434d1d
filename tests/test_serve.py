"""`python -m bot serve` as a real process: start-up checks and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.conftest import KNOWLEDGE_DIR, ROOT
from tests.fakewebex import FakeWebex, sign
from tests.harness import SECRET


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env(**values: str) -> dict[str, str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_", "DATABASE_", "PUBLIC_", "PORT"))
    }
    return {
        **base,
        "KNOWLEDGE_DIR": str(KNOWLEDGE_DIR),
        "HOST": "127.0.0.1",
        "WEBEX_INBOUND": "webhook",
        **values,
    }


async def start(values: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "serve",
        *args,
        cwd=ROOT,
        env=env(**values),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def wait_ready(port: int, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.returncode is not None:
                raise AssertionError("server exited during start-up")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server never became ready")


async def test_refuses_to_start_without_a_secret(fake_webex: FakeWebex, tmp_path: Path) -> None:
    proc = await start({"WEBEX_ACCESS_TOKEN": fake_webex.token, "DATABASE_URL": f"sqlite:///{tmp_path}/b.db"})
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"WEBEX_WEBHOOK_SECRET" in out and b"Traceback" not in out


async def test_insecure_flag_starts_with_a_loud_warning(fake_webex: FakeWebex, tmp_path: Path) -> None:
    port = free_port()
    values = {
        "WEBEX_ACCESS_TOKEN": fake_webex.token,
        "WEBEX_API_URL": fake_webex.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/b.db",
        "PORT": str(port),
    }
    proc = await start(values, "--insecure-no-signature")
    try:
        await wait_ready(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert b"--insecure-no-signature" in out and b"NOT checked" in out


async def test_sigterm_finishes_in_flight_work_then_exits(fake_webex: FakeWebex, tmp_path: Path) -> None:
    port = free_port()
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    room = fake_webex.add_room("direct", "Alice")
    values = {
        "WEBEX_ACCESS_TOKEN": fake_webex.token,
        "WEBEX_WEBHOOK_SECRET": SECRET,
        "WEBEX_API_URL": fake_webex.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/b.db",
        "PORT": str(port),
    }
    proc = await start(values)
    try:
        await wait_ready(port, proc)
        fake_webex.delay("GET", "/messages/", 1.0)  # the reply is in flight when SIGTERM arrives
        msg = fake_webex.add_message(room["id"], alice, "Error: 1000:1002")
        body = json.dumps(fake_webex.message_created_envelope(msg)).encode()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/webhooks/webex",
                data=body,
                headers={"X-Spark-Signature": sign(body, SECRET), "Content-Type": "application/json"},
            ) as resp,
        ):
            assert resp.status == 200
        await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"stopped cleanly" in out
    assert len(fake_webex.posted_messages) == 1, "the in-flight reply was finished before exit"
