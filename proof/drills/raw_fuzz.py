"""Raw-HTTP fuzz: valid requests mutated at the byte level (request line, header names and values, line ends,
Content-Length and Transfer-Encoding conflicts and duplicates, chunk sizes and ends, truncation, oversize lines),
drawn by hypothesis and sent on raw sockets. No answer of 500 or above, no traceback in the log, every connection
answered or closed within the server's deadlines, and plain requests answered throughout.

hypothesis draws the mutations (its binary, integer and sampled strategies over a few valid seed requests), as it
draws the bad-input drill's: we found no maintained corpus of malformed HTTP/1.1 requests on PyPI, and boofuzz, the
protocol fuzzer there, is a framework of its own (sessions, targets, a web UI), last released in 2023, for what a
few strategies do here.
"""

import json
import re
import resource
import selectors
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import requests
from containers import stack
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from project import BODY_TIMEOUT_SECONDS, KEEPALIVE_SECONDS
from waits import wait_until

from proof.drills.common import SLACK_SECONDS, Drill, p99_ms, plain_requests

FUZZ_CASES = 10_000
# Connections open at once: most cases are answered in milliseconds, but one whose headers or body never end holds
# its connection until the server's deadline; well within gunicorn's worker_connections. Of them at most
# FUZZ_FRESH younger than a second: those are the ones the worker is busy with, and more would make the fuzz a load
# test, answered 503 when the pool's connections are all taken.
FUZZ_CONNECTIONS = 256
FUZZ_FRESH = 16
# A case's connection must be answered or closed by the server by then: the wait for headers (keepalive), then the
# body's own deadline, and slack.
FUZZ_DEADLINE_SECONDS = KEEPALIVE_SECONDS + BODY_TIMEOUT_SECONDS + SLACK_SECONDS


def seed(method, target, headers=(), body=None, chunks=None):
    """A valid request as (role, bytes) segments, which joined are the bytes sent; mutations change one role's."""
    framed = ([(b"Content-Length", b"%d" % len(body))] if body is not None else []) + (
        [(b"Transfer-Encoding", b"chunked")] if chunks is not None else [])
    segments = [("method", method), ("space", b" "), ("target", target), ("space", b" "), ("version", b"HTTP/1.1"),
                ("eol", b"\r\n")]
    for name, value in [(b"Host", b"127.0.0.1"), *headers, *framed]:
        segments += [("name", name), ("colon", b": "), ("value", value), ("eol", b"\r\n")]
    segments.append(("blank", b"\r\n"))
    if body:
        segments.append(("body", body))
    for chunk in chunks or ():
        segments += [("size", b"%x" % len(chunk)), ("chunk eol", b"\r\n"), ("body", chunk), ("chunk eol", b"\r\n")]
    if chunks is not None:
        segments += [("size", b"0"), ("chunk eol", b"\r\n"), ("chunk eol", b"\r\n")]
    return tuple(segments)


NOTE = b'{"text": "fuzzed"}'
JSON = (b"Content-Type", b"application/json")
# The valid requests every case starts from: each route and method, a body by length and one in chunks.
SEEDS = (seed(b"GET", b"/"), seed(b"GET", b"/api/notes?limit=5", [(b"Accept", b"application/json")]),
         seed(b"POST", b"/api/notes", [JSON], body=NOTE),
         seed(b"POST", b"/api/notes", [JSON], chunks=[NOTE[:7], NOTE[7:]]), seed(b"DELETE", b"/api/notes/1"))
# Bytes that mean something to a parser: separators, line ends, NUL, bytes past ASCII, number signs and prefixes.
SPECIAL = (b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\x00", b" ", b"\t", b":", b";", b",", b"=", b'"', b"\x7f", b"\x80",
           b"\xff", b"\x0b", b"\x0c", b"-", b"+", b"0x", b"%", b"%00", b"\xc0\xaf", b"/", b"?", b"#", b"\\", b"9" * 20)
FRAMING_NAMES = (b"Content-Length", b"Transfer-Encoding")
LENGTHS = st.one_of(st.integers(min_value=0, max_value=2**70).map(b"%d".__mod__), st.sampled_from([
    b"%d" % len(NOTE), b"+%d" % len(NOTE), b" %d" % len(NOTE), b"%d " % len(NOTE), b"0x%x" % len(NOTE),
    b"%d.0" % len(NOTE), b"%d\x00" % len(NOTE), b"%d, %d" % (len(NOTE), len(NOTE)),
    b"%d,%d" % (len(NOTE), len(NOTE) + 1), b"abc", b"-1", b"", b"1e2", b"\xd9\xa3"]))
