from __future__ import annotations

import json

from qstash import Receiver as PythonReceiver

from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY

from ..helpers import Receiver, Reply, Stack
from .helpers import JsCall, ok

MB = 1024 * 1024


def test_publish_is_delivered_and_both_receivers_verify_it(
    qs: Stack, receiver: Receiver, js: JsCall
) -> None:
    published = ok(
        js(
            "client.publishJSON",
            {"url": receiver.hook, "body": {"hello": "world"}, "headers": {"X-Job": "payouts"}},
        )
    )
    assert qs.local.tick() == 1

    (got,) = receiver.requests
    signature = got.headers["Upstash-Signature"]
    body = got.body.decode()
    assert got.headers["Upstash-Message-Id"] == published["messageId"]
    assert got.headers["X-Job"] == "payouts"
    assert json.loads(body) == {"hello": "world"}
    verify = {"signature": signature, "body": body, "url": receiver.hook}
    assert ok(js("receiver.verify", verify)) is True
    PythonReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
        signature=signature, body=body, url=receiver.hook
    )
    tampered = js("receiver.verify", {**verify, "body": body.replace("world", "World")})
    assert tampered["ok"] is False
    assert "body hash does not match" in tampered["error"]
    elsewhere = js("receiver.verify", {**verify, "url": receiver.hook + "/"})
    assert elsewhere["ok"] is False


def test_schedules(qs: Stack, receiver: Receiver, js: JsCall) -> None:
    created = ok(
        js(
            "schedules.create",
            {
                "destination": receiver.hook,
                "cron": "*/10 * * * * ",
                "scheduleId": "payouts",
                "body": '{"job":"payouts"}',
                "headers": {"Content-Type": "application/json"},
                "retries": 2,
                "delay": 30,
                "label": "eleva",
            },
        )
    )
    schedule = ok(js("schedules.get", "payouts"))
    listed = ok(js("schedules.list"))
    ok(js("schedules.pause", {"schedule": "payouts"}))
    paused = ok(js("schedules.get", "payouts"))["isPaused"]
    ok(js("schedules.resume", {"schedule": "payouts"}))
    qs.clock.set(qs.local.schedules["payouts"].next_schedule_time)
    qs.local.tick()
    (message,) = qs.local.messages.values()
    qs.clock.set(message.next_attempt_at)
    qs.local.tick()
    ok(js("schedules.delete", "payouts"))

    assert created == {"scheduleId": "payouts"}
    assert schedule["cron"] == "*/10 * * * *"
    assert schedule["destination"] == receiver.hook
    assert schedule["header"] == {"Content-Type": ["application/json"]}
    assert (schedule["retries"], schedule["delay"], schedule["label"]) == (2, 30, "eleva")
    assert schedule["callerIP"] == "127.0.0.1"
    assert "callerIp" not in schedule
    assert [s["scheduleId"] for s in listed] == ["payouts"]
    assert paused is True
    (got,) = receiver.requests
    assert got.headers["Upstash-Schedule-Id"] == "payouts"
    assert ok(js("schedules.list")) == []


def test_messages_get_and_cancel(qs: Stack, js: JsCall) -> None:
    other = "http://localhost:5001/other"

    hook = "http://127.0.0.1:5000/hook"
    specs = [(hook, None), (hook, "billing"), (other, None), (other, "billing"), (hook, None)]
    requests = [
        {"url": url, "body": "x", "delay": 3600, **({"label": label} if label else {})}
        for url, label in specs
    ]
    published = js("batch", *[["client.publish", [request]] for request in requests])
    first, second, third, fourth, fifth = (ok(answer)["messageId"] for answer in published)

    fetched = ok(js("messages.get", first))
    one = ok(js("messages.cancel", first))
    again = js("messages.cancel", first)
    by_ids = ok(js("messages.cancel", [second, "msg_unknown"]))
    by_url = ok(js("messages.cancel", {"filter": {"url": other, "label": "billing"}}))
    left_after_filter = set(qs.local.messages)
    everything = ok(js("messages.cancel", {"all": True}))

    assert (fetched["messageId"], fetched["url"], fetched["callerIP"]) == (
        first,
        hook,
        "127.0.0.1",
    )
    assert one == {"cancelled": 1}
    assert (again["ok"], again["status"]) == (False, 404)
    assert by_ids == {"cancelled": 1}
    assert by_url == {"cancelled": 1}
    assert left_after_filter == {third, fifth}
    assert everything == {"cancelled": 2}
    assert fourth not in qs.local.messages
    assert qs.local.messages == {}
    assert [e["state"] for e in qs.local.list_events(message_ids=[third])[0]] == [
        "CANCELED",
        "CREATED",
    ]


