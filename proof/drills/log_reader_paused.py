"""Log reader paused: web's stdout blocked for 10 s under load, as a stalled log collector blocks it, while the
database refuses requests and each 503 logs a warning. Requests are answered meanwhile; the lines past the worker's
queue are dropped and counted (log_lines_dropped_total), the rest written late; new access lines follow as soon as
the reader reads again.
"""

import json
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise

import requests
from containers import stack
from load import Load
from waits import wait_until

from proof.drills.common import Drill, connect_to_db, p99_ms, plain_requests, tally

PAUSE_SECONDS = 10
# No line has reached the engine for this long while wrk's requests are answered: web's stdout takes no more.
STALL_SECONDS = 1
# wrk's GET / at this many connections: over a thousand access lines a second here, so that the worker's queue of
# lines fills within the pause too. wrk runs until the drill stops it, LOAD_SECONDS at most.
LOAD_CONNECTIONS = 16
LOAD_SECONDS = 120
# wrk keeps the worker busy, so the client's GET / queues behind its connections: 30 to 300 ms at p99 on this
# shared machine, before and during the pause alike. A worker blocked on its log pipe stops for the whole pause
# instead, and the client's requests reach their 2 s timeout.
PLAIN_P99_MS = 500
RESUME_BOUND_SECONDS = 5
# Run in web by `docker exec`: the metrics port is published nowhere, as in compose.yaml.
SCRAPE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


class AttachedReader:
    """web's stdout and stderr read through the engine's attach stream (`docker attach`) by a thread, until paused.

    The engine copies a container's output to its log driver and to every attached client in turn; once about a
    megabyte waits for a client that stopped reading, the copy blocks, the container's pipe fills and its writes
    block. That is what a stalled log reader does to a container (a blocking syslog or fluentd driver, a slow disk
    under the json-file driver): the image and the engine as they run, only the reader paused.
    """

    def __init__(self, container):
        self.socket = container.client.api.attach_socket(container.id,
                                                         params={"stdout": 1, "stderr": 1, "stream": 1})
        self.raw = getattr(self.socket, "_sock", self.socket)
        self.reading = threading.Event()
        self.reading.set()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self):
        while self.reading.wait():
            try:
                if not self.raw.recv(65536):
                    return
            except OSError:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.reading.set()
        self.raw.shutdown(socket.SHUT_RDWR)
        self.socket.close()
        self.thread.join(timeout=5)


def engine_time(stamp):
    """When the engine read a line, from `docker logs --timestamps` (RFC 3339, nanoseconds, trailing zeros cut)."""
    whole, _, fraction = stamp.decode().rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float("0." + (fraction or "0"))


def logged(container, **options):
    """(engine time, the line's JSON or None) of each line of the container's log."""
    lines = []
    for line in container.logs(timestamps=True, **options).splitlines():
        stamp, _, text = line.partition(b" ")
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        lines.append((engine_time(stamp), entry if isinstance(entry, dict) else None))
    return lines


def stalled_since(container):
    """The engine time of the container's newest log line, once none has followed it for STALL_SECONDS."""
    newest, _ = logged(container, tail=1)[-1]
    return newest if time.time() - newest >= STALL_SECONDS else None


def wait_for_access_line(container, url, since):
    """Sends GET / and waits until its access line, known by its request id, has reached the engine."""
    request_id = requests.get(url, timeout=10).headers["X-Request-ID"]
    wait_until(lambda: any(entry and entry.get("request_id") == request_id
                           for _, entry in logged(container, since=since)), 30, f"the access line of {request_id}")


def scrape(container, metric):
    """The sum of `metric`'s samples on web's metrics port (the one it exposes and the stack does not publish),
    scraped from inside the container."""
    published = container.attrs["HostConfig"]["PortBindings"]
    [port] = [port.split("/")[0] for port in container.attrs["Config"]["ExposedPorts"] if port not in published]
    done = container.exec_run(["python", "-c", SCRAPE, f"http://127.0.0.1:{port}/metrics"])
    assert done.exit_code == 0, done.output
    return sum(float(value) for value in re.findall(rf"^{metric}(?:{{[^}}]*}})? (\S+)$", done.output.decode(), re.M))


def wrk_counts(output):
    """(requests, failed) from wrk's summary: failed are answers other than 2xx or 3xx and socket errors (connect,
    read, write, timeout), which wrk prints only when there are some."""
    answered = int(re.search(r"(\d+) requests in", output)[1])
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return answered, (int(non_2xx[1]) if non_2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)


