"""Notes: a small Flask + PostgreSQL web service.

Read top to bottom: configuration -> metrics -> database -> routes -> error handlers -> application factory ->
command line.
Importing this module does nothing but define things; `create_app()` reads the environment and builds the app.

    python -m serving          # serve: gunicorn -c gunicorn.conf.py 'app:create_app()', with serving.py's worker
    flask --app app migrate    # create or upgrade the schema
"""

import atexit
import functools
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import click
import gevent
import psycopg
from flask import Blueprint, Flask, Response, abort, current_app, g, has_request_context, request, url_for
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool
from werkzeug.exceptions import BadRequest, ClientDisconnected, HTTPException
from werkzeug.routing import IntegerConverter

# ---------------------------------------------------------------------------------------------- configuration

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # None: unset unless the environment sets it
    meaning: str


# Every environment variable the service reads, gunicorn's included: gunicorn.conf.py takes its values from
# load_config(), and the README's table and .env.example list exactly these (tests/test_app.py checks).
VARIABLES = (
    Variable("NAME", "World", "who GET / greets"),
    Variable("DATABASE_URL", None, "postgresql://user@host:port/db; unset, every database path answers 503"),
    Variable("DATABASE_PASSWORD", None, "the database password, if DATABASE_PASSWORD_FILE is not used"),
    Variable("DATABASE_PASSWORD_FILE", None, "a file holding the database password (a secret), instead"),
    Variable("DATABASE_POOL_MIN_SIZE", "1", "database connections each worker keeps open"),
    Variable("DATABASE_POOL_MAX_SIZE", "4", "database connections each worker may open"),
    Variable("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL, any case; DEBUG also logs probes"),
    Variable("PORT", "8000", "the public port"),
    Variable("METRICS_PORT", "9000", "the port serving /metrics only, for Prometheus"),
    Variable("WEB_CONCURRENCY", "1", "gunicorn worker processes: one per CPU the container is given"),
    Variable("PROMETHEUS_MULTIPROC_DIR", None, "where each worker keeps its metrics; serving.py sets /tmp/metrics"),
)
DEFAULTS = {variable.name: variable.default for variable in VARIABLES}


class ConfigError(SystemExit):
    """A setting the service cannot use. A SystemExit, so that gunicorn and `flask migrate` stop with its one line."""

    def __init__(self, message):
        super().__init__(f"configuration error: {message}")


@dataclass(frozen=True)
class Config:
    name: str
    database_url: str | None  # None: not set; the service starts, and everything that needs the database answers 503
    database_password: str | None = field(repr=False)  # repr=False: a printed Config never shows the password
    log_level: str
    pool_min_size: int
    pool_max_size: int
    port: int
    metrics_port: int
    workers: int


def read_database_url(environ):
    url = environ.get("DATABASE_URL")
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("DATABASE_URL: must be a URL such as postgresql://app@db:5432/app (or unset)")
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # The parser's message quotes the URL, which may hold a password: say only what is wrong.
        raise ConfigError("DATABASE_URL: not a valid PostgreSQL connection URL") from None
    return url


