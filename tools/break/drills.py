"""Drills: what the service does when something goes wrong, each printing what it counted. `make drills` runs
them all; tests/test_drills.py runs the same functions and asserts the counts.

Usage: make drills   (PYTHONPATH=tools python tools/break/drills.py [IMAGE], default the Makefile's IMAGE:slim)

Every drill starts its own containers (see harness.py) and removes them; the Compose drill runs compose.yaml
under a project name, port and password file of its own, so it never touches a developer's stack or secrets/.
"""

import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests
import schemathesis
from harness import (
    TIME_WAIT,
    Load,
    answers,
    compose_environment,
    free_port,
    stack,
    stack_image,
    stored_notes,
    tagged,
    tcp_states,
    wait_until,
    write_password_file,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from project import DEFAULT_VARIANT, IMAGE
from schemathesis.core.failures import FailureGroup

ROOT = Path(__file__).resolve().parents[2]


def setting(file, name):
    """A number set at the top level of one of the service's files, read rather than copied, so drills follow it."""
    return float(re.search(rf"^{name} = ([0-9.]+)", (ROOT / file).read_text(), re.M)[1])


GRACEFUL_TIMEOUT = int(setting("gunicorn.conf.py", "graceful_timeout"))
# How long a request waits for a database connection before it answers 503.
DATABASE_WAIT_SECONDS = setting("app.py", "DATABASE_WAIT_SECONDS")
OUTAGE_SECONDS = 10
RECOVERY_BOUND_SECONDS = 5


def lost_notes(load, url):
    """Acknowledged (201) notes that the service no longer returns."""
    stored = stored_notes(url)
    return {note_id: text for note_id, text in load.acknowledged().items() if stored.get(note_id) != text}


# ---------------------------------------------------------------------------------------------- durability


@dataclass
class Durability:
    how: str
    acknowledged: int
    lost: int
    refused: int  # 503 or no answer during the interruption: never acknowledged, so never promised

    def __str__(self):
        return (f"durability ({self.how}): {self.acknowledged} notes acknowledged with 201, {self.lost} of them "
                f"lost (goal 0); {self.refused} requests refused or unanswered during the interruption")


def durability(how, writer, url):
    result = Durability(how, len(writer.acknowledged()), len(lost_notes(writer, url)),
                        sum(o.status != 201 for o in writer.outcomes))
    print(result)
    return result


def durability_after_db_kill(image):
    """A writer posts notes while the db container is killed with SIGKILL and started again."""
    with stack(image) as notes:
        with Load(notes.url) as writer:
            writer.wait_for_acknowledged(200)
            notes.docker("db").kill(signal="SIGKILL")
            notes.docker("db").start()
            writer.wait_for_acknowledged(200, after=time.monotonic())
        return durability("db killed with SIGKILL mid-stream, then started", writer, notes.url)


@contextmanager
def compose_project(image):
    """compose.yaml up (`--wait`) with web and migrate on `image`, under a project name, WEB_PORT and password file
    of its own; `down --volumes` after. Yields a function that runs `docker compose` in the project, and web's URL.
    """
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        environment = {**os.environ, **compose_environment(image, write_password_file(scratch), port)}

        def compose(*arguments):
            done = subprocess.run(["docker", "compose", *arguments], cwd=ROOT, env=environment, capture_output=True,
                                  text=True, timeout=180)
            if done.returncode:
                raise RuntimeError(f"docker compose {' '.join(arguments)}: exit {done.returncode}\n{done.stderr}")

        # --no-build: the drill runs the image `make build` made, never one it builds itself.
        with tagged(image, stack_image(environment)):
            try:
                compose("up", "--detach", "--wait", "--wait-timeout", "120", "--no-build")
                yield compose, f"http://127.0.0.1:{port}"
            finally:
                compose("down", "--volumes", "--remove-orphans")


def durability_across_compose_down_up(image):
    """A writer posts notes across `docker compose down` and `docker compose up`; the db_data volume keeps them."""
    with compose_project(image) as (compose, url):
        with Load(url) as writer:
            writer.wait_for_acknowledged(200)
            compose("down")
            compose("up", "--detach", "--wait", "--wait-timeout", "120", "--no-build")
            writer.wait_for_acknowledged(200, after=time.monotonic())
        return durability("docker compose down, then up", writer, url)


# ---------------------------------------------------------------------------------------------- graceful stop


@dataclass
class GracefulStop:
    sent_before: int
    answered: int
    cut: int  # accepted (the note is stored) but no response reached the client
    reset_in_queue: int  # no response and nothing stored: still in the listen queue when the workers exited
    server_errors: int
    exit_code: int
    stop_seconds: float

    def __str__(self):
        return (f"graceful stop (docker stop web under load): {self.sent_before} requests sent before SIGTERM, "
                f"{self.answered} answered, {self.cut} accepted but cut off (goal 0), {self.server_errors} 5xx "
                f"(goal 0), {self.reset_in_queue} reset while still queued, not yet accepted; "
                f"exit code {self.exit_code} (goal 0) after {self.stop_seconds:.1f} s")


def graceful_stop(image):
    """`docker stop web` while eight writers keep posting; then web is started again to read back what was stored."""
    with stack(image) as notes:
        with Load(notes.url, threads=8) as writer:
            writer.wait_for_acknowledged(200)
            sigterm = time.monotonic()
            # Longer than gunicorn's graceful timeout, as compose.yaml's stop_grace_period is.
            notes.docker("web").stop(timeout=GRACEFUL_TIMEOUT + 10)
            stopped = time.monotonic()
        exit_code = notes.docker("web").attrs["State"]["ExitCode"]
        notes.docker("web").start()
        wait_until(answers(f"{notes.url}/readyz"), 30, "web ready after its restart")
        stored = set(stored_notes(notes.url).values())
    before = [o for o in writer.outcomes if o.sent < sigterm]
    unanswered = [o for o in before if o.status is None]
    cut = sum(o.text in stored for o in unanswered)
    result = GracefulStop(len(before), len(before) - len(unanswered), cut, len(unanswered) - cut,
                          sum(o.status >= 500 for o in before if o.status), exit_code, stopped - sigterm)
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- database outage


@dataclass
class Outage:
    requests: int  # sent from the moment db was stopped until it accepted connections again
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success: a 500, a hang (no answer in 10 s), a non-JSON 503
    slowest: float
    recovery: float  # seconds from the database accepting connections to the service answering every request
    restarts: int

    def __str__(self):
        return (f"database outage ({OUTAGE_SECONDS} s, db stopped under load): {self.requests} requests during it, "
                f"{self.unavailable} answered 503 JSON, {self.other} anything but that or a success (goal 0), "
                f"slowest {self.slowest:.2f} s (bound {DATABASE_WAIT_SECONDS + 1:.0f} s); recovered "
                f"{self.recovery:.1f} s after db was back (goal <= {RECOVERY_BOUND_SECONDS} s), {self.restarts} web "
                f"restarts (goal 0)")


def is_unavailable_json(outcome):
    try:
        return outcome.status == 503 and json.loads(outcome.body)["error"]["code"] == "service_unavailable"
    except (ValueError, KeyError, TypeError):
        return False


def recovered_since(outcomes, at_least):
    """When the last run of successes began, if it has lasted `at_least` seconds: every request since succeeded."""
    since = None
    for outcome in sorted(outcomes, key=lambda o: o.sent):
        if outcome.status in (200, 201):
            since = since or outcome.sent
        else:
            since = None
    return since if since and time.monotonic() - since >= at_least else None


def database_outage(image):
    """db is stopped for OUTAGE_SECONDS under load (writes and reads), then started; web is never restarted.

    Two clients, well below the pool's connections, so that a response's time is the service's and not time spent
    queueing behind the other clients' requests.
    """
    with stack(image) as notes:
        with Load(notes.url, threads=2, reads=True) as load:
            load.wait_for_acknowledged(50)
            stopped = time.monotonic()
            notes.docker("db").stop()
            time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for something
            notes.docker("db").start()
            wait_until(lambda: notes.db.exec(["pg_isready", "--host=127.0.0.1", "--username=notes"]).exit_code == 0,
                       30, "db accepting connections")
            back = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
        restarts = notes.docker("web").attrs["RestartCount"]
    during = [o for o in load.outcomes if stopped <= o.sent < back]
    unavailable = sum(map(is_unavailable_json, during))
    # A request that waits for a connection as the database comes back may succeed: that is no failure.
    succeeded = sum(o.status in (200, 201) for o in during)
    result = Outage(len(during), unavailable, len(during) - unavailable - succeeded,
                    max(o.done - o.sent for o in during), max(0.0, since - back), restarts)
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- bad input

# What an error response must never show: a traceback, SQL, the driver's or the framework's internals. Successful
# responses are not searched: they hold notes, and the fuzzers store notes with any text, SQL included.
LEAKS = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|psycopg|werkzeug\.|"
                   r"\b(?:SELECT|INSERT INTO|DELETE FROM)\b|syntax error at|violates (?:check|not-null)|SQLSTATE")
