from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt

from ..errors import Unauthorized

ISSUER = "Upstash"
NUMBER = (int, float)
MAX_TOKEN_ID = 128  # the run record keeps each delivery's `jti` (job_runs.token_id)
# As strict as the message id: what both databases store as given (no NUL, no lone surrogate).
TOKEN_ID_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_TOKEN_ID}}}")
MAX_LIFETIME = 300  # QStash signs each delivery for 5 minutes (protocol §1.4)
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z; beyond it a claim is not a time
_JWS = jwt.PyJWS()  # stateless: verifies the MAC and parses, nothing else


class SignatureRejected(Unauthorized):
    """The Upstash-Signature did not prove that QStash sent this exact request."""


def body_hash(raw: bytes) -> str:
    """Return the base64url SHA-256 of the raw body, unpadded, as QStash's `body` claim."""
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()


def qstash_claims(*, url: str, body: bytes, now: float | None = None,
                  lifetime: int = 300) -> dict[str, Any]:
    """Return the claims QStash puts in a delivery's token (protocol §1.1)."""
    issued = int(time.time() if now is None else now)
    return {
        "iss": ISSUER,
        "sub": url,
        "exp": issued + lifetime,
        "nbf": issued,
        "iat": issued,
        "jti": f"jwt_{uuid.uuid4().hex}",
        # QStash sends the hash padded; verifiers strip the padding on both sides.
        "body": base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode(),
    }


def sign_claims(claims: dict[str, Any], key: str) -> str:
    """Sign claims the way QStash does: HS256 with the signing-key string as the secret."""
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": "JWT"})


def verify_signature(
    raw: bytes,
    token: str | None,
    *,
    keys: Sequence[str],
    url: str,
    leeway: int,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify an Upstash-Signature JWT over the raw body for the given URL; return its claims.

    Raise SignatureRejected whose code names the first check that failed. Checks run in the
    order that gives the most useful diagnosis: the MAC first (so nothing in an unauthenticated
    token is trusted), then issuer, time window, subject and body.
    """
    if not token or not token.strip():
        raise SignatureRejected("the Upstash-Signature header is missing", code="missing_signature")
    claims = _decode_with_any_key(token.strip(), keys)
    now = time.time() if now is None else now

    if claims.get("iss") != ISSUER:
        raise SignatureRejected("the token was not issued by Upstash", code="wrong_issuer")
    for name, kind in (("sub", str), ("body", str), ("exp", NUMBER), ("nbf", NUMBER)):
        value = claims.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SignatureRejected(
                f"the token's {name!r} claim is missing or has the wrong type", code="malformed"
            )
    for name, kind in (("iat", NUMBER), ("jti", str)):
        value = claims.get(name)
        if name in claims and (not isinstance(value, kind) or isinstance(value, bool)):
            raise SignatureRejected(
                f"the token's {name!r} claim has the wrong type", code="malformed"
            )
    if len(claims.get("jti", "")) > MAX_TOKEN_ID:
        raise SignatureRejected(f"the token's 'jti' claim is longer than {MAX_TOKEN_ID} characters",
                                code="malformed")
    if "jti" in claims and not TOKEN_ID_RE.fullmatch(claims["jti"]):
        raise SignatureRejected("the token's 'jti' claim has characters a token id never has",
                                code="malformed")
    _check_plausible_times(claims)
    if claims.get("aud"):
        raise SignatureRejected("the token is addressed to another audience", code="malformed")

    if now > claims["exp"] + leeway:
        raise SignatureRejected(
            "the token has expired; check this host's clock (NTP)", code="expired"
        )
    if claims["nbf"] > now + leeway or claims.get("iat", 0) > now + leeway:
        raise SignatureRejected(
            "the token is not valid yet; check this host's clock (NTP)", code="not_yet_valid"
        )
    _check_lifetime(claims, now=now, leeway=leeway)
    if not hmac.compare_digest(claims["sub"].encode(), url.encode()):
        raise SignatureRejected(
            "the token was issued for another URL; check APP_URL", code="wrong_subject"
        )
    if not hmac.compare_digest(claims["body"].rstrip("=").encode(), body_hash(raw).encode()):
        raise SignatureRejected(
            "the body does not match the signed hash; was it altered on the way?",
            code="body_mismatch",
        )
    return claims


def _check_plausible_times(claims: dict[str, Any]) -> None:
    # NaN compares false with everything and Infinity or 1e308 never expire: each would slip
    # through the time window. A range check refuses all three (and no huge int reaches floats).
    for name in ("exp", "nbf", "iat"):
        if name in claims and not 0 <= claims[name] <= MAX_TIMESTAMP:
            raise SignatureRejected(f"the token's {name!r} claim is not a plausible time",
                                    code="malformed")


def _check_lifetime(claims: dict[str, Any], *, now: float, leeway: int) -> None:
    # nbf is 0 in QStash's tokens (protocol §1.1): only a positive start says when it was issued.
    start = max(claims.get("iat", 0), claims["nbf"])
    longest = MAX_LIFETIME + leeway
    if claims["exp"] - now > longest or (start > 0 and claims["exp"] - start > longest):
        raise SignatureRejected(
            f"the token is valid for longer than QStash's {MAX_LIFETIME} s", code="malformed"
        )


def _decode_with_any_key(token: str, keys: Sequence[str]) -> dict[str, Any]:
    # Only the MAC (and that it is HS256) is checked here; claims are checked by hand above so
    # that each failure gets its own error code and the configured leeway really applies.
    for key in keys:
        try:
            payload = _JWS.decode_complete(token, key, algorithms=["HS256"])["payload"]
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAlgorithmError:
            raise SignatureRejected(
                "Upstash-Signature must be signed with HS256", code="bad_signature"
            ) from None
        except jwt.PyJWTError:
            raise SignatureRejected("Upstash-Signature is not a JWT", code="malformed") from None
        try:
            claims = json.loads(payload)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise SignatureRejected("the token's payload is not a JSON object", code="malformed")
        return claims
    raise SignatureRejected(
        "the signature does not match either signing key; check "
        "QSTASH_CURRENT_SIGNING_KEY and QSTASH_NEXT_SIGNING_KEY",
        code="bad_signature",
    )
