from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine

from bench.load.harness import Server, cpu_seconds, rss_of, settled_runs
from bench.load.wrk import delivery_settings, new_tag, run_wrk
from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY
from service.qstash.signature import MAX_LIFETIME, qstash_claims, sign_claims

STORM_JOB = "storm-probe"


@dataclass(frozen=True, kw_only=True)
class Plan:
    quick: bool
    phases: tuple[str, ...]
    workers: int
    connections: int
    threads: int
    duration: int
    warmup: int
    deliveries: int
    chunks: int
    storm: int
    storm_concurrency: int
    storm_hold: float


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    passed: bool
    detail: str
    enforced: bool  # a failed enforced check fails the run

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "enforced": self.enforced}


def warm_up(server: Server, plan: Plan) -> None:
    """Let every worker import lazily loaded code and fill its connection pool first."""
    run_wrk(server.url + "/healthz", duration=plan.warmup, connections=plan.connections,
            threads=plan.threads)
    run_wrk(server.url, duration=plan.warmup, connections=plan.connections, threads=plan.threads,
            deliveries=delivery_settings(server, run=new_tag("W"), lifetime=MAX_LIFETIME))


def load_phase(server: Server, engine: Engine, plan: Plan) -> dict[str, Any]:
    """Bare route, then verified deliveries, at the same connections for the same duration.

    Besides wrk's figures, the workers' CPU time per request: it does not depend on what else
    the machine runs (PostgreSQL's own processes are not counted).
    """
    pids = server.worker_pids()
    cpu = cpu_seconds(pids)
    bare = run_wrk(server.url + "/healthz", duration=plan.duration,
                   connections=plan.connections, threads=plan.threads)
    now = cpu_seconds(pids)
    bare_cpu, cpu = now - cpu, now
    tag = new_tag("L")
    delivered = run_wrk(server.url, duration=plan.duration, connections=plan.connections,
                        threads=plan.threads,
                        deliveries=delivery_settings(server, run=tag,
                                                     lifetime=MAX_LIFETIME))
    runs = settled_runs(engine, tag + "-")
    delivered_cpu = cpu_seconds(pids) - cpu
    script = delivered.script or {}
    bare_ms = 1000 * bare_cpu / bare.requests if bare.requests else 0.0
    delivery_ms = 1000 * delivered_cpu / sum(runs.values()) if runs else 0.0
    return {
        "bare": {**bare.to_dict(), "worker_cpu_ms_per_request": round(bare_ms, 3)},
        "deliveries": {**delivered.to_dict(),
                       "worker_cpu_ms_per_request": round(delivery_ms, 3)},
        "throughput_ratio": round(delivered.rps / bare.rps, 4) if bare.rps else 0.0,
        "cpu_ratio": round(bare_ms / delivery_ms, 4) if delivery_ms else 0.0,
        "ledger": ledger_report(runs, ok=int(script.get("ok", 0)),
                                sent=int(script.get("sent", 0))),
    }


def ledger_report(runs: Mapping[str, int], *, ok: int, sent: int) -> dict[str, Any]:
    """Compare the ledger with what wrk saw.

    wrk stops on time with up to one request per connection in flight: those reached the
    server (and the ledger) but their answers were never read. So every 2xx must have its run,
    and runs beyond the 2xx count can only be those abandoned requests.
    """
    total = sum(runs.values())
    final = all(status in ("succeeded", "skipped") for status in runs)
    return {
        "runs": dict(runs),
        "runs_total": total,
        "ok_2xx": ok,
        "sent": sent,
        "in_flight_at_stop": total - ok,
        "consistent": final and ok <= total <= sent,
    }


