"""Shared plumbing for the benchmarks: pinned subprocesses, readiness polls, signed bodies, stats and tables."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
SECRET = "bench-webhook-secret"
# Every process in these benchmarks listens here and nowhere else.
LOOPBACK = "127.0.0.1"

# The server under test gets one core and everything else (load generator, fake Webex) gets the other, so the
# server's number is not shared with the client that measures it. None means "no pinning possible here".
SERVER_CORE: str | None = None
CLIENT_CORE: str | None = None
if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
    SERVER_CORE, CLIENT_CORE = "0", "1"


def pinned(cmd: Sequence[str], core: str | None) -> list[str]:
    return ["taskset", "-c", core, *cmd] if core is not None else list(cmd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process we started, stopped by its own pid only (never by name)."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        core: str | None,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        capture_stdout: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: TextIO = self.log_path.open("w")
        self.popen = subprocess.Popen(
            pinned(cmd, core),
            stdout=subprocess.PIPE if capture_stdout else self._log,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            text=True,
        )
        self.pid = self.popen.pid  # taskset execs the command, so this is the server's own pid

    def first_line(self, timeout: float = 30.0) -> str:
        """The first stdout line (the runner scripts announce their ports there)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            line = self.popen.stdout.readline()
            if line:
                return line.strip()
        raise TimeoutError(f"{self.name} said nothing within {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far (all its threads, e.g. aiosqlite's)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Everything appended to the list is stopped on the way out, last started first, whatever happened."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


def http(method: str, url: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    """A tiny blocking JSON client for control calls; the load itself never goes through here."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return status, (json.loads(raw) if raw else None)


def wait_http(url: str, *, timeout: float = 60.0, proc: Proc | None = None) -> Any:
    """Poll until the URL answers 200; returns its JSON."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}")
        try:
            status, body = http("GET", url, timeout=5)
            if status == 200:
                return body
            last = (status, body)
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout}s (last: {last})")


# ---- the processes the benchmarks drive ------------------------------------------------------------------


