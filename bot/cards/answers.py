"""Builders for employees and admins asking for help: fixes, questions back, setup guide, acknowledgements."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bot.cards.draft import BUTTON_CHARS, TITLE_CHARS, Budget, Draft, OutgoingMessage, fit, text_message
from bot.cards.elements import ActionOpenUrl, TextBlock
from bot.cards.escape import EXCERPT_CHARS, escape_user_text, shorten
from bot.cards.submit import EscalateData, FeedbackData, SetupPageData, ShowData
from bot.i18n import N_, _, current_language, ngettext
from bot.knowledge import Article, KnowledgeBase, Link
from bot.triage import TriageResult

HELPDESK_LINK = "helpdesk-portal"
CONTROL_HUB_LINK = "control-hub"
URL_BUTTONS = 2  # link buttons on an answer; the rest go into a text line
CLARIFY_CHOICES = 3

CONTACT_HELPDESK = N_("Contact the helpdesk")
ADMIN_NOTE = N_("This one needs your Webex administrator. The steps say what to tell them.")
# The router knows its commands and the catalogue its codes in English only: the texts quote them as they are.
EXAMPLE_ERROR = "Error: 1000:1002"


def _untranslated_note(d: Draft, article: Article) -> None:
    """Say so when the reader's language has no translation of the article and it is shown in English."""
    if article.lang != current_language():
        d.para(_("This article is not translated yet: here it is in English."), subtle=True, clip=False)


def _article_section(d: Draft, article: Article) -> None:
    d.heading(article.title)
    _untranslated_note(d, article)
    if article.code:
        facts = [(_("Error"), f"{article.code} {article.name or ''}".strip())]
        if article.message:
            facts.append((_("Webex shows"), _("“{text}”").format(text=article.message)))
        d.facts(facts)
    d.para(article.summary)
    # Setup notes are read by the administrators themselves; telling them to ask one would be noise.
    if article.admin_needed and article.kind in ("error", "symptom"):
        d.callout(_(ADMIN_NOTE), "attention")
    d.subheading(_("What to try") if article.kind in ("error", "symptom") else _("Steps"))
    d.numbered(article.steps, more=_("see the link") if article.links else _("ask the helpdesk"))


def _answer(
    article: Article,
    kb: KnowledgeBase,
    thread_id: str,
    related: Sequence[str],
    others: Sequence[Article],
    origin_id: str | None = None,
) -> OutgoingMessage:
    links = kb.resolve_links(article.links)

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        _article_section(d, article)
        if related:
            same = _("Webex shows the same message for {codes}.")
            d.para(same.format(codes=_join(related[: budget.items])), subtle=True)
        if others:
            d.subheading(_("You also mentioned"))
            d.bullets([_label(o) for o in others], noun="code", more=_("send one on its own to see its fix"))
        d.para(_("Did this help?"), separator=True, clip=False, card_only=True)
        # Button priority: Yes, No, up to two links, then the other codes; extra links become text.
        d.submit(
            _("Yes, it helped"),
            FeedbackData(article_id=article.id, helpful=True, thread_id=thread_id),
            positive=True,
        )
        d.submit(
            _("No, still stuck"), FeedbackData(article_id=article.id, helpful=False, thread_id=thread_id)
        )
        d.submit(
            _(CONTACT_HELPDESK),
            EscalateData(thread_id=thread_id, article_id=article.id, origin_id=origin_id),
        )
        # Articles whose steps this one points to ("see the blank-screen steps") get their button before the
        # links: the reader was just told to go there.
        for ref in (kb.articles[i] for i in article.see_also if i in kb.articles):
            name = ref.code or shorten(ref.title, BUTTON_CHARS - 5)
            d.submit(_("Show {name}").format(name=name), _show(ref, thread_id))
        d.links(links, buttons=URL_BUTTONS)
        for other in others:
            name = other.code or shorten(other.title, BUTTON_CHARS - 5)
            # Translators: a button; {name} is an error code like 1000:1002, or an article's title.
            d.submit(_("Show {name}").format(name=name), _show(other, thread_id))
        return d.message(footer=_("Did this help? Answer with the buttons on the card."))

    return fit(compose)


def _show(article: Article, thread_id: str) -> ShowData:
    return ShowData(article_id=article.id, thread_id=thread_id)


