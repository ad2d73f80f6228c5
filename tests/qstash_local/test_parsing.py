from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import requests

from devtools.qstash_local import LocalQStash, serve, serve_wsgi
from devtools.qstash_local.parsing import (
    ApiError,
    build_destination,
    canonical_header,
    compile_retry_delay,
    is_loopback_host,
    parse_cron,
    parse_duration,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x-qstash-target-url", "X-Qstash-Target-Url"),
        ("AUTHORIZATION", "Authorization"),
        ("content-TYPE", "Content-Type"),
        ("x--double", "X--Double"),
        ("bad name", "bad name"),
    ],
)
def test_canonical_header_matches_go(name: str, expected: str) -> None:
    assert canonical_header(name) == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("50s", 50), ("3m", 180), ("10h", 36000), ("1d", 86400), ("1h30m", 5400), (" 0s ", 0)],
)
def test_parse_duration(value: str, seconds: int) -> None:
    assert parse_duration(value, header="Upstash-Delay") == seconds


@pytest.mark.parametrize("value", ["", "10", "5x", "1.5s", "-3s", "s"])
def test_parse_duration_refuses_malformed_values(value: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_duration(value, header="Upstash-Delay")

    assert caught.value.status == 400
    assert "Upstash-Delay" in caught.value.message


def test_parse_cron_keeps_the_zone_prefix_in_its_text() -> None:
    spec = parse_cron("  CRON_TZ=Asia/Tokyo 0 9 * * 1-5 ")

    assert spec.text == "CRON_TZ=Asia/Tokyo 0 9 * * 1-5"
    assert spec.fields == "0 9 * * 1-5"
    assert str(spec.zone) == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("api.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("0.0.0.0", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "http://h/p"),
        ("a=1", "http://h/p?a=1"),
        ("qstash_token=t&a=1&Upstash-Retries=2&b=%2F", "http://h/p?a=1&b=%2F"),
        ("upstash-delay=1m", "http://h/p"),
    ],
)
def test_build_destination_keeps_only_destination_parameters(query: str, expected: str) -> None:
    assert build_destination("http://h/p", query) == expected


def test_parse_retry_after_formats() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    in_a_minute = format_datetime(datetime(2030, 1, 1, 0, 1, tzinfo=UTC), usegmt=True)

    assert parse_retry_after("10", now=now) == 10
    assert parse_retry_after("0", now=now) == 0
    assert parse_retry_after("6m5s", now=now) == 365
    assert parse_retry_after("1500ms", now=now) == 1.5
    assert parse_retry_after(in_a_minute, now=now) == 60
    assert parse_retry_after("86401", now=now) is None
    assert parse_retry_after("soon", now=now) is None


@pytest.mark.parametrize(
    ("expression", "retried", "millis"),
    [
        ("1000", 0, 1000),
        ("pow(2, retried) * 1000", 3, 8000),
        ("max(10, min(5, retried))", 7, 10),
        ("floor(sqrt(retried)) + ceil(0.2) + abs(-1) + round(1.4)", 4, 5),
        ("-retried + 10 % 4", 1, 1),
    ],
)
def test_retry_delay_expression(expression: str, retried: int, millis: float) -> None:
    assert compile_retry_delay(expression)(retried) == millis


@pytest.mark.parametrize(
    "expression", ["", "retried.__class__", "open('x')", "[1]", "x + 1", "pow", "max(a=1)"]
)
def test_retry_delay_expression_refuses_anything_else(expression: str) -> None:
    with pytest.raises(ApiError) as caught:
        compile_retry_delay(expression)

    assert caught.value.status == 400


def test_running_server_reports_its_url_and_stops() -> None:
    with serve(LocalQStash()) as server:
        url = server.url
        response = requests.get(f"{url}/v2/keys", timeout=5)

    assert url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0
    assert response.status_code == 401
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/keys", timeout=1)
    server.shutdown()


def test_serve_wsgi_serves_any_app() -> None:
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    with serve_wsgi(app) as server:
        body = requests.get(f"{server.url}/echo", timeout=5).text

    assert body == "/echo"