CODINGS = st.sampled_from([b"chunked", b"Chunked", b"CHUNKED", b"identity", b"chunked, identity", b"identity, chunked",
                           b"gzip, chunked", b"chunked, gzip", b"chunked\x0b", b" chunked", b"chunked ", b"xchunked",
                           b"chunked;q=1", b"", b"\tchunked", b"chunked\r", b"chunked, chunked"])
# A leading space or tab makes a header line the continuation of the one before it (obsolete line folding).
SPELLINGS = st.sampled_from([b"%s", b"%s ", b" %s", b"\t%s"])
SIZES = st.one_of(st.integers(min_value=0, max_value=2**80).map(b"%x".__mod__),
                  st.sampled_from([b"-1", b"+7", b" 7", b"7 ", b"0x7", b"7;ext=1", b"7;", b"g", b"", b"7\x00",
                                   b"0" * 100 + b"7"]))
LINE_ENDS = st.sampled_from([b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\r\n\r\n", b"\r\x00\n", b" \r\n", b"\r\n "])


@st.composite
def byte_edits(draw, data):
    """`data` with one to four edits at the byte level: a range of up to 8 bytes replaced by others or removed, or
    bytes inserted; never unchanged."""
    edited = data
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        start = draw(st.integers(min_value=0, max_value=len(edited)))
        end = draw(st.integers(min_value=start, max_value=min(len(edited), start + 8)))
        edited = edited[:start] + draw(st.binary(min_size=1, max_size=16) | st.sampled_from(SPECIAL) | st.just(b"")) \
            + edited[end:]
    assume(edited != data)
    return edited


def join(segments):
    return b"".join(data for _, data in segments)


@st.composite
def segment_mutated(draw, roles, change=byte_edits):
    """A seed in which one segment of one of `roles` is changed (by default at the byte level)."""
    segments = list(draw(st.sampled_from([s for s in SEEDS if any(role in roles for role, _ in s)])))
    index = draw(st.sampled_from([i for i, (role, _) in enumerate(segments) if role in roles]))
    role, data = segments[index]
    segments[index] = (role, draw(change(data)))
    return join(segments)


@st.composite
def line_ends(draw):
    """A seed in which one to three line ends (the request line's, headers', the blank line) are another."""
    segments = list(draw(st.sampled_from(SEEDS)))
    ends = [i for i, (role, _) in enumerate(segments) if role in ("eol", "blank")]
    for index in draw(st.sets(st.sampled_from(ends), min_size=1, max_size=3)):
        segments[index] = (segments[index][0], draw(LINE_ENDS))
    return join(segments)


@st.composite
def framing(draw):
    """A seed with a body whose Content-Length and Transfer-Encoding headers are replaced by one to four such
    headers, spelled any way, conflicting or repeated; the body stays as the seed sends it."""
    segments = list(draw(st.sampled_from([s for s in SEEDS if ("body", NOTE) in s or ("size", b"0") in s])))
    while (index := next((i for i, (role, data) in enumerate(segments)
                          if role == "name" and data in FRAMING_NAMES), None)) is not None:
        del segments[index:index + 4]
    headers = draw(st.lists(st.one_of(st.tuples(st.just(b"Content-Length"), LENGTHS),
                                      st.tuples(st.just(b"Transfer-Encoding"), CODINGS)), min_size=1, max_size=4))
    blank = segments.index(("blank", b"\r\n"))
    for name, value in headers:
        spelled = draw(SPELLINGS) % draw(st.sampled_from([name, name.lower(), name.upper(), name.replace(b"-", b"_")]))
        segments[blank:blank] = [("name", spelled), ("colon", b": "), ("value", value), ("eol", b"\r\n")]
    return join(segments)


@st.composite
def truncated(draw):
    """A seed cut short at any byte."""
    request = join(draw(st.sampled_from(SEEDS)))
    return request[:draw(st.integers(min_value=1, max_value=len(request) - 1))]


@st.composite
def oversize(draw):
    """A seed with a line longer than a server takes: the request line, a header, a chunk size; or too many headers.
    The lengths straddle gunicorn's limits (4,094 bytes a request line, 8,190 a header, 100 headers)."""
    which = draw(st.sampled_from(["target", "value", "headers", "size"]))
    segments = list(draw(st.sampled_from([s for s in SEEDS if which != "size" or ("size", b"0") in s])))
    if which == "headers":
        extra = [(f"X-Fuzz-{n}".encode(), b"1") for n in range(draw(st.integers(min_value=90, max_value=400)))]
        index = segments.index(("name", b"Host"))
        segments[index:index] = [part for name, value in extra for part in
                                 (("name", name), ("colon", b": "), ("value", value), ("eol", b"\r\n"))]
    else:
        index = draw(st.sampled_from([i for i, (role, _) in enumerate(segments) if role == which]))
        length = draw(st.integers(min_value=4000, max_value=20_000) if which == "target"
                      else st.integers(min_value=8000, max_value=70_000) if which == "value"
                      else st.integers(min_value=16, max_value=20_000))
        filler = b"0" if which == "size" else b"a"
        segments[index] = (which, filler * length + segments[index][1])
    return join(segments)


# The kinds of mutation, each a strategy of requests; counted separately.
MUTATIONS = {
    "request line": segment_mutated(("method", "space", "target", "version")),
    "header name": segment_mutated(("name", "colon")),
    "header value": segment_mutated(("value",)),
    "line ends": line_ends(),
    "framing": framing(),
    "chunk sizes and ends": segment_mutated(("size", "chunk eol"), change=lambda data: byte_edits(data) | SIZES
                                            | LINE_ENDS),
    "truncated": truncated(),
    "oversize": oversize(),
    "anywhere": st.sampled_from(SEEDS).map(join).flatmap(byte_edits),
}


def answer_status(received):
    """The status code of the answer that `received` begins with; "garbled" if it is no HTTP answer, None if too
    little has arrived to tell."""
    if found := re.match(rb"HTTP/1\.[01] (\d{3})[ \r]", received):
        return int(found[1])
    return "garbled" if len(received) >= 13 or b"\n" in received else None


class Sender:
    """Sends each request on a connection of its own, up to FUZZ_CONNECTIONS at a time (FUZZ_FRESH of them new), and
    reads its answer as far as its status.

    Counts {kind: Counter of outcomes}, an outcome being the status code, "closed" (by the server, without an
    answer), "outlived" (neither answered nor closed within FUZZ_DEADLINE_SECONDS) or "refused"; and the slowest
    answer or close, in seconds after the request's last byte. Hand-written with selectors: a client library would
    refuse to send these requests, and a thread for each would not hold hundreds of waiting connections."""

    def __init__(self, port):
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.outcomes = defaultdict(Counter)
        self.slowest = 0.0
        self.failures = []  # (kind, request, what came back) of the first answers >= 500, garbled or outlived

    def send(self, kind, request, close_after):
        """Sends `request`, first waiting for a free connection slot; with `close_after`, then closes the sending
        side, as a client that has nothing more to say (the server reads the end of the stream)."""
        while len(self.selector.get_map()) >= FUZZ_CONNECTIONS or self._fresh() >= FUZZ_FRESH:
            self._read(timeout=0.01)
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.outcomes[kind]["refused"] += 1
            return
        try:
            sock.sendall(request)
            if close_after:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # answered and closed before the whole request was sent: what it said is still read
            pass
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, [kind, time.monotonic(), b"", request])
        self._read(timeout=0)

    def _fresh(self):
        now = time.monotonic()
        return sum(now - key.data[1] < 1 for key in self.selector.get_map().values())

    def drain(self):
        """Waits until every connection is answered, closed or past its deadline."""
        while self.selector.get_map():
            self._read()
        self.selector.close()

    def _read(self, timeout=0.1):
        for key, _ in self.selector.select(timeout=timeout):
            try:
                data = key.fileobj.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # reset: closed by the server
                data = b""
            key.data[2] += data
            status = answer_status(key.data[2])
            if status is not None:
                self._finish(key, status)
            elif not data:
                self._finish(key, "closed")
        now = time.monotonic()
        for key in list(self.selector.get_map().values()):
            if now - key.data[1] > FUZZ_DEADLINE_SECONDS:
                self._finish(key, "outlived")

    def _finish(self, key, outcome):
        kind, sent, received, request = key.data
        self.outcomes[kind][outcome] += 1
        if (outcome in ("garbled", "outlived") or isinstance(outcome, int) and outcome >= 500) \
                and len(self.failures) < 10:
            self.failures.append((kind, request, received))
        self.slowest = max(self.slowest, time.monotonic() - sent)
        self.selector.unregister(key.fileobj)
        key.fileobj.close()


def fuzz(port, count):
    """`count` requests drawn by hypothesis, one kind of mutation at a time chosen among MUTATIONS, each sent as it
    is drawn; returns the Sender, with its counts. Run as hypothesis runs a test, but only generating (no shrinking,
    no example database): every case is sent once and counted, whatever its answer."""
    sender = Sender(port)

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=st.sampled_from(list(MUTATIONS)).flatmap(lambda kind: st.tuples(st.just(kind), MUTATIONS[kind])),
           close_after=st.booleans())
    def send(case, close_after):
        sender.send(*case, close_after)

    send()
    sender.drain()
    return sender


