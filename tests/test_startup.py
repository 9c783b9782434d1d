"""A first run as a person meets it: real `python -m bot` processes, each start-up failure in one line."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.config import Settings
from tests.conftest import KNOWLEDGE_DIR, ROOT
from tests.fakewebex import FakeWebex
from tests.harness import SECRET
from tests.procs import free_port, pg_url, serve_env

TIMEOUT = 90.0  # a cold start imports a lot on this busy machine; the failures themselves come fast


def run_bot(*args: str, cwd: Path, **values: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` with stdout and stderr together, as a terminal shows them."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,  # a temporary folder: no developer's .env can change what is tested
        env=serve_env(**values),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output and not re.search(r"\bready\b", output)
    return lines[0]


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bot.db'}"


# --- serve: every start-up failure is one line and exit 1 ----------------------------------------------


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_bot("serve", cwd=tmp_path, PORT=str(port), DATABASE_URL=sqlite(tmp_path))
    assert out.returncode == 1
    line = one_error_line(out.stdout)
    assert f"127.0.0.1:{port}" in line and "already in use" in line and "PORT" in line


def test_a_database_nothing_listens_on_is_one_line(tmp_path: Path) -> None:
    dead = free_port()
    out = run_bot("serve", cwd=tmp_path, PORT=str(free_port()), DATABASE_URL=pg_url("nothing", dead))
    assert out.returncode == 1
    line = one_error_line(out.stdout)
    assert f"nothing answers on 127.0.0.1:{dead}" in line and "DATABASE_URL" in line


def test_a_wrong_postgresql_role_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://no_such_role_here@127.0.0.1:5432/postgres"
    out = run_bot("serve", cwd=tmp_path, PORT=str(free_port()), DATABASE_URL=url)
    assert out.returncode == 1
    line = one_error_line(out.stdout)
    assert 'role "no_such_role_here" does not exist' in line and "DATABASE_URL" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (pg_url("nothing", 1), "nothing answers on 127.0.0.1:1"),
        ("postgresql://no_such_role_here@127.0.0.1:5432/postgres", 'role "no_such_role_here" does not exist'),
    ],
    ids=["unreachable", "wrong-role"],
)
def test_stats_says_the_database_problem_in_one_line(tmp_path: Path, url: str, expected: str) -> None:
    out = run_bot("stats", cwd=tmp_path, DATABASE_URL=url)
    assert out.returncode == 1
    assert expected in one_error_line(out.stdout)


def test_a_broken_knowledge_folder_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, broken)
    errors = broken / "errors.toml"
    errors.write_text(errors.read_text().replace('category = "sso"', 'category = "magic"', 1))
    out = run_bot(
        "serve", cwd=tmp_path, PORT=str(free_port()), DATABASE_URL=sqlite(tmp_path), KNOWLEDGE_DIR=str(broken)
    )
    assert out.returncode == 1
    line = one_error_line(out.stdout)
    assert "errors.toml" in line and "category" in line
    assert f"python -m bot knowledge check {broken}" in line


async def test_a_token_webex_refuses_is_one_line(fake_webex: FakeWebex, tmp_path: Path) -> None:
    token = "revoked-token-0123456789"
    values = {
        "WEBEX_ACCESS_TOKEN": token,
        "WEBEX_WEBHOOK_SECRET": SECRET,
        "WEBEX_API_URL": fake_webex.base_url,
        "DATABASE_URL": sqlite(tmp_path),
        "PORT": str(free_port()),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "serve",
        cwd=tmp_path,
        env=serve_env(**values),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    out = raw.decode()
    assert proc.returncode == 1, out
    line = one_error_line(out)
    assert "Webex refused WEBEX_ACCESS_TOKEN" in line and "401" in line and "developer.webex.com" in line
    assert token not in out
    # Refused is final: asked once, not retried.
    assert [r.path for r in fake_webex.requests if r.path.endswith("/people/me")] == ["/people/me"]


# --- local mode: one address, the renderer's failure in one line, one line per handled message ----------


async def test_local_mode_without_npm_runs_and_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    values = {
        "DATABASE_URL": sqlite(tmp_path),
        "PORT": str(port),
        "LOG_LEVEL": "INFO",
        "RENDERER_CACHE_DIR": str(tmp_path / "cache"),
        "PATH": str(Path(sys.executable).parent),  # no npm here
    }
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "serve",
            cwd=tmp_path,
            env=serve_env(**values),
            stdout=log_file,
            stderr=log_file,
        )
    base = f"http://127.0.0.1:{port}"
    text = "blank screen when I sign in"
    try:
        async with aiohttp.ClientSession() as http:
            await _until_ready(http, base, proc, log_path)
            async with http.get(f"{base}/local/renderer") as resp:
                assert (await resp.json())["status"] == "missing-npm"
            async with http.post(f"{base}/local/messages", json={"text": text}) as resp:
                message_id = (await resp.json())["id"]
            for _ in range(300):
                if f"message {message_id}:" in log_path.read_text():
                    break
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
    log = log_path.read_text()
    assert code == 0, log
    assert "Traceback" not in log
    # "local mode" and one address: no "signed in to Webex", no aiohttp banner with a second URL.
    assert re.findall(r"https?://\S+", log) == [f"http://127.0.0.1:{port}/"], log
    assert "local mode" in log and "signed in to Webex" not in log
    renderer_lines = [line for line in log.splitlines() if "renderer" in line]
    assert len(renderer_lines) == 1, log
    assert "WARNING" in renderer_lines[0] and "npm was not found" in renderer_lines[0]
    assert "npm install --prefix" in renderer_lines[0]
    # One line per handled message, and never its text.
    [handled] = [line for line in log.splitlines() if f"message {message_id}:" in line]
    assert re.search(r"INFO .*: triage-fix, article blank-screen, \d+ ms$", handled), handled
    assert text not in log


async def _until_ready(
    http: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process, log_path: Path
) -> None:
    for _ in range(int(TIMEOUT * 10)):
        if proc.returncode is not None:
            raise AssertionError(f"the server exited:\n{log_path.read_text()}")
        try:
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server never became ready:\n{log_path.read_text()}")


# --- the CLI says what was wrong --------------------------------------------------------------------------


def test_stats_with_a_bad_period_says_what_was_wrong(tmp_path: Path) -> None:
    out = run_bot("stats", "5x", cwd=tmp_path, DATABASE_URL=sqlite(tmp_path))
    assert out.returncode == 2
    line = one_error_line(out.stdout)
    assert "'5x' is not a period" in line and "7d" in line


@pytest.mark.parametrize("command", [["whoami"], ["webhooks", "list"]])
def test_without_a_token_the_cli_points_to_env_and_the_readme(tmp_path: Path, command: list[str]) -> None:
    out = run_bot(*command, cwd=tmp_path)
    assert out.returncode == 1
    line = one_error_line(out.stdout)
    assert "WEBEX_ACCESS_TOKEN is not set" in line
    assert ".env.example" in line and '"Running it in Webex"' in line


# --- what a first run reads: .env.example and the README's screenshot -----------------------------------


def _readme_variables() -> set[str]:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            first_cell = row.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def test_env_example_has_every_configuration_variable(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    variables = re.findall(r"^#([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE)
    assert len(variables) == len(set(variables)), "a variable is listed twice"
    # Every Settings field has its line; the proxy variables, which only the environment sets, are named.
    settings_names = {name.upper() for name in Settings.model_fields} - {"XDG_CACHE_HOME"}
    assert set(variables) == settings_names, set(variables) ^ settings_names
    mentioned = set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", example))
    assert _readme_variables() <= mentioned, _readme_variables() - mentioned
    assert _readme_variables() - set(variables) <= {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"}
    # Every line of it is commented (a copy changes nothing), and each variable has a comment saying what it is.
    assert all(line == "" or line.startswith("#") for line in example.splitlines())
    # Taken out of the comments, every example value is one the bot accepts.
    env_file = tmp_path / ".env"
    env_file.write_text(re.sub(r"^#([A-Z][A-Z0-9_]+=)", r"\1", example, flags=re.MULTILINE))
    settings = Settings(_env_file=env_file)
    assert settings.admin_emails == ("admin@example.com", "it-lead@example.com")
    assert not settings.local_mode and settings.port == 8080


def test_the_readme_shows_the_playground_right_after_the_two_commands() -> None:
    image = ROOT / "docs" / "images" / "playground.png"
    data = image.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 300_000
    readme = (ROOT / "README.md").read_text()
    reference = readme.index("(docs/images/playground.png)")
    after_test_command = readme.index("```", readme.index("<!-- test-command -->") + 30) + 3
    assert after_test_command < reference < readme.index("\n## ")
    between = readme[after_test_command:reference]
    assert "```" not in between  # nothing comes between the two commands and the picture
