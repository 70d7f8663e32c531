"""What this service changes in gunicorn's behaviour, through gunicorn's extension points: a worker class, a logger
class and two server hooks, named in gunicorn.conf.py. Importing it twice, a reload, or `gunicorn --check-config`
changes nothing: every change is made once per worker process, as it starts.

    python -m serving    # what the images run: the settings checked, then gunicorn -c gunicorn.conf.py

- Answers gunicorn gives itself (a malformed request, a request line past its limit) in the app's JSON error shape,
  with a request id that the log line carries too.
- No Server header: a scanner flags the banner, and it tells an attacker which server's flaws to try.
- A deadline for the request body, which gunicorn does not bound; a malformed chunked body answers 400.
- One JSON line per request in the access log, and every line a worker writes (access, app, pool, gunicorn's own)
  goes through one bounded queue to a thread of its own.
"""

import contextvars
import glob
import json
import logging
import os
import sys
import time
import uuid
from datetime import UTC, datetime

from gevent import monkey

# Before anything imports psycopg, which picks its wait function as it is imported: gunicorn.conf.py imports this
# module first, and with preload_app the app is imported in gunicorn's master.
monkey.patch_all()
# Every worker is a process with counters of its own: prometheus_client keeps each process's values in a file in
# this folder, and a scrape adds them up. Set before the app imports prometheus_client; /tmp is memory (tmpfs) in
# compose.yaml and k8s/, writable on the read-only root.
os.makedirs(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics"), exist_ok=True)

import gevent  # noqa: E402
from gunicorn import util  # noqa: E402
from gunicorn.glogging import Logger as GunicornLogger  # noqa: E402
from gunicorn.http import wsgi  # noqa: E402
from gunicorn.http.errors import InvalidHeader, ParseException, UnsupportedTransferCoding  # noqa: E402
from gunicorn.workers.ggevent import GeventWorker  # noqa: E402
from prometheus_client import Counter, multiprocess  # noqa: E402
from werkzeug.exceptions import BadRequest  # noqa: E402

from app import JsonFormatter, load_config, rfc3339  # noqa: E402

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.conf.py")
# A request's body must arrive within this many seconds of its headers (app.py's 64 KiB limit then needs at least
# 6.5 KiB/s), or the app answers 408 and the connection is closed. A socket timeout alone would let a client that
# sends a byte a second hold the connection for as long as it likes.
BODY_TIMEOUT_SECONDS = 10
# Lines waiting for the log pipe, per worker: about 4 MB of access lines. Past it a line is dropped and counted.
LOG_QUEUE_LINES = 10_000
# Health probes and Prometheus' scrapes: logged only when they fail, or at LOG_LEVEL debug.
PROBES = ("/healthz", "/readyz", "/metrics")
LOG_LINES_DROPPED = Counter("log_lines_dropped_total", "Log lines dropped because the log pipe was full.")
# The request id of an answer gunicorn gives itself, for its log lines: one per greenlet, as each serves a client.
ERROR_REQUEST_ID = contextvars.ContextVar("error_request_id", default=None)


# ---------------------------------------------------------------------------------------------- log lines


class LogQueue:
    """Lines to stdout and stderr, written by a thread of the operating system's own, never by a greenlet.

    A write to a pipe whose reader fell behind (Docker's or the kubelet's log collector, busy under load) blocks,
    and in a gevent worker it would block every connection the worker holds: here the lines wait in memory, up to
    LOG_QUEUE_LINES, and past that are dropped and counted, so a stalled reader costs log lines, never answers.
    Hand-written: logging.handlers.QueueListener's thread would become a greenlet once gevent patches threading.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.lines = monkey.get_original("queue", "SimpleQueue")()
        self.stopped = monkey.get_original("_thread", "allocate_lock")()
        self.running = False

    def start(self):
        self.stopped.acquire()
        self.running = True
        monkey.get_original("_thread", "start_new_thread")(self._write_forever, ())

    def put(self, stream, text):
        if not self.running:  # gunicorn's master, which serves no request, writes its few lines itself
            stream.write(text)
            stream.flush()
        elif self.lines.qsize() < self.capacity:
            self.lines.put((stream, text))
        else:
            LOG_LINES_DROPPED.inc()

    def stream(self, stream):
        """A file-like object for logging.StreamHandler whose writes go through this queue to `stream`."""
        return QueuedStream(self, stream)

    def _write_forever(self):
        try:
            while (line := self.lines.get()) is not None:
                batch = [line]
                while not self.lines.empty() and (line := self.lines.get()) is not None:
                    batch.append(line)
                for stream in {stream for stream, _ in batch}:
                    stream.write("".join(text for to, text in batch if to is stream))
                    stream.flush()
                if line is None:
                    break
        finally:
            self.stopped.release()

    def close(self, timeout=5):
        """Writes what is queued, then ends the thread: called as the worker exits."""
        if self.running:
            self.lines.put(None)
            if self.stopped.acquire(timeout=timeout):
                self.stopped.release()
            self.running = False


class QueuedStream:
    def __init__(self, queue, stream):
        self.queue, self.target = queue, stream

    def write(self, text):
        self.queue.put(self.target, text)

    def flush(self):
        pass


LOG = LogQueue(LOG_QUEUE_LINES)


class GunicornFormatter(JsonFormatter):
    """The app's JSON lines, with the request id of the answer gunicorn gave itself, if any."""

    def format(self, record):
        request_id = ERROR_REQUEST_ID.get()
        if request_id is None:
            return super().format(record)
        return json.dumps({**json.loads(super().format(record)), "request_id": request_id})


class Logger(GunicornLogger):
    """gunicorn's lines (start, workers, errors) in the app's JSON shape, and one JSON access line per request in
    the same shape, so that every line a collector reads parses. gunicorn keeps this logger across a reload."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(GunicornFormatter())

    def access(self, resp, req, environ, request_time):
        status = int(str(resp.status).split()[0])
        # The environ of an answer gunicorn gave itself has no PATH_INFO: the path is the request's.
        path = environ.get("PATH_INFO") or getattr(req, "path", None) or ""
        # A passing probe or scrape, every few seconds from Compose, the kubelet or Prometheus, would drown the
        # requests.
        probe = path in PROBES and status < 400 and self.cfg.loglevel.lower() != "debug"
        if not self.access_log_enabled or probe:
            return
        headers = {name.lower(): value for name, value in resp.headers}
        entry = {
            "time": rfc3339(datetime.now(UTC)),
            "level": "INFO",
            "logger": "gunicorn.access",
            "message": "request",
            "method": environ.get("REQUEST_METHOD") or getattr(req, "method", None),
            "path": path,
            "status": status,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": headers.get("x-request-id") or ERROR_REQUEST_ID.get(),
        }
        if self.cfg.accesslog == "-":
            LOG.put(sys.stdout, json.dumps(entry) + "\n")
        else:
            self.access_log.info(json.dumps(entry))


# ---------------------------------------------------------------------------------------------- the worker


class Response(wsgi.Response):
    def default_headers(self):
        return [line for line in super().default_headers() if not line.startswith("Server:")]


def write_json_error(sock, status, reason, message):
    """gunicorn's own answers, in the app's error shape instead of an HTML page."""
    request_id = ERROR_REQUEST_ID.get() or uuid.uuid4().hex
    body = json.dumps({"error": {"code": reason.lower().replace(" ", "_"), "message": message or reason,
                                 "request_id": request_id}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nX-Request-ID: {request_id}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class Body:
    """A request's body as the app reads it: within BODY_TIMEOUT_SECONDS of its headers, and a malformed chunk
    answered 400 (gunicorn's parse errors are not OSError, so werkzeug would pass them on to the app as a 500)."""

    def __init__(self, body, req):
        self.body, self.req = body, req
        self.deadline = time.monotonic() + BODY_TIMEOUT_SECONDS

    def _within_deadline(self, read, *args):
        try:
            # gevent's timeout interrupts the read wherever it waits: a socket timeout bounds each recv alone.
            with gevent.Timeout(max(0, self.deadline - time.monotonic()),
                                TimeoutError("the request body did not arrive in time")):
                return read(*args)
        except TimeoutError:
            # The rest of the body is still on its way: this connection cannot carry another request.
            self.req.must_close = True
            raise
        except ParseException as error:
            self.req.must_close = True
            raise BadRequest(f"the request body is malformed: {error}") from None

    def read(self, size=None):
        return self._within_deadline(self.body.read, size)

    def readline(self, size=None):
        return self._within_deadline(self.body.readline, size)

    def readlines(self, size=None):
        return self._within_deadline(self.body.readlines, size)

    def __iter__(self):
        return iter(self.readline, b"")


class Worker(GeventWorker):
    """gunicorn's gevent worker, with the changes this module's docstring lists."""

    def init_process(self):
        # Once per worker, after the fork: the master keeps gunicorn's own classes, so a reload forks workers from
        # an unchanged master. gunicorn reads these two names at call time; checked against gunicorn 27.0.1
        # (test_serving_is_checked_against_the_gunicorn_version_pinned fails on another, so an upgrade checks again).
        wsgi.Response = Response
        util.write_error = write_json_error
        for logger in (self.log.error_log, self.log.access_log, logging.getLogger()):
            for handler in logger.handlers:
                if getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                    handler.setStream(LOG.stream(handler.stream))
        super().init_process()

    def run(self):
        LOG.start()  # here, after gevent's hub was made anew for this process
        try:
            super().run()
        finally:
            LOG.close()

    def handle_request(self, listener_name, req, sock, addr):
        body = req.body
        if body is not None:
            req.body = Body(body, req)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            # gunicorn reads what the app left of the body itself, bounded by keepalive instead.
            req.body = body
            # Let every other connection have its turn first. gevent switches only when a read would block, and a
            # keep-alive client's next request is often in by now: without this, a few busy connections keep the
            # worker while the rest wait (GET / at 64 connections: p50 1 ms but p99 4.3 s, 13 timeouts; with it p99
            # 0.2 s).
            gevent.sleep(0)

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, UnsupportedTransferCoding):
            # RFC 9112 suggests 501, but the fault is the client's, and a 5xx any client can provoke at will would
            # read as the service failing (an error rate, an alert): 400, naming the header.
            exc = InvalidHeader("Transfer-Encoding")
        token = ERROR_REQUEST_ID.set(uuid.uuid4().hex)
        try:
            super().handle_error(req, client, addr, exc)
        finally:
            ERROR_REQUEST_ID.reset(token)


# ---------------------------------------------------------------------------------------------- server hooks


def on_starting(server):
    """Once, as gunicorn starts (not on a reload): an earlier run's metrics files would count. The master's own,
    written as it loaded the app (preload_app), stay: they hold app_build_info."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for stale in glob.glob(os.path.join(folder, "*.db")):
        if not stale.endswith(f"_{os.getpid()}.db"):
            os.remove(stale)


def child_exit(server, worker):
    # In the master: the exited worker's pool gauges no longer count (prometheus_client's livesum); its counters do.
    multiprocess.mark_process_dead(worker.pid)


# ---------------------------------------------------------------------------------------------- command line


def main():
    """The settings checked first, with app.py's one-line errors: gunicorn reads WEB_CONCURRENCY as it is imported
    and stops on a wrong one with a traceback of its own. Then gunicorn, in this process."""
    load_config(os.environ)
    from gunicorn.app.wsgiapp import run

    # Options after `python -m serving` go to gunicorn: `python -m serving --check-config` checks a changed setting.
    sys.argv = ["gunicorn", "--config", CONFIG_FILE, *sys.argv[1:], "app:create_app()"]
    run()


if __name__ == "__main__":
    # One module whether run or imported: gunicorn.conf.py imports `serving`, and must get this one.
    sys.modules["serving"] = sys.modules["__main__"]
    main()
