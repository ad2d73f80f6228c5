from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("eleva.console")

SESSION_LIFETIME = timedelta(hours=8)
COOKIE_NAME = "eleva_console"
CSRF_FIELD = "csrf_token"
# One-time sign-in links (flask console sign-in-link) are good for this long, once.
LINK_LIFETIME = timedelta(minutes=10)
LINK_DIRECTORY = "console-sign-in"
CODE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# Failed sign-ins are answered after a pause that doubles per failure from one address. The
# pause holds a worker, so it stays short; past FREE_FAILURES the address is instead refused
# without a look at the token, for a lockout that doubles too.
FIRST_PAUSE = 0.5
LONGEST_PAUSE = 2.0
FREE_FAILURES = 5
FIRST_LOCKOUT = 30.0
LONGEST_LOCKOUT = 600.0
FORGET_AFTER = 30 * 60.0


def session_secret(admin_token: str) -> bytes:
    """Derive the key that signs console sessions from ADMIN_API_TOKEN.

    Rotating the token changes the key, so every console session ends with it; the token
    itself never signs anything and cannot be recovered from a cookie.
    """
    return hmac.new(admin_token.encode(), b"eleva-jobs console session v1",
                    hashlib.sha256).digest()


def token_matches(presented: str, expected: str | None) -> bool:
    """Compare a presented token with ADMIN_API_TOKEN in constant time."""
    if expected is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def start_session(session: MutableMapping[str, Any], *, now: float | None = None) -> None:
    """Mark a session as signed in, with a fresh CSRF token."""
    session.clear()
    session["signed_in_at"] = int(now if now is not None else time.time())
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def is_signed_in(session: MutableMapping[str, Any], *, now: float | None = None) -> bool:
    """Tell whether the session signed in less than SESSION_LIFETIME ago."""
    signed_in_at = session.get("signed_in_at")
    if not isinstance(signed_in_at, int):
        return False
    age = (now if now is not None else time.time()) - signed_in_at
    return 0 <= age < SESSION_LIFETIME.total_seconds()


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """Return the session's CSRF token (the sign-in form gets one before anyone signs in)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def csrf_valid(session: MutableMapping[str, Any], presented: str | None) -> bool:
    """Tell whether a form carried the session's CSRF token."""
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def pause(seconds: float) -> None:
    """Hold a failed sign-in's answer (looked up at call time, so tests can skip the wait)."""
    time.sleep(seconds)


@dataclass
class SignInThrottle:
    """Count failed sign-ins per address in this process and say how long to hold the answer."""

    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, address: str) -> float:
        """Record a failure from address; return the pause before answering it."""
        now = self.clock()
        with self._lock:
            for known, (_, at) in list(self._failures.items()):
                if now - at > FORGET_AFTER:
                    del self._failures[known]
            count = self._failures.get(address, (0, now))[0] + 1
            self._failures[address] = (count, now)
        return float(min(LONGEST_PAUSE, FIRST_PAUSE * 2.0 ** (count - 1)))

    def locked_for(self, address: str) -> float:
        """Return how many more seconds address may not try to sign in (0: it may)."""
        with self._lock:
            count, at = self._failures.get(address, (0, 0.0))
        if count < FREE_FAILURES:
            return 0.0
        lockout = min(LONGEST_LOCKOUT, FIRST_LOCKOUT * 2.0 ** (count - FREE_FAILURES))
        return max(0.0, at + lockout - self.clock())

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


def create_sign_in_code(instance_path: str | Path) -> str:
    """Store a new one-time sign-in code (its hash only, readable by this user); return it."""
    code = secrets.token_urlsafe(32)
    directory = Path(instance_path) / LINK_DIRECTORY
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / hashlib.sha256(code.encode()).hexdigest()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return code


def redeem_sign_in_code(instance_path: str | Path, code: str, *,
                        now: float | None = None) -> bool:
    """Use up a one-time sign-in code; true only for the first use of a fresh, known code."""
    if not CODE_RE.fullmatch(code):
        return False
    path = Path(instance_path) / LINK_DIRECTORY / hashlib.sha256(code.encode()).hexdigest()
    try:
        created = path.stat().st_mtime
        # Removing the file is the claim: of two requests with one code, one removal fails.
        path.unlink()
    except FileNotFoundError:
        return False
    return (now if now is not None else time.time()) - created < LINK_LIFETIME.total_seconds()
