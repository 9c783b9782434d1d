"""Redact secrets people paste (passwords, PINs, tokens, one-time codes) before text is stored or forwarded."""

from __future__ import annotations

import re

MASK = "[redacted]"

# Each pattern keeps its lead-in ("my password is") so the helpdesk still sees what was said, and masks the value.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "password: hunter2", "my pw is hunter2", "passcode = 1234" (an explicit "is", "=" or ":" is required, so
    # "incorrect password error 1002" keeps its words)
    re.compile(
        r"(?i)\b((?:pass(?:word|wd|code|phrase)?|pwd|pw|pin|otp|one[- ]time (?:code|password)|verification code|"
        r"confirmation (?:code|pin)|security code|secret)\b[^\S\n]{0,3}(?:is|was|=|:)[^\S\n]{0,3})"
        r"(?!(?:is|was|for|to|and|the|that|reset|expired|wrong|incorrect|right|correct)\b)([^\s,;]{3,128})"
    ),
    # Bearer tokens and API-key-looking strings
    re.compile(r"(?i)(\bbearer[^\S\n]{1,3})([A-Za-z0-9\-._~+/]{16,}=*)"),
    re.compile(
        r"(?i)(\b(?:token|api[_ -]?key|access[_ -]?key|client[_ -]?secret)\b[^\S\n]{0,3}(?:is|=|:)?[^\S\n]{0,3})([A-Za-z0-9\-._~+/]{12,}=*)"
    ),
)
# Long opaque strings (JWTs, Webex tokens) anywhere.
_OPAQUE = re.compile(
    r"\b(?:eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{5,}|[A-Za-z0-9]{40,}(?:_[A-Za-z0-9]{4,}){0,4})\b"
)
# Six-digit codes next to words that say "code" (the first-sign-in PIN, MFA prompts).
# "code" needs six or more digits so that "error code 1002" stays readable.
_CODE_NEAR = re.compile(
    r"(?i)\b((?:pin|otp|mfa|2fa)\b[^0-9\n]{0,20})(\d{4,8})\b|\b(code\b[^0-9\n]{0,20})(\d{6,8})\b"
)


# Words that follow "my password is" in a complaint rather than a leak.
_NOT_SECRETS = frozenset(
    """not wrong incorrect correct right expired invalid blocked locked reset required rejected accepted missing
    empty fine ok okay same too also still now the a an my your being changed working broken short long weak
    strong new old definitely correctly saved known unknown""".split()
)


def _mask_value(m: re.Match[str]) -> str:
    value = m.group(2)
    if value.casefold().strip(".,!?") in _NOT_SECRETS:
        return m.group(0)
    return m.group(1) + MASK


def redact(text: str) -> str:
    """Mask secret values; leave error codes such as 1000:1002 alone."""
    for pattern in _PATTERNS:
        text = pattern.sub(_mask_value, text)
    text = _CODE_NEAR.sub(lambda m: (m.group(1) or m.group(3)) + MASK, text)
    return _OPAQUE.sub(MASK, text)