def fail_into_dlq(stack: Stack, receiver: Receiver, js: JsCall, labels: list[str]) -> list[str]:
    receiver.reply(*[Reply(status=500)] * len(labels))
    publishes = [
        ["client.publish", [{"url": receiver.hook, "body": label, "retries": 0, "label": label}]]
        for label in labels
    ]
    assert all(answer["ok"] for answer in js("batch", *publishes))
    stack.local.tick()
    by_body = {e.message.body.decode(): e.dlq_id for e in stack.local.dlq.values()}
    return [by_body[label] for label in labels]


def test_dlq_list_retry_and_delete(qs: Stack, receiver: Receiver, js: JsCall) -> None:
    a, b, c, d, e = fail_into_dlq(qs, receiver, js, ["a", "b", "c", "d", "e"])

    everything = ok(js("dlq.listMessages"))
    by_ids = ok(js("dlq.listMessages", {"dlqIds": [a, c]}))
    by_label = ok(js("dlq.listMessages", {"filter": {"label": "b"}}))
    retried_one = ok(js("dlq.retry", a))
    retried_many = ok(js("dlq.retry", [b, c]))
    deleted_one = ok(js("dlq.delete", d))
    deleted_many = ok(js("dlq.delete", [e, "nope"]))
    qs.local.tick()

    assert len(everything["messages"]) == 5
    assert everything.get("cursor") is None
    assert {m["dlqId"] for m in by_ids["messages"]} == {a, c}
    assert [m["dlqId"] for m in by_label["messages"]] == [b]
    assert len(retried_one["responses"]) == 1
    assert len(retried_many["responses"]) == 2
    assert (deleted_one, deleted_many) == ({"deleted": 1}, {"deleted": 1})
    assert qs.local.dlq == {}
    assert sorted(r.body.decode() for r in receiver.requests[5:]) == ["a", "b", "c"]


def test_dlq_delete_and_retry_all(qs: Stack, receiver: Receiver, js: JsCall) -> None:
    fail_into_dlq(qs, receiver, js, ["a", "b", "c"])

    retried = ok(js("dlq.retry", {"filter": {"label": "a"}}))
    deleted = ok(js("dlq.delete", {"all": True}))

    assert len(retried["responses"]) == 1
    assert deleted["deleted"] == 2
    assert qs.local.dlq == {}


def test_plan_limits_answer_like_the_real_api(qs: Stack, js: JsCall) -> None:
    hook = "http://127.0.0.1:5000/hook"
    schedules = [
        ["schedules.create", [{"destination": hook, "cron": "* * * * *", "scheduleId": f"s{i}"}]]
        for i in range(11)
    ]
    *first_ten, eleventh, too_big, too_late, flow = js(
        "batch",
        *schedules,
        ["client.publish", [{"url": hook, "body": "x" * (MB + 1)}]],
        ["client.publish", [{"url": hook, "body": "x", "delay": 400 * 86400}]],
        ["client.publish", [{"url": hook, "body": "x", "flowControl": {"key": "k", "rate": 1}}]],
    )

    assert all(answer["ok"] for answer in first_ten)
    assert (too_big["ok"], too_big["status"]) == (False, 413)
    assert (too_late["ok"], too_late["status"]) == (False, 400)
    assert (eleventh["ok"], eleventh["status"]) == (False, 412)
    assert (flow["ok"], flow["status"]) == (False, 400)
    assert qs.local.messages == {}
    assert len(qs.local.schedules) == 10


def test_logs(qs: Stack, receiver: Receiver, js: JsCall) -> None:
    message_id = ok(js("client.publish", {"url": receiver.hook, "body": "x"}))["messageId"]
    qs.local.tick()

    logs = ok(js("client.logs", {"messageIds": [message_id]}))
    delivered = ok(js("client.logs", {"filter": {"state": "DELIVERED"}}))

    assert [e["state"] for e in logs["logs"]] == ["DELIVERED", "ACTIVE", "CREATED"]
    assert logs["logs"] == logs["events"]
    assert [e["messageId"] for e in delivered["logs"]] == [message_id]


def test_two_deliveries_overlap(qs: Stack, receiver: Receiver, js: JsCall) -> None:
    receiver.reply(Reply(sleep=0.5), Reply(sleep=0.5))
    publishes = [["client.publish", [{"url": receiver.hook, "body": body}]] for body in "ab"]
    assert all(answer["ok"] for answer in js("batch", *publishes))

    assert qs.local.tick() == 2

    assert receiver.max_active == 2
    assert [a.status for a in qs.local.attempts] == [200, 200]
