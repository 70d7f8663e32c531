"""gunicorn's settings, read by `python -m serving` (the images' command) and by `gunicorn -c gunicorn.conf.py`.

Settings only: each value is fixed here for containers or read from app.py's configuration, and what the service
changes in gunicorn's behaviour lives in serving.py. gunicorn runs this file again on a reload (SIGHUP).
Nothing is written outside /tmp and /dev/shm, so the container's root filesystem can be read-only.
"""

import os

import serving  # first: it prepares the process for gevent before app.py imports psycopg
from app import load_config

# Not `config`: gunicorn would take that name for its own setting of the same name.
service = load_config(os.environ)

# One gevent worker per CPU, and compose.yaml and k8s/ give web one: measured side by side (docs/benchmarks.md),
# a second worker on the same cores served no more, with a tail several times longer. Containers report the
# host's CPU count, not their limit: the count is set (WEB_CONCURRENCY), never derived.
workers = service.workers
# gevent, chosen by measurement (docs/benchmarks.md): a worker holds up to worker_connections slow, idle or
# keep-alive clients as cheap greenlets, where a sync worker is stopped by one slow client and gthread by one per
# thread (16 for 2 workers of 4), and it serves GET / faster than either.
worker_class = "serving.Worker"
worker_connections = 500
# The public port, and Prometheus' port, where app.py serves /metrics and nothing else: compose.yaml does not
# publish it, and k8s/ admits it only from the monitoring namespace.
bind = [f"0.0.0.0:{service.port}", f"0.0.0.0:{service.metrics_port}"]
# The wait for a request's headers, on a new connection and between keep-alive requests alike: a client that has
# not sent them within 5 s is disconnected. A load balancer in front must close idle connections sooner (its
# upstream idle or keep-alive timeout below 5 s), or it may reuse one this server has just closed and answer 502.
# The body has a deadline of its own (serving.BODY_TIMEOUT_SECONDS).
keepalive = 5
# Load the app once in the master: a configuration error then stops gunicorn with app.py's one line
# instead of workers failing to boot over and over. The app opens its database pool after the fork.
preload_app = True
# Workers touch a heartbeat file every second; on tmpfs that is memory, not a disk write, and works read-only.
worker_tmp_dir = "/dev/shm"
# Shorter than the 30 s Compose and Kubernetes give before SIGKILL, so in-flight requests finish first.
graceful_timeout = 20
accesslog = "-"
loglevel = service.log_level.lower()
logger_class = "serving.Logger"
# gunicorn 25.1+ opens a control socket under $HOME or $XDG_RUNTIME_DIR by default; the service needs none.
control_socket_disable = True
on_starting = serving.on_starting
child_exit = serving.child_exit
