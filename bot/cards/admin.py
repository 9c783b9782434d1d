"""Builders for admins: the stats, the questions without a confident answer, knowledge reload results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.cards.draft import Budget, Draft, OutgoingMessage, fit, text_message
from bot.cards.escape import escape_user_text
from bot.knowledge import KnowledgeBase
from bot.store.records import Stats, TriageRecord  # plain frozen dataclasses: no I/O, no SQLAlchemy

if TYPE_CHECKING:
    from bot.gaps import Gap


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "–"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def stats_lines(stats: Stats, days: int, kb: KnowledgeBase) -> list[tuple[str, str]]:
    """The numbers admins see, as (label, value) pairs: shared by the card and `python -m bot stats`."""
    triaged = stats.messages_triaged
    answered = stats.helpful + stats.not_helpful
    return [
        ("Period", f"last {days} day{'s' if days != 1 else ''}"),
        ("Messages triaged", str(triaged)),
        ("Answered confidently", f"{stats.confident} ({_pct(stats.confident, triaged)})"),
        ("Asked which one", f"{stats.clarify} ({_pct(stats.clarify, triaged)})"),
        ("Not sure", f"{stats.none} ({_pct(stats.none, triaged)})"),
        ("Resolved by the bot", f"{stats.resolved_by_bot} (“Yes, this helped”)"),
        (
            "Potential deflection",
            f"{stats.potential_deflection} (answered, no feedback, no ticket within 24 h)",
        ),
        (
            "Feedback",
            f"{stats.helpful} yes / {stats.not_helpful} no ({_pct(stats.helpful, answered)} helpful)",
        ),
        ("Escalations", f"{stats.escalations} ({_pct(stats.escalations, triaged)} of messages)"),
        ("Open tickets now", str(stats.open_tickets)),
        ("Median time to claim", _duration(stats.median_claim_seconds)),
        ("Median time to resolve", _duration(stats.median_resolve_seconds)),
        ("Stuck ITSM deliveries", _stuck(stats)),
        ("Top error codes", ", ".join(f"{c} ×{n}" for c, n in stats.top_codes) or "–"),
        (
            "Top articles",
            ", ".join(
                f"{kb.articles[a].code or a if a in kb.articles else a} ×{n}" for a, n in stats.top_articles
            )
            or "–",
        ),
    ]


def _stuck(stats: Stats) -> str:
    if not stats.dead_deliveries:
        return "none"
    held = f", holding back {stats.held_deliveries} later event(s)" if stats.held_deliveries else ""
    return f"{stats.dead_deliveries} gave up{held}: see `python -m bot outbox list`"


def stats_card(stats: Stats, days: int, kb: KnowledgeBase) -> OutgoingMessage:
    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading("Helpdesk bot stats")
        d.facts(stats_lines(stats, days, kb))
        return d.message()

    return fit(compose)


def unmatched_list(records: Sequence[TriageRecord]) -> OutgoingMessage:
    """What people asked that got no confident answer: where the knowledge has gaps (texts are redacted)."""
    if not records:
        return text_message("**Unmatched questions**\n\nNone: every recent question got a confident answer.")
    lines = [
        f"- {r.created_at:%Y-%m-%d %H:%M} · {r.outcome} · “{escape_user_text(r.text, 160)}”" for r in records
    ]
    return text_message("**Unmatched questions** (newest first, secrets redacted)\n\n" + "\n".join(lines))


def gaps_card(gaps: Sequence[Gap], days: int, questions: int, kb: KnowledgeBase) -> OutgoingMessage:
    """The largest groups of similar questions the knowledge did not answer (examples redacted and escaped)."""
    period = f"last {days} day{'s' if days != 1 else ''}"
    if not gaps:
        return text_message(
            f"**Knowledge gaps, {period}**\n\nNone: every question got a confident answer, and nobody said "
            "“No, still stuck”."
        )

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading(f"Knowledge gaps, {period}")
        d.para(
            f"{questions} question{'s' if questions != 1 else ''} without a confident answer or with "
            f"“No, still stuck”. The {len(gaps)} largest group{'s' if len(gaps) != 1 else ''} of similar ones:",
            clip=False,
        )
        for n, gap in enumerate(gaps[: budget.items], 1):
            stuck = f", {gap.stuck} “No, still stuck”" if gap.stuck else ""
            d.subheading(f"{n}. {gap.count} question{'s' if gap.count != 1 else ''}{stuck}")
            d.bullets([f"“{escape_user_text(text, 160)}”" for text in gap.examples()], noun="line")
            if gap.offered:
                article = kb.articles.get(gap.offered)
                name = article.code or article.title if article else gap.offered
                d.para(f"The bot offered most: {name} [{gap.offered}] ×{gap.offered_count}", subtle=True)
            else:
                d.para("The bot had no article to offer.", subtle=True)
        d.para(
            f"Draft articles for these: `python -m bot gaps {days}d --draft DIR`, then fill in the TODOs.",
            subtle=True,
            separator=True,
            clip=False,
        )
        return d.message()

    return fit(compose)


def reload_failed(problems: Sequence[str]) -> OutgoingMessage:
    # Problems name knowledge files ("errors.toml"): the admin's own, so not defanged like a person's words.
    shown = [f"- {escape_user_text(p, 300, defang=False)}" for p in problems[:20]]
    more = f"\n\n…and {len(problems) - 20} more." if len(problems) > 20 else ""
    return text_message(
        "**Knowledge not reloaded**: the files have problems, so I kept the knowledge I had.\n\n"
        + "\n".join(shown)
        + more
    )


def reload_done(
    added: Sequence[str],
    removed: Sequence[str],
    changed: Sequence[str],
    total: int,
    *,
    replicas: tuple[int, int, Sequence[str]] | None = None,
) -> OutgoingMessage:
    """The reload's changes; `replicas` is (took it, running, notes on the others) when they were counted."""
    if not (added or removed or changed):
        parts = [f"**Knowledge reloaded**: no changes ({total} articles)."]
    else:
        parts = [f"**Knowledge reloaded**: {total} articles."]
    for label, ids in (("Added", added), ("Removed", removed), ("Changed", changed)):
        if ids:
            parts.append(f"{label} ({len(ids)}): " + ", ".join(ids[:40]) + (" …" if len(ids) > 40 else ""))
    if replicas is not None:
        took, live, notes = replicas
        parts.append(
            f"Replicas: {took} of {live} took it."
            + "".join(f"\n- {escape_user_text(n, 300, defang=False)}" for n in notes[:10])
        )
    return text_message("\n\n".join(parts))