class Fake:
    """bench/fakeserver.py in its own process: the Webex API plus a control endpoint."""

    def __init__(self, procs: list[Proc], log_dir: Path, name: str, *, refuse_identity: bool = False) -> None:
        cmd = [PYTHON, str(BENCH / "fakeserver.py")] + (["--refuse-identity"] if refuse_identity else [])
        self.proc = Proc(name, cmd, core=CLIENT_CORE, log_dir=log_dir, capture_stdout=True)
        procs.append(self.proc)
        info = json.loads(self.proc.first_line())
        self.api_url: str = info["api"]
        self.control: str = info["control"]
        self.token: str = info["token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = http(method, self.control + path, body)
        if status != 200:
            raise RuntimeError(f"fake control {method} {path} -> {status}: {answer}")
        return answer

    def envelopes(self, count: int, *, keep: bool = True) -> list[dict[str, Any]]:
        """`count` messages/created envelopes; keep=False mints them without storing the messages."""
        out: list[dict[str, Any]] = []
        while len(out) < count:
            chunk = min(10_000, count - len(out))
            out += self.call("POST", "/control/messages", {"count": chunk, "keep": keep})["envelopes"]
        return out

    def reply_count(self) -> int:
        return int(self.call("GET", "/control/stats")["replies"])

    def replies(self, after: int = 0) -> list[tuple[str, float]]:
        return [tuple(r) for r in self.call("GET", f"/control/replies?after={after}")["replies"]]  # type: ignore[misc]


class Bot:
    """`python -m bot serve` as production runs it, pinned to the server core, on a fresh SQLite file."""

    def __init__(
        self, procs: list[Proc], log_dir: Path, name: str, fake: Fake, *, wrap: Sequence[str] = (), **env: str
    ) -> None:
        """wrap: interpreter arguments before `-m bot serve` (e.g. a profiler: `-m cProfile -o out`)."""
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.db_path = log_dir / f"{name}.db"
        environment = {
            "WEBEX_ACCESS_TOKEN": fake.token,
            "WEBEX_API_URL": fake.api_url,
            "WEBEX_WEBHOOK_SECRET": SECRET,
            "WEBEX_INBOUND": "webhook",
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "HOST": LOOPBACK,
            "PORT": str(self.port),
            **env,
        }
        # cwd is the temp dir so that a developer's .env cannot change what is measured.
        self.proc = Proc(
            name,
            [PYTHON, *wrap, "-m", "bot", "serve"],
            core=SERVER_CORE,
            log_dir=log_dir,
            env=environment,
            cwd=log_dir,
        )
        procs.append(self.proc)

    def wait_ready(self, *, identity: bool = True) -> None:
        wait_http(self.url + ("/readyz" if identity else "/healthz"), timeout=60, proc=self.proc)

    def inbox(self) -> dict[str, int]:
        _, body = http("GET", self.url + "/readyz", timeout=10)  # 503 (not ready) still counts
        return dict(body.get("inbox") or {}) if isinstance(body, dict) else {}

    def wait_drained(self, timeout: float) -> tuple[bool, float]:
        """Wait until nothing is pending, working or waiting for a retry; returns (drained, seconds)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            counts = self.inbox()
            if counts and not (counts.get("pending") or counts.get("working") or counts.get("failed")):
                return True, time.monotonic() - start
            time.sleep(0.25)
        return False, time.monotonic() - start


def start_bare(procs: list[Proc], log_dir: Path) -> str:
    port = free_port()
    proc = Proc(
        "bare",
        [PYTHON, str(BENCH / "bare_app.py"), "--port", str(port)],
        core=SERVER_CORE,
        log_dir=log_dir,
    )
    procs.append(proc)
    url = f"http://{LOOPBACK}:{port}"
    wait_http(url + "/healthz", timeout=30, proc=proc)
    return url


# ---- signed bodies ---------------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def write_bodies(path: Path, envelopes: Iterable[dict[str, Any]]) -> int:
    """One `id<TAB>signature<TAB>body` line per event: the format loadgen.py and wrk_post.lua read."""
    n = 0
    with path.open("w") as out:
        for envelope in envelopes:
            body = json.dumps(envelope)
            out.write(f"{envelope['data']['id']}\t{sign(body.encode())}\t{body}\n")
            n += 1
    return n


def run_loadgen(
    url: str,
    bodies: Path,
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    max_seconds: float = 120.0,
) -> list[tuple[str, float, float, float, int]]:
    """bench/loadgen.py on the client core; rows of (event id, scheduled, sent, answered, status)."""
    out = bodies.with_suffix(".out.json")
    mode = ["--rate", str(rate)] if rate else ["--concurrency", str(concurrency)]
    cmd = [PYTHON, str(BENCH / "loadgen.py"), "--url", url + "/webhooks/webex", "--bodies", str(bodies)]
    cmd += ["--out", str(out), "--max-seconds", str(max_seconds), *mode]
    subprocess.run(pinned(cmd, CLIENT_CORE), check=True, timeout=max_seconds + 120)
    rows = [tuple(r) for r in json.loads(out.read_text())["rows"]]
    out.unlink()
    return rows  # type: ignore[return-value]


# ---- statistics and output -------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: p99 of 1000 samples is the 990th smallest, an observed value."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def med(values: Iterable[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda items: "  ".join(  # noqa: E731 - a one-line formatter beside its one use
        s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths, strict=True))
    )
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import aiohttp

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "pinning": f"server core {SERVER_CORE}, client core {CLIENT_CORE}" if SERVER_CORE else "none",
        "loadavg_at_start": os.getloadavg(),
    }


def describe(info: dict[str, Any]) -> str:
    return (
        f"{info['date']} | {info['cpus']} x {info['cpu_model']} | Python {info['python']} | "
        f"aiohttp {info['aiohttp']} | pinning: {info['pinning']} | "
        f"load avg at start {info['loadavg_at_start'][0]:.2f}"
    )


def write_json(path: Path | None, payload: Any) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")