def read_database_password(environ):
    path = environ.get("DATABASE_PASSWORD_FILE")
    if path and environ.get("DATABASE_PASSWORD"):
        raise ConfigError("DATABASE_PASSWORD_FILE: set either it or DATABASE_PASSWORD, not both")
    if not path:
        return environ.get("DATABASE_PASSWORD") or None
    try:
        with open(path, encoding="utf-8") as file:
            # Secret files made with `echo` or an editor end with a newline that is not part of the password.
            password = file.read().rstrip("\r\n")
    except OSError as error:
        raise ConfigError(f"DATABASE_PASSWORD_FILE: cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise ConfigError(f"DATABASE_PASSWORD_FILE: {path} is not UTF-8 text") from None
    if not password:
        raise ConfigError(f"DATABASE_PASSWORD_FILE: {path} is empty")
    return password


def read_log_level(environ):
    level = environ.get("LOG_LEVEL", DEFAULTS["LOG_LEVEL"]).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, got {environ['LOG_LEVEL']!r}")
    return level


def read_name(environ):
    name = environ.get("NAME", DEFAULTS["NAME"])
    if not name.strip():
        raise ConfigError("NAME: must not be empty (unset it to get the default, World)")
    return name


def read_int(environ, variable, minimum, maximum=None):
    raw = environ.get(variable, DEFAULTS[variable])
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{variable}: must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{variable}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{variable}: must be at most {maximum}, got {value}")
    return value


def read_port(environ, variable):
    return read_int(environ, variable, minimum=1, maximum=65535)


def load_config(environ):
    pool_min_size = read_int(environ, "DATABASE_POOL_MIN_SIZE", minimum=0)
    port, metrics_port = read_port(environ, "PORT"), read_port(environ, "METRICS_PORT")
    if metrics_port == port:
        raise ConfigError(f"METRICS_PORT: must differ from PORT ({port})")
    return Config(
        name=read_name(environ),
        database_url=read_database_url(environ),
        database_password=read_database_password(environ),
        log_level=read_log_level(environ),
        pool_min_size=pool_min_size,
        pool_max_size=read_int(environ, "DATABASE_POOL_MAX_SIZE", minimum=max(1, pool_min_size)),
        port=port,
        metrics_port=metrics_port,
        workers=read_int(environ, "WEB_CONCURRENCY", minimum=1),
    )


def rfc3339(moment):
    """UTC, always with microseconds, e.g. 2026-11-27T23:59:59.123456Z: one shape that clients can parse."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so a log collector needs no parsing rules."""

    def format(self, record):
        entry = {
            "time": rfc3339(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            entry["request_id"] = g.get("request_id")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level):
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # psycopg_pool logs every connection checkout at INFO: keep its warnings, not one line per query.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, logging.root.level))


log = logging.getLogger("app")

# ---------------------------------------------------------------------------------------------- metrics

# Under gunicorn every worker is a process of its own. gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before this
# module is imported: each process then keeps its values in a file there, and a scrape adds up every worker's.
# Elsewhere (the flask CLI, tests in one process) they live in this process, in prometheus_client's REGISTRY.
REQUESTS = Counter("http_requests_total", "Requests the app answered.", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("http_request_duration_seconds", "Time the app took to answer.", ["method", "route"])
# livesum: the current total over the workers that are running; a worker that exits drops out.
POOL_CONNECTIONS = Gauge("db_pool_connections", "Database connections open.", multiprocess_mode="livesum")
POOL_IN_USE = Gauge("db_pool_connections_in_use", "Database connections lent to a request.",
                    multiprocess_mode="livesum")
POOL_WAITING = Gauge("db_pool_requests_waiting", "Requests waiting for a database connection.",
                     multiprocess_mode="livesum")
POOL_ERRORS = Counter("db_pool_errors_total", "Requests that got no connection in time (wait), and connection "
                      "attempts that failed (connect).", ["kind"])
BUILD_INFO = Gauge("app_build_info", "The running build: always 1.", ["version", "revision", "variant"],
                   multiprocess_mode="max")
POOL_SAMPLE_SECONDS = 1
# Label values come from a fixed set, whatever clients send: every series is a file entry and a time series in
# Prometheus, so a label that copied a path or a method would let any client create them without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route of every request that matched no URL rule: a 404 or a 405


@functools.cache
def route_label(rule):
    """`/api/notes/<note_id:note_id>` -> `/api/notes/<note_id>`: the rule a request matched, without converters."""
    return UNMATCHED if rule is None else re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"<\1>", rule)


def metrics_registry():
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class MetricsPort:
    """The WSGI callable gunicorn serves: on the metrics port /metrics and nothing else, on any other the app.

    gunicorn listens on both and passes the port a request came in on as SERVER_PORT, so the public port never
    serves /metrics. Hand-written: werkzeug's dispatcher routes by path, not by port.
    """

    def __init__(self, app, port):
        self.app, self.port = app, str(port)
        self.metrics = make_wsgi_app(metrics_registry())

    def __call__(self, environ, start_response):
        if environ.get("SERVER_PORT") != self.port:
            return self.app(environ, start_response)
        if environ.get("PATH_INFO") == "/metrics":
            return self.metrics(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not found: this port serves /metrics only.\n"]


# ---------------------------------------------------------------------------------------------- database

# Append only: a migration that has run somewhere never changes; a schema change is a new item at the end.
MIGRATIONS = (
    """
    CREATE TABLE notes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        text text NOT NULL CHECK (char_length(text) BETWEEN 1 AND 1000),
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
)

# Any number that every `migrate` run shares; this one spells "notes" in ASCII.
MIGRATION_LOCK = 0x6E6F746573
# migrate waits this long for another migrate's lock: pods that start together run one after another, each
# migration seconds long. A schema statement waits for its table at most MIGRATION_TABLE_LOCK_SECONDS, because
# while it waits every request that touches the table queues behind it; a later start tries again.
MIGRATION_LOCK_SECONDS = 120
MIGRATION_TABLE_LOCK_SECONDS = 5
# How long a request waits for a pooled connection before it answers 503.
DATABASE_WAIT_SECONDS = 0.5
# The server stops a request's statement after this long (statement_timeout): the connection stays healthy and
# goes back to the pool.
STATEMENT_TIMEOUT_SECONDS = 1.0
# The most a request spends on the database in all, waiting for a connection included, before it answers 503:
# the wait and the statement above, and half a second for the server's answer to arrive, so the server cancels
# first. The client stops waiting even when the server cannot say so: a frozen server's kernel still acknowledges
# every packet, so no TCP timeout would ever fire.
DATABASE_TIMEOUT_SECONDS = 2.0
# Bounds each connection attempt, so an unreachable host cannot hang a pool thread or `migrate` for minutes.
CONNECT_TIMEOUT_SECONDS = 5


class DatabaseTimeout(psycopg.OperationalError):
    """The database did not answer within DATABASE_TIMEOUT_SECONDS."""


class DatabaseNotConfigured(Exception):
    """DATABASE_URL is not set."""


def connection_options(config, application_name, server_settings):
    options = {
        # Shows in pg_stat_activity which process holds a connection.
        "application_name": application_name,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": " ".join(f"-c {name}={value}" for name, value in server_settings.items()),
        # A peer that vanishes (a cut network, a node lost) is noticed within seconds, not the kernel's two hours:
        # unanswered data for 10 s, or an idle connection whose keepalive probes get no answer.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
    }
    if config.database_password:
        options["password"] = config.database_password
    return options


# Shows in pg_stat_activity which service holds a connection; `make rename` renames it with the image.
APPLICATION_NAME = "notes-web"


class Database:
    """The app's connection pool, opened on first use.

    Not at construction: gunicorn builds the app in its master process and forks the workers afterwards, and the
    pool's background workers would not survive the fork.
    """

    def __init__(self, config):
        self.pool = ConnectionPool(
            config.database_url,
            # Autocommit: each statement is its own transaction, so a read or a single-row write is one round trip,
            # with no BEGIN before it and no COMMIT after it.
            kwargs={"autocommit": True, **connection_options(
                config, APPLICATION_NAME, {"statement_timeout": int(STATEMENT_TIMEOUT_SECONDS * 1000)})},
            min_size=config.pool_min_size,
            max_size=config.pool_max_size,
            timeout=DATABASE_WAIT_SECONDS,
            # A background reconnection backs off exponentially (1 s, 2 s, 4 s ...): after a long outage its next
            # try could land seconds after the database is back. Giving up after 2 s leaves reconnecting to the
            # next request, which starts a fresh attempt at once.
            reconnect_timeout=2,
            open=False,
            name="web",
        )
        self._checking = threading.Lock()
        self._opening = threading.Lock()
        self._opened_by = None  # the process that opened the pool
        # Close connections on exit, so PostgreSQL sees a goodbye rather than logging an unexpected EOF.
        atexit.register(self.pool.close)

    def _open(self):
        if self._opened_by == os.getpid():
            return
        with self._opening:
            if self._opened_by != os.getpid():
                self.pool.open()
                threading.Thread(target=self._sample_forever, daemon=True).start()
                self._opened_by = os.getpid()

    def _sample_forever(self):
        """The pool's figures into the metrics, every POOL_SAMPLE_SECONDS, for as long as the process lives."""
        while True:
            stats = self.pool.pop_stats()  # the counters since the last call, and the pool's current state
            POOL_CONNECTIONS.set(stats["pool_size"])
            POOL_IN_USE.set(stats["pool_size"] - stats["pool_available"])
            POOL_WAITING.set(stats["requests_waiting"])
            POOL_ERRORS.labels("wait").inc(stats.get("requests_errors", 0))
            POOL_ERRORS.labels("connect").inc(stats.get("connections_errors", 0))
            time.sleep(POOL_SAMPLE_SECONDS)

    @contextmanager
    def connection(self):
        """Borrow a connection for one request's statements, within DATABASE_TIMEOUT_SECONDS."""
        self._open()
        # Under gunicorn's gevent worker the timeout interrupts a request blocked on the socket; elsewhere (the
        # flask CLI, in-process tests) nothing yields to gevent's hub, and it never fires.
        with gevent.Timeout(DATABASE_TIMEOUT_SECONDS, DatabaseTimeout("the database did not answer in time")):
            with self.pool.connection() as conn:
                try:
                    yield conn
                except psycopg.OperationalError:
                    if conn.broken:
                        self._discard_dead_connections()
                    raise

    def _discard_dead_connections(self):
        """One connection died (a database restart kills them all): test the idle ones now, in the background.

        The pool checks nothing as it lends a connection, which would cost a round trip on every request; instead
        the first request that meets a dead connection answers 503, and the rest are found and replaced at once.
        """
        if self._checking.acquire(blocking=False):
            threading.Thread(target=self._check, daemon=True).start()

    def _check(self):
        try:
            self.pool.check()
        finally:
            self._checking.release()


def refused_password(error):
    """The server refused the password. libpq reports a failed connection without its SQLSTATE (psycopg 3.3 gives
    None), so the server's English message is the fallback; SQLSTATE 28P01 holds whatever language it speaks."""
    return error.sqlstate == "28P01" or "password authentication failed" in str(error)


def connect_within(config, seconds):
    """A direct connection for `migrate`, retried while the database starts up, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            # No statement_timeout: a migration's statement (an index built on a large table) takes what it takes.
            return psycopg.connect(config.database_url, **connection_options(
                config, f"{APPLICATION_NAME}-migrate", {"statement_timeout": 0}))
        except psycopg.OperationalError as error:
            # A wrong password stays wrong: say so now instead of retrying it until the deadline.
            if refused_password(error) or time.monotonic() >= deadline:
                raise
            time.sleep(1)


def apply_migrations(conn):
    """Bring the schema up to date in one transaction and return the versions applied."""
    with conn.transaction():
        # Runs that start together (two replicas, two deploys) queue here instead of racing to create
        # the same table; the lock is released when the transaction ends.
        conn.execute(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_SECONDS}s'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(f"SET LOCAL lock_timeout = '{MIGRATION_TABLE_LOCK_SECONDS}s'")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        applied = []
        for version, statement in enumerate(MIGRATIONS[current:], start=current + 1):
            conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def database():
    """The current app's connection: `with database() as conn:`."""
    db = current_app.extensions["notes.database"]
    if db is None:
        raise DatabaseNotConfigured()
    return db.connection()


# ---------------------------------------------------------------------------------------------- routes

routes = Blueprint("notes", __name__)
# Named, because `make bench` runs the notes mix's own statements through pgbench for its database ceiling.
INSERT_NOTE = "INSERT INTO notes (text) VALUES (%s) RETURNING id, text, created_at"
SELECT_NOTE = "SELECT id, text, created_at FROM notes WHERE id = %s"


@routes.before_app_request
def assign_request_id():
    g.request_id = uuid.uuid4().hex
    g.started = time.perf_counter()


@routes.after_app_request
def count_request(response):
    # Runs for every answer the app gives, its error handlers' included.
    route = route_label(request.url_rule and request.url_rule.rule)
    method = request.method if request.method in METHODS else "other"
    REQUESTS.labels(method, route, str(response.status_code)).inc()
    REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - g.started)
    return response


@routes.after_app_request
def send_headers(response):
    # gunicorn's access log reads it from here, which ties the request's log line to the app's.
    response.headers["X-Request-ID"] = g.request_id
    # A browser must not guess another type than the one declared (a note's text rendered as HTML, say).
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.path.startswith("/api/"):
        # Notes change and may be private: no cache along the way keeps a copy.
        response.headers["Cache-Control"] = "no-store"
    return response


@routes.get("/")
def hello():
    return Response(f"Hello, {current_app.config['NOTES'].name}!", mimetype="text/plain")


@routes.get("/healthz")
def healthz():
    # Liveness never touches the database: a database outage must not make an orchestrator restart every web pod.
    return {"status": "ok"}


def schema_version(conn):
    try:
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


@routes.get("/readyz")
def readyz():
    # Ready means able to serve notes: the database answers and `migrate` has run. Compose waits for it before
    # `up --wait` returns; Kubernetes' startup probe, before a new pod joins its Service.
    with database() as conn:
        version = schema_version(conn)
    if version < len(MIGRATIONS):
        return error_body("schema_not_migrated", "the database schema is not up to date: run migrate"), 503
    return {"status": "ready"}


def note_json(row):
    note_id, text, created_at = row
    return {"id": note_id, "text": text, "created_at": rfc3339(created_at)}


def request_body():
    """The whole body, or 413 past MAX_BODY_BYTES. Werkzeug refuses a longer Content-Length, but a chunked body it
    just stops reading at the limit, silently: one more byte read from the server tells whether the body went on."""
    try:
        data = request.get_data(cache=True)
    except ClientDisconnected:  # serving.py's body deadline passed, or the client left, before the whole body
        abort(408, "the request body did not arrive in time")
    if len(data) >= MAX_BODY_BYTES and request.content_length is None and request.environ["wsgi.input"].read(1):
        abort(413, f"the request body is over {MAX_BODY_BYTES // 1024} KiB")
    return data


def request_object():
    if not request.is_json:
        abort(415, "request body must be JSON, sent with Content-Type: application/json")
    request_body()
    try:
        body = request.get_json()
    except (BadRequest, RecursionError):  # RecursionError: deeply nested arrays exhaust the parser's stack
        abort(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        abort(400, "request body must be a JSON object")
    return body


def note_text(body):
    if set(body) - {"text"}:
        abort(400, "text is the only field allowed")
    if "text" not in body:
        abort(400, "text is required")
    if not isinstance(body["text"], str):
        abort(400, "text must be a string")
    text = body["text"].strip()
    if not 1 <= len(text) <= 1000:
        abort(400, "text must be 1 to 1000 characters long, not counting surrounding whitespace")
    # PostgreSQL text cannot hold U+0000, and UTF-8 cannot encode an unpaired surrogate such as "\ud800".
    if "\x00" in text:
        abort(400, "text must not contain the NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        abort(400, "text must not contain unpaired surrogates")
    return text


def query_int(name, default, minimum, maximum):
    raw = request.args.get(name)
    if raw is None:
        return default
    # Plain ASCII digits only: int() would also take " 7", "+7", "7_0" and other scripts' digits.
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not minimum <= int(raw) <= maximum:
        abort(400, f"{name} must be an integer from {minimum} to {maximum}")
    return int(raw)


@routes.post("/api/notes")
def create_note():
    text = note_text(request_object())
    with database() as conn:
        row = conn.execute(INSERT_NOTE, (text,)).fetchone()
    note = note_json(row)
    return note, 201, {"Location": url_for("notes.get_note", note_id=note["id"])}


BIGINT_MAX = 2**63 - 1  # the largest id a bigint identity column can hand out
# Bodies over 64 KiB are refused with 413 before they are read into memory.
MAX_BODY_BYTES = 64 * 1024


@routes.get("/api/notes")
def list_notes():
    limit = query_int("limit", default=20, minimum=1, maximum=100)
    # Without a cursor, start at the top of bigint's range: every id is below it.
    before = query_int("before", default=BIGINT_MAX, minimum=1, maximum=BIGINT_MAX)
    with database() as conn:
        # Keyset pagination: "id < cursor" stays fast and stable on any page, unlike OFFSET.
        # One row more than the page tells whether a next page exists, without a COUNT.
        rows = conn.execute(
            "SELECT id, text, created_at FROM notes WHERE id < %s ORDER BY id DESC LIMIT %s",
            (before, limit + 1),
        ).fetchall()
    notes = [note_json(row) for row in rows[:limit]]
    return {"notes": notes, "next": notes[-1]["id"] if len(rows) > limit else None}


class NoteIdConverter(IntegerConverter):
    """A note id in a URL: 1 to 19 digits without a leading zero; any other path segment answers 404.

    The shape is checked by the pattern alone, not by min/max: Werkzeug checks the method before a converter's
    range, so an out-of-range id would answer 405 for one method and 404 for another. The routes answer ids past
    bigint's range (known_id) themselves.
    """

    regex = r"[1-9][0-9]{0,18}"


def known_id(note_id):
    """404 for an id no bigint can hold, without asking the database: PostgreSQL would compare it as numeric,
    which no index on a bigint serves, and scan the whole table."""
    if note_id > BIGINT_MAX:
        abort(404, f"note {note_id} does not exist")


NOTE_URL = "/api/notes/<note_id:note_id>"


@routes.get(NOTE_URL)
def get_note(note_id):
    known_id(note_id)
    with database() as conn:
        row = conn.execute(SELECT_NOTE, (note_id,)).fetchone()
    if row is None:
        abort(404, f"note {note_id} does not exist")
    return note_json(row)


@routes.delete(NOTE_URL)
def delete_note(note_id):
    known_id(note_id)
    with database() as conn:
        deleted = conn.execute("DELETE FROM notes WHERE id = %s", (note_id,)).rowcount
    if not deleted:
        abort(404, f"note {note_id} does not exist")
    return "", 204


# ---------------------------------------------------------------------------------------------- error handlers


def error_body(code, message):
    return {"error": {"code": code, "message": message, "request_id": g.request_id}}


@routes.app_errorhandler(HTTPException)
def http_error(error):
    response = error.get_response()  # keeps the status and headers such as Allow on 405
    response.data = json.dumps(error_body(error.name.lower().replace(" ", "_"), error.description))
    response.content_type = "application/json"
    return response


@routes.app_errorhandler(DatabaseNotConfigured)
def database_not_configured(error):
    return error_body("database_not_configured", "DATABASE_URL is not set: this service has no database"), 503


@routes.app_errorhandler(psycopg.OperationalError)
def database_unavailable(error):
    log.warning("database unavailable: %s", " ".join(str(error).split()))
    return error_body("service_unavailable", "the database is unavailable, try again shortly"), 503


@routes.app_errorhandler(Exception)
def unexpected_error(error):
    # The traceback goes to the log only; the client gets the request id to quote.
    log.exception("unexpected error")
    return error_body("internal_server_error", f"unexpected error, logged as request {g.request_id}"), 500


# ---------------------------------------------------------------------------------------------- application factory


def create_app(environ=os.environ):
    """The notes app, configured from `environ`; raises ConfigError (a SystemExit) on a setting it cannot use."""
    config = load_config(environ)
    configure_logging(config.log_level)
    app = Flask(__name__)
    app.config["NOTES"] = config
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.converters["note_id"] = NoteIdConverter
    app.register_blueprint(routes)
    app.cli.add_command(migrate)
    app.wsgi_app = MetricsPort(app.wsgi_app, config.metrics_port)
    # Set in the images (Dockerfile, Dockerfile.distroless); a run from the source tree says so.
    BUILD_INFO.labels(environ.get("APP_VERSION", "dev"), environ.get("APP_REVISION", "unknown"),
                      environ.get("APP_VARIANT", "source")).set(1)
    if config.database_url is None:
        log.warning("DATABASE_URL is not set: / and /healthz answer, every other path answers 503")
        app.extensions["notes.database"] = None
    else:
        app.extensions["notes.database"] = Database(config)
    return app


# ---------------------------------------------------------------------------------------------- command line


@click.command("migrate")
@click.option(
    "--wait",
    "wait_seconds",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Seconds to keep trying while the database is unreachable.",
)
def migrate(wait_seconds):
    """Create or upgrade the database schema; safe to run again and from several places at once."""
    config = current_app.config["NOTES"]
    if config.database_url is None:
        raise click.ClickException("DATABASE_URL is not set: migrate needs the database to change")
    try:
        conn = connect_within(config, wait_seconds)
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split())
        if refused_password(error):
            raise click.ClickException(f"cannot connect to the database: it refused the password: {reason}") from None
        raise click.ClickException(f"cannot connect to the database within {wait_seconds} s: {reason}") from None
    try:
        with conn:
            applied = apply_migrations(conn)
    except psycopg.errors.LockNotAvailable:
        raise click.ClickException(
            f"another migrate held the migration lock for over {MIGRATION_LOCK_SECONDS} s, or a table stayed locked "
            f"for over {MIGRATION_TABLE_LOCK_SECONDS} s: nothing changed; run migrate again") from None
    if applied:
        log.info("migrated the schema to version %s", applied[-1])
    else:
        log.info("the schema is already up to date")
