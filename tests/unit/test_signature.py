from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from qstash import Receiver
from qstash.errors import SignatureError

from service.qstash.signature import (
    SignatureRejected,
    body_hash,
    qstash_claims,
    sign_claims,
    verify_signature,
)
from tests.helpers import CURRENT_KEY, NEXT_KEY, mint

KEYS = [CURRENT_KEY, NEXT_KEY]
URL = "http://localhost:5000/api/qstash/hook"
BODY = b'{"hello":"world"}'
# Protocol §6: a token minted once with the dev key pair, valid until 2100.
VECTOR = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJVcHN0YXNoIiwic3ViIjoiaHR0cDovL2xvY2Fs"
    "aG9zdDo1MDAwL2FwaS9xc3Rhc2gvaG9vayIsImV4cCI6NDEwMjQ0NDgwMCwibmJmIjowLCJpYXQiOjE3MDAw"
    "MDAwMDAsImp0aSI6Imp3dF90ZXN0X3ZlY3Rvcl8xIiwiYm9keSI6Ims2STVjYWtVNWVyTDhLalNVVlROb3du"
    "RHdjY3Z1NWtVMUh4Zzg4dG9GWWc9In0.oC_qm6nSfHe3hI2miVVO_81LbR7-c_n4nbaBZJdXYzM"
)


def verify(token: str | None, body: bytes = BODY, url: str = URL, leeway: int = 0,
           now: float | None = None) -> dict[str, object]:
    return verify_signature(body, token, keys=KEYS, url=url, leeway=leeway, now=now)


def rejected(token: str | None, **kwargs: object) -> str:
    with pytest.raises(SignatureRejected) as info:
        verify(token, **kwargs)  # type: ignore[arg-type]
    assert info.value.status == 401
    return info.value.code


def official(token: str, body: bytes = BODY, url: str = URL) -> bool:
    try:
        Receiver(current_signing_key=CURRENT_KEY, next_signing_key=NEXT_KEY).verify(
            signature=token, body=body.decode(), url=url
        )
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
    (b'{"hello":"world"}', "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg"),
    (b'{"hello": "world"}', "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE"),
])
def test_body_hash_matches_protocol_vectors(body: bytes, expected: str) -> None:
    assert body_hash(body) == expected


# The same claims, but valid for QStash's 5 minutes from iat: the ones QStash really issues.
SHORT_VECTOR = sign_claims(
    {"iss": "Upstash", "sub": URL, "exp": 1_700_000_300, "nbf": 0, "iat": 1_700_000_000,
     "jti": "jwt_test_vector_1", "body": "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg="},
    CURRENT_KEY,
)


def test_fixed_vector_verifies_in_the_official_sdk_but_lives_too_long_here() -> None:
    assert official(VECTOR)
    # Valid until 2100: far longer than any token QStash issues, so refused here.
    assert rejected(VECTOR) == "malformed"
    claims = verify(SHORT_VECTOR, now=1_700_000_100)
    assert claims["jti"] == "jwt_test_vector_1"
    assert claims["sub"] == URL


def test_minted_tokens_match_the_fixed_vector_shape() -> None:
    claims = qstash_claims(url=URL, body=BODY, now=1_700_000_000)
    assert claims["body"] == "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg="
    assert (claims["iss"], claims["exp"], claims["nbf"]) == ("Upstash", 1_700_000_300,
                                                             1_700_000_000)
    assert isinstance(claims["jti"], str) and claims["jti"].startswith("jwt_")


def test_next_key_is_accepted_for_rotation() -> None:
    token = mint(BODY, url=URL, key=NEXT_KEY)
    assert verify(token)["iss"] == "Upstash"


def test_unpadded_body_claim_is_accepted() -> None:
    token = mint(BODY, url=URL, body=body_hash(BODY))
    assert verify(token)["body"] == body_hash(BODY)


# Protocol §6 negative cases, plus the ones the receiver must add.
NEGATIVE_CASES: dict[str, tuple[Callable[[], str], dict[str, Any], str]] = {
    "wrong key": (lambda: mint(BODY, url=URL, key="sig_NotTheRightKeyAtAllxxxxxxxxxxx"), {},
                  "bad_signature"),
    "sub with extra slash": (lambda: mint(BODY, url=URL + "/"), {}, "wrong_subject"),
    "sub with query": (lambda: mint(BODY, url=URL + "?q"), {}, "wrong_subject"),
    "body re-serialised": (lambda: mint(BODY, url=URL), {"body": b'{"hello": "world"}'},
                           "body_mismatch"),
    "issuer lower-case": (lambda: mint(BODY, url=URL, iss="upstash"), {}, "wrong_issuer"),
    "expired": (lambda: mint(BODY, url=URL, now=time.time() - 400), {}, "expired"),
    "iat in the future": (lambda: mint(BODY, url=URL, iat=int(time.time()) + 100), {},
                          "not_yet_valid"),
    "non-empty aud": (lambda: mint(BODY, url=URL, aud="x"), {}, "malformed"),
    "missing nbf": (lambda: mint(BODY, url=URL, nbf=None), {}, "malformed"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE_CASES))
