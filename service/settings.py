from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .payouts.rules import DEFAULT_DELAY_DAYS, DelayTable, parse_delay_table
from .redaction import Scrubber, redact_url
from .runs.jobs import Job

AppEnv = Literal["development", "staging", "production"]
LogFormat = Literal["json", "text"]
PayoutProviderName = Literal["stripe", "simulated"]
NotifierName = Literal["log", "smtp"]

APP_ENVS: tuple[AppEnv, ...] = ("development", "staging", "production")
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PAYOUT_PROVIDERS: tuple[PayoutProviderName, ...] = ("stripe", "simulated")
NOTIFIERS: tuple[NotifierName, ...] = ("log", "smtp")
MAX_PAYOUT_CONCURRENCY = 64
# Bodies above this are refused (413) unless MAX_BODY_BYTES says otherwise.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Stripe allows an account 100 requests per second in live mode and 25 in test mode, and (its
# current rate-limit page) 25 per second on any one endpoint unless stated; the rest of the
# platform (checkouts, webhook follow-ups, the dashboard) shares them. A payout run takes a
# fifth of the live allowance, below the 25 per second of POST /v1/transfers, and 40 % of the
# test allowance; the two payout jobs that call Stripe together stay within 40 % of either.
LIVE_MAX_REQUESTS_PER_SECOND = 20
TEST_MAX_REQUESTS_PER_SECOND = 10
MAX_REQUESTS_PER_SECOND = 1000
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# Field metadata: repr shows the value through redact_url.
URL = {"url": True}
T = TypeVar("T", bound=str)


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    """Every setting the service reads, parsed once from an explicit mapping."""

    app_url: str | None = field(default=None, metadata=URL)
    qstash_token: str | None = field(default=None, repr=False)
    qstash_current_signing_key: str | None = field(default=None, repr=False)
    qstash_next_signing_key: str | None = field(default=None, repr=False)
    qstash_url: str | None = field(default=None, metadata=URL)
    qstash_clock_tolerance: int = 30
    database_url: str | None = field(default=None, repr=False)
    admin_api_token: str | None = field(default=None, repr=False)
    app_env: AppEnv = "development"
    service_name: str = "eleva-jobs"
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    job_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Payouts: the provider, how hard to push it, and the payout rules.
    payout_provider: PayoutProviderName = "simulated"
    stripe_secret_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = field(default=None, metadata=URL)
    stripe_max_network_retries: int = 2
    stripe_timeout: int = 20
    payout_simulated_latency_ms: int = 0
    payout_simulated_failure_rate: float = 0.0
    payout_concurrency: int = 8
    payout_max_requests_per_second: int = TEST_MAX_REQUESTS_PER_SECOND
    payout_delay_days: DelayTable = field(
        default_factory=lambda: parse_delay_table(DEFAULT_DELAY_DAYS)
    )
    payout_max_attempts: int = 3
    payout_retry_backoff_seconds: int = 600
    payout_stale_after_seconds: int = 1200
    payout_payment_check_days: int = 3
    # Notifications: the channel and the outbox's retry policy.
    notifier: NotifierName = "log"
    smtp_url: str | None = field(default=None, repr=False)
    mail_from: str | None = None
    smtp_timeout: int = 10
    notifier_max_attempts: int = 5
    notifier_max_per_run: int = 500
    # Daily maintenance: how long finished job runs and sent notifications are kept.
    retention_job_runs_days: int = 30
    retention_notifications_days: int = 90
    # Monitoring: the bearer token Prometheus sends to GET /metrics (unset: the endpoint is
    # off), and where gunicorn's worker processes share their metric values.
    metrics_token: str | None = field(default=None, repr=False)
    prometheus_multiproc_dir: str | None = None

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.metadata.get("url") and value is not None:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @functools.cached_property
    def _scrubber(self) -> Scrubber:
        return Scrubber.of(
            (self.qstash_token, self.qstash_current_signing_key, self.qstash_next_signing_key,
             self.admin_api_token, self.stripe_secret_key, self.metrics_token),
            urls=(self.database_url, self.smtp_url),
        )

    def scrub(self, text: str) -> str:
        """Return text without the configured secrets, API keys or authorization credentials.

        Applied to every log line and to the error a failed run stores, so that an exception
        whose message quotes a token, a key or a database password does not carry it further.
        """
        return self._scrubber(text)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; a bad value raises ConfigurationError."""

        def text(name: str, *aliases: str) -> str | None:
            for key in (name, *aliases):
                value = env.get(key)
                if value is not None and value.strip():
                    return value.strip()
            return None

        def integer(name: str, default: int, *, minimum: int = 0,
                    maximum: int | None = None) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigurationError(
                    f"{name}={raw!r} is not an integer; set it to a whole number "
                    f"or remove it to use the default ({default})"
                ) from None
            if value < minimum:
                raise ConfigurationError(f"{name} must be at least {minimum} (got {value})")
            if maximum is not None and value > maximum:
                raise ConfigurationError(f"{name} must be at most {maximum} (got {value})")
            return value

        def fraction(name: str, default: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(
                    f"{name}={raw!r} is not a number from 0 to 1; e.g. 0.05 for 5 %"
                )
            return value

        def choice(name: str, options: tuple[T, ...], default: T) -> T:
            raw = (text(name) or default).lower()
            for option in options:
                if option.lower() == raw:
                    return option
            raise ConfigurationError(
                f"{name}={raw!r} is not one of {', '.join(options)}; set one of them"
            )

        service_name = text("SERVICE_NAME") or "eleva-jobs"
        if not SERVICE_NAME_RE.fullmatch(service_name):
            raise ConfigurationError(
                f"SERVICE_NAME={service_name!r} may only contain letters, digits, '-' and '_' "
                "(it becomes part of every QStash schedule id)"
            )
        payout_provider = choice("PAYOUT_PROVIDER", PAYOUT_PROVIDERS, "simulated")
        stripe_secret_key = text("STRIPE_SECRET_KEY")
        if payout_provider == "stripe" and stripe_secret_key is None:
            raise ConfigurationError(
                "STRIPE_SECRET_KEY is missing: PAYOUT_PROVIDER=stripe needs the platform's secret "
                "key (sk_live_... or sk_test_...) from the Stripe dashboard"
            )
        stripe_api_base = (text("STRIPE_API_BASE") or "").rstrip("/") or None
        if stripe_api_base is not None:
            parts = urlsplit(stripe_api_base)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # Not quoted: it may hold a password, or a key pasted into the wrong variable.
                raise ConfigurationError(
                    "STRIPE_API_BASE is not an absolute http(s) URL (e.g. "
                    "http://127.0.0.1:12111 for the local double); remove it to use Stripe's API"
                )
        live = (payout_provider == "stripe" and stripe_secret_key is not None
                and stripe_secret_key.startswith(LIVE_KEY_PREFIXES))
        raw_delays = text("PAYOUT_DELAY_DAYS") or DEFAULT_DELAY_DAYS
        try:
            delays = parse_delay_table(raw_delays)
        except ValueError as exc:
            raise ConfigurationError(
                f"PAYOUT_DELAY_DAYS={raw_delays!r} is invalid: {exc} "
                f"(the default is {DEFAULT_DELAY_DAYS})"
            ) from None
        notifier = choice("NOTIFIER", NOTIFIERS, "log")
        smtp_url, mail_from = text("SMTP_URL"), text("MAIL_FROM")
        if notifier == "smtp":
            missing = [name for name, value in (("SMTP_URL", smtp_url), ("MAIL_FROM", mail_from))
                       if value is None]
            if missing:
                raise ConfigurationError(
                    f"{' and '.join(missing)} missing: NOTIFIER=smtp needs SMTP_URL (e.g. "
                    "smtp+starttls://user:password@smtp.example.com:587) and MAIL_FROM "
                    "(e.g. 'Eleva Care <payouts@eleva.care>')"
                )
            if smtp_url is not None and _at_after_authority(smtp_url):
                # The SMTP URL parser would read the rest of the password as a path, an option
                # or a port, and could quote part of it back; say only what to fix.
                raise ConfigurationError(
                    "SMTP_URL has an '@' after the host: a '/', '?' or '#' in the user name or "
                    "password ends it early; percent-encode them (%2F, %3F, %23, and '@' as %40)"
                )
        return cls(
            app_url=(text("APP_URL", "NEXT_PUBLIC_APP_URL") or "").rstrip("/") or None,
            qstash_token=text("QSTASH_TOKEN"),
            qstash_current_signing_key=text("QSTASH_CURRENT_SIGNING_KEY"),
            qstash_next_signing_key=text("QSTASH_NEXT_SIGNING_KEY"),
            qstash_url=(text("QSTASH_URL") or "").rstrip("/") or None,
            qstash_clock_tolerance=integer("QSTASH_CLOCK_TOLERANCE", 30),
            database_url=text("DATABASE_URL"),
            admin_api_token=text("ADMIN_API_TOKEN"),
            app_env=choice("APP_ENV", APP_ENVS, "development"),
            service_name=service_name,
            log_level=choice("LOG_LEVEL", LOG_LEVELS, "INFO"),
            log_format=choice("LOG_FORMAT", LOG_FORMATS, "json"),
            max_body_bytes=integer("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024),
            job_env={k: v for k, v in env.items() if k.startswith("JOB_")},
            payout_provider=payout_provider,
            stripe_secret_key=stripe_secret_key,
            stripe_api_base=stripe_api_base,
            stripe_max_network_retries=integer("STRIPE_MAX_NETWORK_RETRIES", 2, maximum=10),
            stripe_timeout=integer("STRIPE_TIMEOUT", 20, minimum=1, maximum=120),
            payout_simulated_latency_ms=integer("PAYOUT_SIMULATED_LATENCY_MS", 0,
                                                maximum=60_000),
            payout_simulated_failure_rate=fraction("PAYOUT_SIMULATED_FAILURE_RATE", 0.0),
            payout_concurrency=integer("PAYOUT_CONCURRENCY", 8, minimum=1,
                                       maximum=MAX_PAYOUT_CONCURRENCY),
            payout_max_requests_per_second=integer(
                "PAYOUT_MAX_REQUESTS_PER_SECOND",
                LIVE_MAX_REQUESTS_PER_SECOND if live else TEST_MAX_REQUESTS_PER_SECOND,
                minimum=1, maximum=MAX_REQUESTS_PER_SECOND),
            payout_delay_days=delays,
            payout_max_attempts=integer("PAYOUT_MAX_ATTEMPTS", 3, minimum=1, maximum=20),
            payout_retry_backoff_seconds=integer("PAYOUT_RETRY_BACKOFF_SECONDS", 600),
            payout_stale_after_seconds=integer("PAYOUT_STALE_AFTER_SECONDS", 1200, minimum=60),
            payout_payment_check_days=integer("PAYOUT_PAYMENT_CHECK_DAYS", 3, maximum=365),
            notifier=notifier,
            smtp_url=smtp_url,
            mail_from=mail_from,
            smtp_timeout=integer("SMTP_TIMEOUT", 10, minimum=1, maximum=300),
            notifier_max_attempts=integer("NOTIFIER_MAX_ATTEMPTS", 5, minimum=1, maximum=50),
            notifier_max_per_run=integer("NOTIFIER_MAX_PER_RUN", 500, minimum=1),
            retention_job_runs_days=integer("RETENTION_JOB_RUNS_DAYS", 30, minimum=1),
            retention_notifications_days=integer("RETENTION_NOTIFICATIONS_DAYS", 90, minimum=1),
            metrics_token=text("METRICS_TOKEN"),
            prometheus_multiproc_dir=text("PROMETHEUS_MULTIPROC_DIR"),
        )


def _at_after_authority(url: str) -> bool:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False  # the URL's own parser reports it
    return "@" in url and "@" not in netloc


@dataclass(frozen=True, kw_only=True)
class ConfigProblem:
    variable: str
    problem: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.variable}: {self.problem} ({self.fix})"


@dataclass(frozen=True, kw_only=True)
class ConfigReport:
    valid: bool
    problems: tuple[ConfigProblem, ...]

    def errors_for(self, *variables: str) -> tuple[ConfigProblem, ...]:
        """Return the blocking problems that concern the given variables."""
        return tuple(
            p for p in self.problems if p.severity == "error" and p.variable in variables
        )

    def to_dict(self) -> dict[str, object]:
        return {"valid": self.valid, "problems": [asdict(p) for p in self.problems]}


SIGNING_KEY_VARS = ("QSTASH_CURRENT_SIGNING_KEY", "QSTASH_NEXT_SIGNING_KEY")


def validate_qstash_config(settings: Settings) -> ConfigReport:
    """Check everything QStash needs and say, per variable, what is wrong and how to fix it."""
    problems: list[ConfigProblem] = []
    console = "copy it from the Upstash console (QStash > Signing keys)"

    if settings.app_url is None:
        problems.append(ConfigProblem(
            variable="APP_URL",
            problem="missing",
            fix="set it to the public base URL QStash calls, e.g. https://jobs.example.com",
        ))
    else:
        parts = urlsplit(settings.app_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(ConfigProblem(
                variable="APP_URL",
                problem="not an absolute http(s) URL",
                fix="use the form https://host[:port][/prefix], without a query string",
            ))
        elif parts.query or parts.fragment:
            problems.append(ConfigProblem(
                variable="APP_URL",
                problem="has a query string or fragment",
                fix="remove everything after the path",
            ))

    if settings.qstash_token is None:
        problems.append(ConfigProblem(
            variable="QSTASH_TOKEN",
            problem="missing",
            fix="copy the QStash token from the Upstash console (needed to sync schedules)",
        ))

    keys = {
        "QSTASH_CURRENT_SIGNING_KEY": settings.qstash_current_signing_key,
        "QSTASH_NEXT_SIGNING_KEY": settings.qstash_next_signing_key,
    }
    for variable, value in keys.items():
        if value is None:
            problems.append(ConfigProblem(variable=variable, problem="missing", fix=console))
        elif not value.startswith("sig_"):
            problems.append(ConfigProblem(
                variable=variable,
                problem="does not start with 'sig_'",
                fix=f"{console}; the value includes its 'sig_' prefix",
            ))
    current, nxt = keys.values()
    if current is not None and current == nxt:
        problems.append(ConfigProblem(
            variable="QSTASH_NEXT_SIGNING_KEY",
            problem="equal to QSTASH_CURRENT_SIGNING_KEY",
            fix="set both keys from the console; after a key roll they differ",
            severity="warning",
        ))

    if settings.qstash_url is not None:
        parts = urlsplit(settings.qstash_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(ConfigProblem(
                variable="QSTASH_URL",
                problem="not an absolute http(s) URL",
                fix="remove it to use https://qstash.upstash.io, or set a full URL",
            ))

    valid = not any(p.severity == "error" for p in problems)
    return ConfigReport(valid=valid, problems=tuple(problems))


# The job whose timeout bounds how long a healthy run may hold a transfer in PROCESSING.
TRANSFERS_JOB = "process-expert-transfers"


def validate_job_settings(settings: Settings, jobs: Mapping[str, Job]) -> None:
    """Refuse settings that contradict the registered jobs' timeouts."""
    transfers_job = jobs.get(TRANSFERS_JOB)
    if transfers_job is not None:
        longest_run = int(transfers_job.lease_duration.total_seconds())
        if settings.payout_stale_after_seconds <= longest_run:
            raise ConfigurationError(
                f"PAYOUT_STALE_AFTER_SECONDS={settings.payout_stale_after_seconds} must exceed "
                f"{longest_run} ({TRANSFERS_JOB}'s timeout plus its lease grace), or recovery "
                "would take transfers from runs that are still working"
            )
