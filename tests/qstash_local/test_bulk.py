from __future__ import annotations

from typing import Any

import pytest
import requests

from devtools.qstash_local import DEV_TOKEN

from .helpers import HOOK, Receiver, Reply, Stack, publish

OTHER = "http://localhost:5001/other"


def call(stack: Stack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method,
        f"{stack.server.url}{path}",
        headers={"Authorization": f"Bearer {DEV_TOKEN}", **kwargs.pop("headers", {})},
        timeout=5,
        **kwargs,
    )


def pending(stack: Stack) -> set[str]:
    return {m.body.decode() for m in stack.local.messages.values()}


def seed_messages(stack: Stack) -> dict[str, str]:
    specs = {
        "a": {"url": HOOK, "label": "billing"},
        "b": {"url": HOOK, "label": "reports,billing"},
        "c": {"url": OTHER, "label": "reports"},
        "d": {"url": OTHER},
    }
    return {
        body: publish(stack.client, body=body, delay="1h", **spec).message_id
        for body, spec in specs.items()
    }


def test_cancel_one_answers_json(qs: Stack) -> None:
    ids = seed_messages(qs)

    response = call(qs, "DELETE", f"/v2/messages/{ids['a']}")

    assert (response.status_code, response.json()) == (202, {"cancelled": 1})
    assert pending(qs) == {"b", "c", "d"}


@pytest.mark.parametrize(
    ("query", "left"),
    [
        ("messageIds=ID_a&messageIds=ID_c", {"b", "d"}),
        ("messageIds=ID_a,ID_c", {"b", "d"}),
        # Ids win over filters, as documented.
        ("messageIds=ID_a&url=" + OTHER, {"b", "c", "d"}),
        ("url=" + OTHER, {"a", "b"}),
        ("host=localhost", {"a", "b"}),
        ("path=/api/qstash/hook", {"c", "d"}),
        ("label=billing", {"c", "d"}),
        ("label=billing&label=reports", {"d"}),
        ("label=reports&url=" + HOOK, {"a", "c", "d"}),
        ("callerIp=10.0.0.1", {"a", "b", "c", "d"}),
        ("callerIp=127.0.0.1&count=100", set()),
        ("", set()),
    ],
)
def test_bulk_cancel_reads_ids_and_filters_from_the_query(
    qs: Stack, query: str, left: set[str]
) -> None:
    ids = seed_messages(qs)
    for body, message_id in ids.items():
        query = query.replace(f"ID_{body}", message_id)

    response = call(qs, "DELETE", f"/v2/messages?{query}")

    assert response.status_code == 202
    assert response.json() == {"cancelled": 4 - len(left)}
    assert pending(qs) == left


def test_bulk_cancel_by_json_body(qs: Stack) -> None:
    ids = seed_messages(qs)

    response = call(qs, "DELETE", "/v2/messages", json={"messageIds": [ids["b"], "msg_unknown"]})

    assert response.json() == {"cancelled": 1}
    assert pending(qs) == {"a", "c", "d"}


def test_bulk_cancel_refuses_an_unknown_filter_instead_of_cancelling_all(qs: Stack) -> None:
    seed_messages(qs)

    response = call(qs, "DELETE", "/v2/messages?lable=billing")

    assert response.status_code == 400
    assert "lable" in response.json()["error"]
    assert len(qs.local.messages) == 4


def fail_into_dlq(
    stack: Stack, receiver: Receiver, bodies: dict[str, str | None]
) -> dict[str, str]:
    """Publish one message per body (with an optional label) that lands in the DLQ at once.

    Return the DLQ id of each body; the DLQ's order is the order the deliveries failed in.
    """
    receiver.reply(*[Reply(status=500)] * len(bodies))
    for body, label in bodies.items():
        publish(stack.client, url=receiver.hook, body=body, retries=0, label=label)
    stack.local.tick()
    return {e.message.body.decode(): e.dlq_id for e in stack.local.dlq.values()}


def dlq_bodies(stack: Stack) -> list[str]:
    return [e.message.body.decode() for e in stack.local.dlq.values()]


def test_dlq_list_filters_by_dlq_ids(qs: Stack, receiver: Receiver) -> None:
    first, _, third = fail_into_dlq(qs, receiver, {"x": None, "y": None, "z": None}).values()

    listed = call(qs, "GET", f"/v2/dlq?dlqIds={first}&dlqIds={third}").json()
    comma = call(qs, "GET", f"/v2/dlq?dlqIds={first},{third}").json()

    assert [m["dlqId"] for m in listed["messages"]] == [first, third]
    assert comma == listed
    assert "cursor" not in listed