def test_protocol_negative_cases_are_rejected_by_both_verifiers(case: str) -> None:
    make, kwargs, code = NEGATIVE_CASES[case]
    token = make()
    assert rejected(token, **kwargs) == code
    assert not official(token, **kwargs)


@pytest.mark.parametrize("body", [b"", BODY, b'{"job":"process-tasks"}', "é ✓".encode()])
def test_tokens_we_accept_are_accepted_by_the_official_receiver(body: bytes) -> None:
    token = mint(body, url=URL)
    verify(token, body=body)
    assert official(token, body=body)


def test_alg_none_is_rejected() -> None:
    claims = qstash_claims(url=URL, body=BODY)
    token = jwt.encode(claims, None, algorithm="none")
    assert rejected(token) == "bad_signature"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs512_is_rejected_even_with_the_right_key() -> None:
    # The warning is about minting with a 32-byte key for HS512; the attacker's problem.
    token = jwt.encode(qstash_claims(url=URL, body=BODY), CURRENT_KEY, algorithm="HS512")
    assert rejected(token) == "bad_signature"


def test_keys_swapped_still_verify_but_a_third_key_does_not() -> None:
    token = mint(BODY, url=URL, key=CURRENT_KEY)
    verify_signature(BODY, token, keys=[NEXT_KEY, CURRENT_KEY], url=URL, leeway=0)
    with pytest.raises(SignatureRejected) as info:
        verify_signature(BODY, token, keys=[NEXT_KEY], url=URL, leeway=0)
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_header(token: str | None) -> None:
    assert rejected(token) == "missing_signature"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.@@@.sig", "Bearer x"])
def test_garbage_is_malformed(token: str) -> None:
    assert rejected(token) == "malformed"


def test_wrong_claim_types_are_malformed() -> None:
    assert rejected(mint(BODY, url=URL, jti=12.5)) == "malformed"
    assert rejected(mint(BODY, url=URL, jti="j" * 129)) == "malformed"  # job_runs.token_id
    assert rejected(mint(BODY, url=URL, sub=None)) == "malformed"
    assert rejected(mint(BODY, url=URL, body=None)) == "malformed"
    assert rejected(mint(BODY, url=URL, exp="soon")) == "malformed"


@pytest.mark.parametrize("jti", ["jwt_\ud800", "jwt_\x00", "jwt_\u0661", "jwt 1", "jwt_é", ""])
def test_a_jti_that_is_not_a_plain_token_id_is_malformed(jti: str) -> None:
    # Stored in job_runs.token_id: a lone surrogate or NUL cannot be stored by both databases.
    assert rejected(mint(BODY, url=URL, jti=jti)) == "malformed"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e308, 10**400, -1])
def test_a_time_claim_that_is_not_a_plausible_time_is_malformed(claim: str, value: float) -> None:
    overrides: dict[str, Any] = {claim: value}
    assert rejected(mint(BODY, url=URL, **overrides)) == "malformed"


@pytest.mark.parametrize("claims", [
    {"exp": 1_700_000_000 + 331},  # 5 minutes plus the tolerance, plus one second
    {"exp": 1_700_000_000 + 331, "iat": None},
    {"exp": 1_700_000_000 + 3600, "iat": None, "nbf": 0},
    {"exp": 1_700_000_000 + 100, "iat": 1_700_000_000 - 300, "nbf": 0},
])
def test_a_token_that_lives_longer_than_qstash_issues_is_malformed(
    claims: dict[str, Any],
) -> None:
    token = mint(BODY, url=URL, now=1_700_000_000, **claims)
    assert rejected(token, leeway=30, now=1_700_000_000) == "malformed"


@pytest.mark.parametrize("claims", [
    {},
    {"nbf": 0},
    {"nbf": 0, "iat": None},
    {"exp": 1_700_000_000 + 330},  # 5 minutes plus the tolerance
])
def test_a_token_that_lives_as_long_as_qstash_issues_is_accepted(
    claims: dict[str, Any],
) -> None:
    verify(mint(BODY, url=URL, now=1_700_000_000, **claims), leeway=30, now=1_700_000_000)


def test_the_mac_is_checked_before_any_claim() -> None:
    # A forged token with every claim wrong reports the signature, not the claims.
    token = sign_claims({"iss": "evil", "sub": "x"}, "sig_attacker_key_of_32_bytes_xxxx")
    assert rejected(token) == "bad_signature"


def test_clock_skew_inside_the_tolerance_is_accepted() -> None:
    now = time.time()
    ahead = mint(BODY, url=URL, now=now + 20)  # QStash's clock runs 20 s ahead of ours
    late = mint(BODY, url=URL, now=now - 300 - 20)  # expired 20 s ago by our clock
    verify(ahead, leeway=30, now=now)
    verify(late, leeway=30, now=now)


def test_clock_skew_outside_the_tolerance_is_rejected() -> None:
    now = time.time()
    assert rejected(mint(BODY, url=URL, now=now + 40), leeway=30, now=now) == "not_yet_valid"
    assert rejected(mint(BODY, url=URL, now=now - 340), leeway=30, now=now) == "expired"


def test_nbf_zero_is_accepted() -> None:
    verify(mint(BODY, url=URL, nbf=0))
