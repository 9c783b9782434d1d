"""Start-up of `serve`: the port is bound first, and every failure a person can fix is told in one line."""

from __future__ import annotations

import errno
import socket
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.knowledge import KnowledgeError
from bot.webex import WebexAuthError

README_WEBEX = 'docs/webex.md, "Running it in Webex"'


class StartupError(Exception):
    """A start-up failure a person can fix; str() is the one line printed instead of a traceback."""


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on host:port (every address the name has, as aiohttp would), bound before anything
    else starts, so that a busy port is the first thing said rather than a traceback after "ready"."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {where}: HOST {host!r} is not a known address ({exc.strerror})"
        ) from exc
    sockets: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
            sockets.append(socket.create_server(address, family=family))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(bind_problem(where, port, exc)) from exc
    return sockets


def bind_problem(where: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use (another copy of the bot?); "
            "stop that program or set PORT (or serve --port) to a free port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need root); set PORT above 1024"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: HOST is not an address of this machine; set HOST (0.0.0.0 is all)"
    return f"cannot listen on {where}: {exc.strerror or exc}; check HOST and PORT"


def safe_database_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(unparsable)"


def database_problem(url: str, exc: BaseException) -> str:
    """Why DATABASE_URL could not be opened, in one line, from the innermost cause of `exc`."""
    shown = safe_database_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return f"DATABASE_URL {url!r} is not a database URL; use sqlite:///path/to/bot.db or postgresql://user@host/db"
    host, port = parsed.host or "localhost", parsed.port or 5432
    cause = _innermost(exc)
    if parsed.get_backend_name() == "sqlite":
        if isinstance(cause, sqlite3.Error | OSError):
            reason = f"{_one_line(cause)} (does the folder exist, and may this user write to it?)"
        else:
            reason = _one_line(cause)
    elif isinstance(cause, ConnectionRefusedError) or (
        isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
    ):
        reason = f"nothing answers on {host}:{port} (is PostgreSQL running there?)"
    elif isinstance(cause, socket.gaierror):
        reason = f"the host {host!r} is unknown"
    elif isinstance(cause, TimeoutError):
        reason = f"no answer from {host}:{port} in time (a firewall, or the wrong host?)"
    else:
        # The server's own words: 'role "x" does not exist', 'database "x" does not exist', ...
        reason = _one_line(cause)
    return f"cannot open the database {shown}: {reason}; check DATABASE_URL"


def _innermost(exc: BaseException) -> BaseException:
    seen: BaseException = exc
    for _ in range(10):
        # SQLAlchemy keeps the driver's error in .orig; everything else chains with raise ... from.
        inner = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    return seen


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def knowledge_problem(directory: Path, exc: KnowledgeError) -> str:
    first = exc.problems[0] if exc.problems else "unknown problem"
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return (
        f"the knowledge in {directory} is broken: {first}{more}; "
        f"see every problem with: python -m bot knowledge check {directory}"
    )


def token_problem(exc: WebexAuthError) -> str:
    return (
        f"Webex refused WEBEX_ACCESS_TOKEN ({exc.status} on GET /people/me, trackingId "
        f"{exc.tracking_id or '-'}); copy the bot's token from developer.webex.com into .env "
        f"(see {README_WEBEX})"
    )
