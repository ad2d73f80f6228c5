# Read by gunicorn at start-up (not imported by the app).
import multiprocessing
import os

from blueprints import BLUEPRINTS
from service.jobs import JobBlueprint

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("GUNICORN_WORKERS") or min(multiprocessing.cpu_count() * 2 + 1, 8))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# A worker must outlive the longest job: QStash cuts a delivery at the job's timeout.
timeout = max(job.job.timeout for job in BLUEPRINTS if isinstance(job, JobBlueprint)) + 60
graceful_timeout = 30
# Above the app's own limits (service/limits.py), which answer in JSON.
limit_request_line = 8190
limit_request_field_size = 16380
limit_request_fields = 200
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


# Prometheus multiprocess mode (service/metrics.py): every worker writes its metric values to
# files in PROMETHEUS_MULTIPROC_DIR, and a scrape served by any worker sums them.
def on_starting(server):
    """Empty the metrics directory: values of an earlier server run must not be summed."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from service.metrics import reset_directory

        reset_directory(directory)


def child_exit(server, worker):
    """Fold a dead worker's metric files into the archive, so its counts outlive it."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from service.metrics import worker_exited

        worker_exited(worker.pid, directory)