@dataclass
class LogReaderPaused(Drill):
    filled_after: float  # seconds from the reader's pause until no line reached the engine any more
    blocked: float  # the longest the engine read no line of web's: how long its stdout stayed full
    load_requests: int  # wrk's, over the whole drill
    load_failed: int
    sent: int  # plain GET / sent one after another by a client of its own while stdout was blocked
    answered: int  # of them, 200
    p99_ms: float
    p99_before_ms: float  # the same client's, under the same load, before the reader paused
    notes_requests: int  # to /api/notes while stdout was blocked and the table locked
    notes_unavailable: int  # of them, answered 503 JSON, each logging a warning
    notes_other: int  # of them, neither that nor a success: a 500, no answer within 10 s
    longest_lag: float  # the most a line waited between its own time and the engine reading it
    logged_lines: int  # access lines and the app's warnings in web's log, after
    dropped: float  # log_lines_dropped_total, after
    written: int  # the lines web had to write: an access line per request answered, a warning per 503
    resumed: float  # seconds from the reader resuming to a new request's access line reaching the engine

    title = (f"log reader paused: web's stdout blocked for {PAUSE_SECONDS} s under load, with a database warning "
             f"logged for each 503 meanwhile")

    def counts(self):
        return (f"stdout full {self.filled_after:.1f} s after the reader paused and blocked for {self.blocked:.1f} s; "
                f"wrk's GET / {self.load_requests - self.load_failed}/{self.load_requests} answered; while blocked, "
                f"a client's own GET / {self.answered}/{self.sent} answered 200, p99 {self.p99_ms:.1f} ms (before the "
                f"pause {self.p99_before_ms:.1f} ms), and of {self.notes_requests} notes requests to the locked table "
                f"{self.notes_unavailable} answered 503 JSON, {self.notes_other} anything else; of {self.written} "
                f"lines, {self.logged_lines} logged (up to {self.longest_lag:.1f} s late) and {self.dropped:.0f} "
                f"dropped and counted (log_lines_dropped_total); a new request's access line logged "
                f"{self.resumed:.2f} s after the reader resumed")

    def goals(self):
        return {f"stdout blocked >= {PAUSE_SECONDS} s": self.blocked >= PAUSE_SECONDS,
                "every request answered: wrk's, the client's, and 503 JSON or a success for the notes requests":
                    self.load_requests > 0 and self.load_failed == 0 and self.sent > 0 and self.answered == self.sent
                    and self.notes_unavailable > 0 and self.notes_other == 0,
                f"the client's p99 while blocked <= {PLAIN_P99_MS} ms": self.p99_ms <= PLAIN_P99_MS,
                # wrk does not count the requests still in flight as it stops, which the server answered and logged.
                "every line logged or counted as dropped":
                    0 <= self.logged_lines + self.dropped - self.written <= LOAD_CONNECTIONS,
                f"access lines resume within {RESUME_BOUND_SECONDS} s of the reader":
                    self.resumed <= RESUME_BOUND_SECONDS}


def log_reader_paused(image):
    """wrk sends GET / at LOAD_CONNECTIONS, each answer an access line on web's stdout, which is read through the
    engine's attach stream, and a client of its own times GET / one after another. The reader pauses; once no line
    has reached the engine for STALL_SECONDS, web's stdout is full, and it is kept so for PAUSE_SECONDS before the
    reader resumes.

    Meanwhile another session holds the notes table locked, as in a database outage, and two clients write and read
    notes: each of their requests answers 503 and logs a warning. A stalled log collector is likeliest in such an
    incident, when lines come in bursts, and the warnings are written by the request's own greenlet, where the
    access lines are not.
    """
    with stack(image) as notes, AttachedReader(notes.docker("web")) as reader, connect_to_db(notes) as locker:
        container = notes.docker("web")
        stopping, outcomes = threading.Event(), []
        client = threading.Thread(target=plain_requests, args=(notes.url, stopping, outcomes))
        load = subprocess.Popen(["wrk", "--threads", "1", "--connections", str(LOAD_CONNECTIONS), "--duration",
                                 f"{LOAD_SECONDS}s", "--timeout", "2s", notes.url + "/"], stdout=subprocess.PIPE,
                                text=True)
        client.start()
        try:
            wait_until(lambda: len(outcomes) >= 100, 30, "100 plain requests answered")
            paused = time.monotonic()
            reader.reading.clear()
            newest = wait_until(lambda: stalled_since(container), 60, "web's stdout full", interval=0.2)
            full = time.monotonic() - (time.time() - newest)
            locker.autocommit = False
            locker.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
            with Load(notes.url, threads=2, reads=True) as notes_load:
                time.sleep(max(0.0, full + PAUSE_SECONDS - time.monotonic()))  # the stall, not a wait for something
                reader.reading.set()
                resumed = time.monotonic()
            locker.commit()
            wait_for_access_line(container, notes.url, since=newest)
            back = time.monotonic() - resumed
        finally:
            stopping.set()
            client.join()
            load.send_signal(signal.SIGINT)  # wrk stops, and prints what it counted
            load_output = load.communicate(timeout=30)[0]
        # One worker writes its lines in order: once this one is in, so is every line before it.
        wait_for_access_line(container, notes.url, since=newest)
        lines = logged(container)
        dropped = scrape(container, "log_lines_dropped_total")
    read_at = sorted(at for at, _ in lines)
    lags = [at - datetime.fromisoformat(entry["time"]).timestamp() for at, entry in lines if entry and "time" in entry]
    blocked = [(latency, ok) for sent, latency, ok in outcomes if full <= sent < resumed]
    load_requests, load_failed = wrk_counts(load_output)
    _, unavailable, other = tally(notes_load.outcomes)
    answered = load_requests - load_failed + sum(ok for *_, ok in outcomes) + 2 + sum(
        o.status is not None for o in notes_load.outcomes)
    result = LogReaderPaused(full - paused, max(b - a for a, b in pairwise(read_at)), load_requests, load_failed,
                             len(blocked), sum(ok for _, ok in blocked), p99_ms(latency for latency, _ in blocked),
                             p99_ms(latency for sent, latency, _ in outcomes if sent < paused),
                             len(notes_load.outcomes), unavailable, other, max(lags),
                             sum(entry is not None and entry.get("level") in ("INFO", "WARNING")
                                 and entry.get("logger") in ("gunicorn.access", "app") for _, entry in lines),
                             dropped, answered + unavailable, back)
    print(result)
    return result
