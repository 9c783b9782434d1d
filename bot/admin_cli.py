"""The admin commands of the CLI: stats (and its chart), knowledge gaps with draft articles, dead ITSM deliveries."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bot.config import Settings
from bot.knowledge import load_knowledge

if TYPE_CHECKING:  # imported when a command runs: `ask` and `knowledge check` start without SQLAlchemy
    from bot.store import DayCounts, DeadDelivery, Stats, Store

T = TypeVar("T")
log = logging.getLogger("bot.admin")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def period_days(text: str) -> int | None:
    """7d, 30d, 30 or 30 days: the period in days (1 to 365), or None for anything else."""
    match = re.fullmatch(r"(\d{1,3}) ?(?:d|days?)?", text.strip().lower())
    return None if match is None else min(365, max(1, int(match.group(1))))


def with_store(settings: Settings, use: Callable[[Store], Awaitable[T]]) -> T:
    """Open DATABASE_URL, run the store calls, close."""

    from bot.store import Store

    async def run() -> T:
        store = await Store.open(settings.database_url)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from bot.cards import stats_lines
    from bot.charts import stats_chart
    from bot.store import StoreUnavailable

    days = period_days(args.period)
    if days is None:
        print("usage: stats [7d|30d|Nd] [--png FILE]", file=sys.stderr)
        return EXIT_USAGE
    kb = load_knowledge(settings.knowledge_dir, settings.link_overrides)
    since = datetime.now(UTC) - timedelta(days=days)

    async def read(store: Store) -> tuple[Stats, list[DayCounts]]:
        return await store.stats(since=since), (await store.daily_counts(since) if args.png else [])

    try:
        stats, per_day = with_store(settings, read)
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    lines = stats_lines(stats, days, kb)
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    if args.png:
        path = Path(args.png)
        try:
            path.write_bytes(stats_chart(per_day, days))
        except OSError as exc:
            print(f"error: cannot write the chart to {path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"chart written to {path}")
    return EXIT_OK


def cmd_gaps(args: argparse.Namespace, settings: Settings) -> int:
    from bot.gaps import draft_article, draft_id, find_gaps
    from bot.store import StoreUnavailable
    from bot.triage.normalise import Lexicon

    days = period_days(args.period)
    if days is None or args.top < 1:
        print("usage: gaps [7d|30d|Nd] [--top N] [--draft DIR]", file=sys.stderr)
        return EXIT_USAGE
    kb = load_knowledge(settings.knowledge_dir, settings.link_overrides)
    lexicon = Lexicon.from_words(kb.words)
    now = datetime.now(UTC)
    try:
        questions = with_store(settings, lambda store: store.gap_questions(since=now - timedelta(days=days)))
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    gaps = find_gaps(questions, lexicon, limit=args.top)
    print(
        f"{len(questions)} question(s) in the last {days} days without a confident answer or with "
        f'"No, still stuck"; the {len(gaps)} largest group(s):'
    )
    for n, gap in enumerate(gaps, 1):
        offered = f"the bot offered {gap.offered} ×{gap.offered_count}" if gap.offered else "nothing offered"
        print(f'\n{n}. {gap.count} question(s), {gap.stuck} "No, still stuck"; {offered}')
        for example in gap.examples():
            print(f"     {example}")
    if not args.draft:
        return EXIT_OK
    folder = Path(args.draft)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Never over an existing draft: the admin may have started writing it.
        taken = set(kb.articles) | {path.stem for path in folder.glob("*.toml")}
        print()
        for gap in gaps:
            article_id = draft_id(gap, lexicon, taken)
            path = folder / f"{article_id}.toml"
            path.write_text(draft_article(gap, article_id, kb, days=days, now=now), encoding="utf-8")
            print(f"draft written: {path}")
    except OSError as exc:
        print(f"error: cannot write drafts to {folder}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    if gaps:
        print(
            "Fill in every TODO, append the file to knowledge/articles.toml, then run "
            "`python -m bot knowledge check` (it refuses a draft until its TODOs are written)."
        )
    return EXIT_OK


def cmd_outbox(args: argparse.Namespace, settings: Settings) -> int:
    from bot.store import DeliveryNotDead, StoreUnavailable

    try:
        if args.outbox_command == "list":
            return _list_dead(with_store(settings, lambda store: store.dead_deliveries()))
        if args.outbox_command == "retry":
            item = with_store(settings, lambda store: store.retry_delivery(args.id))
        else:
            item = with_store(settings, lambda store: store.drop_delivery(args.id))
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyError:
        print(f"error: there is no outbox item {args.id} (see `python -m bot outbox list`)", file=sys.stderr)
        return EXIT_ERROR
    except DeliveryNotDead as exc:
        print(f"error: {exc}: only dead deliveries can be retried or dropped", file=sys.stderr)
        return EXIT_ERROR
    what = f"outbox item {item.id} ({item.ticket_number} {item.event}, sequence {item.sequence})"
    if args.outbox_command == "retry":
        log.warning("%s revived by %s: it is sent again from its first attempt", what, getpass.getuser())
        print(
            f"{what} will be sent again within seconds by a running server; its ticket's later events follow."
        )
    else:
        log.warning(
            "%s dropped by %s after %d attempts (last error: %s)",
            what,
            getpass.getuser(),
            item.attempts,
            item.last_error,
        )
        print(
            f"{what} dropped for good; {item.held} later event(s) of {item.ticket_number} go out now, "
            f"and the receiver sees sequence {item.sequence} missing."
        )
    return EXIT_OK


def _list_dead(items: list[DeadDelivery]) -> int:
    if not items:
        print("No dead deliveries: every ticket event was delivered or is still being retried.")
        return EXIT_OK
    print(
        f"{len(items)} dead deliver{'y' if len(items) == 1 else 'ies'} (retry ID sends one again, drop ID gives up):"
    )
    for item in items:
        error = " ".join((item.last_error or "-").split())[:80]
        print(
            f"  {item.id:>6}  {item.ticket_number:<9} {item.event:<22} #{item.sequence:<3} "
            f"{item.attempts} attempts, since {item.created_at:%Y-%m-%d %H:%M}, "
            f"holding back {item.held}: {error}"
        )
    return EXIT_OK


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """stats, gaps and outbox, on the CLI's parser."""
    stats = sub.add_parser(
        "stats", help="what the bot did: answers, feedback, deflection, tickets (DATABASE_URL)"
    )
    stats.add_argument("period", nargs="?", default="7d", help="7d (default), 30d or Nd")
    stats.add_argument("--png", metavar="FILE", help="also draw the period per day as a PNG chart")
    stats.set_defaults(func=cmd_stats)
    gaps = sub.add_parser("gaps", help="similar questions the knowledge did not answer, largest group first")
    gaps.add_argument("period", nargs="?", default="7d", help="7d (default), 30d or Nd")
    gaps.add_argument("--top", type=int, default=10, help="how many groups (default 10)")
    gaps.add_argument("--draft", metavar="DIR", help="write a draft article (TOML) for each group into DIR")
    gaps.set_defaults(func=cmd_gaps)
    outbox = sub.add_parser("outbox", help="ITSM deliveries that gave up: list, retry or drop them")
    osub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    osub.add_parser("list", help="the dead deliveries and the later events each holds back")
    for name, text in (
        ("retry", "send a dead delivery again"),
        ("drop", "give up on a dead delivery for good"),
    ):
        action = osub.add_parser(name, help=text)
        action.add_argument("id", type=int, help="the outbox item's id (from `outbox list`)")
    outbox.set_defaults(func=cmd_outbox)