def fix_card(
    result: TriageResult, kb: KnowledgeBase, thread_id: str, origin_id: str | None = None
) -> OutgoingMessage:
    """The best match in full; other codes the message named listed briefly with a button each."""
    known = [m for m in result.matches if m.id in kb.articles]
    if not known:
        return not_sure_card("", kb, thread_id, result.unknown_codes, origin_id=origin_id)
    best = known[0]
    article = kb.articles[best.id]
    if article.kind == "setup-guide":
        return setup_guide_card(kb, 0, thread_id)
    others = [kb.articles[c] for c in result.codes if c != best.id and c in kb.articles]
    related = [kb.articles[r].code or r for r in best.related if r in kb.articles]
    return _answer(article, kb, thread_id, related, others, origin_id)


def article_card(article: Article, kb: KnowledgeBase, thread_id: str) -> OutgoingMessage:
    """One article in full, as shown by a "show" button."""
    if article.kind == "setup-guide":
        return setup_guide_card(kb, 0, thread_id)
    return _answer(article, kb, thread_id, (), ())


def clarify_card(
    result: TriageResult, kb: KnowledgeBase, thread_id: str, origin_id: str | None = None
) -> OutgoingMessage:
    """ "Which of these is it?" with the top candidates as buttons and a way out to the helpdesk."""
    candidates = [kb.articles[m.id] for m in result.matches if m.id in kb.articles][:CLARIFY_CHOICES]
    if not candidates:
        return not_sure_card("", kb, thread_id, result.unknown_codes, origin_id=origin_id)

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading(_("Which of these is it?"))
        for article in candidates:
            label, summary = d.clip(_label(article), TITLE_CHARS), d.clip(article.summary, 200)
            d.body.append(TextBlock(text=label, weight="bolder", wrap=True))
            d.body.append(TextBlock(text=summary, wrap=True, is_subtle=True, spacing="none"))
            d.paragraphs.append(f"- **{label}**: {summary}")
            d.submit(article.code or article.title, _show(article, thread_id))
        d.para(
            _("If none of these fits, reply with the exact error text or code, or ask a person."),
            subtle=True,
            clip=False,
        )
        d.submit(
            _("None of these: contact the helpdesk"), EscalateData(thread_id=thread_id, origin_id=origin_id)
        )
        return d.message()

    return fit(compose)


def not_sure_card(
    text_excerpt: str,
    kb: KnowledgeBase,
    thread_id: str,
    unknown_codes: Sequence[str] = (),
    *,
    origin_id: str | None = None,
) -> OutgoingMessage:
    """An honest "I'm not sure", how to ask again, and a way to a person."""
    excerpt = escape_user_text(text_excerpt, EXCERPT_CHARS)
    codes = [c for c in (escape_user_text(code, 20) for code in unknown_codes[:3]) if c]
    helpdesk = _helpdesk(kb)

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading(_("I'm not sure what this is"))
        if excerpt:
            d.para(_("You wrote: “{text}”").format(text=excerpt), subtle=True)
        if codes:
            unknown = ngettext(
                "{codes} is not in the Webex error catalogue I know.",
                "{codes} are not in the Webex error catalogue I know.",
                len(codes),
            )
            d.para(unknown.format(codes=_join(codes)))
        d.subheading(_("To help me find it"))
        d.bullets(
            [
                _("Paste the exact error text Webex shows, or just its code, like “{example}”.").format(
                    example=EXAMPLE_ERROR
                ),
                _("Describe what you see, like “blank screen when I sign in”."),
                _("Send “{command}” to see what I can do.").format(command="help"),
            ]
        )
        d.para(_("Or hand it to a person: the helpdesk gets what you wrote and what I found."), clip=False)
        d.submit(_(CONTACT_HELPDESK), EscalateData(thread_id=thread_id, origin_id=origin_id), positive=True)
        if helpdesk is not None:
            d.links([helpdesk], buttons=1)
        return d.message()

    return fit(compose)