def outcome_class(outcome):
    """2xx, 3xx, 4xx for a status below 500; a status of 500 or above as it is; the other outcomes by name."""
    if isinstance(outcome, int):
        return str(outcome) if outcome >= 500 else f"{outcome // 100}xx"
    return outcome


@dataclass
class RawFuzz(Drill):
    planned: int
    outcomes: dict  # {mutation kind: Counter of outcomes (Sender)}
    slowest: float  # seconds from a case's last byte to its answer or close, the longest
    logged_errors: int  # access lines in web's log with a status of 500 or above: answers to pipelined leftovers too
    tracebacks: int  # "Traceback" in web's log
    plain_sent: int  # GET / sent meanwhile by a client of its own
    plain_answered: int  # of them, 200
    plain_p99_ms: float
    seconds: float
    failures: list  # (kind, request, what came back) of the first few answers >= 500, garbled or outlived

    title = "raw-HTTP fuzz: valid requests mutated at the byte level by hypothesis, on raw sockets"

    def total(self):
        return sum(self.outcomes.values(), Counter())

    def counts(self):
        def classes(counter):
            counted = Counter()
            for outcome, n in counter.items():
                counted[outcome_class(outcome)] += n
            return ", ".join(f"{name} x{n}" for name, n in sorted(counted.items()))

        kinds = "; ".join(f"{kind} {sum(counter.values())} ({classes(counter)})"
                          for kind, counter in self.outcomes.items())
        return (f"{sum(self.total().values())} requests in {self.seconds:.0f} s: {classes(self.total())}; "
                f"answered or closed within {self.slowest:.1f} s; {self.logged_errors} access lines >= 500, "
                f"{self.tracebacks} tracebacks in web's log; plain GET / {self.plain_answered}/{self.plain_sent} "
                f"answered 200, p99 {self.plain_p99_ms:.1f} ms. By mutation: {kinds}")

    def goals(self):
        total = self.total()
        return {f"{self.planned:,} malformed requests sent": sum(total.values()) >= self.planned,
                "0 answers >= 500": not any(isinstance(o, int) and o >= 500 for o in total) and not self.logged_errors,
                "0 tracebacks in web's log": self.tracebacks == 0,
                f"every connection answered or closed within {FUZZ_DEADLINE_SECONDS:.0f} s":
                    not total["outlived"] and not total["refused"] and self.slowest <= FUZZ_DEADLINE_SECONDS,
                "plain GET / answered 200 throughout": self.plain_sent > 0 and self.plain_answered == self.plain_sent}

    def __str__(self):
        return super().__str__() + "".join(f"\n  {kind}: {request[:300]!r} -> {answer[:200]!r}"
                                           for kind, request, answer in self.failures)