INJECTIONS = ("' OR '1'='1", "1; DROP TABLE notes; --", "\" OR 1=1 --", "' UNION SELECT NULL--", "{{7*7}}",
              "${jndi:ldap://127.0.0.1/a}", "<script>alert(1)</script>", "../../../../etc/passwd", "%00", "\x00",
              "\ud800", "\u202e\u0645\U0001f600", "a" * 1001, " \t\n", "1e309", "-0", "9" * 40, "NaN")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
PATHS = ("/", "/healthz", "/readyz", "/api/notes", "/api/notes/1", "/api/notes/9223372036854775807")
CONTENT_TYPES = ("application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
                 "application/json; charset=nonsense", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", None)
MAX_BODY = 64 * 1024  # app.py's MAX_CONTENT_LENGTH


@dataclass
class BadInput:
    requests: int
    server_errors: list  # (method, path, status, body) of each 5xx
    leaks: list  # (method, path, status, body) of each response that showed a traceback or SQL
    unanswered: int
    statuses: Counter
    # schemathesis' own checks against docs/openapi.yaml (status codes, headers, bodies, what the spec allows):
    # {check: (count, first example)}. Not a goal of this drill: a finding for whoever owns the spec or the app.
    spec_failures: dict

    def __str__(self):
        examples = "".join(f"\n  {method} {path} -> {status}: {body[:200]!r}"
                           for method, path, status, body in (self.server_errors + self.leaks)[:10])
        spec = "".join(f"\n  {count} x {title}, e.g. {example[:300]}"
                       for title, (count, example) in self.spec_failures.items())
        return (f"bad input (schemathesis from docs/openapi.yaml, then a hypothesis fuzzer): {self.requests} "
                f"requests, {len(self.server_errors)} 5xx (goal 0), {len(self.leaks)} leaking a traceback or SQL "
                f"(goal 0), {self.unanswered} unanswered; by status: "
                f"{', '.join(f'{status} x{n}' for status, n in sorted(self.statuses.items()))}{examples}; "
                f"{sum(count for count, _ in self.spec_failures.values())} responses failing schemathesis' checks "
                f"against the spec{spec}")


def json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.sampled_from(INJECTIONS)
    return st.recursive(scalars, lambda children: st.lists(children) | st.dictionaries(st.text(), children),
                        max_leaves=20)


def raw_bodies():
    """Bodies a client library would never send: not JSON, not UTF-8, nested too deep, at and over the size cap."""
    texts = st.one_of(
        json_values().map(json.dumps),  # json.dumps writes NaN and Infinity, which JSON does not allow
        st.fixed_dictionaries({"text": json_values()}).map(json.dumps),
        st.sampled_from(INJECTIONS).map(lambda text: json.dumps({"text": text}, ensure_ascii=False)),
        st.integers(min_value=1, max_value=MAX_BODY // 2).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(min_value=MAX_BODY - 64, max_value=4 * MAX_BODY).map(lambda size: '{"text": "' + "x" * size),
        st.just('{"text": "a", "text": "b"}'),
    )
    # surrogatepass: a lone surrogate goes out as the bytes UTF-8 forbids, as a broken client would send it.
    return texts.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=2048) | st.none()


def raw_requests():
    segment = (st.text() | st.sampled_from(INJECTIONS)).map(lambda s: quote(s, safe="", errors="surrogatepass"))
    path = st.one_of(st.sampled_from(PATHS), segment.map(lambda s: "/api/notes/" + s))
    values = (st.text() | st.integers().map(str) | st.sampled_from(INJECTIONS)).map(
        lambda value: value.encode("utf-8", "surrogatepass"))
    query = st.dictionaries(st.sampled_from(["limit", "before", "text"]), values, max_size=3)
    content_type = st.sampled_from(CONTENT_TYPES)
    # Half of them at the one handler that parses a body; the rest anywhere, with any method.
    return st.one_of(st.tuples(st.just("POST"), st.just("/api/notes"), query, content_type, raw_bodies()),
                     st.tuples(st.sampled_from(METHODS), path, query, content_type, raw_bodies()))


def schema_cases():
    """Every operation of docs/openapi.yaml, with data that fits the schema and data that breaks it."""
    schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
    operations = [result.ok() for result in schema.get_all_operations()]
    return st.one_of([operation.as_strategy(generation_mode=mode)
                      for operation in operations for mode in schemathesis.GenerationMode])


def bad_input(image, examples=5000):
    """`examples` requests from schemathesis' cases, then as many from the raw fuzzer, each response counted."""
    counted = BadInput(0, [], [], 0, Counter(), {})
    # Counted, not asserted inside: no shrinking, and every example runs even after a failure.
    fuzz = settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))

    def count(method, path, response):
        counted.requests += 1
        if response is None:
            counted.unanswered += 1
            return
        counted.statuses[response.status_code] += 1
        seen = (method, path, response.status_code, response.text)
        if response.status_code >= 500:
            counted.server_errors.append(seen)
        if response.status_code >= 400 and LEAKS.search(response.text + str(response.headers)):
            counted.leaks.append(seen)

    with stack(image) as notes, requests.Session() as session:

        @fuzz
        @given(case=schema_cases())
        def from_schema(case):
            try:
                response = case.call(base_url=notes.url, session=session, timeout=10)
            except requests.RequestException:
                response = None
            count(case.method, case.formatted_path, response)
            if response is None:
                return
            try:
                case.validate_response(response)
            except FailureGroup as failures:
                for failure in failures.exceptions:
                    first = f"{case.as_curl_command()} -> {response.status_code}"
                    seen, example = counted.spec_failures.get(failure.title, (0, first))
                    counted.spec_failures[failure.title] = (seen + 1, example)

        @fuzz
        @given(request=raw_requests())
        def raw(request):
            method, path, query, content_type, body = request
            headers = {"Content-Type": content_type} if content_type else {}
            try:
                response = session.request(method, notes.url + path, params=query, data=body, headers=headers,
                                           timeout=10)
            except requests.RequestException:
                response = None
            count(method, path, response)

        from_schema()
        raw()
    print(counted)
    return counted


