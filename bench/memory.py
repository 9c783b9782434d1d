"""Bot RSS over 100,000 events through the full pipeline against a fast fake Webex: does memory flatten?

Run: python bench/memory.py [--events 100000] [--step 10000] [--rate 80] [--max-seconds 2700] [--json out.json]

The bot (`python -m bot serve`, SQLite) is pinned to core 0, the fake Webex and the load generator to core 1.
Events go in open loop at --rate (near what the worker sustains, so the inbox stays short, as in service).
At every --step the script waits until the inbox is drained, lets the process sit for a second and reads
VmRSS and VmHWM from /proc/<pid>/status, plus the SQLite file size (the database keeps every event).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def db_mib(bot: h.Bot) -> float:
    paths = [bot.db_path, bot.db_path.with_name(bot.db_path.name + "-wal")]
    return sum(p.stat().st_size for p in paths if p.exists()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000, help="events between two RSS readings")
    parser.add_argument("--rate", type=float, default=80.0, help="offered events/s")
    parser.add_argument(
        "--max-seconds", type=float, default=2700.0, help="stop early (and say so) after this"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args()

    info = h.machine()
    print(h.describe(info), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    points: list[dict[str, Any]] = []
    started = time.monotonic()
    stopped_early = False
    with h.processes() as procs:
        fake = h.Fake(procs, tmp, "fake")
        bot = h.Bot(procs, tmp, "bot", fake)
        bot.wait_ready()
        time.sleep(3)  # let start-up garbage settle before the idle reading

        def reading(events: int) -> None:
            pid = bot.proc.pid
            points.append(
                {
                    "events": events,
                    "rss_kib": status_kib(pid, "VmRSS"),
                    "hwm_kib": status_kib(pid, "VmHWM"),
                    "db_mib": db_mib(bot),
                    "fake_rss_kib": fake.proc.rss_kib(),
                    "elapsed_s": time.monotonic() - started,
                }
            )
            p = points[-1]
            print(
                f"  {events:>7,} events: RSS {p['rss_kib'] / 1024:7.1f} MiB, HWM {p['hwm_kib'] / 1024:7.1f} MiB, "
                f"db {p['db_mib']:6.1f} MiB, {p['elapsed_s']:5.0f}s",
                flush=True,
            )

        reading(0)
        done = 0
        while done < args.events:
            if time.monotonic() - started > args.max_seconds:
                stopped_early = True
                print(f"  --max-seconds reached after {done} events; stopping", flush=True)
                break
            count = min(args.step, args.events - done)
            bodies = tmp / f"step-{done}.txt"
            h.write_bodies(bodies, fake.envelopes(count))
            rows = h.run_loadgen(bot.url, bodies, rate=args.rate, max_seconds=count / args.rate + 60)
            bodies.unlink()
            failed = sum(1 for r in rows if r[4] != 200)
            if failed:
                print(f"  {failed} webhook posts failed in this step", flush=True)
            drained, _ = bot.wait_drained(600)
            if not drained:
                print("  inbox did not drain within 600s; reading anyway", flush=True)
            done += count
            time.sleep(1)
            reading(done)
        counts = bot.inbox()
        replies = fake.reply_count()
    report(points, counts, replies, stopped_early, info, args)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(
    points: list[dict[str, Any]],
    counts: dict[str, int],
    replies: int,
    stopped_early: bool,
    info: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    rows = []
    for prev, p in zip([None, *points], points, strict=False):
        growth = (
            "-"
            if prev is None or p["events"] == prev["events"]
            else f"{(p['rss_kib'] - prev['rss_kib']) / 1024 / ((p['events'] - prev['events']) / 10_000):+.1f}"
        )
        rows.append(
            [p["events"], p["rss_kib"] / 1024, growth, p["hwm_kib"] / 1024, p["db_mib"], p["elapsed_s"]]
        )
    print()
    print(f"offered {args.rate:g} events/s, readings after each {args.step:,} once the inbox drained")
    print(h.table(["events", "RSS MiB", "MiB per 10k", "HWM MiB", "SQLite MiB", "seconds"], rows))
    last = points[-1]
    mid = min(points, key=lambda p: abs(p["events"] - last["events"] / 2))
    first = next((p for p in points if p["events"] > 0), last)

    def per10k(a: dict[str, Any], b: dict[str, Any]) -> float:
        steps = (b["events"] - a["events"]) / 10_000
        return (b["rss_kib"] - a["rss_kib"]) / 1024 / steps if steps else 0.0

    early, late = per10k(first, mid), per10k(mid, last)
    flat = late <= max(0.5, early / 4)
    print(
        f"\nRSS growth per 10k events: {per10k(points[0], first):+.1f} MiB over the first step, "
        f"{early:+.2f} MiB from {first['events']:,} to {mid['events']:,}, "
        f"{late:+.2f} MiB from {mid['events']:,} to {last['events']:,}: "
        f"{'flattens (no leak seen)' if flat else 'still growing: look for a leak'}"
    )
    db_per10k = (last["db_mib"] - points[0]["db_mib"]) / (last["events"] / 10_000) if last["events"] else 0.0
    print(
        f"SQLite grows {db_per10k:.1f} MiB per 10k events (none is old enough for the hourly purge: RETENTION_DAYS, default 14); inbox at the end: {counts}; "
        f"replies posted: {replies:,}{'; STOPPED EARLY' if stopped_early else ''}"
    )
    h.write_json(
        args.json,
        {
            "machine": info,
            "settings": vars(args) | {"json": str(args.json)},
            "points": points,
            "inbox_end": counts,
            "replies": replies,
            "stopped_early": stopped_early,
            "rss_growth_mib_per_10k": {"early": early, "late": late, "flattens": flat},
            "db_mib_per_10k": db_per10k,
        },
    )


if __name__ == "__main__":
    main()
