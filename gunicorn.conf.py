# Read by gunicorn at start-up (not imported by the app).
import multiprocessing
import os

from blueprints import BLUEPRINTS
from service.gunicorn_worker import thread_worker
from service.qstash.delivery import job_registry

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("GUNICORN_WORKERS") or min(multiprocessing.cpu_count() * 2 + 1, 8))
# Threads, not one process per request: a thread takes a connection only once it has sent
# something, and reading a request may take REQUEST_READ_TIMEOUT seconds at most, so idle or
# slow clients cannot hold every worker (service/gunicorn_worker.py).
worker_class = thread_worker(read_timeout=float(os.environ.get("REQUEST_READ_TIMEOUT", "10")),
                             app_slots=int(os.environ.get("GUNICORN_APP_SLOTS", "4")))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
keepalive = 5  # seconds a connection may wait idle, before a request or between two
# A worker must outlive the longest job: QStash cuts a delivery at the job's timeout.
timeout = max(job.timeout for job in job_registry(BLUEPRINTS).values()) + 60
graceful_timeout = 30
# Above the app's own limits (service/limits.py), which answer in JSON.
limit_request_line = 8190
limit_request_field_size = 16380
limit_request_fields = 200
accesslog = "-"
errorlog = "-"
logger_class = "service.gunicorn_logging.ScrubbingLogger"  # secrets out of gunicorn's lines too
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# No gunicornc control socket (add workers, reload, stop): the service is run by its own
# commands and the container's signals, and nothing is written under the home directory.
control_socket_disable = True


# Prometheus multiprocess mode (service/metrics/): every worker writes its metric values to
# files in PROMETHEUS_MULTIPROC_DIR, and a scrape served by any worker sums them.
def on_starting(server):
    """Empty the metrics directory: values of an earlier server run must not be summed."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from service.metrics.files import reset_directory

        reset_directory(directory)


def child_exit(server, worker):
    """Fold a dead worker's metric files into the archive, so its counts outlive it."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from service.metrics.files import worker_exited

        worker_exited(worker.pid, directory)
