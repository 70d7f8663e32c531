"""gunicorn settings: `gunicorn -c gunicorn.conf.py app:app`.

Every value comes from the environment or is fixed here for containers; the app's own settings live in app.py.
Nothing is written outside /tmp and /dev/shm, so the container's root filesystem can be read-only.
"""

import json
import os
import sys
from datetime import UTC, datetime

from gunicorn.glogging import Logger


def read_positive_int(variable, default):
    raw = os.environ.get(variable, default)
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"configuration error: {variable}: must be a positive integer, got {raw!r}")
    return int(raw)


class JsonAccessLogger(Logger):
    """Writes each request's access line as one JSON object, in the same shape as the app's log lines."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        headers = {name.lower(): value for name, value in resp.headers}
        entry = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": "INFO",
            "logger": "gunicorn.access",
            "message": "request",
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "status": int(str(resp.status).split()[0]),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": headers.get("x-request-id"),
        }
        self.access_log.info(json.dumps(entry))


bind = f"0.0.0.0:{read_positive_int('PORT', '8000')}"
# Containers report the host's CPU count, not their limit: the worker count is set, never derived.
workers = read_positive_int("WEB_CONCURRENCY", "2")
# Load the app once in the master: a configuration error then stops gunicorn with app.py's one line
# instead of workers failing to boot over and over. The app opens its database pool after the fork.
preload_app = True
# Workers touch a heartbeat file every second; on tmpfs that is memory, not a disk write, and works read-only.
worker_tmp_dir = "/dev/shm"
# Shorter than the 30 s Compose and Kubernetes give before SIGKILL, so in-flight requests finish first.
graceful_timeout = 20
accesslog = "-"
logger_class = JsonAccessLogger
# gunicorn 25.1+ opens a control socket under $HOME or $XDG_RUNTIME_DIR by default; the service needs none.
control_socket_disable = True
