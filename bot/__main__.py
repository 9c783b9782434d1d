"""Command line: serve, ask, knowledge check, webhooks, devices, whoami, stats, gaps, outbox, purge."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from bot import startup
from bot.admin_cli import add_admin_commands
from bot.config import Settings, describe_settings_error
from bot.context import Knowledge
from bot.knowledge import KnowledgeBase, KnowledgeError, load_knowledge
from bot.logs import configure_logging
from bot.triage import LANGS, TriageResult, message_language, triage

if TYPE_CHECKING:  # the commands import the store lazily: `ask` starts without SQLAlchemy
    from bot.store import Store

T = TypeVar("T")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _load(settings: Settings, directory: Path | None = None) -> KnowledgeBase:
    return load_knowledge(directory or settings.knowledge_dir, settings.link_overrides)


def format_answer(result: TriageResult, kb: KnowledgeBase) -> str:
    """The plain-text answer `ask` prints: what a person would read in the card."""
    if not result.matches or result.outcome == "none":
        lines = ["I'm not sure what this is."]
        if result.unknown_codes:
            lines.append(f"{', '.join(result.unknown_codes)} is not in the Webex error catalogue.")
        lines.append(
            "Try the exact error text or code (for example 'Error: 1000:1002'), or contact the helpdesk."
        )
        lines += [f"  {link.title}: {link.url}" for link in kb.resolve_links(["helpdesk-portal"])]
        return "\n".join(lines)
    if result.outcome == "clarify":
        lines = ["Which of these is it?"]
        for m in result.matches[:3]:
            article = kb.articles[m.id]
            lines.append(f"  - {article.title} [{m.id}]  (score {m.score:.2f})")
        return "\n".join(lines)
    blocks = []
    shown = [m for m in result.matches if m.id in result.codes] or list(result.matches[:1])
    for m in shown:
        article = kb.articles[m.id]
        head = article.title if not article.code else f"{article.title}  [{article.code} {article.name}]"
        lines = [head, "=" * min(len(head), 78), article.summary]
        if article.message:
            lines.append(f'Webex says: "{article.message}"')
        if article.admin_needed:
            lines.append("This one needs your Webex administrator; the steps say what to send them.")
        lines.append("")
        for n, step in enumerate(article.steps, 1):
            lines.append(f"{n}. " + (f"{step.title}: " if step.title else "") + step.text)
            if step.warning:
                lines.append(f"   ! {step.warning}")
        links = kb.resolve_links(article.links)
        if links:
            lines.append("")
            lines += [f"  {link.title}: {link.url}" for link in links]
        if m.related:
            lines.append(f"\nThe same message is also shown for: {', '.join(m.related)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    knowledge = Knowledge.build(_load(settings))

    def ask(text: str) -> str:
        # The language asked for, else the message's own, else the configured default.
        lang = args.lang or message_language(text, knowledge.index) or settings.default_language
        result = triage(text, knowledge.index_for(lang))
        if args.json:
            return json.dumps({**result.to_json(), "lang": lang}, ensure_ascii=False)
        return format_answer(result, knowledge.kb_for(lang))

    if args.text == "-":
        # One message per line in, one JSON object (or answer) per line out: a stable pipe contract.
        for line in sys.stdin:
            print(ask(line.rstrip("\n")) + ("" if args.json else "\n"), flush=True)
        return EXIT_OK
    print(ask(args.text))
    return EXIT_OK


def cmd_knowledge_check(args: argparse.Namespace, settings: Settings) -> int:
    directory = Path(args.dir) if args.dir else settings.knowledge_dir
    try:
        kb = _load(settings, directory)
    except KnowledgeError as exc:
        print(f"{directory}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_ERROR
    kinds: dict[str, int] = {}
    for article in kb.articles.values():
        kinds[article.kind] = kinds.get(article.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    print(f"{directory}: OK: {len(kb.articles)} articles ({summary}), {len(kb.links)} links")
    for lang in kb.languages[1:]:
        done = sum(lang in a.translations for a in kb.articles.values())
        print(f"  {lang}: {done} of {len(kb.articles)} articles translated")
    if kb.warnings:
        # Not errors: the bot runs, and answers in English where a translation is missing or stale.
        print(f"{len(kb.warnings)} warning(s):")
        for warning in kb.warnings:
            print(f"  {warning}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from bot.app import create_app

    log = logging.getLogger("bot")
    if args.port:
        settings = settings.model_copy(update={"port": args.port})
    if settings.inbound == "webhook" and settings.webex_webhook_secret is None:
        if not args.insecure_no_signature:
            print(
                "configuration error: WEBEX_WEBHOOK_SECRET is required with WEBEX_ACCESS_TOKEN "
                "(or pass --insecure-no-signature for a throwaway test)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        log.warning(
            "!!! --insecure-no-signature: webhook signatures are NOT checked; anyone can post events !!!"
        )
    from bot.listen import listen
    from bot.store import DatabaseLost

    _raise_file_limit(log)
    try:
        # Bound before anything starts: a busy port is the first thing said, and the only one. The listener
        # caps open connections (MAX_CONNECTIONS), so slow clients cannot take every descriptor.
        try:
            sock = listen(settings.host, settings.port, settings.max_connections)
        except socket.gaierror as exc:
            raise startup.StartupError(
                f"cannot listen on {settings.host}:{settings.port}: HOST {settings.host!r} is not a known "
                f"address ({exc.strerror})"
            ) from exc
        except OSError as exc:
            raise startup.StartupError(
                startup.bind_problem(f"{settings.host}:{settings.port}", settings.port, exc)
            ) from exc
        # The start-up log names the one address to open (aiohttp's own banner would add a second).
        web.run_app(
            create_app(settings),
            sock=sock,
            access_log=None,
            shutdown_timeout=15.0,
            # Also how long a new connection may take to send its first request's headers: aiohttp closes
            # one still without a whole request then, so half-sent requests cannot pile up.
            keepalive_timeout=HEADER_TIMEOUT_SECONDS,
            print=None,
        )
    except (startup.StartupError, DatabaseLost) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


HEADER_TIMEOUT_SECONDS = 10.0


def _raise_file_limit(log: logging.Logger) -> None:
    """The common soft limit of 1,024 descriptors is a few hundred slow clients; the hard limit is what the
    machine allows this process, so take it all."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
            return
        log.info("open-file limit raised from %d to %s", soft, "unlimited" if hard < 0 else hard)


