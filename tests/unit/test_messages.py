from __future__ import annotations

import json

from service.qstash.messages import job_message
from service.runs.jobs import Job, JobContext


def handler(ctx: JobContext) -> dict[str, object]:
    return {}


JOB = Job(name="send-reminders", cron="30 8 * * *", description="Test.", handler=handler,
          retries=2, timeout=120)


def test_a_job_message_goes_to_the_receiver_and_names_the_job_in_header_and_body() -> None:
    message = job_message(JOB, "https://jobs.example.com")
    assert message.url == "https://jobs.example.com/api/qstash"
    assert message.headers == {"X-Qstash-Target-Url": "/api/cron/send-reminders"}
    assert message.body == '{"job":"send-reminders"}'
    assert (message.retries, message.timeout) == (2, 120)
    assert (message.deduplication_id, message.delay) == (None, None)


def test_extra_fields_follow_the_job_name() -> None:
    message = job_message(JOB, "https://jobs.example.com", extra={"continuation_of": "run1"},
                          deduplication_id="continuation-run1", delay=5)
    assert json.loads(message.body) == {"job": "send-reminders", "continuation_of": "run1"}
    assert (message.deduplication_id, message.delay) == ("continuation-run1", 5)


def test_extra_fields_cannot_rename_the_job() -> None:
    message = job_message(JOB, "https://jobs.example.com", extra={"job": "other", "at": "now"})
    assert message.body == '{"job":"send-reminders","at":"now"}'
