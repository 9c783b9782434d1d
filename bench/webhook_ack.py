"""Webhook ack throughput on one core: bare aiohttp vs the bot's real app (`python -m bot serve`), driven by wrk.

Run: python bench/webhook_ack.py [--rounds 3] [--duration 10] [--warmup 3] [--connections 32] [--json out.json]
     python bench/webhook_ack.py --variants bare,bot-ack,bot-dup   # without bot-full and its minutes of drain

Every server runs pinned to core 0, wrk and the fake Webex to core 1. Variants, interleaved in each round so
that machine noise hits all of them alike (the ratios are taken within a round, then the median across rounds):
  bare       aiohttp with one POST handler answering 200 (bench/bare_app.py): the ceiling
  bot-ack    the bot with its worker parked (the fake refuses /people/me): signature, parse, inbox insert, 200
  bot-dup    the same bot re-sent bodies it already stored: the pure dedupe path
  bot-full   the bot against a fast fake Webex, worker running: acks share the core with the replies' work
Needs wrk (apt-get install -y wrk): a Python load generator would saturate before bare aiohttp does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

LUA = h.BENCH / "wrk_post.lua"
VARIANTS = ("bare", "bot-ack", "bot-dup", "bot-full")
# Spare bodies per expected request: running out would turn new events into duplicates mid-run.
BODY_MARGIN = 1.6


def run_wrk(url: str, bodies: Path, seconds: float, connections: int) -> dict[str, Any]:
    cmd = h.pinned(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA), url],
        h.CLIENT_CORE,
    )
    done = subprocess.run(
        cmd,
        env={**os.environ, "BENCH_BODIES": str(bodies), "BENCH_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def measure(url: str, proc: h.Proc, warm: Path, bodies: Path, args: argparse.Namespace) -> dict[str, Any]:
    # The warm-up lets aiohttp, SQLite's page cache and the allocator settle before anything is counted.
    run_wrk(url, warm, args.warmup, args.connections)
    cpu = proc.cpu_seconds()
    result = run_wrk(url, bodies, args.duration, args.connections)
    used = proc.cpu_seconds() - cpu
    result["server_cpu_pct"] = used / result["seconds"] * 100
    # CPU per request is steadier than req/s on a shared machine: a neighbour stealing the core lowers the
    # rate but not (much) the CPU each request needs.
    result["cpu_us_per_req"] = used / max(1, result["requests"]) * 1e6
    return result


def prefix(src: Path, dst: Path, lines: int) -> Path:
    with src.open() as f, dst.open("w") as out:
        for n, line in enumerate(f):
            if n >= lines:
                break
            out.write(line)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per variant and round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="max wait for bot-full's backlog")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of %(default)s; bare and bot-ack are always run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    args = parser.parse_args()
    chosen = {v.strip() for v in args.variants.split(",") if v.strip()} | {"bare", "bot-ack"}
    if chosen - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(chosen - set(VARIANTS)))}")
    args.variants = [v for v in VARIANTS if v in chosen]
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    info = h.machine()
    print(h.describe(info), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ack-"))
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    drains: list[dict[str, float]] = []
    with h.processes() as procs:
        parked_fake = h.Fake(procs, tmp, "fake-parked", refuse_identity=True)
        fast_fake = h.Fake(procs, tmp, "fake-fast")
        bare_url = h.start_bare(procs, tmp)
        bare_proc = procs[-1]
        parked = h.Bot(procs, tmp, "bot-parked", parked_fake)
        full = h.Bot(procs, tmp, "bot-full", fast_fake) if "bot-full" in results else None
        parked.wait_ready(identity=False)
        if full is not None:
            full.wait_ready()

        # Same envelope shape and size for every variant; bare may wrap around its pool, the bots may not.
        bare_pool = tmp / "bare.txt"
        h.write_bodies(bare_pool, parked_fake.envelopes(20_000, keep=False))
        expected_rps = 8000.0  # generous first guess; later rounds size the pools from what was measured
        for rnd in range(1, args.rounds + 1):
            print(f"round {rnd}/{args.rounds}", flush=True)
            results["bare"].append(measure(bare_url, bare_proc, bare_pool, bare_pool, args))

            warm, bodies = tmp / f"ack-warm-{rnd}.txt", tmp / f"ack-{rnd}.txt"
            h.write_bodies(
                warm, parked_fake.envelopes(int(expected_rps * args.warmup * BODY_MARGIN), keep=False)
            )
            h.write_bodies(
                bodies, parked_fake.envelopes(int(expected_rps * args.duration * BODY_MARGIN), keep=False)
            )
            ack = measure(parked.url, parked.proc, warm, bodies, args)
            results["bot-ack"].append(ack)

            # Only bodies wrk certainly sent (and so the bot stored) make a duplicates-only pool.
            stored = max(1, ack["requests"] - 2 * args.connections)
            if "bot-dup" in results:
                dup_pool = prefix(bodies, tmp / f"dup-{rnd}.txt", stored)
                results["bot-dup"].append(measure(parked.url, parked.proc, dup_pool, dup_pool, args))

            expected_rps = max(r["rps"] for r in results["bot-ack"]) * 1.1
            if full is None:
                continue
            warm, bodies = tmp / f"full-warm-{rnd}.txt", tmp / f"full-{rnd}.txt"
            h.write_bodies(warm, fast_fake.envelopes(int(expected_rps * args.warmup * BODY_MARGIN)))
            h.write_bodies(bodies, fast_fake.envelopes(int(expected_rps * args.duration * BODY_MARGIN)))
            before = fast_fake.reply_count()
            started = time.monotonic()
            results["bot-full"].append(measure(full.url, full.proc, warm, bodies, args))
            # The worker keeps replying after wrk stops; the next round must not share the core with that.
            drained, waited = full.wait_drained(args.drain_timeout)
            replied = fast_fake.reply_count() - before
            drains.append(
                {"replied": replied, "seconds": time.monotonic() - started, "drained": float(drained)}
            )
            print(
                f"  bot-full backlog {'drained' if drained else 'NOT drained'} {waited:.0f}s after wrk; "
                f"{replied} replies in {drains[-1]['seconds']:.0f}s",
                flush=True,
            )
        rss = {"bot-parked": parked.proc.rss_kib()}
        if full is not None:
            rss["bot-full"] = full.proc.rss_kib()

    report(results, drains, rss, info, args)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(
    results: dict[str, list[dict[str, Any]]],
    drains: list[dict[str, float]],
    rss: dict[str, int],
    info: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    bare = results["bare"]
    rows = []
    summary: dict[str, Any] = {}
    for variant in results:
        runs = results[variant]
        ratios = [r["rps"] / b["rps"] for r, b in zip(runs, bare, strict=True)]
        s = {
            "rps": h.med(r["rps"] for r in runs),
            "rps_min": min(r["rps"] for r in runs),
            "rps_max": max(r["rps"] for r in runs),
            "ratio_vs_bare": h.med(ratios),
            "p50_ms": h.med(r["p50_us"] / 1000 for r in runs),
            "p99_ms": h.med(r["p99_us"] / 1000 for r in runs),
            "max_ms": max(r["max_us"] for r in runs) / 1000,
            "server_cpu_pct": h.med(r["server_cpu_pct"] for r in runs),
            "cpu_us_per_req": h.med(r["cpu_us_per_req"] for r in runs),
            "cpu_ratio_vs_bare": h.med(
                b["cpu_us_per_req"] / r["cpu_us_per_req"] for r, b in zip(runs, bare, strict=True)
            ),
            "answers": {
                k: sum(r[k] for r in runs)
                for k in ("queued", "duplicate", "other", "non200", "socket_errors", "timeouts")
            },
        }
        summary[variant] = s
        a = s["answers"]
        rows.append(
            [
                variant,
                s["rps"],
                f"{s['rps_min']:,.0f}-{s['rps_max']:,.0f}",
                f"{s['ratio_vs_bare']:.0%}",
                s["p50_ms"],
                s["p99_ms"],
                s["max_ms"],
                s["server_cpu_pct"],
                s["cpu_us_per_req"],
                f"{s['cpu_ratio_vs_bare']:.0%}",
                f"{a['queued']}/{a['duplicate']}/{a['non200'] + a['other'] + a['socket_errors']}",
            ]
        )
    print()
    print(
        f"wrk -t1 -c{args.connections}, {args.duration:g}s measured (+{args.warmup:g}s warm-up) per variant, "
        f"{args.rounds} rounds, medians"
    )
    print(
        h.table(
            [
                "variant",
                "req/s",
                "range",
                "vs bare",
                "p50 ms",
                "p99 ms",
                "max ms",
                "server CPU %",
                "CPU us/req",
                "vs bare (CPU)",
                "queued/dup/bad",
            ],
            rows,
        )
    )
    ack = summary["bot-ack"]
    ok = ack["ratio_vs_bare"] >= 0.5
    print(
        f"\ngoal bot-ack >= 50% of bare: {'met' if ok else 'NOT met'} "
        f"({ack['ratio_vs_bare']:.1%} by req/s, {ack['cpu_ratio_vs_bare']:.1%} by CPU per request)"
    )
    if drains:
        worker_rate = h.med(d["replied"] / d["seconds"] for d in drains)
        print(
            f"bot-full: the worker answered {worker_rate:,.0f} events/s on average from the start of the run "
            f"until its backlog drained"
        )
    print("RSS at the end: " + ", ".join(f"{name} {kib / 1024:,.0f} MiB" for name, kib in rss.items()))
    h.write_json(
        args.json,
        {
            "machine": info,
            "settings": vars(args) | {"json": str(args.json)},
            "summary": summary,
            "runs": results,
            "bot_full_drains": drains,
            "rss_kib_end": rss,
        },
    )


if __name__ == "__main__":
    main()