def test_dlq_list_pages_with_a_cursor(qs: Stack, receiver: Receiver) -> None:
    ids = list(fail_into_dlq(qs, receiver, {str(i): None for i in range(5)}).values())

    seen, cursor, pages = [], "", 0
    while True:
        page = call(qs, "GET", f"/v2/dlq?count=2&cursor={cursor}").json()
        seen += [m["dlqId"] for m in page["messages"]]
        pages += 1
        cursor = page.get("cursor")
        if not cursor:
            break

    assert (seen, pages) == (ids, 3)


def test_dlq_list_filters_by_label_and_status(qs: Stack, receiver: Receiver) -> None:
    fail_into_dlq(qs, receiver, {"x": "a", "y": "b", "z": None})

    by_label = call(qs, "GET", "/v2/dlq?label=a,b").json()["messages"]
    by_status = call(qs, "GET", "/v2/dlq?responseStatus=500").json()["messages"]
    other_status = call(qs, "GET", "/v2/dlq?responseStatus=404").json()["messages"]

    assert sorted(m["body"] for m in by_label) == ["x", "y"]
    assert len(by_status) == 3
    assert other_status == []


def test_dlq_retry_one_publishes_it_again(qs: Stack, receiver: Receiver) -> None:
    (dlq_id,) = fail_into_dlq(qs, receiver, {"again": None}).values()

    response = call(qs, "POST", f"/v2/dlq/retry/{dlq_id}", headers={"Upstash-Retries": "5"})
    message_id = response.json()["messageId"]
    missing = call(qs, "POST", f"/v2/dlq/retry/{dlq_id}")
    qs.local.tick()

    assert response.status_code == 201
    assert missing.status_code == 404
    assert qs.local.dlq == {}
    assert receiver.requests[-1].headers["Upstash-Message-Id"] == message_id
    assert receiver.requests[-1].body == b"again"
    assert [a.status for a in qs.local.attempts] == [500, 200]


def test_dlq_bulk_retry_by_ids_and_by_filter(qs: Stack, receiver: Receiver) -> None:
    ids = fail_into_dlq(qs, receiver, {"x": "a", "y": "b", "z": "b"})

    by_ids = call(qs, "POST", f"/v2/dlq/retry?dlqIds={ids['x']}")
    unknown = call(qs, "POST", f"/v2/dlq/retry?dlqIds={ids['y']},nope")
    by_label = call(qs, "POST", "/v2/dlq/retry?label=b")

    assert by_ids.status_code == 201
    assert len(by_ids.json()["responses"]) == 1
    assert unknown.status_code == 404
    assert len(by_label.json()["responses"]) == 2
    assert qs.local.dlq == {}
    assert sorted(m.body.decode() for m in qs.local.messages.values()) == ["x", "y", "z"]


def test_dlq_delete_many_by_query_body_and_filter(qs: Stack, receiver: Receiver) -> None:
    ids = fail_into_dlq(qs, receiver, {str(i): ("keep" if i == 4 else None) for i in range(5)})

    by_query = call(qs, "DELETE", f"/v2/dlq?dlqIds={ids['0']}&dlqIds={ids['1']}")
    by_body = call(qs, "DELETE", "/v2/dlq", json={"dlqIds": [ids["2"], "nope"]})
    by_filter = call(qs, "DELETE", "/v2/dlq?label=keep")

    assert [r.status_code for r in (by_query, by_body, by_filter)] == [200, 200, 200]
    assert [r.json() for r in (by_query, by_body, by_filter)] == [
        {"deleted": 2},
        {"deleted": 1},
        {"deleted": 1},
    ]
    assert dlq_bodies(qs) == ["3"]


def test_dlq_delete_all_in_pages(qs: Stack, receiver: Receiver) -> None:
    fail_into_dlq(qs, receiver, {str(i): None for i in range(3)})

    first = call(qs, "DELETE", "/v2/dlq?count=2").json()
    second = call(qs, "DELETE", f"/v2/dlq?count=2&cursor={first['cursor']}").json()

    assert first["deleted"] == 2
    assert second == {"deleted": 1}
    assert qs.local.dlq == {}