def storm_phase(server: Server, engine: Engine, plan: Plan, workdir: Path) -> dict[str, Any]:
    """Deliver one message id many times at once; the job must run exactly once."""
    marker = workdir / "storm-executions.log"
    body = json.dumps({"job": STORM_JOB, "marker": str(marker), "sleep": plan.storm_hold},
                      separators=(",", ":")).encode()
    message_id = new_tag("S")
    claims = qstash_claims(url=server.app_url + "/api/qstash", body=body, lifetime=300)
    headers = {
        "Upstash-Signature": sign_claims(claims, DEV_CURRENT_SIGNING_KEY),
        "Upstash-Message-Id": message_id,
        "Upstash-Retried": "0",
        "X-Qstash-Target-Url": f"/api/cron/{STORM_JOB}",
        "Content-Type": "application/json",
        "User-Agent": "Upstash-QStash",
    }
    concurrency = min(plan.storm_concurrency, plan.storm)
    shares = [plan.storm // concurrency + (1 if i < plan.storm % concurrency else 0)
              for i in range(concurrency)]
    start = threading.Barrier(concurrency)

    def deliver(count: int) -> list[tuple[str, str | None]]:
        outcomes: list[tuple[str, str | None]] = []
        with requests.Session() as http:
            start.wait(timeout=30)
            for _ in range(count):
                outcomes.append(classify(http, server.url + "/api/qstash", body, headers))
        return outcomes

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = [o for share in pool.map(deliver, shares) for o in share]
    elapsed = time.monotonic() - started
    kinds = Counter(kind for kind, _ in outcomes)
    run_ids = {run_id for _, run_id in outcomes if run_id}
    runs = settled_runs(engine, message_id)
    executions = len(marker.read_text().splitlines()) if marker.exists() else 0
    return {
        "deliveries": len(outcomes),
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "outcomes": dict(sorted(kinds.items())),
        "runs": runs,
        "distinct_run_ids": len(run_ids),
        "executions": executions,
        "once": (kinds["ran"] == 1 and runs == {"succeeded": 1} and executions == 1
                 and len(run_ids) == 1 and set(kinds) <= {"ran", "duplicate", "in_progress"}),
    }


def classify(http: requests.Session, url: str, body: bytes,
             headers: Mapping[str, str]) -> tuple[str, str | None]:
    """Post one storm delivery; name its outcome and the run id it reports."""
    try:
        response = http.post(url, data=body, headers=headers, timeout=30)
    except requests.RequestException as exc:
        return f"connection:{type(exc).__name__}", None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    run_id = answer.get("run_id")
    if response.status_code == 200 and answer.get("status") == "succeeded":
        return ("duplicate" if answer.get("duplicate") else "ran"), run_id
    if response.status_code == 503 and answer.get("error") == "attempt_in_progress":
        return "in_progress", run_id
    return f"http_{response.status_code}:{answer.get('error') or answer.get('status')}", run_id


def memory_phase(server: Server, engine: Engine, plan: Plan,
                 rate: float | None) -> dict[str, Any]:
    """RSS of each worker before and after plan.deliveries deliveries, sampled per chunk.

    wrk runs for a duration, not a count (its threads can stop early, the process cannot), so
    each chunk lasts as long as the measured rate needs for its share; the phase ends once
    plan.deliveries were answered, overshooting by at most a fraction of a chunk.
    """
    pids = server.worker_pids()
    samples: list[dict[str, Any]] = [{"delivered": 0, "seconds": 0.0, "rss_mb": rss_of(pids)}]
    tag = new_tag("M")
    delivered = sent = errors = 0
    started = time.monotonic()
    deadline = started + max(60.0, plan.deliveries / 50)  # a bound: ~50 deliveries/s at worst
    chunk_size = math.ceil(plan.deliveries / plan.chunks)
    rate = rate or 200.0
    chunk = 0
    while delivered < plan.deliveries and time.monotonic() < deadline:
        wanted = min(chunk_size, plan.deliveries - delivered)
        # Each chunk's tokens are minted before it starts and live MAX_LIFETIME s, like QStash's.
        duration = max(1, min(math.ceil(wanted / rate), MAX_LIFETIME - 60))
        chunk_started = time.monotonic()
        result = run_wrk(server.url, duration=duration, connections=plan.connections,
                         threads=plan.threads,
                         deliveries=delivery_settings(server, run=f"{tag}c{chunk}",
                                                      lifetime=MAX_LIFETIME))
        script = result.script or {}
        answered = int(script.get("ok", 0))
        delivered += answered
        sent += int(script.get("sent", 0))
        errors += result.errors
        rate = max(answered / (time.monotonic() - chunk_started), 10.0)
        chunk += 1
        samples.append({"delivered": delivered, "seconds": round(time.monotonic() - started, 1),
                        "rss_mb": rss_of(pids)})
    after = server.worker_pids()
    runs = settled_runs(engine, tag)
    before_rss, after_rss = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    growth = {pid: round(after_rss[pid] - before_rss[pid], 2) for pid in before_rss}
    return {
        "deliveries": delivered,
        "target": plan.deliveries,
        "errors": errors,
        "workers_restarted": after != pids,
        "samples": samples,
        "growth_mb": growth,
        "max_growth_mb": max(growth.values()) if growth else 0.0,
        "ledger": ledger_report(runs, ok=delivered, sent=sent),
    }