# ---------------------------------------------------------------------------------------------- slow clients

KEEPALIVE = setting("gunicorn.conf.py", "keepalive")
BODY_TIMEOUT_SECONDS = setting("gunicorn.conf.py", "BODY_TIMEOUT_SECONDS")
SLOW_PHASE_SECONDS = 15
SLACK_SECONDS = 2
BODY_LENGTH = 60000
# kind: (bytes sent on connect, the byte stream trickled at one byte a second, how long the server may keep it open)
SLOW_KINDS = {
    "slowloris": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b"a" * 100_000, KEEPALIVE),
    "idle": (b"", b"", KEEPALIVE),
    "slow body": (b"POST /api/notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % BODY_LENGTH, (b'{"text": "' + b"a" * BODY_LENGTH)[:BODY_LENGTH],
                  KEEPALIVE + BODY_TIMEOUT_SECONDS),
}


@dataclass
class SlowPhase:
    kind: str
    sockets: int
    bound: float
    sent: int  # plain GET / sent meanwhile
    answered: int  # of them, 200
    p99_ms: float
    opened: int
    closed_by_server: int
    max_lifetime: float  # of those the server closed
    outlived: int  # still open at the phase end, older than bound + SLACK_SECONDS
    statuses: Counter  # responses the server wrote on slow sockets before closing them (408 for a slow body)

    def __str__(self):
        return (f"  {self.kind} x{self.sockets}: plain GET / {self.answered}/{self.sent} answered 200 (goal all), "
                f"p99 {self.p99_ms:.1f} ms (goal <= 100); {self.opened} slow sockets opened, "
                f"{self.closed_by_server} closed by the server, longest {self.max_lifetime:.1f} s "
                f"(goal <= {self.bound + SLACK_SECONDS:.0f}), {self.outlived} outlived their bound (goal 0); "
                f"responses on them: {dict(self.statuses) or 'none'}")


