from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

REDACTED: Final = "[redacted]"
# Configured secrets shorter than this are not scrubbed from text: replacing every occurrence of
# a two-letter password would garble the logs and hide nothing.
MIN_SCRUBBED_SECRET: Final = 6
URL_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Secret and restricted API keys, webhook secrets and bearer tokens must never reach logs or
# error messages, whichever provider produced the text.
_SECRET_RE: Final = re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]+|\bwhsec_[0-9A-Za-z]+")
_AUTHORIZATION_RE: Final = re.compile(
    r"(?i)\b(authorization:\s*(?:bearer|basic)\s+)[0-9A-Za-z._~+/=-]+")


def redact_secrets(text: str) -> str:
    """Replace API keys, webhook secrets and authorization credentials in text."""
    # Every log line passes through here: the substring checks spare it the regular expressions.
    if "k_" in text or "whsec_" in text:
        text = _SECRET_RE.sub(REDACTED, text)
    if "authorization" in text.lower():
        text = _AUTHORIZATION_RE.sub(rf"\1{REDACTED}", text)
    return text


def split_userinfo(url: str) -> tuple[str, str, str]:
    """Split url into scheme (with '://'), user info and the rest.

    The user info ends at the last '@', not where urlsplit's netloc ends: an unescaped '/',
    '?' or '#' in a password ends the netloc early and would leave part of the password out.
    """
    scheme = match.group(0) if (match := URL_SCHEME_RE.match(url)) else ""
    userinfo, _, rest = url[len(scheme):].rpartition("@")
    return scheme, userinfo, rest


def redact_url(url: str) -> str:
    """Return url fit for logs, errors and responses: without user info, query or fragment."""
    scheme, _, rest = split_userinfo(url)
    return scheme + re.split(r"[?#]", rest, maxsplit=1)[0]


def url_passwords(url: str | None) -> set[str]:
    """The password of a URL as its parser reads it, and as cut at the last '@' (redact_url)."""
    if not url or not URL_SCHEME_RE.match(url):
        return set()
    found = {split_userinfo(url)[1].partition(":")[2]}
    try:
        found.add(urlsplit(url).password or "")
    except ValueError:
        pass
    return found - {""}


@dataclass(frozen=True)
class Scrubber:
    """Take known secrets, then API keys and authorization credentials, out of text."""

    # Longest first, so that a secret containing another is replaced whole.
    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: Iterable[str | None], *, urls: Iterable[str | None] = ()) -> Scrubber:
        """Build a scrubber of `values` and of the passwords in `urls`."""
        found = {value for value in values if value}
        for url in urls:
            for password in url_passwords(url):
                found |= {password, unquote(password)}
        forms = set()
        for value in found:
            if len(value) >= MIN_SCRUBBED_SECRET:
                forms |= {value, json.dumps(value)[1:-1]}  # as written, and inside JSON text
        return cls(tuple(sorted(forms, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return redact_secrets(text)
