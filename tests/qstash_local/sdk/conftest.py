from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from devtools.qstash_local import client_settings
from tests.qstash_local.helpers import Stack
from tests.qstash_local.sdk.helpers import JS_DIR, JsCall


@pytest.fixture
def js(qs: Stack) -> JsCall:
    """Call the JavaScript SDK against the local server: js("messages.cancel", id).

    js("batch", [op, [args...]], ...) makes several calls in one Node process, in order, and
    returns the list of their answers.
    """
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "@upstash" / "qstash").is_dir():
        pytest.fail("the JavaScript SDK is not installed: run `make js-deps` (needs Node 20+)")
    env = {"PATH": os.environ.get("PATH", ""), **client_settings(qs.server.url)}

    def call(operation: str, *args: Any) -> Any:
        done = subprocess.run(
            [node, str(JS_DIR / "client.mjs"), operation],
            input=json.dumps(args),
            cwd=JS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            pytest.fail(f"node {operation} exited {done.returncode}: {done.stderr[-2000:]}")
        return answer

    return call


