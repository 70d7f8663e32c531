"""gunicorn settings: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every value comes from the environment or is fixed here for containers; the app's own settings live in app.py.
Nothing is written outside /tmp and /dev/shm, so the container's root filesystem can be read-only.
"""

import glob
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime

from gevent import monkey
from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import wsgi


def read_positive_int(variable, default):
    raw = os.environ.get(variable, default)
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"configuration error: {variable}: must be a positive integer, got {raw!r}")
    return int(raw)


class StdoutLines:
    """Writes lines to stdout from a thread of the operating system's own, not from a greenlet.

    A write to a pipe whose reader fell behind (Docker's or the kubelet's log collector, busy under load) blocks, and
    in a gevent worker it would block every connection the worker holds: here the lines wait in memory instead.
    Hand-written: logging.handlers.QueueListener's thread would become a greenlet once gevent patches threading.
    """

    def __init__(self):
        self.queue = monkey.get_original("queue", "SimpleQueue")()
        self.stopped = monkey.get_original("_thread", "allocate_lock")()

    def start(self):
        self.stopped.acquire()
        monkey.get_original("_thread", "start_new_thread")(self.run, ())

    def put(self, line):
        self.queue.put(line)

    def run(self):
        try:
            while (line := self.queue.get()) is not None:
                batch = [line]
                while not self.queue.empty() and (line := self.queue.get()) is not None:
                    batch.append(line)
                sys.stdout.write("".join(batch))
                sys.stdout.flush()
                if line is None:
                    break
        finally:
            self.stopped.release()

    def close(self, timeout=5):
        """Writes what is queued, then ends the thread: called as the worker exits."""
        self.queue.put(None)
        if self.stopped.acquire(timeout=timeout):
            self.stopped.release()


ACCESS_LINES = StdoutLines()
# Health probes and Prometheus' scrapes: logged only when they fail, or at LOG_LEVEL debug.
PROBES = ("/healthz", "/readyz", "/metrics")


class JsonAccessLogger(Logger):
    """Writes each request's access line as one JSON object, in the same shape as the app's log lines: to stdout
    through ACCESS_LINES when the access log is `-`, as here, else through the log handler gunicorn set up. Its
    own lines (start, workers, errors) get the app's JSON formatter, so that every line a collector reads parses."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time):
        status = int(str(resp.status).split()[0])
        # A passing probe or scrape, every few seconds from Compose, the kubelet or Prometheus, would drown the
        # requests.
        probe = environ["PATH_INFO"] in PROBES and status < 400 and self.cfg.loglevel.lower() != "debug"
        if not self.access_log_enabled or probe:
            return
        headers = {name.lower(): value for name, value in resp.headers}
        entry = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": "INFO",
            "logger": "gunicorn.access",
            "message": "request",
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "status": status,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": headers.get("x-request-id"),
        }
        if self.cfg.accesslog == "-":
            ACCESS_LINES.put(json.dumps(entry) + "\n")
        else:
            self.access_log.info(json.dumps(entry))


def write_json_error(sock, status, reason, message):
    """gunicorn's own answers, sent before the app sees a request (a request line or headers past its limits, a
    malformed request), in the app's error shape instead of an HTML page. gunicorn has no setting for their body,
    so this replaces the function its workers call."""
    request_id = uuid.uuid4().hex
    body = json.dumps({"error": {"code": reason.lower().replace(" ", "_"), "message": message or reason,
                                 "request_id": request_id}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nX-Request-ID: {request_id}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error


def default_headers_without_banner(response, default_headers=wsgi.Response.default_headers):
    """gunicorn names itself in a Server header on every answer, and has no setting to stop it: a scanner flags the
    banner, and it tells an attacker which server's flaws to try."""
    return [line for line in default_headers(response) if not line.startswith("Server:")]


wsgi.Response.default_headers = default_headers_without_banner


# One gevent worker per CPU, and compose.yaml and k8s/ give web one: measured side by side (docs/benchmarks.md),
# a second worker on the same cores served no more, with a tail several times longer. Containers report the
# host's CPU count, not their limit: the count is set, never derived.
workers = read_positive_int("WEB_CONCURRENCY", "1")
# gevent, chosen by measurement (docs/benchmarks.md): a worker holds up to worker_connections slow, idle or
# keep-alive clients as cheap greenlets, where a sync worker is stopped by one slow client and gthread by one per
# thread (16 for 2 workers of 4), and it serves GET / faster than either.
worker_class = "gevent"
worker_connections = 500
if worker_class == "gevent":
    # Before the app is imported (preload_app, below, loads it in this process): psycopg picks its gevent-aware
    # wait at import, and psycopg_pool's threads become greenlets.
    import gevent

    monkey.patch_all()
