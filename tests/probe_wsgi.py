"""The service with the test probe jobs registered, for end-to-end tests under gunicorn."""

import blueprints
from service import create_app
from tests import probe_jobs

blueprints.BLUEPRINTS = (*blueprints.BLUEPRINTS, probe_jobs.probe_bp, probe_jobs.probe_retry_bp)
app = create_app()
