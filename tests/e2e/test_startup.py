from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

HEAVY = ("stripe", "requests", "alembic", "qstash", "httpx")
PROBE = """
import json, sys
from service import create_app
app = create_app(json.loads(sys.argv[1]))
if sys.argv[2:] == ["--qstash-client"]:
    from service.extensions import get_qstash
    get_qstash(app).client
else:
    app.test_cli_runner().invoke(args=sys.argv[2:])
print(json.dumps([name for name in {heavy!r} if name in sys.modules]))
"""


def loaded(env: dict[str, str], *command: str) -> list[str]:
    """The heavy packages a fresh interpreter has loaded after building the app (and a command)."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(env),
                           *command], cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_start_up_loads_neither_the_sdks_nor_alembic(env: dict[str, str]) -> None:
    # The simulated provider needs no Stripe SDK; only migrations and /readyz need Alembic;
    # only calls to the QStash API need its SDK and httpx.
    assert loaded(env, "jobs", "list") == []


def test_alembic_is_loaded_by_what_uses_it(env: dict[str, str]) -> None:
    assert loaded(env, "db", "current") == ["alembic"]


def test_the_stripe_provider_loads_its_sdk(env: dict[str, str]) -> None:
    stripe = {**env, "PAYOUT_PROVIDER": "stripe", "STRIPE_SECRET_KEY": "sk_test_startup"}
    assert "stripe" in loaded(stripe, "jobs", "list")


def test_the_qstash_client_loads_its_sdk_when_first_used(env: dict[str, str]) -> None:
    assert loaded(env, "--qstash-client") == ["qstash", "httpx"]
