"""Bad input: schemathesis from docs/openapi.yaml, then a hypothesis fuzzer of raw requests; no 5xx, no traceback or SQL
shown, every request answered."""

import json
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote

import requests
import schemathesis
from containers import stack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from project import ROOT
from schemathesis.core.failures import FailureGroup

from proof.drills.common import Drill

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