def json_entries(log):
    """The JSON objects among a log's lines."""
    entries = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def log_through(container, request_id):
    """web's log, once the access line of `request_id` is in it: every line queued before that one is in it too."""
    text = container.logs().decode(errors="replace")
    return text if request_id in text else None


def raw_fuzz(image, count=FUZZ_CASES):
    """`count` fuzzed requests (fuzz) while one client sends plain GET / back to back; then web's log is read, once
    a last request's access line shows that every line before it was written."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < FUZZ_CONNECTIONS + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with stack(image) as notes:
        stopping, plain = threading.Event(), []
        checker = threading.Thread(target=plain_requests, args=(notes.url, stopping, plain))
        started = time.monotonic()
        checker.start()
        try:
            sender = fuzz(notes.port, count)
        finally:
            stopping.set()
            checker.join()
        seconds = time.monotonic() - started
        container = notes.docker("web")
        marker = requests.get(notes.url, timeout=10).headers["X-Request-ID"]
        log = wait_until(lambda: log_through(container, marker), 30, "the last request's access line")
    entries = json_entries(log)
    result = RawFuzz(count, dict(sender.outcomes), sender.slowest,
                     sum(e.get("logger") == "gunicorn.access" and e.get("status", 0) >= 500 for e in entries),
                     log.count("Traceback"), len(plain), sum(ok for *_, ok in plain),
                     p99_ms(latency for _, latency, _ in plain), seconds, sender.failures)
    print(result)
    return result