def help_card(
    kb: KnowledgeBase,
    is_admin: bool,
    *,
    thread_id: str | None = None,
    admin_commands: Sequence[tuple[str, str]] = (),
) -> OutgoingMessage:
    """What the bot can do. Admins also see the setup commands; `admin_commands` lists the router's
    other admin commands as (command, what it does); with a `thread_id` admins get a setup-guide button."""
    helpdesk = _helpdesk(kb)
    control_hub = kb.links.get(CONTROL_HUB_LINK)
    guide = kb.setup_guide

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading(_("What I can help with"))
        d.para(_("I help with Webex sign-in and phone service (calling) problems."), clip=False)
        d.bullets(
            [
                _("**Paste an error**: the message Webex shows, or just its code, like “{example}”.").format(
                    example=EXAMPLE_ERROR
                ),
                _("**Describe a symptom**: like “blank screen when I sign in” or “I can't sign in”."),
                _("**{command}**: hand your problem to a person at the helpdesk.").format(command="escalate"),
                _("**{command}**: the tickets you opened and where they stand.").format(command="my tickets"),
                _("**{command}**: where one of your tickets stands.").format(command="ticket HD-1042"),
                _("**{command}**: show this message.").format(command="help"),
            ]
        )
        if is_admin:
            d.subheading(_("For Webex administrators"))
            admin = [
                _("**{command}**: the Okta SAML single sign-on setup guide, step by step.").format(
                    command="okta setup"
                )
            ]
            admin.append(
                _("Ask about a setup detail, like “{first}” or “{second}”.").format(
                    first="saml attributes", second="backup url"
                )
            )
            admin += [f"**{command}**: {what}" for command, what in admin_commands]
            d.bullets(admin, noun="command")
        if helpdesk is not None:
            anything = _("For anything else, or to reach a person: {link}")
            d.para(anything.format(link=f"[{helpdesk.title}]({helpdesk.url})"), clip=False)
            d.actions.append(ActionOpenUrl(title=_("Helpdesk"), url=helpdesk.url))
        if is_admin and thread_id and guide is not None:
            d.submit(_("Okta setup guide"), SetupPageData(page=0, thread_id=thread_id))
        if is_admin and control_hub is not None:
            d.links([control_hub], buttons=1)
        return d.message()

    return fit(compose)


def setup_guide_card(kb: KnowledgeBase, page: int, thread_id: str, page_size: int = 4) -> OutgoingMessage:
    """One page of the setup guide with its warnings, Previous/Next buttons and Control Hub."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    guide = kb.setup_guide
    if guide is None:
        return text_message(_("The setup guide is not loaded right now. Please try again later."))
    pages = math.ceil(len(guide.steps) / page_size)
    page = min(max(page, 0), pages - 1)  # a stale or forged page number shows the nearest real page
    start = page * page_size
    steps = guide.steps[start : start + page_size]
    last = page == pages - 1
    notes = [kb.articles[n] for n in guide.notes if n in kb.articles]
    control_hub = kb.links.get(CONTROL_HUB_LINK)

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading(guide.title)
        _untranslated_note(d, guide)
        if page == 0:
            d.para(guide.summary)
        shown = _("Step {first} of {total}") if len(steps) == 1 else _("Steps {first}–{last} of {total}")
        d.para(
            shown.format(first=start + 1, last=start + len(steps), total=len(guide.steps)),
            subtle=True,
            clip=False,
        )
        d.numbered(steps, start=start + 1, more=_("see Control Hub"))
        if last and notes:
            d.subheading(_("Read these too"))
            d.bullets([n.title for n in notes], noun="note")
        if page > 0:
            d.submit(_("Previous steps"), SetupPageData(page=page - 1, thread_id=thread_id))
        if not last:
            d.submit(_("Next steps"), SetupPageData(page=page + 1, thread_id=thread_id), positive=True)
        if control_hub is not None:
            d.links([control_hub], buttons=1)
        if last:
            for note in notes:
                d.submit(note.title, _show(note, thread_id))
        return d.message()

    return fit(compose)


def build(
    result: TriageResult, kb: KnowledgeBase, thread_id: str, text: str, origin_id: str | None = None
) -> OutgoingMessage:
    """The reply to a triaged message: a fix, a question, or an honest "not sure"."""
    if result.outcome == "fix":
        return fix_card(result, kb, thread_id, origin_id)
    if result.outcome == "clarify":
        return clarify_card(result, kb, thread_id, origin_id)
    return not_sure_card(text, kb, thread_id, result.unknown_codes, origin_id=origin_id)


def feedback_ack(helpful: bool, kb: KnowledgeBase) -> OutgoingMessage:
    """A short thank-you, or an apology with the way to a person."""
    if helpful:
        return text_message(_("Thanks for letting me know. Glad it's working again."))
    helpdesk = _helpdesk(kb)
    where = f"[{helpdesk.title}]({helpdesk.url})" if helpdesk else _("your helpdesk")
    sorry = _("Sorry that didn't fix it. Please contact {helpdesk} and mention what you already tried.")
    return text_message(sorry.format(helpdesk=where))


def refusal(text: str) -> OutgoingMessage:
    """A card-less refusal. `text` is the bot's own wording: pass user text through escape_user_text first."""
    return text_message(text)


def _label(article: Article) -> str:
    return f"{article.code} — {article.title}" if article.code else article.title


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    # Translators: the end of a list: {items} is "A, B" and {last} is "C".
    return _("{items} and {last}").format(items=", ".join(items[:-1]), last=items[-1])


def _helpdesk(kb: KnowledgeBase) -> Link | None:
    return kb.links.get(HELPDESK_LINK)
