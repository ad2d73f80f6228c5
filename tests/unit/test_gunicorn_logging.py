from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

from gunicorn.config import Config
from gunicorn.glogging import SafeAtoms

from service.gunicorn_logging import ScrubbingLogger

TOKEN = "Zm9vYmFyYmF6cXV4"


def access_line(log_format: str) -> str:
    """The access line gunicorn would write for one request, with this format."""
    cfg = Config()
    cfg.set("access_log_format", log_format)
    logger = ScrubbingLogger.__new__(ScrubbingLogger)  # no setup(): it configures logging
    logger.cfg = cfg
    response = SimpleNamespace(status="200 OK", sent=17,
                               headers=[("Content-Type", "application/json"),
                                        ("X-Request-Id", "r-1")])
    request = SimpleNamespace(headers=[("HOST", "jobs.example"),
                                       ("AUTHORIZATION", f"Basic {TOKEN}"),
                                       ("USER-AGENT", "curl/8"), ("COOKIE", f"s={TOKEN}"),
                                       ("X-REQUEST-ID", "r-1")])
    environ: dict[str, Any] = {
        "REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "GET", "PATH_INFO": "/api/transfers",
        "RAW_URI": f"/api/transfers?token={TOKEN}", "QUERY_STRING": f"token={TOKEN}",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_USER_AGENT": "curl/8",
        "HTTP_AUTHORIZATION": f"Basic {TOKEN}", "HTTP_COOKIE": f"s={TOKEN}",
        "SERVER_NAME": "jobs.example",
    }
    atoms = logger.atoms(response, request, environ, datetime.timedelta(microseconds=1500))
    return str(cfg.access_log_format % SafeAtoms(atoms))


def test_default_format_has_no_user_and_no_query() -> None:
    line = access_line(Config().access_log_format)
    assert line.startswith('10.0.0.7 - - [')
    assert '"GET /api/transfers HTTP/1.1" 200 17 "-" "curl/8"' in line
    assert TOKEN not in line


def test_named_header_and_environ_atoms_are_filled_and_secret_ones_are_not() -> None:
    line = access_line("%({x-request-id}i)s %({content-type}o)s %({server_name}e)s %({host}i)s "
                       "%({authorization}i)s %({cookie}i)s %({query_string}e)s %({raw_uri}e)s "
                       "%({http_cookie}e)s %(q)s %(u)s %(U)s %(D)s %(m)s")
    assert line == ("r-1 application/json jobs.example jobs.example - - - - - - - "
                    "/api/transfers 1500 GET")
