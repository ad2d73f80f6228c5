from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from gunicorn import glogging

from .errors import ConfigurationError
from .logs import ScrubbingFormatter
from .redaction import redact_secrets

# Request headers and environ entries gunicorn offers to access log formats that can hold
# a credential; a format that names one gets "-".
_SECRET_ATOMS = ("{authorization}i", "{proxy-authorization}i", "{cookie}i",
                 "{http_authorization}e", "{http_proxy_authorization}e", "{http_cookie}e",
                 "{query_string}e", "{raw_uri}e", "{request_uri}e")


class ScrubbingLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, whose every line passes the service's scrubber (Settings.scrub).

    The access log leaves out the user field (a Basic-auth user name can be a token, as with
    `curl -u "$TOKEN:"`) and the query string (a caller may put a token there).
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        scrub = _scrubber()
        root = logging.getLogger()
        if not root.handlers:
            # Libraries' warnings would otherwise reach stderr through logging.lastResort.
            fallback = logging.StreamHandler(sys.stderr)
            fallback.setFormatter(logging.Formatter(self.error_fmt, self.datefmt))
            root.addHandler(fallback)
        for log in (self.error_log, self.access_log, root):
            for handler in log.handlers:
                if not isinstance(handler.formatter, ScrubbingFormatter):
                    handler.setFormatter(
                        ScrubbingFormatter(handler.formatter or logging.Formatter(), scrub))

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any],
              request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        path = str(environ.get("RAW_URI", "")).split("?", 1)[0].split("#", 1)[0]
        atoms["u"] = "-"
        atoms["q"] = "-"
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}"
        for name in _SECRET_ATOMS:
            atoms.pop(name, None)
        return atoms


def _scrubber() -> Callable[[str], str]:
    # The same settings the app reads (environment over .env), for the same secrets.
    from . import load_settings

    try:
        return load_settings(None).scrub
    except ConfigurationError:
        # The app will refuse to start and say why; until then, the generic patterns.
        return redact_secrets
