from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.databases import SetupError
from bench.load.harness import NOOP_JOB, Server
from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY
from service.qstash.signature import qstash_claims, sign_claims

LUA_SCRIPT = Path(__file__).resolve().parent / "deliveries.lua"
# Tokens minted per second of a wrk run of deliveries (each delivery needs its own): above
# any rate seen on two CPUs (1,700/s); a run that uses them up stops with a setup error.
MAX_DELIVERY_RATE = 3000
LATENCY_RE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True, kw_only=True)
class WrkResult:
    requests: int
    rps: float
    latency_ms: dict[str, float]  # p50, p75, p90, p99
    non_2xx: int  # wrk's "Non-2xx or 3xx responses"
    socket_errors: dict[str, int]
    script: dict[str, Any] | None  # deliveries.lua's counters

    @property
    def errors(self) -> int:
        scripted = int(self.script["not_ok"]) if self.script else 0
        return max(self.non_2xx, scripted) + sum(self.socket_errors.values())

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "latency_ms": self.latency_ms,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "errors": self.errors,
        }
        if self.script:
            body["sent"] = self.script["sent"]
            body["ok_2xx"] = self.script["ok"]
            body["statuses"] = self.script["statuses"]
        return body


def parse_wrk(output: str) -> WrkResult:
    """Read wrk's report (run with --latency) and the BENCH_RESULT line of deliveries.lua."""
    latency = {f"p{q}": round(float(v) * UNIT_MS[u], 3) for q, v, u in LATENCY_RE.findall(output)}
    if set(latency) != {"p50", "p75", "p90", "p99"}:
        raise SetupError(f"wrk printed no latency distribution:\n{output}")
    requests_match = re.search(r"^\s*(\d+) requests in ", output, re.M)
    rps_match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not requests_match or not rps_match:
        raise SetupError(f"unexpected wrk output:\n{output}")
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        output)
    if sockets:
        socket_errors = dict(zip(socket_errors, map(int, sockets.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    script = None
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            script = json.loads(line[len("BENCH_RESULT "):])
    return WrkResult(requests=int(requests_match.group(1)), rps=float(rps_match.group(1)),
                     latency_ms=latency, non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
                     socket_errors=socket_errors, script=script)


@dataclass(frozen=True, kw_only=True)
class Deliveries:
    """What deliveries.lua sends: a signed body to a receiver, each with its own message id."""

    url: str  # the URL the tokens are signed for: the receiver's public URL + path
    path: str  # the receiver's path, e.g. /api/qstash
    body: bytes
    targets: tuple[str, ...]  # X-Qstash-Target-Url values used in turn; empty: no such header
    run: str  # message id prefix, unique per wrk run
    lifetime: int  # seconds each token stays valid


def run_wrk(url: str, *, duration: int, connections: int, threads: int,
            deliveries: Deliveries | None = None) -> WrkResult:
    """Run wrk for at most `duration` seconds; with `deliveries`, through deliveries.lua."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
               "--latency"]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="wrk-tokens-") as folder:
        if deliveries is not None:
            command += ["-s", str(LUA_SCRIPT)]
            env.update(mint_tokens(deliveries, count=duration * MAX_DELIVERY_RATE,
                                   threads=threads, folder=Path(folder)))
        command.append(url)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=duration + 60, check=False)
        except subprocess.TimeoutExpired:
            raise SetupError(f"wrk did not stop within {duration + 60} s") from None
    if done.returncode != 0:
        raise SetupError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    if result.script and result.script.get("exhausted"):
        raise SetupError(f"wrk sent more than {MAX_DELIVERY_RATE} deliveries/s and used up its "
                         "tokens; raise MAX_DELIVERY_RATE in bench/load/wrk.py")
    return result


def mint_tokens(deliveries: Deliveries, *, count: int, threads: int,
                folder: Path) -> dict[str, str]:
    """Sign `count` tokens, one per delivery, into a file per wrk thread; return the settings.

    The service refuses a token it has already seen (replay protection), so, as QStash
    does, every delivery carries a token of its own (its own `jti`).
    """
    per_thread = math.ceil(count / threads)
    for thread in range(1, threads + 1):
        with (folder / f"tokens-{thread}").open("w") as out:
            for _ in range(per_thread):
                claims = qstash_claims(url=deliveries.url, body=deliveries.body,
                                       lifetime=deliveries.lifetime)
                out.write(sign_claims(claims, DEV_CURRENT_SIGNING_KEY) + "\n")
    return {
        "BENCH_TOKENS": str(folder / "tokens"),
        "BENCH_BODY": deliveries.body.decode(),
        "BENCH_PATH": deliveries.path,
        "BENCH_TARGETS": " ".join(deliveries.targets),
        "BENCH_RUN": deliveries.run,
    }


def delivery_settings(server: Server, *, run: str, lifetime: int) -> Deliveries:
    """Deliveries of the no-op job to this server, tagged with the run's message id prefix."""
    return Deliveries(url=server.app_url + "/api/qstash", path="/api/qstash", body=b"{}",
                      targets=(f"/api/cron/{NOOP_JOB}",), run=run, lifetime=lifetime)


def new_tag(letter: str) -> str:
    return f"{letter}{uuid.uuid4().hex[:10]}"
