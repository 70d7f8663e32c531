"""Drills: what the service does when something goes wrong, each printing what it counted. `make drills` runs
them all and writes docs/drills.md; tests/test_drills.py runs the same functions and asserts their goals.

Usage: make drills   (PYTHONPATH=tools python tools/break/drills.py [IMAGE], default the Makefile's IMAGE:slim)

Every drill starts its own containers (see harness.py) and removes them; the Compose drills run compose.yaml
under a project name, port and password file of its own, so they never touch a developer's stack or secrets/.
Each result names its goals, met or not (class Drill), so the document and the tests judge by the same rules.
"""

import json
import re
import resource
import selectors
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import requests
import schemathesis
from harness import (
    TIME_WAIT,
    Load,
    answers,
    compose_project,
    every_note,
    free_port,
    machine,
    markdown_table,
    migrate,
    postgres,
    revision,
    stack,
    stored_notes,
    tcp_states,
    wait_until,
    web,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from project import DEFAULT_VARIANT, IMAGE, POSTGRES_IMAGE, ROOT
from schemathesis.core.failures import FailureGroup
from testcontainers.core.network import Network


def setting(file, name):
    """A number set at the top level of one of the service's files, read rather than copied, so drills follow it."""
    return float(re.search(rf"^{name} = ([0-9.]+)", (ROOT / file).read_text(), re.M)[1])


GRACEFUL_TIMEOUT = int(setting("gunicorn.conf.py", "graceful_timeout"))
# How long a request waits for a database connection before it answers 503.
DATABASE_WAIT_SECONDS = setting("app.py", "DATABASE_WAIT_SECONDS")
OUTAGE_SECONDS = 10
RECOVERY_BOUND_SECONDS = 5


class Drill:
    """What a drill counted, one line, and its goals, each met or not. A result class sets `title` and writes
    counts() and goals(); one with several parts (slow clients) gives a row to each in rows()."""

    title = ""

    def counts(self):
        raise NotImplementedError

    def goals(self):
        raise NotImplementedError

    def missed(self):
        return [goal for goal, met in self.goals().items() if not met]

    def rows(self):
        """docs/drills.md's rows: drill, what it counted, its goals, met."""
        missed = self.missed()
        return [[self.title, self.counts(), "; ".join(self.goals()),
                 "yes" if not missed else "**no**: " + "; ".join(missed)]]

    def __str__(self):
        missed = self.missed()
        return f"{self.title}: {self.counts()}; " + (f"MISSED: {'; '.join(missed)}" if missed else "every goal met")


def restarted(container, first_start):
    """Whether `container` (docker-py, reloaded) has stopped or started again since `first_start` (its StartedAt)."""
    state = container.attrs["State"]
    return not state["Running"] or state["StartedAt"] != first_start


def lost_notes(load, url):
    """Acknowledged (201) notes that the service no longer returns."""
    stored = stored_notes(url)
    return {note_id: text for note_id, text in load.acknowledged().items() if stored.get(note_id) != text}


# ---------------------------------------------------------------------------------------------- durability


@dataclass
class Durability(Drill):
    how: str
    acknowledged: int
    lost: int
    refused: int  # 503 or no answer during the interruption: never acknowledged, so never promised

    @property
    def title(self):
        return f"durability: {self.how}"

    def counts(self):
        return (f"{self.acknowledged} notes acknowledged with 201, {self.lost} of them lost; {self.refused} requests "
                f"refused or unanswered during the interruption")

    def goals(self):
        return {"every acknowledged note kept": self.acknowledged > 0 and self.lost == 0}


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


def durability_across_compose_down_up(image):
    """A writer posts notes across `docker compose down` and `docker compose up`; the db_data volume keeps them."""
    with compose_project(image) as project:
        with Load(project.url) as writer:
            writer.wait_for_acknowledged(200)
            project.compose("down")
            project.up()
            writer.wait_for_acknowledged(200, after=time.monotonic())
        return durability("docker compose down, then up", writer, project.url)


# ---------------------------------------------------------------------------------------------- graceful stop


@dataclass
class GracefulStop(Drill):
    sent_before: int
    answered: int
    cut: int  # accepted (the note is stored) but no response reached the client
    reset_in_queue: int  # no response and nothing stored: still in the listen queue when the workers exited
    server_errors: int
    exit_code: int
    stop_seconds: float

    title = "graceful stop: docker stop web under load"

    def counts(self):
        return (f"{self.sent_before} requests sent before SIGTERM, {self.answered} answered, {self.cut} accepted but "
                f"cut off, {self.server_errors} 5xx, {self.reset_in_queue} reset while still queued, not yet "
                f"accepted; exit code {self.exit_code} after {self.stop_seconds:.1f} s")

    def goals(self):
        return {"requests answered under load": self.answered > 0, "0 accepted requests cut off": self.cut == 0,
                "0 5xx": self.server_errors == 0, "exit code 0": self.exit_code == 0,
                f"stopped within gunicorn's {GRACEFUL_TIMEOUT} s graceful timeout":
                    self.stop_seconds < GRACEFUL_TIMEOUT}


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
class Outage(Drill):
    requests: int  # sent from the moment db was stopped until it accepted connections again
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success: a 500, a hang (no answer in 10 s), a non-JSON 503
    slowest: float
    recovery: float  # seconds from the database accepting connections to the service answering every request
    web_restarted: bool

    title = f"database outage: db stopped for {OUTAGE_SECONDS} s under load"

    def counts(self):
        return (f"{self.requests} requests during it, {self.unavailable} answered 503 JSON, {self.other} anything "
                f"but that or a success, slowest {self.slowest:.2f} s; recovered {self.recovery:.1f} s after db was "
                f"back; web {'restarted' if self.web_restarted else 'never restarted'}")

    def goals(self):
        return {"only 503 JSON or a success during it": self.requests > 0 and self.other == 0,
                f"slowest <= {DATABASE_WAIT_SECONDS + 1:.0f} s": self.slowest <= DATABASE_WAIT_SECONDS + 1,
                f"recovered <= {RECOVERY_BOUND_SECONDS} s": self.recovery <= RECOVERY_BOUND_SECONDS,
                "0 web restarts": not self.web_restarted}


def is_unavailable_json(outcome):
    try:
        return outcome.status == 503 and json.loads(outcome.body)["error"]["code"] == "service_unavailable"
    except (ValueError, KeyError, TypeError):
        return False


def tally(outcomes):
    """(succeeded, answered 503 JSON, anything else) among `outcomes`: a 500, a hang, a 503 of another shape."""
    succeeded = sum(o.status in (200, 201) for o in outcomes)
    unavailable = sum(map(is_unavailable_json, outcomes))
    return succeeded, unavailable, len(outcomes) - succeeded - unavailable


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
        first_start = notes.docker("web").attrs["State"]["StartedAt"]
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
        web_restarted = restarted(notes.docker("web"), first_start)
    during = [o for o in load.outcomes if stopped <= o.sent < back]
    # A request that waits for a connection as the database comes back may succeed: that is no failure.
    _, unavailable, other = tally(during)
    result = Outage(len(during), unavailable, other, max(o.done - o.sent for o in during), max(0.0, since - back),
                    web_restarted)
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
class BadInput(Drill):
    planned: int
    requests: int
    server_errors: list  # (method, path, status, body) of each 5xx
    leaks: list  # (method, path, status, body) of each response that showed a traceback or SQL
    unanswered: int
    statuses: Counter
    # schemathesis' own checks against docs/openapi.yaml (status codes, headers, bodies, what the spec allows):
    # {check: (count, first example)}. Not a goal of this drill: a finding for whoever owns the spec or the app.
    spec_failures: dict

    title = "bad input: schemathesis from docs/openapi.yaml, then a hypothesis fuzzer"

    def counts(self):
        return (f"{self.requests} requests, {len(self.server_errors)} 5xx, {len(self.leaks)} leaking a traceback or "
                f"SQL, {self.unanswered} unanswered; by status: "
                f"{', '.join(f'{status} x{n}' for status, n in sorted(self.statuses.items()))}; "
                f"{sum(count for count, _ in self.spec_failures.values())} responses failing schemathesis' checks "
                f"against the spec (findings for the spec's owner, not goals)")

    def goals(self):
        return {f"{self.planned:,} requests sent": self.requests >= self.planned,
                "0 5xx": not self.server_errors, "0 tracebacks or SQL shown": not self.leaks,
                "0 unanswered": self.unanswered == 0}

    def __str__(self):
        examples = "".join(f"\n  {method} {path} -> {status}: {body[:200]!r}"
                           for method, path, status, body in (self.server_errors + self.leaks)[:10])
        spec = "".join(f"\n  {count} x {title}, e.g. {example[:300]}"
                       for title, (count, example) in self.spec_failures.items())
        return super().__str__() + examples + spec


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
    counted = BadInput(2 * examples, 0, [], [], 0, Counter(), {})
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
class SlowPhase(Drill):
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

    @property
    def title(self):
        return f"slow clients: {self.kind} x{self.sockets} beside plain requests"

    def counts(self):
        return (f"plain GET / {self.answered}/{self.sent} answered 200, p99 {self.p99_ms:.1f} ms; {self.opened} slow "
                f"sockets opened, {self.closed_by_server} closed by the server, longest {self.max_lifetime:.1f} s, "
                f"{self.outlived} outlived their bound; responses on them: {dict(self.statuses) or 'none'}")

    def goals(self):
        bound = self.bound + SLACK_SECONDS
        # Every socket of the first round must be closed within the phase: a phase no longer than the slow-body
        # bound would otherwise let a slow body the server never closes pass as "not yet outlived".
        return {"every plain request answered 200": self.sent > 0 and self.answered == self.sent,
                "plain p99 <= 100 ms": self.p99_ms <= 100,
                f"every slow socket closed by the server within {bound:.0f} s":
                    self.closed_by_server >= self.sockets and self.outlived == 0 and self.max_lifetime <= bound}


@dataclass
class SlowClients(Drill):
    phases: list

    def goals(self):
        return {f"{phase.kind} x{phase.sockets}: {goal}": met for phase in self.phases
                for goal, met in phase.goals().items()}

    def rows(self):
        return [row for phase in self.phases for row in phase.rows()]

    def __str__(self):
        return "\n".join(map(str, self.phases))


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
class Freeze(Drill):
    requests: int  # sent while db was paused
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success
    late: int  # answered (or given up) after DATABASE_TIMEOUT_SECONDS + 0.5 s
    slowest: float
    recovery: float  # seconds from SIGCONT to every request succeeding

    title = f"frozen database: every db process stopped for {OUTAGE_SECONDS} s under load"

    def counts(self):
        return (f"{self.requests} requests during it, {self.unavailable} answered 503 JSON, {self.other} anything "
                f"but that or a success, {self.late} slower than {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s, slowest "
                f"{self.slowest:.2f} s; recovered {self.recovery:.1f} s after SIGCONT")

    def goals(self):
        return {"only 503 JSON or a success during it": self.requests > 0 and self.other == 0,
                f"every answer within {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s": self.late == 0,
                f"recovered <= {RECOVERY_BOUND_SECONDS} s": self.recovery <= RECOVERY_BOUND_SECONDS}


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
    _, unavailable, other = tally(during)
    durations = [o.done - o.sent for o in during]
    result = Freeze(len(during), unavailable, other, sum(d > DATABASE_TIMEOUT_SECONDS + 0.5 for d in durations),
                    max(durations),
                    max(0.0, since - back))
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- backup under writes


@dataclass
class BackupUnderWrites(Drill):
    before: int  # notes acknowledged before `make backup` started
    missing: int  # of them, not restored exactly as they were stored (id, text, created_at)
    during: int  # acknowledged while it ran: in the archive or not, depending on when pg_dump took its snapshot
    during_restored: int
    after_restored: int  # acknowledged after it ended, yet restored: the archive would hold what it cannot
    duplicates: int  # texts restored more than once (every text the writer sends is unique)
    archived: int  # the number `make backup` printed
    restored: int  # the number `make restore` printed
    stored: int  # notes the service returned after the restore
    backup_seconds: float
    next_id_fresh: bool  # a note written after the restore got an id above every restored one

    title = "backup under writes: make backup mid-stream, then compose down -v, up, make restore"

    def counts(self):
        return (f"{self.before} notes acknowledged before the dump began, {self.missing} of them missing or changed "
                f"after the restore; {self.during} acknowledged while it ran ({self.backup_seconds:.1f} s), "
                f"{self.during_restored} of them restored; {self.after_restored} acknowledged after it restored; "
                f"{self.duplicates} restored twice; make backup counted {self.archived}, make restore {self.restored}, "
                f"the service returned {self.stored}")

    def goals(self):
        return {"every note acknowledged before the dump restored byte for byte": self.before > 0 and not self.missing,
                "no note twice": self.duplicates == 0,
                "only what the archive holds": self.after_restored == 0,
                "backup, restore and the service count the same notes": self.archived == self.restored == self.stored,
                "new notes continue after the restored ids": self.next_id_fresh}


def backup_under_writes(image):
    """Four writers post notes while `make backup` runs; the stack is then taken down with its volume, brought up
    empty, and `make restore FORCE=1` fills it from the archive. Every note is compared with what the service
    returned for it before the volume went (its JSON: id, text and created_at)."""
    with compose_project(image) as project, tempfile.TemporaryDirectory() as backups:
        with Load(project.url) as writer:
            writer.wait_for_acknowledged(200)
            began = time.monotonic()
            archive, _, archived = project.backup(backups)
            ended = time.monotonic()
            writer.wait_for_acknowledged(50, after=ended)
        before_down = {note["id"]: note for note in every_note(project.url)}
        project.compose("down", "--volumes")
        project.up()
        restored_said = project.make("restore", f"FILE={archive}", "FORCE=1").stdout
        restored = every_note(project.url)
        fresh = requests.post(f"{project.url}/api/notes", json={"text": "after the restore"}, timeout=10)
    by_id = {note["id"]: note for note in restored}
    acknowledged = [o for o in writer.outcomes if o.status == 201]
    before = [json.loads(o.body)["id"] for o in acknowledged if o.done < began]
    during = [json.loads(o.body)["id"] for o in acknowledged if began <= o.done and o.sent < ended]
    after = [json.loads(o.body)["id"] for o in acknowledged if o.sent >= ended]
    texts = Counter(note["text"] for note in restored)
    result = BackupUnderWrites(
        len(before), sum(note_id not in before_down or by_id.get(note_id) != before_down[note_id]
                         for note_id in before), len(during),
        sum(note_id in by_id for note_id in during), sum(note_id in by_id for note_id in after),
        sum(count - 1 for count in texts.values()), archived,
        int(re.search(r"^restored (\d+) notes", restored_said, re.M)[1]), len(restored), ended - began,
        fresh.status_code == 201 and fresh.json()["id"] > max(by_id, default=0))
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- disk full

PGDATA = "/var/lib/postgresql/data"
# The data's mount: what initdb and the schema take (about 46 MB with one 16 MB WAL segment), and room to spare.
DISK_MB = 80
# Left free by the filler, for the notes to fill: enough for some notes to land, small enough to fill in seconds.
HEADROOM_KB = 256
FULL_SECONDS = 5


@dataclass
class DiskFull(Drill):
    writes: int  # POSTs sent while the disk was full
    refused: int  # of which 503 JSON
    reads: int  # GETs sent meanwhile
    read_ok: int  # of which 200
    other: int  # neither a success nor 503 JSON: a 500, no answer within 10 s
    slowest: float
    lost: int
    recovery: float  # seconds from the filler's removal until every request succeeded
    web_restarted: bool
    db_reinitialized: bool  # Postgres restarted its processes after a crash (a PANIC), though its container ran on

    title = f"disk full: Postgres' data on a size-limited mount ({DISK_MB} MB), full for {FULL_SECONDS} s under load"

    def counts(self):
        return (f"{self.writes} writes while full, {self.refused} answered 503 JSON; {self.read_ok}/{self.reads} "
                f"reads answered 200; {self.other} anything else; slowest {self.slowest:.2f} s; {self.lost} "
                f"acknowledged notes lost; writes back {self.recovery:.2f} s after space was freed; web "
                f"{'restarted' if self.web_restarted else 'never restarted'}, Postgres "
                f"{'crashed and reinitialized' if self.db_reinitialized else 'never crashed'}")

    def goals(self):
        return {"writes answered 503 JSON, never 500 or a hang": self.refused > 0 and self.other == 0,
                "every read answered 200": self.reads > 0 and self.read_ok == self.reads,
                f"every answer within {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s":
                    self.slowest <= DATABASE_TIMEOUT_SECONDS + 0.5,
                "0 acknowledged notes lost": self.lost == 0,
                f"writes resume <= {RECOVERY_BOUND_SECONDS} s after space is freed, with no restart":
                    self.recovery <= RECOVERY_BOUND_SECONDS and not self.web_restarted and not self.db_reinitialized}


def small_disk(network):
    """Postgres as the stack runs it, its data on a size-limited tmpfs: a small disk that fills in seconds."""
    return postgres(network).with_tmpfs_mount(PGDATA, f"size={DISK_MB}m,uid=999,gid=999,mode=0700")


def disk_full(image):
    """A filler file takes all but HEADROOM_KB of the data's mount, as a runaway log or a forgotten dump would;
    writers then post notes until Postgres cannot extend the table. After FULL_SECONDS the filler is deleted.

    The write-ahead log keeps writing into its preallocated 16 MB segment meanwhile: a disk so full that a new
    segment cannot be created makes Postgres stop and restart, which the outage drill covers.
    """
    with stack(image, database=small_disk) as notes:
        db, first_start = notes.docker("db"), notes.docker("web").attrs["State"]["StartedAt"]
        fill = db.exec_run(["sh", "-c", f'free=$(df -k --output=avail "$PGDATA" | tail -n 1); exec dd '
                           f'if=/dev/zero of="$PGDATA/filler" bs=1k count=$((free - {HEADROOM_KB})) status=none'],
                           user="postgres")
        assert fill.exit_code == 0, fill.output
        with Load(notes.url, threads=2, reads=True) as load:
            wait_until(lambda: any(o.text and is_unavailable_json(o) for o in list(load.outcomes)), 60,
                       "a write refused for a full disk")
            full = time.monotonic()
            time.sleep(FULL_SECONDS)  # the full disk itself, not a wait for something
            assert db.exec_run(["sh", "-c", 'rm "$PGDATA/filler"']).exit_code == 0
            freed = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
        lost = len(lost_notes(load, notes.url))
        web_restarted = restarted(notes.docker("web"), first_start)
        # What Postgres logs when a crashed process made it restart the others (a PANIC on a failed WAL write).
        reinitialized = "all server processes terminated; reinitializing" in db.logs().decode(errors="replace")
    during = [o for o in load.outcomes if full <= o.sent < freed]
    writes, reads = [o for o in during if o.text], [o for o in during if not o.text]
    refused = sum(map(is_unavailable_json, writes))
    result = DiskFull(len(writes), refused, len(reads), sum(o.status == 200 for o in reads),
                      len(writes) - refused - sum(o.status == 201 for o in writes)
                      + sum(o.status != 200 and not is_unavailable_json(o) for o in reads),
                      max(o.done - o.sent for o in during), lost, max(0.0, since - freed), web_restarted,
                      reinitialized)
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- worker killed

# Run in web by `docker exec`, as its own uid: gunicorn's workers are PID 1's children (an exec'd process has none).
WORKERS = ("import os; print(*[p for p in os.listdir('/proc') if p.isdigit() "
           "and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == '1'])")


@dataclass
class WorkerKilled(Drill):
    connections: int  # the clients' keep-alive connections, each held by the one worker
    in_flight: int  # requests sent before the kill and not yet answered
    failed: int  # requests with no answer or a 5xx
    failed_later: int  # of them, sent once gunicorn ran the new worker
    server_errors: int
    replaced: float  # seconds until gunicorn ran a new worker
    recovery: float  # seconds until every request succeeded again
    restarted: bool  # the container, that is: gunicorn's master (PID 1) exited
    logged: bool  # gunicorn's master said which worker was killed
    lost: int

    title = "worker killed: SIGKILL to the gunicorn worker under load, as the OOM killer sends it"

    def counts(self):
        return (f"{self.failed} requests failed ({self.server_errors} with a 5xx) of the {self.connections} "
                f"connections the worker held, {self.in_flight} requests in flight at the kill; "
                f"{self.failed_later} failed once the new worker was seen running, {self.replaced:.2f} s after the "
                f"kill; every request answered again {self.recovery:.2f} s after it; container "
                f"{'restarted' if self.restarted else 'never restarted'}; the kill "
                f"{'logged' if self.logged else 'not logged'} by gunicorn; {self.lost} acknowledged notes lost")

    def goals(self):
        # A request sent as the worker dies can still go out on a connection it held, before the kernel closes it:
        # those fail too, and none once the new worker runs.
        return {"only requests on the killed worker's connections failed":
                    self.failed <= self.connections and self.failed_later == 0,
                "0 5xx": self.server_errors == 0,
                f"full capacity <= {RECOVERY_BOUND_SECONDS} s, without a container restart":
                    self.recovery <= RECOVERY_BOUND_SECONDS and not self.restarted,
                "0 acknowledged notes lost": self.lost == 0}


def workers(container):
    listed = container.exec_run(["python", "-c", WORKERS])
    assert listed.exit_code == 0, listed.output
    return set(listed.output.decode().split())


def worker_killed(image, clients=8):
    """`clients` write and read; the gunicorn worker (the service runs one, WEB_CONCURRENCY=1) gets SIGKILL, from
    inside the container as its own uid. gunicorn's master, PID 1, starts a new one."""
    with stack(image) as notes:
        container = notes.docker("web")
        first_start = container.attrs["State"]["StartedAt"]
        with Load(notes.url, threads=clients, reads=True) as load:
            load.wait_for_acknowledged(100)
            [victim, *_] = sorted(workers(container))
            # The moment of the kill, on the clock the load uses: CLOCK_MONOTONIC is the host's, in any container.
            kill = container.exec_run(["python", "-c",
                                       f"import os, time; os.kill({victim}, 9); print(time.monotonic())"])
            assert kill.exit_code == 0, kill.output
            killed = float(kill.output)
            wait_until(lambda: workers(container) - {victim}, 30, "a new worker")
            replaced = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
        lost = len(lost_notes(load, notes.url))
        was_restarted = restarted(notes.docker("web"), first_start)
        logged = f"(pid:{victim}) was sent SIGKILL" in container.logs().decode(errors="replace")
    failed = [o for o in load.outcomes if o.status is None or o.status >= 500]
    result = WorkerKilled(clients, sum(o.sent < killed < o.done for o in load.outcomes), len(failed),
                          sum(o.sent >= replaced for o in failed), sum(bool(o.status) for o in failed),
                          replaced - killed, max(0.0, since - killed), was_restarted, logged, lost)
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- too many connections

# A Postgres that admits this many connections, for one web replica more than that: tests/test_connections.py keeps
# the shipped replicas, workers and pools within max_connections; this is what happens when they are not.
# (4 is the least Postgres starts with: it must exceed the 3 slots reserved for superusers, which the image's
# notes role is, so that role may use all 4.)
MAX_CONNECTIONS = 4
REPLICAS = MAX_CONNECTIONS + 1


@dataclass
class TooManyConnections(Drill):
    requests: int
    succeeded: int
    unavailable: int  # 503 JSON
    other: int  # neither: a 500, no answer within 10 s
    slowest_unavailable: float
    starved: int  # replicas that got no connection at all
    recovery: float  # seconds from the other replicas' removal until a starved one answered every request
    restarted: bool  # that replica

    title = (f"too many connections: {REPLICAS} web replicas, each pooling up to 4 connections, against "
             f"max_connections {MAX_CONNECTIONS}")

    def counts(self):
        return (f"{self.requests} requests, {self.succeeded} succeeded, {self.unavailable} answered 503 JSON (slowest "
                f"{self.slowest_unavailable:.2f} s), {self.other} anything else; {self.starved} replicas without a "
                f"connection; one of them answered every request {self.recovery:.1f} s after the others went away "
                f"and {'restarted' if self.restarted else 'never restarted'}")

    def goals(self):
        return {"requests beyond the pool answer 503 JSON, never 500 or a hang":
                    self.unavailable > 0 and self.other == 0,
                f"each 503 within the pool's {DATABASE_WAIT_SECONDS:.0f} s wait (+1 s)":
                    self.slowest_unavailable <= DATABASE_WAIT_SECONDS + 1,
                f"recovered <= {RECOVERY_BOUND_SECONDS} s once replicas went away, without a restart":
                    self.recovery <= RECOVERY_BOUND_SECONDS and not self.restarted}


def too_many_connections(image):
    """REPLICAS web containers, one client each (writes and reads), against a db that admits MAX_CONNECTIONS: the
    first replicas' pools take every slot and the rest get none. Once each has answered a few requests, every replica
    but one without a connection goes away (removed, as a scale-down or a lost node would), and that one recovers."""
    with Network() as network, ExitStack() as containers:
        containers.enter_context(postgres(network).with_command(f"postgres -c max_connections={MAX_CONNECTIONS}"))
        migrate(image, network)
        replicas = []  # (container, its URL, its client)
        for _ in range(REPLICAS):
            port = free_port()
            replica = containers.enter_context(web(image, network, port)).get_wrapped_container()
            wait_until(answers(f"http://127.0.0.1:{port}/healthz"), 30, "a web replica alive")
            replicas.append((replica, f"http://127.0.0.1:{port}", Load(f"http://127.0.0.1:{port}", threads=1,
                                                                       reads=True)))
        with ExitStack() as clients:
            for _, _, load in replicas:
                clients.enter_context(load)
            wait_until(lambda: all(len(load.outcomes) >= 3 for *_, load in replicas), 60, "3 answers from each")
        starved = [(replica, url) for replica, url, load in replicas
                   if not any(o.status in (200, 201) for o in load.outcomes)]
        assert starved, "every replica got a connection: the drill did not exceed max_connections"
        remaining, url = starved[0]
        remaining.reload()
        first_start = remaining.attrs["State"]["StartedAt"]
        for replica, *_ in replicas:
            if replica is not remaining:
                replica.stop(timeout=GRACEFUL_TIMEOUT)
        gone = time.monotonic()
        with Load(url, threads=1, reads=True) as after:
            since = wait_until(lambda: recovered_since(after.outcomes, at_least=1), 30, "every request succeeding")
        remaining.reload()
        was_restarted = restarted(remaining, first_start)
    outcomes = [o for *_, load in replicas for o in load.outcomes]
    succeeded, unavailable, other = tally(outcomes)
    result = TooManyConnections(len(outcomes), succeeded, unavailable, other,
                                max((o.done - o.sent for o in outcomes if is_unavailable_json(o)), default=0.0),
                                len(starved),
                                max(0.0, since - gone), was_restarted)
    print(result)
    return result


# ---------------------------------------------------------------------------------------------- make drills

DRILLS = (durability_after_db_kill, durability_across_compose_down_up, graceful_stop, database_outage,
          database_frozen, backup_under_writes, disk_full, worker_killed, too_many_connections, bad_input,
          slow_clients)


def report(results, image, started):
    table = markdown_table(["drill", "counted", "goals", "met"], [row for result in results for row in result.rows()])
    return f"""# Drills

Written by `make drills` ([tools/break/drills.py](../tools/break/drills.py)) in one run; run it again rather than
editing this file. Each drill breaks the service on purpose and counts what happened; `tests/test_drills.py` runs the
same drills and fails on any goal missed. Figures from one machine: timings vary with what else runs on it.

- Date: {started:%Y-%m-%d %H:%M} UTC
- Revision: {revision()}
- Machine: {machine()}
- Images: {image} (web), {POSTGRES_IMAGE} (db)

{table}
"""


def main():
    image = sys.argv[1] if len(sys.argv) > 1 else f"{IMAGE}:{DEFAULT_VARIANT}"
    started = datetime.now(UTC)
    results = [drill(image) for drill in DRILLS]
    (ROOT / "docs" / "drills.md").write_text(report(results, image, started))
    missed = [f"{result.title}: {goal}" for result in results for goal in result.missed()]
    print(f"\nwritten to docs/drills.md in {(datetime.now(UTC) - started).total_seconds():.0f} s; "
          + (f"{len(missed)} goals missed:\n  " + "\n  ".join(missed) if missed else "every goal met"))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
