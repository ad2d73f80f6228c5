from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.load.phases import Check, Plan
from service import db

# Targets of issue 6.
MIN_THROUGHPUT_RATIO = 0.5
MAX_P99_MS = 50.0
MAX_RSS_GROWTH_MB = 5.0  # "no growth beyond a few MB" per worker


def checks_for(result: Mapping[str, Any], plan: Plan) -> list[Check]:
    """Correctness checks are always enforced; performance targets only in the full run."""
    checks: list[Check] = []

    def add(name: str, passed: bool, detail: str, *, target: bool = False) -> None:
        checks.append(Check(name=name, passed=passed, detail=detail,
                            enforced=not (target and plan.quick)))

    load = result.get("load")
    if load:
        bare, delivered, ledger = load["bare"], load["deliveries"], load["ledger"]
        add("load: zero errors", bare["errors"] == 0 and delivered["errors"] == 0,
            f"bare {bare['errors']}, deliveries {delivered['errors']} "
            f"(statuses {delivered.get('statuses')})")
        add("load: one run per delivery", ledger["consistent"],
            f"{ledger['runs_total']} runs {ledger['runs']} for {ledger['ok_2xx']} answered 2xx "
            f"and {ledger['sent']} sent")
        add("target: delivery throughput >= 50 % of bare route",
            load["throughput_ratio"] >= MIN_THROUGHPUT_RATIO,
            f"{load['throughput_ratio']:.1%} ({delivered['rps']} vs {bare['rps']} req/s)",
            target=True)
        add("target: delivery p99 < 50 ms", delivered["latency_ms"]["p99"] < MAX_P99_MS,
            f"p99 {delivered['latency_ms']['p99']} ms at {plan.connections} connections",
            target=True)
    storm = result.get("storm")
    if storm:
        add("storm: the job ran once", storm["once"],
            f"{storm['deliveries']} deliveries: {storm['outcomes']}; runs {storm['runs']}; "
            f"{storm['executions']} execution(s)")
    memory = result.get("memory")
    if memory:
        measured = memory["deliveries"] >= memory["target"] and len(memory["growth_mb"]) > 0
        add("memory: measured after all deliveries",
            measured and memory["errors"] == 0 and not memory["workers_restarted"]
            and memory["ledger"]["consistent"],
            f"{memory['deliveries']}/{memory['target']} delivered, {memory['errors']} errors, "
            f"workers restarted: {memory['workers_restarted']}, "
            f"{memory['ledger']['runs_total']} runs")
        add(f"target: RSS growth per worker <= {MAX_RSS_GROWTH_MB:g} MB",
            memory["max_growth_mb"] <= MAX_RSS_GROWTH_MB,
            f"max {memory['max_growth_mb']} MB over {memory['deliveries']} deliveries "
            f"({memory['growth_mb']})", target=True)
    add("server log: no errors", result["log_problems"] == 0,
        f"{result['log_problems']} error lines, tracebacks or worker timeouts")
    return checks


def machine_facts(postgres_url: str | None) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    facts: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        # Other work on the machine skews every figure: recorded so a reader can tell.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "gunicorn": metadata.version("gunicorn"),
        "flask": metadata.version("flask"),
        "sqlalchemy": metadata.version("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0].strip(),
    }
    if postgres_url:
        # The server's version, from its maintenance database: the benchmark's own may not
        # exist yet (bench/databases.py creates it).
        conninfo = make_url(db.normalise_url(postgres_url)).set(drivername="postgresql",
                                                                 database="postgres")
        try:
            with psycopg.connect(conninfo.render_as_string(hide_password=False),
                                 connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                facts["postgresql"] = row[0] if row else "unknown"
        except psycopg.OperationalError:
            facts["postgresql"] = "unreachable"
    return facts


def print_table(results: Mapping[str, Mapping[str, Any]]) -> None:
    kinds = list(results)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: Sequence[str]) -> None:
        rows.append((label, list(values)))

    def each(path: Sequence[str], fmt: str) -> list[str]:
        out = []
        for kind in kinds:
            value: Any = results[kind]
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            out.append("-" if value is None else fmt.format(value))
        return out

    if any("load" in results[k] for k in kinds):
        row("bare /healthz req/s", each(("load", "bare", "rps"), "{:.0f}"))
        row("bare p50 ms", each(("load", "bare", "latency_ms", "p50"), "{:.2f}"))
        row("bare p99 ms", each(("load", "bare", "latency_ms", "p99"), "{:.2f}"))
        row("bare errors", each(("load", "bare", "errors"), "{}"))
        row("deliveries req/s", each(("load", "deliveries", "rps"), "{:.0f}"))
        row("deliveries p50 ms", each(("load", "deliveries", "latency_ms", "p50"), "{:.2f}"))
        row("deliveries p99 ms", each(("load", "deliveries", "latency_ms", "p99"), "{:.2f}"))
        row("deliveries errors", each(("load", "deliveries", "errors"), "{}"))
        row("throughput vs bare", each(("load", "throughput_ratio"), "{:.1%}"))
        row("worker CPU ms/req bare", each(("load", "bare", "worker_cpu_ms_per_request"),
                                           "{:.3f}"))
        row("worker CPU ms/req deliveries",
            each(("load", "deliveries", "worker_cpu_ms_per_request"), "{:.3f}"))
        row("runs recorded", each(("load", "ledger", "runs_total"), "{}"))
        row("  answered 2xx", each(("load", "ledger", "ok_2xx"), "{}"))
        row("  in flight at stop", each(("load", "ledger", "in_flight_at_stop"), "{}"))
        row("  succeeded", each(("load", "ledger", "runs", "succeeded"), "{}"))
        row("  skipped (lease held)", each(("load", "ledger", "runs", "skipped"), "{}"))
    if any("storm" in results[k] for k in kinds):
        row("storm deliveries", each(("storm", "deliveries"), "{}"))
        row("storm outcomes", each(("storm", "outcomes"), "{}"))
        row("storm runs / executions",
            [f"{sum(results[k]['storm']['runs'].values())} / {results[k]['storm']['executions']}"
             if "storm" in results[k] else "-" for k in kinds])
    if any("memory" in results[k] for k in kinds):
        row("memory deliveries", each(("memory", "deliveries"), "{}"))
        for kind in kinds:
            memory = results[kind].get("memory")
            if memory:
                first, last = memory["samples"][0]["rss_mb"], memory["samples"][-1]["rss_mb"]
                row(f"RSS MB before -> after ({kind})",
                    [" ".join(f"{first[p]:.1f}->{last[p]:.1f}" for p in first)
                     if k == kind else "" for k in kinds])
        row("max RSS growth MB", each(("memory", "max_growth_mb"), "{:.2f}"))
    width = max(len(label) for label, _ in rows) if rows else 10
    cols = [max([len(k)] + [len(values[i]) for _, values in rows]) for i, k in enumerate(kinds)]
    print()
    print(" " * width + "  " + "  ".join(k.rjust(c) for k, c in zip(kinds, cols, strict=True)))
    for label, values in rows:
        print(label.ljust(width) + "  "
              + "  ".join(v.rjust(c) for v, c in zip(values, cols, strict=True)))
    print()
    for kind in kinds:
        for check in results[kind]["checks"]:
            verdict = "PASS" if check["passed"] else ("FAIL" if check["enforced"] else "miss")
            note = "" if check["enforced"] else " (not enforced in --quick)"
            print(f"{verdict}  [{kind}] {check['name']}: {check['detail']}{note}")
