"""End to end: signed webhook in, card reply posted on the fake Webex; latency at fixed offered rates.

Run: python bench/e2e.py [--rates 20,50] [--duration 20] [--rounds 3] [--burst 2000]
                         [--slow-rate 20] [--slow-delay 2] [--slow-duration 20] [--json out.json]

The bot (`python -m bot serve`, SQLite) is pinned to core 0; the fake Webex (bench/fakeserver.py) and the
open-loop load generator (bench/loadgen.py) share core 1. Each event is a new @mention in a group space with a
text from the labelled triage sets, so the worker does the real work: GET /messages/{id}, triage, card, POST
/messages in the thread, and the inbox/triage writes.

Latency is reply-posted time (seen by the fake) minus the webhook's scheduled send time, on CLOCK_MONOTONIC,
which both processes share. Per round: each offered rate for --duration seconds; then a burst as fast as
the acks allow, whose drain time gives the capacity; then the same open loop while the fake answers every
call after --slow-delay seconds, to see whether a slow Webex leaks into the ack.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h


def wait_replies(fake: h.Fake, offset: int, ids: set[str], deadline: float) -> tuple[dict[str, float], int]:
    """Reply times by event id until every id has one or the deadline passes."""
    seen: dict[str, float] = {}
    while True:
        new = fake.replies(offset)
        offset += len(new)
        seen.update((parent, t) for parent, t in new if parent in ids)
        if len(seen) == len(ids) or time.monotonic() > deadline:
            return seen, offset
        time.sleep(0.5)


def phase(
    fake: h.Fake,
    bot: h.Bot,
    tmp: Path,
    name: str,
    *,
    count: int,
    rate: float | None = None,
    concurrency: int | None = None,
    settle: float,
    reply_deadline: float | None = None,
) -> dict[str, Any]:
    """Send `count` new events and collect ack and end-to-end numbers for them."""
    bodies = tmp / f"{name}.txt"
    h.write_bodies(bodies, fake.envelopes(count))
    offset = fake.reply_count()
    rows = h.run_loadgen(
        bot.url, bodies, rate=rate, concurrency=concurrency, max_seconds=count / (rate or 50) + 60
    )
    sent_ok = {r[0]: r for r in rows if r[4] == 200}
    last_send = max(r[2] for r in rows)
    deadline = time.monotonic() + (settle if reply_deadline is None else reply_deadline)
    replies, _ = wait_replies(fake, offset, set(sent_ok), deadline)
    acks = [(r[3] - r[2]) * 1000 for r in rows if r[4] == 200]
    e2e = [(replies[i] - sent_ok[i][1]) * 1000 for i in replies]
    first = min(r[1] for r in rows)
    span = (max(replies.values()) - first) if replies else math.nan
    return {
        "name": name,
        "offered": count,
        "offered_rate": rate,
        "acked": len(sent_ok),
        "ack_failures": len(rows) - len(sent_ok),
        "replied": len(replies),
        "events_per_s": len(replies) / span if replies else 0.0,
        "send_seconds": last_send - first,
        "ack_p50_ms": h.pct(acks, 50),
        "ack_p99_ms": h.pct(acks, 99),
        "ack_max_ms": max(acks, default=math.nan),
        "e2e_p50_ms": h.pct(e2e, 50),
        "e2e_p99_ms": h.pct(e2e, 99),
        "e2e_max_ms": max(e2e, default=math.nan),
        # The load generator's own lateness: large values would mean it, not the bot, limited the rate.
        "loadgen_late_max_ms": max((r[2] - r[1]) * 1000 for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20,50", help="offered events/s, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per offered rate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=2000, help="events for the capacity burst (0: skip)")
    parser.add_argument("--slow-rate", type=float, default=20.0)
    parser.add_argument("--slow-delay", type=float, default=2.0, help="seconds the fake stalls every call")
    parser.add_argument("--slow-duration", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=60.0, help="max wait for replies after sending stops")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]

    info = h.machine()
    print(h.describe(info), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    runs: list[dict[str, Any]] = []
    with h.processes() as procs:
        fake = h.Fake(procs, tmp, "fake")
        bot = h.Bot(procs, tmp, "bot", fake)
        bot.wait_ready()
        # Warm-up: first triage, first card, first connections; not counted.
        phase(fake, bot, tmp, "warmup", count=100, rate=50, settle=30)
        for rnd in range(1, args.rounds + 1):
            for rate in rates:
                r = phase(
                    fake,
                    bot,
                    tmp,
                    f"r{rnd}-{rate:g}",
                    count=int(rate * args.duration),
                    rate=rate,
                    settle=args.settle,
                )
                runs.append(r | {"round": rnd, "kind": f"{rate:g}/s"})
                print(
                    f"  round {rnd} {rate:g}/s: {r['replied']}/{r['offered']} replied, "
                    f"e2e p99 {r['e2e_p99_ms']:.0f} ms",
                    flush=True,
                )
            if args.burst:
                r = phase(
                    fake,
                    bot,
                    tmp,
                    f"r{rnd}-burst",
                    count=args.burst,
                    concurrency=32,
                    settle=args.settle + args.burst / 20,
                )
                runs.append(r | {"round": rnd, "kind": "burst"})
                print(f"  round {rnd} burst: {r['events_per_s']:.0f} events/s", flush=True)
            bot.wait_drained(60)

            # Slow Webex: the ack must not care. Replies are counted only while the fake is slow.
            fake.call("POST", "/control/delay", {"method": "*", "path": "/", "seconds": args.slow_delay})
            try:
                r = phase(
                    fake,
                    bot,
                    tmp,
                    f"r{rnd}-slow",
                    count=int(args.slow_rate * args.slow_duration),
                    rate=args.slow_rate,
                    settle=0,
                    reply_deadline=0,
                )
            finally:
                fake.call("POST", "/control/clear")
            runs.append(r | {"round": rnd, "kind": f"slow {args.slow_rate:g}/s"})
            drained, waited = bot.wait_drained(300)
            print(
                f"  round {rnd} slow: ack p99 {r['ack_p99_ms']:.1f} ms, {r['replied']} replied while slow; "
                f"backlog {'drained' if drained else 'NOT drained'} {waited:.0f}s after clearing",
                flush=True,
            )
        rss = bot.proc.rss_kib()
    report(runs, rss, info, args)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(runs: list[dict[str, Any]], rss: int, info: dict[str, Any], args: argparse.Namespace) -> None:
    kinds = list(dict.fromkeys(r["kind"] for r in runs))
    rows = []
    summary: dict[str, Any] = {}
    for kind in kinds:
        rs = [r for r in runs if r["kind"] == kind]
        s = {
            key: h.med(r[key] for r in rs)
            for key in (
                "events_per_s",
                "ack_p50_ms",
                "ack_p99_ms",
                "e2e_p50_ms",
                "e2e_p99_ms",
                "e2e_max_ms",
                "loadgen_late_max_ms",
            )
        }
        s["replied"] = sum(r["replied"] for r in rs)
        s["offered"] = sum(r["offered"] for r in rs)
        s["ack_failures"] = sum(r["ack_failures"] for r in rs)
        summary[kind] = s
        rows.append(
            [
                kind,
                f"{s['replied']}/{s['offered']}",
                s["events_per_s"],
                s["ack_p50_ms"],
                s["ack_p99_ms"],
                s["e2e_p50_ms"],
                s["e2e_p99_ms"],
                s["e2e_max_ms"],
            ]
        )
    print()
    print(
        f"{args.rounds} rounds, medians; offered rates for {args.duration:g}s, burst of {args.burst} at "
        f"32 in flight; slow = fake stalls every call {args.slow_delay:g}s (replies counted only while slow)"
    )
    print(
        h.table(
            [
                "load",
                "replied",
                "events/s",
                "ack p50 ms",
                "ack p99 ms",
                "e2e p50 ms",
                "e2e p99 ms",
                "e2e max ms",
            ],
            rows,
        )
    )
    slow_kind = f"slow {args.slow_rate:g}/s"
    fast_kind = f"{args.slow_rate:g}/s"
    if slow_kind in summary and fast_kind in summary:
        ratios = [
            s["ack_p99_ms"] / f["ack_p99_ms"]
            for s, f in zip(
                [r for r in runs if r["kind"] == slow_kind],
                [r for r in runs if r["kind"] == fast_kind],
                strict=True,
            )
        ]
        print(
            f"ack p99 with a {args.slow_delay:g}s Webex vs a fast one at {args.slow_rate:g}/s: "
            f"{summary[slow_kind]['ack_p99_ms']:.1f} ms vs {summary[fast_kind]['ack_p99_ms']:.1f} ms "
            f"(median ratio {h.med(ratios):.2f}x)"
        )
    print(f"bot RSS at the end: {rss / 1024:,.0f} MiB")
    h.write_json(
        args.json,
        {
            "machine": info,
            "settings": vars(args) | {"json": str(args.json)},
            "summary": summary,
            "runs": runs,
            "rss_kib_end": rss,
        },
    )


if __name__ == "__main__":
    main()
