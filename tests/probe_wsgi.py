"""The service with the test probe jobs registered, for end-to-end tests under gunicorn."""

from blueprints import BLUEPRINTS
from service import create_app
from tests import probe_jobs

app = create_app(blueprints=(*BLUEPRINTS, probe_jobs.probe_bp, probe_jobs.probe_retry_bp))
