"""Redaction of what people paste: real-looking secrets go, error codes and ordinary words stay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.redact import MASK, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("my password is Tr0ub4dor&3 and it still says 1000:1002", "Tr0ub4dor&3"),
        ("Password: Summer2026!", "Summer2026!"),
        ("pwd=hunter2hunter2", "hunter2hunter2"),
        ("my webex pw is c0rrect-h0rse", "c0rrect-h0rse"),
        ("passcode: 774411", "774411"),
        ("the PIN 482913 never arrived", "482913"),
        ("PIN: 4821", "4821"),
        ("got the confirmation code 551204 but it expired", "551204"),
        ("verification code: 908172", "908172"),
        ("MFA 31415926 prompt loops", "31415926"),
        (
            "Authorization: Bearer NGQ3ZTdkYzktZjc4Ni00ZjQ5LTg5YmMtMzU4YzA0ZDg1ZGM4",
            "NGQ3ZTdkYzktZjc4Ni00ZjQ5LTg5YmMtMzU4YzA0ZDg1ZGM4",
        ),
        (
            "token=ZjE3Y2MxYzUtNDM3Yi00OGQwLWE2NWEtOWNkNGRm_PF84_1eb65fdf-9643-417f-9974-ad72cae0e10f",
            "ZjE3Y2MxYzUtNDM3Yi00OGQwLWE2NWEtOWNkNGRm",
        ),
        ("api key: sk_live_51Habcdefghijklmnop", "sk_live_51Habcdefghijklmnop"),
        (
            "here is my id token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl",
            "eyJhbGciOiJSUzI1NiJ9",
        ),
        ("client_secret: 7f3a9c1e2b4d6f8a0c2e4a6c8e0a2c4e", "7f3a9c1e2b4d6f8a0c2e4a6c8e0a2c4e"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "Error: 1000:1002 Incorrect username or password",
        "incorrect password error 1002",
        "my password is wrong, says 1000:1002",
        "how do I reset my password for webex",
        "error code 1005 when I open phone services",
        "code 603 on my laptop",
        "the pin is not accepted",
        "blank screen when I sign in",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text


@given(st.text(max_size=500))
def test_redact_never_raises_and_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