# Every worker is a process with counters of its own: prometheus_client keeps each process's values in a file in
# this folder, and a scrape adds them up. Set before the app imports prometheus_client; /tmp is memory (tmpfs) in
# compose.yaml and k8s/, writable on the read-only root. Emptied at start, or an earlier run's files would count.
METRICS_DIR = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics")
os.makedirs(METRICS_DIR, exist_ok=True)
for stale in glob.glob(os.path.join(METRICS_DIR, "*.db")):
    os.remove(stale)

# Only now: psycopg must see gevent's patches, and prometheus_client METRICS_DIR, as they are imported.
from prometheus_client import multiprocess  # noqa: E402

from app import JsonFormatter, read_metrics_port  # noqa: E402

PORT = read_positive_int("PORT", "8000")
METRICS_PORT = read_metrics_port(os.environ)
if METRICS_PORT == PORT:
    sys.exit(f"configuration error: METRICS_PORT: must differ from PORT ({PORT})")
# The public port, and Prometheus' port, where app.py serves /metrics and nothing else: compose.yaml does not
# publish it, and k8s/ admits it only from the monitoring namespace.
bind = [f"0.0.0.0:{PORT}", f"0.0.0.0:{METRICS_PORT}"]
# The wait for a request's headers, on a new connection and between keep-alive requests alike: a client that has
# not sent them within 5 s is disconnected. A load balancer in front must close idle connections sooner (its
# upstream idle or keep-alive timeout below 5 s), or it may reuse one this server has just closed and answer 502.
keepalive = 5
# And for a body, which gunicorn does not bound: it must arrive within this many seconds of its headers
# (app.py's 64 KiB limit then needs at least 6.5 KiB/s), or the app answers 408 and the connection is closed.
BODY_TIMEOUT_SECONDS = 10
# Load the app once in the master: a configuration error then stops gunicorn with app.py's one line
# instead of workers failing to boot over and over. The app opens its database pool after the fork.
preload_app = True
# Workers touch a heartbeat file every second; on tmpfs that is memory, not a disk write, and works read-only.
worker_tmp_dir = "/dev/shm"
# Shorter than the 30 s Compose and Kubernetes give before SIGKILL, so in-flight requests finish first.
graceful_timeout = 20
accesslog = "-"
# gunicorn's own lines follow the app's LOG_LEVEL (app.py checks its value).
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
logger_class = JsonAccessLogger


def pre_request(worker, req):
    """Give each read of the request's body one deadline: gunicorn has no setting for it, and a socket timeout
    alone would let a client that sends a byte a second hold the connection for as long as it likes."""
    unreader = req.unreader
    if not hasattr(unreader, "sock"):
        return
    deadline = time.monotonic() + BODY_TIMEOUT_SECONDS
    chunk = unreader.chunk

    def chunk_before_deadline(size_hint=None):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request body did not arrive in time")
        unreader.sock.settimeout(left)
        try:
            return chunk(size_hint)
        finally:
            unreader.sock.settimeout(None)

    unreader.chunk = chunk_before_deadline


def post_request(worker, req, environ, resp):
    # The next request's headers on this connection are bounded by keepalive instead.
    vars(req.unreader).pop("chunk", None)
    if worker_class == "gevent":
        # Let every other connection have its turn first. gevent switches only when a read would block, and a
        # keep-alive client's next request is often in by now: without this, a few busy connections keep the
        # worker while the rest wait (GET / at 64 connections: p50 1 ms but p99 4.3 s, 13 timeouts; with it p99
        # 0.2 s).
        gevent.sleep(0)


# gunicorn 25.1+ opens a control socket under $HOME or $XDG_RUNTIME_DIR by default; the service needs none.
control_socket_disable = True


def post_fork(server, worker):
    # Threads do not survive fork: each worker starts its own writer.
    ACCESS_LINES.start()


def worker_exit(server, worker):
    ACCESS_LINES.close()


def child_exit(server, worker):
    # In the master: the exited worker's pool gauges no longer count (prometheus_client's livesum); its counters do.
    multiprocess.mark_process_dead(worker.pid)
