"""gunicorn settings for the bench's sync contender: the shipped service's settings (app.py's configuration, the
keep-alive and preload of gunicorn.conf.py) on gunicorn's sync worker. Not the shipped file itself: it imports
serving.py, whose gevent patches would make this a gevent process in all but name. bench.py mounts this file into
the slim image and runs `python -m gunicorn --config` with it; the image and its files are unchanged. Its access
log is gunicorn's plain one, a little cheaper than the service's JSON line."""

import os

from app import load_config

service = load_config(os.environ)
workers = service.workers
worker_class = os.environ.get("BENCH_WORKER_CLASS", "sync")
threads = int(os.environ.get("BENCH_THREADS", "1"))
bind = [f"0.0.0.0:{service.port}", f"0.0.0.0:{service.metrics_port}"]
keepalive = 5
preload_app = True
worker_tmp_dir = "/dev/shm"
accesslog = "-"
control_socket_disable = True