def cmd_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from bot import registration

    try:
        if args.webhooks_command == "register":
            print(registration.format_changes(registration.register_webhooks(settings)))
        elif args.webhooks_command == "list":
            print(registration.format_webhooks(registration.list_webhooks(settings)))
        elif args.webhooks_command == "delete":
            deleted = registration.delete_webhooks(settings)
            print(f"deleted {len(deleted)} webhook(s) of ours" + "".join(f"\n  {i}" for i in deleted))
    except registration.RegistrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_devices(args: argparse.Namespace, settings: Settings) -> int:
    from bot import devices

    token = settings.webex_access_token
    if token is None or not token.get_secret_value():
        print("error: WEBEX_ACCESS_TOKEN is not set", file=sys.stderr)
        return EXIT_USAGE
    u2c = str(settings.webex_u2c_url)
    try:
        if args.devices_command == "list":
            print(devices.format_devices(devices.list_devices(u2c, token.get_secret_value())))
        else:
            deleted = devices.delete_devices(
                u2c,
                token.get_secret_value(),
                stale_only=args.stale,
                keep_name=settings.webex_device_name or "",
            )
            print(
                f"deleted {len(deleted)} device(s) of ours"
                + "".join(f"\n  {d.name} {d.url}" for d in deleted)
            )
    except devices.DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _with_store(settings: Settings, use: Callable[[Store], Awaitable[T]]) -> T:
    """Open DATABASE_URL, run one store call, close: for the commands that are a single query."""
    import asyncio

    from bot.store import Store

    async def run() -> T:
        try:
            store = await Store.open(settings.database_url)
        except Exception as exc:  # whatever the driver raises, the person needs the one reason
            raise startup.StartupError(startup.database_problem(settings.database_url, exc)) from exc
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from bot.store import StoreUnavailable

    days = settings.retention_days if args.days is None else args.days
    if days <= 0:
        print("nothing to do: RETENTION_DAYS=0 keeps everything (or pass --days N)", file=sys.stderr)
        return EXIT_USAGE

    try:
        deleted = _with_store(settings, lambda store: store.purge(timedelta(days=days)))
    except (StoreUnavailable, startup.StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"deleted rows older than {days:g} days:")
    for table, count in deleted.items():
        print(f"  {table:<14} {count}")
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace, settings: Settings) -> int:
    from bot import registration

    try:
        me = registration.whoami(settings)
    except registration.RegistrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{me.display_name} <{', '.join(me.emails)}> ({me.type})\n{me.id}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helpdesk-bot",
        description="Webex helpdesk-triage bot. Configuration comes from the environment or .env (see .env.example and docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = sub.add_parser("ask", help="triage one message and print the answer")
    ask.add_argument("text", help='the message, or "-" to read one message per line from stdin')
    ask.add_argument(
        "--json", action="store_true", help="print JSON: {matches: [{id, score}], confident, ...}"
    )
    ask.add_argument(
        "--lang", choices=LANGS, help="triage and answer in this language instead of the message's own"
    )
    ask.set_defaults(func=cmd_ask)

    serve = sub.add_parser("serve", help="run the webhook bot (local mode without WEBEX_ACCESS_TOKEN)")
    serve.add_argument("--port", type=int, help="override PORT")
    serve.add_argument(
        "--insecure-no-signature",
        action="store_true",
        help="accept webhooks without a WEBEX_WEBHOOK_SECRET (never in production)",
    )
    serve.set_defaults(func=cmd_serve)

    hooks = sub.add_parser("webhooks", help="manage the bot's Webex webhooks (needs WEBEX_ACCESS_TOKEN)")
    hsub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    hsub.add_parser("register", help="create or update ours (PUBLIC_URL, WEBEX_WEBHOOK_SECRET); idempotent")
    hsub.add_parser("list", help="list all webhooks of this token, marking ours")
    hsub.add_parser("delete", help="delete ours (never anyone else's)")
    hooks.set_defaults(func=cmd_webhooks)
    devs = sub.add_parser("devices", help="the bot's websocket devices at Webex (needs WEBEX_ACCESS_TOKEN)")
    dsub = devs.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    dsub.add_parser("list", help="list all devices of this token, marking ours")
    delete = dsub.add_parser("delete", help="delete ours (never another program's)")
    delete.add_argument("--stale", action="store_true", help="only ours that no running bot refreshes")
    devs.set_defaults(func=cmd_devices)
    add_admin_commands(sub)
    purge = sub.add_parser(
        "purge",
        help="delete handled events, delivered ITSM items and old conversation log now (DATABASE_URL)",
    )
    purge.add_argument(
        "--days",
        type=float,
        help="keep this many days (default RETENTION_DAYS, 14); the server also purges hourly",
    )
    purge.set_defaults(func=cmd_purge)
    whoami = sub.add_parser("whoami", help="who the token belongs to")
    whoami.set_defaults(func=cmd_whoami)

    knowledge = sub.add_parser("knowledge", help="knowledge files")
    ksub = knowledge.add_subparsers(dest="knowledge_command", required=True, metavar="ACTION")
    check = ksub.add_parser("check", help="validate a knowledge folder and report every problem")
    check.add_argument("dir", nargs="?", help="folder to check (default: KNOWLEDGE_DIR)")
    check.set_defaults(func=cmd_knowledge_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"configuration error: {describe_settings_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    try:
        code: int = args.func(args, settings)
    except KnowledgeError as exc:
        print(f"error: {startup.knowledge_problem(settings.knowledge_dir, exc)}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
