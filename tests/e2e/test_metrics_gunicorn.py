from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from devtools.gunicorn import Gunicorn, running_gunicorn
from tests.helpers import delivery_headers, job_body, wait_until_live

TOKEN = "metrics-token-for-e2e-0a1b2c3d4e"
WORKERS = 3
DELIVERED = 'eleva_deliveries_total{endpoint="/api/qstash",outcome="succeeded",reason=""}'


@dataclass
class Server:
    gunicorn: Gunicorn
    directory: Path

    @property
    def url(self) -> str:
        return self.gunicorn.url

    def workers(self) -> set[int]:
        """The pids of the master's live worker processes."""
        return set(self.gunicorn.worker_pids())

    def wait_for_workers(self, without: frozenset[int] | set[int] = frozenset()) -> set[int]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = self.workers()
            if len(pids) == WORKERS and not pids & without:
                wait_until_live(self.url, self.gunicorn.process)
                return pids
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not get back to {WORKERS} workers: {self.workers()}")


@pytest.fixture
def server(app: object, env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """Run the service under gunicorn with several workers, in Prometheus multiprocess mode."""
    directory = tmp_path / "prometheus"
    (directory / "stale_from_an_earlier_run").mkdir(parents=True)
    (directory / "counter_999999.db").write_bytes(b"")  # cleaned at start-up
    with running_gunicorn(
        "wsgi:app", log_path=tmp_path / "gunicorn.log",
        env={**os.environ, **env, "GUNICORN_WORKERS": str(WORKERS), "METRICS_TOKEN": TOKEN,
             "PROMETHEUS_MULTIPROC_DIR": str(directory),
             # Nothing answers there: the health part of a scrape fails fast, on loopback.
             "QSTASH_URL": "http://127.0.0.1:9"},
        ready=lambda gunicorn: len(gunicorn.worker_pids()) == WORKERS,
    ) as gunicorn:
        yield Server(gunicorn=gunicorn, directory=directory)


def deliver(url: str, count: int, prefix: str) -> None:
    """Send `count` signed deliveries, each on a new connection, several at a time."""
    body = job_body("process-tasks")

    def one(i: int) -> None:
        headers = delivery_headers(body, message_id=f"{prefix}_{i}")
        response = requests.post(url + "/api/qstash", data=body, headers=headers, timeout=60)
        # 200 succeeded, or skipped when another worker's run held the job at that moment.
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def scrape(url: str) -> dict[str, float]:
    response = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def answered(samples: dict[str, float]) -> float:
    """Deliveries answered 200 to /api/qstash: succeeded plus skipped (the job was busy)."""
    return sum(value for name, value in samples.items()
               if name.startswith("eleva_deliveries_total{endpoint=\"/api/qstash\"")
               and ('outcome="succeeded"' in name or 'outcome="skipped"' in name))


def counted_by(directory: Path) -> set[str]:
    """The files (one per worker pid, or the archive) that hold a delivery count."""
    found = set()
    for path in directory.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(  # type: ignore[no-untyped-call]
                str(path)):
            if '"eleva_deliveries_total"' in key and value > 0:
                found.add(path.name)
    return found


@pytest.mark.slow
def test_counts_add_up_across_workers_and_outlive_a_worker(server: Server) -> None:
    assert not (server.directory / "counter_999999.db").exists()
    deliver(server.url, 24, "msg_first")
    workers_counting = counted_by(server.directory)
    assert len(workers_counting) >= 2, workers_counting  # served by different workers
    # Whichever worker answers the scrape, it reports every worker's deliveries exactly.
    for _ in range(6):
        samples = scrape(server.url)
        assert answered(samples) == 24
        assert samples['eleva_delivery_verification_seconds_count{result="accepted"}'] == 24

    victims = sorted(server.workers())[:2]
    os.kill(victims[0], signal.SIGKILL)
    server.wait_for_workers(without={victims[0]})
    os.kill(victims[1], signal.SIGTERM)
    server.wait_for_workers(without=set(victims))
    for _ in range(4):
        assert answered(scrape(server.url)) == 24  # the dead workers' counts are kept

    deliver(server.url, 10, "msg_second")
    for _ in range(4):
        samples = scrape(server.url)
        assert answered(samples) == 34
        assert samples['eleva_delivery_verification_seconds_count{result="accepted"}'] == 34
        runs = sum(value for name, value in samples.items()
                   if name.startswith('eleva_job_runs_total{job_name="process-tasks"'))
        assert runs == 34

    # Bounded on disk: the live workers' files and one archive per kind, nothing of the dead.
    names = {path.name for path in server.directory.glob("*.db")}
    pids = {name.rsplit("_", 1)[1][:-3] for name in names}
    assert pids <= {str(pid) for pid in server.workers()} | {"archive"}, names
    assert {"counter_archive.db", "histogram_archive.db"} <= names
