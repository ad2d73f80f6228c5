from __future__ import annotations

import jwt
import pytest
from qstash import Receiver as SignatureReceiver
from qstash.errors import SignatureError
from qstash.receiver import verify_with_key

from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY

from .helpers import Receiver, Stack, fire_next_slot, padded_hash, publish


def test_fired_schedule_is_delivered_with_qstash_headers(qs: Stack, receiver: Receiver) -> None:
    body = b'{"hello":"world"}'
    qs.client.schedule.create(
        destination=receiver.hook,
        cron="* * * * *",
        body=body,
        content_type="application/json",
        method="PUT",
        headers={"x-qstash-target-url": "payouts", "Authorization": "Bearer job"},
        schedule_id="payouts",
    )

    attempts = fire_next_slot(qs, "payouts")

    assert attempts == 1
    (got,) = receiver.requests
    (message_id,) = qs.client.schedule.get("payouts").last_schedule_states or {}
    assert got.method == "PUT"
    assert got.path == "/hook"
    assert got.body == body
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Qstash-Target-Url"] == "payouts"
    assert got.headers["Authorization"] == "Bearer job"
    assert got.headers["Upstash-Message-Id"] == message_id
    assert message_id.startswith("msg_")
    assert got.headers["Upstash-Retried"] == "0"
    assert got.headers["Upstash-Schedule-Id"] == "payouts"
    assert got.headers["Upstash-Caller-Ip"] == "127.0.0.1"
    assert got.headers["User-Agent"] == "Upstash-QStash"


def test_delivery_signature_verifies_with_sdk_and_pyjwt(qs: Stack, receiver: Receiver) -> None:
    body = b'{"hello":"world"}'
    qs.client.schedule.create(
        destination=receiver.hook, cron="* * * * *", body=body, schedule_id="signed"
    )
    fire_next_slot(qs, "signed")

    (got,) = receiver.requests
    token = got.headers["Upstash-Signature"]
    SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
        signature=token, body=got.body.decode(), url=receiver.hook
    )
    verify_with_key(DEV_CURRENT_SIGNING_KEY, signature=token, body=got.body.decode())
    with pytest.raises(SignatureError):
        verify_with_key(DEV_NEXT_SIGNING_KEY, signature=token, body=got.body.decode())
    claims = jwt.decode(
        token,
        DEV_CURRENT_SIGNING_KEY,
        algorithms=["HS256"],
        issuer="Upstash",
        options={"require": ["iss", "sub", "exp", "nbf", "iat", "jti", "body"]},
    )
    issued = int(qs.clock())
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert claims["sub"] == receiver.hook
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (issued, issued, issued + 300)
    assert isinstance(claims["jti"], str)
    assert claims["jti"].startswith("jwt_")
    assert claims["body"] == padded_hash(body)
    assert claims["body"] == "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg="
    assert "aud" not in claims


def test_signature_covers_the_exact_destination_including_query(
    qs: Stack, receiver: Receiver
) -> None:
    destination = f"{receiver.hook}?job=payouts"
    publish(qs.client, url=destination, body="x")

    qs.local.tick()

    (got,) = receiver.requests
    assert got.query == "job=payouts"
    verifier = SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
    verifier.verify(signature=got.headers["Upstash-Signature"], body="x", url=destination)
    with pytest.raises(SignatureError):
        verifier.verify(signature=got.headers["Upstash-Signature"], body="x", url=receiver.hook)


def test_sign_with_next_verifies_with_the_next_key_only(make_stack, receiver: Receiver) -> None:
    stack = make_stack(sign_with="next")
    publish(stack.client, url=receiver.hook, body="rotated")

    stack.local.tick()

    token = receiver.requests[0].headers["Upstash-Signature"]
    verify_with_key(DEV_NEXT_SIGNING_KEY, signature=token, body="rotated", url=receiver.hook)
    with pytest.raises(SignatureError):
        verify_with_key(DEV_CURRENT_SIGNING_KEY, signature=token, body="rotated")
    # A receiver holding (current, next) accepts it through its fallback to next.
    SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
        signature=token, body="rotated", url=receiver.hook
    )
    with pytest.raises(SignatureError):
        SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_CURRENT_SIGNING_KEY).verify(
            signature=token, body="rotated", url=receiver.hook
        )


def test_binary_body_is_delivered_byte_for_byte(qs: Stack, receiver: Receiver) -> None:
    body = b"\xff\x00\x10binary\r\n"
    publish(qs.client, url=receiver.hook, body=body, content_type="application/x-raw")

    qs.local.tick()

    (got,) = receiver.requests
    claims = jwt.decode(
        got.headers["Upstash-Signature"], DEV_CURRENT_SIGNING_KEY, algorithms=["HS256"]
    )
    assert got.body == body
    assert got.headers["Content-Type"] == "application/x-raw"
    assert claims["body"] == padded_hash(body)
    assert "Upstash-Schedule-Id" not in got.headers
