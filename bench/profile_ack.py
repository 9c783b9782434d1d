"""Profile the bot's ack path under wrk load: where does a webhook's CPU go? (a developer's tool, not a benchmark)

Run: python bench/profile_ack.py [--seconds 8] [--top 40]
Starts a parked fake Webex and `python -m cProfile -m bot serve`, drives it with wrk like webhook_ack.py does,
stops the bot with SIGTERM (so cProfile writes its file) and prints the hottest functions by own time.
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import sys
import tempfile
from pathlib import Path

import _harness as h
from webhook_ack import run_wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-prof-"))
    out = tmp / "ack.prof"
    with h.processes() as procs:
        fake = h.Fake(procs, tmp, "fake-parked", refuse_identity=True)
        bot = h.Bot(procs, tmp, "bot", fake, wrap=["-m", "cProfile", "-o", str(out)])
        bot.wait_ready(identity=False)
        bodies = tmp / "bodies.txt"
        h.write_bodies(bodies, fake.envelopes(int(6000 * args.seconds), keep=False))
        result = run_wrk(bot.url, bodies, args.seconds, args.connections)
        print(f"{result['rps']:,.0f} req/s under the profiler", flush=True)
        bot.proc.stop()
    stats = pstats.Stats(str(out)).sort_stats(args.sort)
    stats.print_stats(args.top)
    stats.print_callees("_receive")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
