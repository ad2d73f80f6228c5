"""Django settings of the peer: django-qstash's webhook storing a task result, as its README.

As a new project has them, except where bench/peer/run.py says otherwise: PEER_LOGS turns on the
library's INFO lines (two per delivery), PEER_PERSISTENT keeps database connections open.
"""

import os

SECRET_KEY = "bench-peer-not-secret"  # a loopback benchmark's Django project
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "peer_urls"
WSGI_APPLICATION = "peer_wsgi.application"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_qstash",
    "django_qstash.results",
    "peertasks",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]

_url = os.environ["PEER_DATABASE_URL"]
_max_age = None if os.environ.get("PEER_PERSISTENT") else 0  # Django's default: 0
if _url.startswith("sqlite:///"):
    # WAL and the busy timeout the service runs SQLite with (a new project has neither: this
    # favours the peer).
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _url[10:],
                             "CONN_MAX_AGE": _max_age,
                             "OPTIONS": {"timeout": 15, "init_command":
                                         "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}}}
else:
    _rest = _url.split("://", 1)[1]
    _user, _, _hostpart = _rest.rpartition("@")
    _host, _, _name = _hostpart.partition("/")
    _hostname, _, _port = _host.partition(":")
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": _name,
                             "USER": _user or "postgres", "HOST": _hostname,
                             "PORT": _port or "5432", "CONN_MAX_AGE": _max_age}}

QSTASH_TOKEN = "bench-token"
QSTASH_CURRENT_SIGNING_KEY = os.environ["QSTASH_CURRENT_SIGNING_KEY"]
QSTASH_NEXT_SIGNING_KEY = os.environ["QSTASH_NEXT_SIGNING_KEY"]
DJANGO_QSTASH_DOMAIN = os.environ["PEER_URL"]
DJANGO_QSTASH_WEBHOOK_PATH = "/qstash/webhook/"
# The benchmark talks plain HTTP on loopback; the signature is minted for that URL.
DJANGO_QSTASH_FORCE_HTTPS = False

if os.environ.get("PEER_LOGS"):
    # The library's two lines per delivery (webhook_received, task_completed), as the service
    # logs two per run.
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "root": {"handlers": ["console"], "level": "INFO"},
    }
