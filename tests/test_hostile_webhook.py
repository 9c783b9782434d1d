"""Fuzz the real webhook endpoint end to end: whatever arrives, the answer is 200/400/401/413, never a 5xx."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.keys import CONTEXT, WORKER
from bot.webhook import MAX_BODY_BYTES
from tests.fakewebex import FakeWebex, sign, webex_id
from tests.harness import SECRET, Bot, db_url, make_settings, wait_for

T = TypeVar("T")
ALLOWED = {200, 400, 401, 413}  # 503 only when the store is down, which no test here arranges
URL = "/webhooks/webex"

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest_asyncio.fixture
async def bot(fake_webex: FakeWebex, tmp_path: Path) -> AsyncIterator[Bot]:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as started:
        yield started


@pytest.fixture
def alice(fake_webex: FakeWebex) -> dict[str, Any]:
    return fake_webex.add_person("alice@example.com", "Alice Doe")


@pytest.fixture
def direct(fake_webex: FakeWebex) -> dict[str, Any]:
    return fake_webex.add_room("direct", "Alice")


async def post(bot: Bot, raw: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await bot.client.post(URL, data=raw, headers=headers or {})
    body = await resp.read()
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body
    return resp.status, parsed


def signed(raw: bytes, content_type: str = "application/json") -> dict[str, str]:
    return {"Content-Type": content_type, "X-Spark-Signature": sign(raw, SECRET)}


def ghost_envelope(fake: FakeWebex, resource: str = "messages") -> dict[str, Any]:
    """A well-formed envelope about a message/room that does not exist: nothing can legitimately be posted."""
    person = webex_id("PEOPLE")
    if resource == "messages":
        data = {
            "id": webex_id("MESSAGE"),
            "roomId": webex_id("ROOM"),
            "roomType": "direct",
            "personId": person,
            "personEmail": "ghost@example.com",
            "created": "2024-05-01T10:00:00.000Z",
        }
        return fake.webhook_envelope("messages", "created", data)
    data = {
        "id": webex_id("ATTACHMENT_ACTION"),
        "type": "submit",
        "messageId": webex_id("MESSAGE"),
        "personId": person,
        "roomId": webex_id("ROOM"),
        "created": "2024-05-01T10:00:00.000Z",
    }
    return fake.webhook_envelope("attachmentActions", "created", data)


def run_hypothesis_in_thread(
    loop: asyncio.AbstractEventLoop,
) -> Callable[[Awaitable[T]], T]:
    """Hypothesis drives examples synchronously; each example's HTTP work runs on the test's event loop,
    so one started app (and its worker) serves every example."""

    def call(coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)  # type: ignore[arg-type]

    return call


async def assert_still_serving(
    bot: Bot, fake: FakeWebex, alice: dict[str, Any], room: dict[str, Any]
) -> None:
    """After the abuse: health is fine and a real message still gets its real answer."""
    assert (await bot.client.get("/healthz")).status == 200
    before = len(fake.posted_messages)
    msg = fake.add_message(room["id"], alice, "Error: 1000:1002")
    raw = json.dumps(fake.message_created_envelope(msg)).encode()
    status, body = await post(bot, raw, signed(raw))
    assert status == 200, body
    await wait_for(lambda: len(fake.posted_messages) > before, what="a reply after the fuzzing")
    assert "1000:1002" in fake.posted_messages[-1]["markdown"]


async def settle(bot: Bot, timeout: float = 10.0) -> None:
    """The worker has finished everything, retries and last-resort notices included."""
    store = bot.app[CONTEXT].store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = await store.inbox_counts()
        busy = counts.get("pending", 0) + counts.get("working", 0) + counts.get("failed", 0)
        if not busy and bot.app[WORKER].in_flight == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the worker did not settle: {await store.inbox_counts()}")


# --- Random bodies ---------------------------------------------------------------------------------


async def test_random_bytes_are_refused(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    call = run_hypothesis_in_thread(asyncio.get_running_loop())
    seen: list[int] = []

    @FUZZ
    @given(
        raw=st.one_of(
            st.binary(max_size=3000), st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass"))
        ),
        how=st.sampled_from(["signed", "unsigned", "garbage-signature"]),
        content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream", ""]),
    )
    def example(raw: bytes, how: str, content_type: str) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        if how == "signed":
            headers["X-Spark-Signature"] = sign(raw, SECRET)
        elif how == "garbage-signature":
            headers["X-Spark-Signature"] = hashlib.sha1(raw).hexdigest()  # unkeyed: not a signature
        status, body = call(post(bot, raw, headers))
        seen.append(status)
        assert status in ALLOWED, (status, body)
        assert status == (400 if how == "signed" else 401), (raw[:80], status, body)

    await asyncio.to_thread(example)
    assert {400, 401} <= set(seen)
    await settle(bot)
    assert fake_webex.posted_messages == []
    assert not any((await bot.app[CONTEXT].store.inbox_counts()).values()), "a refused body was stored"
    await assert_still_serving(bot, fake_webex, alice, direct)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


async def test_random_json_values_are_400(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    call = run_hypothesis_in_thread(asyncio.get_running_loop())

    @FUZZ
    @given(value=json_values)
    def example(value: Any) -> None:
        raw = json.dumps(value).encode()
        status, body = call(post(bot, raw, signed(raw)))
        assert status in ALLOWED, (status, body)
        looks_like_envelope = isinstance(value, dict) and {"id", "resource", "event", "data"} <= value.keys()
        if not looks_like_envelope:
            assert status == 400, (value, status, body)

    await asyncio.to_thread(example)
    await settle(bot)
    assert fake_webex.posted_messages == []
    await assert_still_serving(bot, fake_webex, alice, direct)


# --- Mutated valid envelopes -----------------------------------------------------------------------

TOP_KEYS = [
    "id",
    "name",
    "targetUrl",
    "resource",
    "event",
    "orgId",
    "createdBy",
    "appId",
    "ownedBy",
    "status",
    "created",
    "actorId",
    "data",
    "filter",
]
DATA_KEYS = ["id", "roomId", "roomType", "personId", "personEmail", "created", "messageId", "type"]


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


@st.composite
def mutated_envelope(draw: st.DrawFn, fake: FakeWebex) -> dict[str, Any]:
    envelope = ghost_envelope(fake, draw(st.sampled_from(["messages", "attachmentActions"])))
    for _ in range(draw(st.integers(1, 4))):
        where = (
            envelope["data"] if draw(st.booleans()) and isinstance(envelope.get("data"), dict) else envelope
        )
        key = draw(st.sampled_from(DATA_KEYS if where is envelope.get("data") else TOP_KEYS))
        op = draw(st.sampled_from(["drop", "value", "huge", "deep", "type-swap", "unicode", "extra"]))
        if op == "drop":
            where.pop(key, None)
        elif op == "value":
            where[key] = draw(json_values)
        elif op == "huge":
            where[key] = draw(st.sampled_from(["x", "é", "\u202e", "1000:1002 "])) * draw(
                st.integers(10_000, 100_000)
            )
        elif op == "deep":
            where[key] = nested(draw(st.integers(1, 400)), draw(json_values))
        elif op == "type-swap":
            old = where.get(key)
            where[key] = draw(st.sampled_from([[old], {"v": old}, 0, 1.5, True, None, str(old)]))
        elif op == "unicode":
            where[key] = draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
        else:
            where[draw(st.text(max_size=20))] = draw(json_values)
    return envelope


async def test_mutated_envelopes_never_5xx(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    call = run_hypothesis_in_thread(asyncio.get_running_loop())
    statuses: list[int] = []

    @FUZZ
    @given(envelope=mutated_envelope(fake_webex))
    def example(envelope: dict[str, Any]) -> None:
        raw = json.dumps(envelope).encode()
        status, body = call(post(bot, raw, signed(raw)))
        statuses.append(status)
        assert status in {200, 400}, (status, body, raw[:300])
        if status == 200:
            assert body["status"] in {"queued", "ignored", "duplicate"}, body

    await asyncio.to_thread(example)
    assert {200, 400} <= set(statuses), "the mutations should produce both accepted and refused envelopes"
    await settle(bot)
    # Every envelope named a message, action and room that do not exist: nothing may reach Webex.
    assert fake_webex.posted_messages == []
    await assert_still_serving(bot, fake_webex, alice, direct)


async def test_a_signature_replayed_on_a_changed_body_is_401(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    call = run_hypothesis_in_thread(asyncio.get_running_loop())
    msg = fake_webex.add_message(direct["id"], alice, "Error: 1000:1002")
    good = json.dumps(fake_webex.message_created_envelope(msg)).encode()
    signature = sign(good, SECRET)

    @FUZZ
    @given(
        position=st.integers(0, len(good) - 1),
        flip=st.integers(1, 255),
        extra=st.sampled_from([b"", b" ", b"\n", b"{}", b"\x00"]),
    )
    def example(position: int, flip: int, extra: bytes) -> None:
        changed = bytearray(good)
        changed[position] ^= flip
        status, body = call(
            post(
                bot,
                bytes(changed) + extra,
                {"Content-Type": "application/json", "X-Spark-Signature": signature},
            )
        )
        assert status == 401, (position, flip, status, body)

    await asyncio.to_thread(example)
    await settle(bot)
    assert fake_webex.posted_messages == []
    await assert_still_serving(bot, fake_webex, alice, direct)


# --- Signatures --------------------------------------------------------------------------------------


def _variants(raw: bytes) -> dict[str, tuple[str, int]]:
    good = sign(raw, SECRET)
    return {
        "uppercase hex": (good.upper(), 200),
        "surrounding whitespace": (f"  {good}\t", 200),
        "empty": ("", 401),
        "only whitespace": ("   ", 401),
        "truncated": (good[:-1], 401),
        "one extra char": (good + "0", 401),
        "sha256 HMAC": (hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest(), 401),
        "unkeyed sha1 of the body": (hashlib.sha1(raw).hexdigest(), 401),
        "github-style prefix": (f"sha1={good}", 401),
        "base64 digest": (
            __import__("base64").b64encode(hmac.new(SECRET.encode(), raw, hashlib.sha1).digest()).decode(),
            401,
        ),
        "signature of the empty body": (sign(b"", SECRET), 401),
        "wrong secret": (sign(raw, SECRET + "x"), 401),
    }


@pytest.mark.parametrize("variant", list(_variants(b"")))
async def test_signature_header_variants(
    variant: str, bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    msg = fake_webex.add_message(direct["id"], alice, "Error: 1000:1002")
    raw = json.dumps(fake_webex.message_created_envelope(msg)).encode()
    header, expected = _variants(raw)[variant]
    status, body = await post(bot, raw, {"Content-Type": "application/json", "X-Spark-Signature": header})
    assert status == expected, (variant, status, body)
    await settle(bot)
    assert len(fake_webex.posted_messages) == (1 if expected == 200 else 0)


async def raw_http(bot: Bot, request: bytes) -> int:
    """Send bytes the aiohttp client would refuse to produce; return the response status."""
    reader, writer = await asyncio.open_connection(bot.client.host, bot.client.port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        return int(status_line.split()[1])
    finally:
        writer.close()


NON_ASCII_SIGNATURES = {
    "utf-8 e-acute": b"\xc3\xa9" * 40,
    "invalid utf-8": b"\xff\xfe",
    "full-width a": "\uff41".encode() * 40,
    "latin-1": b"caf\xe9",
}


async def test_a_non_ascii_signature_is_401_not_5xx(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    # Anyone on the internet can send this header; it must be refused like any other bad signature.
    msg = fake_webex.add_message(direct["id"], alice, "Error: 1000:1002")
    raw = json.dumps(fake_webex.message_created_envelope(msg)).encode()
    statuses = {}
    for name, header in NON_ASCII_SIGNATURES.items():
        request = (
            b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"X-Spark-Signature: " + header + b"\r\nContent-Length: " + str(len(raw)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + raw
        )
        statuses[name] = await raw_http(bot, request)
    assert statuses == dict.fromkeys(NON_ASCII_SIGNATURES, 401)
    await settle(bot)
    assert fake_webex.posted_messages == []
    await assert_still_serving(bot, fake_webex, alice, direct)


# --- Content types and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "",
    ],
)
async def test_signed_body_is_judged_by_its_json_whatever_the_content_type(
    content_type: str, bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    msg = fake_webex.add_message(direct["id"], alice, "Error: 1000:1002")
    raw = json.dumps(fake_webex.message_created_envelope(msg)).encode()
    headers = {"X-Spark-Signature": sign(raw, SECRET)}
    if content_type:
        headers["Content-Type"] = content_type
    status, body = await post(bot, raw, headers)
    assert status == 200 and body["status"] == "queued", body
    await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the reply")
    # A signed form body is still just bytes that are not an envelope.
    form = b"id=1&resource=messages&event=created&data=x"
    status, body = await post(bot, form, signed(form, content_type or "text/plain"))
    assert status == 400, body


async def test_oversized_bodies_are_413_however_they_arrive(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    envelope = ghost_envelope(fake_webex)
    envelope["data"]["padding"] = "x" * (MAX_BODY_BYTES + 10)
    raw = json.dumps(envelope).encode()
    # Declared length, signed and unsigned.
    assert (await post(bot, raw, signed(raw)))[0] == 413
    assert (await post(bot, raw, {"Content-Type": "application/json"}))[0] == 413

    # Chunked: no Content-Length to refuse early on.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    resp = await bot.client.post(URL, data=chunks(), headers=signed(raw))
    assert resp.status == 413
    # A gzip bomb: 12 KB on the wire, 12 MB once inflated.
    bomb = gzip.compress(b"{" + b" " * (12 * 1024 * 1024) + b"}")
    assert len(bomb) < MAX_BODY_BYTES
    resp = await bot.client.post(URL, data=bomb, headers={**signed(bomb), "Content-Encoding": "gzip"})
    assert resp.status == 413, resp.status  # inflated past the limit: refused before any parsing
    await settle(bot)
    assert fake_webex.posted_messages == []
    await assert_still_serving(bot, fake_webex, alice, direct)


async def test_a_body_just_under_the_limit_is_judged_not_refused(bot: Bot, fake_webex: FakeWebex) -> None:
    envelope = ghost_envelope(fake_webex)
    envelope["data"]["padding"] = ""
    overhead = len(json.dumps(envelope).encode())
    envelope["data"]["padding"] = "x" * (MAX_BODY_BYTES - overhead - 1)
    raw = json.dumps(envelope).encode()
    assert len(raw) == MAX_BODY_BYTES - 1
    status, body = await post(bot, raw, signed(raw))
    assert status == 200 and body["status"] == "queued", (status, body)
    await settle(bot)
    assert fake_webex.posted_messages == []


# --- Bodies that break naive parsers ---------------------------------------------------------------


DEEP = {
    "nested lists": b"[" * 100_000 + b"]" * 100_000,
    "nested objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "envelope with a deep field": json.dumps(
        {"id": "x", "resource": "messages", "event": "created", "data": {"id": "m"}}
    )[:-1].encode()
    + b', "deep": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
}


async def test_deeply_nested_json_is_400_not_5xx(
    bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    # json.loads raises RecursionError (not ValueError) on deep nesting; a signed sender can send it,
    # and a 503 makes Webex redeliver the same poison body until it disables the webhook.
    statuses = {}
    for name, raw in DEEP.items():
        assert len(raw) < MAX_BODY_BYTES
        statuses[name] = (await post(bot, raw, signed(raw)))[0]
    assert statuses == dict.fromkeys(DEEP, 400)
    await assert_still_serving(bot, fake_webex, alice, direct)


@pytest.mark.parametrize(
    "data_id",
    ["\ud800", "abc\udfff", "\x00", "id\x00with-nul", "x" * 100_000, "<script>", "../../etc", "🙂"],
    ids=[
        "lone-high-surrogate",
        "lone-low-surrogate",
        "nul",
        "embedded-nul",
        "100k",
        "markup",
        "path",
        "emoji",
    ],
)
async def test_odd_event_ids_are_judged_not_5xx(
    data_id: str, bot: Bot, fake_webex: FakeWebex, alice: dict[str, Any], direct: dict[str, Any]
) -> None:
    envelope = ghost_envelope(fake_webex)
    envelope["data"]["id"] = data_id
    raw = json.dumps(envelope).encode()  # ASCII escapes: "\ud800" is valid JSON text
    status, body = await post(bot, raw, signed(raw))
    assert status in {200, 400}, (status, body)
    await settle(bot)
    assert fake_webex.posted_messages == []
    await assert_still_serving(bot, fake_webex, alice, direct)


async def test_json_oddities_are_handled(bot: Bot, fake_webex: FakeWebex) -> None:
    base = json.dumps(ghost_envelope(fake_webex))
    cases = {
        "NaN": base[:-1] + ', "x": NaN}',
        "Infinity": base[:-1] + ', "x": -Infinity}',
        "huge int": base[:-1] + ', "x": ' + "9" * 5000 + "}",
        "duplicate keys": base[:-1] + ', "resource": "rooms"}',
        "BOM": "\ufeff" + base,
        "trailing garbage": base + "garbage",
        "two documents": base + base,
        "utf-16": base,
    }
    for name, text in cases.items():
        raw = text.encode("utf-16") if name == "utf-16" else text.encode()
        status, body = await post(bot, raw, signed(raw))
        assert status in {200, 400}, (name, status, body)


# --- Unicode tricks in message text ----------------------------------------------------------------

CODE_TEXTS = [
    "Ｅrror: 1000:1002",
    "\u202eError: 1000:1002",
    "Error: 1000:1002 \u200d\u200d\u200d",
    "👩\u200d💻 Error: 1000:1002 😀",
    "Error: 1000:1002\u0301\u0301\u0301",
]
OTHER_TEXTS = [
    "\u202e\u2066bl\u200dank scr\u200been\u2069",
    "🙂" * 500,
    "\u0301" * 3000,
    "ﷺ" * 1000,
    "\x00\x01\x02",
    "مرحبا لا أستطيع تسجيل الدخول",
]


def replied(fake: FakeWebex, n: int) -> bool:
    return len(fake.posted_messages) == n


async def test_unicode_tricks_in_message_text_get_answers(
    bot: Bot,
    fake_webex: FakeWebex,
    alice: dict[str, Any],
    direct: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    # Concurrent bursts are covered elsewhere; one at a time here so each reply pairs with its message.
    for n, text in enumerate(CODE_TEXTS + OTHER_TEXTS, 1):
        msg = fake_webex.add_message(direct["id"], alice, text)
        raw = json.dumps(fake_webex.message_created_envelope(msg)).encode()
        status, body = await post(bot, raw, signed(raw))
        assert status == 200 and body["status"] == "queued", (text, body)
        await wait_for(partial(replied, fake_webex, n), what=f"a reply to {text[:20]!r}")
        reply = fake_webex.posted_messages[-1]
        if text in CODE_TEXTS:
            assert "1000:1002" in reply["markdown"] and reply.get("attachments"), (
                text,
                reply["markdown"][:200],
            )
    await settle(bot)
    assert len(fake_webex.posted_messages) == len(CODE_TEXTS) + len(OTHER_TEXTS)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