@dataclass
class SlowClients:
    phases: list

    def __str__(self):
        return "slow clients (slowloris, idle, slow body) beside plain requests:\n" + "\n".join(map(str, self.phases))


def plain_requests(url, stopping, outcomes):
    """GET / back to back until `stopping` is set, each as (latency s, answered 200)."""
    with requests.Session() as session:
        while not stopping.is_set():
            sent = time.monotonic()
            try:
                ok = session.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                ok = False
            outcomes.append((time.monotonic() - sent, ok))


def connections_to(port):
    """Host sockets connected to `port` and not yet in TIME_WAIT: a closed one stays until the server closes its end."""
    return sum(remote == port and state != TIME_WAIT for _, remote, state in tcp_states())


def slow_phase(notes, kind, count):
    opening, trickle, bound = SLOW_KINDS[kind]
    selector = selectors.DefaultSelector()
    opened, lifetimes, statuses = 0, [], Counter()

    def connect():
        nonlocal opened
        sock = socket.create_connection(("127.0.0.1", notes.port), timeout=2)
        sock.sendall(opening)
        sock.setblocking(False)
        now = time.monotonic()
        # [connected at, bytes of `trickle` sent, next byte due, bytes the server answered]
        selector.register(sock, selectors.EVENT_READ, [now, 0, now + 1, b""])
        opened += 1

    def closed_by_server(key):
        born, _, _, answer = key.data
        lifetimes.append(time.monotonic() - born)
        if answer:
            statuses[answer.split(b" ", 2)[1].decode()] += 1
        selector.unregister(key.fileobj)
        key.fileobj.close()
        connect()

    stopping, outcomes = threading.Event(), []
    plain = threading.Thread(target=plain_requests, args=(notes.url, stopping, outcomes))
    plain.start()
    end = time.monotonic() + SLOW_PHASE_SECONDS
    for _ in range(count):
        connect()
    while (now := time.monotonic()) < end:
        for key, _ in selector.select(timeout=max(0.0, min(0.1, end - now))):
            try:
                data = key.fileobj.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                key.data[3] += data
            else:
                closed_by_server(key)
        for key in list(selector.get_map().values()):
            born, sent, due, _ = key.data
            if trickle and sent < len(trickle) and due <= time.monotonic():
                try:
                    key.data[1] += key.fileobj.send(trickle[sent:sent + 1])
                    key.data[2] = due + 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # EPIPE or reset: the server has closed it
                    closed_by_server(key)
    stopping.set()
    plain.join()
    now = time.monotonic()
    outlived = sum(now - key.data[0] > bound + SLACK_SECONDS for key in selector.get_map().values())
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    wait_until(lambda: connections_to(notes.port) == 0, 20, f"{kind} sockets gone")
    latencies = sorted(latency for latency, _ in outcomes)
    p99 = latencies[max(0, -(-len(latencies) * 99 // 100) - 1)] * 1000 if latencies else float("inf")
    return SlowPhase(kind, count, bound, len(outcomes), sum(ok for _, ok in outcomes), p99, opened,
                     len(lifetimes), max(lifetimes, default=0.0), outlived, statuses)


def slow_clients(image, counts=(16, 256)):
    """For each count, `count` slowloris, then idle, then slow-body sockets held open for SLOW_PHASE_SECONDS each,
    every one the server closes replaced at once, while one client sends plain GET / back to back.

    Hand-written with selectors: no client library sends a request a byte a second on purpose.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max(counts) + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with stack(image) as notes:
        result = SlowClients([slow_phase(notes, kind, count) for count in counts for kind in SLOW_KINDS])
    print(result)
    return result



# ---------------------------------------------------------------------------------------------- frozen database

DATABASE_TIMEOUT_SECONDS = setting("app.py", "DATABASE_TIMEOUT_SECONDS")


@dataclass
class Freeze:
    requests: int  # sent while db was paused
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success
    late: int  # answered (or given up) after DATABASE_TIMEOUT_SECONDS + 0.5 s
    slowest: float
    recovery: float  # seconds from SIGCONT to every request succeeding

    def __str__(self):
        return (f"frozen database (every db process stopped for {OUTAGE_SECONDS} s under load): {self.requests} "
                f"requests during it, {self.unavailable} answered 503 JSON, {self.other} anything but that or a "
                f"success (goal 0), {self.late} slower than {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s (goal 0), slowest "
                f"{self.slowest:.2f} s; recovered {self.recovery:.1f} s after SIGCONT (goal <= "
                f"{RECOVERY_BOUND_SECONDS} s)")


def signal_every_process(container, name):
    """The server (PID 1) and every backend it forked; `kill -1` from root reaches all but PID 1 and itself."""
    container.kill(signal=f"SIG{name}")
    assert container.exec_run(["sh", "-c", f"kill -{name} -1"], user="root").exit_code == 0


def database_frozen(image):
    """Every db process is stopped (SIGSTOP, as a hung host or a stuck disk would freeze it) for OUTAGE_SECONDS
    under load. Its kernel still accepts and acknowledges connections, so only a client-side bound ends a wait.

    By signals rather than `docker pause`, whose cgroup freezer not every engine has (this machine's does not).
    """
    with stack(image) as notes:
        with Load(notes.url, threads=4, reads=True) as load:
            load.wait_for_acknowledged(50)
            paused = time.monotonic()
            signal_every_process(notes.docker("db"), "STOP")
            time.sleep(OUTAGE_SECONDS)  # the freeze itself, not a wait for something
            signal_every_process(notes.docker("db"), "CONT")
            back = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
    during = [o for o in load.outcomes if paused <= o.sent < back]
    unavailable = sum(map(is_unavailable_json, during))
    succeeded = sum(o.status in (200, 201) for o in during)
    durations = [o.done - o.sent for o in during]
    result = Freeze(len(during), unavailable, len(during) - unavailable - succeeded,
                    sum(d > DATABASE_TIMEOUT_SECONDS + 0.5 for d in durations), max(durations),
                    max(0.0, since - back))
    print(result)
    return result


def main():
    image = sys.argv[1] if len(sys.argv) > 1 else f"{IMAGE}:{DEFAULT_VARIANT}"
    durability_after_db_kill(image)
    durability_across_compose_down_up(image)
    graceful_stop(image)
    database_outage(image)
    database_frozen(image)
    bad_input(image)
    slow_clients(image)


if __name__ == "__main__":
    main()
