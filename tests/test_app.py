"""The service (app.py, gunicorn.conf.py) against a real PostgreSQL from testcontainers."""

import io
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import REPOSITORY, RFC3339_UTC, free_port, wait_until
from psycopg import sql

pytestmark = pytest.mark.docker  # against a real Postgres in a container

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
BIGINT_MAX = 2**63 - 1


def connect(postgres, url):
    return psycopg.connect(url, password=postgres.password, autocommit=True)


def flask_cli(environment, *arguments, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *arguments],
        env=environment,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_error(response, status, code, mentions=""):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    assert mentions in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


def create_note(client, text):
    response = client.post("/api/notes", json={"text": text})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def app_module(app):
    return sys.modules[app.import_name]


@pytest.fixture
def no_notes(postgres, database_url):
    with connect(postgres, database_url) as conn:
        conn.execute("DELETE FROM notes")


@pytest.fixture
def fresh_database_url(postgres, database_url):
    """An empty database on the test server, without the schema."""
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    with connect(postgres, database_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url.rsplit("/", 1)[0] + "/" + name
    with connect(postgres, database_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------------------------- hello and probes


def test_root_greets_world_when_name_is_unset(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.text == "Hello, World!"


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_answers_ready_when_the_database_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


def test_responses_forbid_type_sniffing_and_the_api_forbids_caching(client):
    greeting, notes = client.get("/"), client.get("/api/notes")
    assert greeting.headers["X-Content-Type-Options"] == notes.headers["X-Content-Type-Options"] == "nosniff"
    assert notes.headers["Cache-Control"] == "no-store" and "Cache-Control" not in greeting.headers
    assert client.get("/api/notes/999999999").headers["Cache-Control"] == "no-store"  # errors too


def test_every_response_carries_its_own_request_id(client):
    ids = {client.get(path).headers["X-Request-ID"] for path in ("/", "/healthz", "/nowhere", "/nowhere")}
    assert len(ids) == 4
    assert all(REQUEST_ID.match(request_id) for request_id in ids)


# ---------------------------------------------------------------------------------------------- creating notes


def test_create_note_answers_201_with_location_and_the_note(client):
    before = datetime.now(UTC)
    response = client.post("/api/notes", json={"text": "buy milk"})
    assert response.status_code == 201
    note = response.get_json()
    assert set(note) == {"id", "text", "created_at"}
    assert note["text"] == "buy milk"
    assert response.headers["Location"] == f"/api/notes/{note['id']}"
    assert RFC3339_UTC.match(note["created_at"])
    created_at = datetime.strptime(note["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(seconds=5) <= created_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert client.get(response.headers["Location"]).get_json() == note


def test_create_note_strips_surrounding_whitespace(client):
    assert create_note(client, "  \n\t spaced out \n ")["text"] == "spaced out"


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld, 你好, Привет, 👋🏽 e\u0301",
        "'; DROP TABLE notes; --",
        "Robert'); DROP TABLE notes;--",
        "\" ' ` \\ %s %(text)s {text} $1 ?",
        "line one\nline two\r\n\ttabbed",
        "\u202eright-to-left override and zero\u200bwidth",
    ],
)
def test_note_text_round_trips_verbatim(client, text):
    note = create_note(client, text)
    assert note["text"] == text
    assert client.get(f"/api/notes/{note['id']}").get_json()["text"] == text
    assert client.get("/api/notes").status_code == 200  # the table is still there


def test_create_note_accepts_1000_characters_not_bytes(client):
    assert create_note(client, "é" * 1000)["text"] == "é" * 1000


def test_create_note_accepts_a_single_character(client):
    assert create_note(client, "x")["text"] == "x"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": None},
        {"text": 42},
        {"text": ["a list"]},
        {"text": ""},
        {"text": " \n\t "},
        {"text": "x" * 1001},
        {"text": "nul \x00 inside"},
        {"text": "ok", "colour": "red"},
    ],
    ids=["missing", "null", "number", "list", "empty", "blank", "1001-chars", "nul", "extra-field"],
)
def test_create_note_rejects_invalid_text_naming_the_field(client, body):
    assert_error(client.post("/api/notes", json=body), 400, "bad_request", mentions="text")


@pytest.mark.parametrize(("body", "message"), [({}, "text is required"),
                                               ({"text": "x", "id": 1}, "text is the only field allowed")])
def test_create_note_says_which_is_wrong_a_missing_text_or_an_extra_field(client, body, message):
    response = client.post("/api/notes", json=body)
    assert response.status_code == 400 and response.get_json()["error"]["message"] == message


def test_create_note_rejects_an_unpaired_surrogate(client):
    response = client.post("/api/notes", data='{"text": "half \\ud800 a pair"}', content_type="application/json")
    assert_error(response, 400, "bad_request", mentions="text")


@pytest.mark.parametrize(
    "data",
    [b'{"text": ', b"{'text': 'single quotes'}", b'{"text": "\xff\xfe"}', b"[" * 60_000],
    ids=["truncated", "single-quotes", "invalid-utf8", "deeply-nested"],
)
def test_create_note_rejects_malformed_json(client, data):
    response = client.post("/api/notes", data=data, content_type="application/json")
    assert_error(response, 400, "bad_request", mentions="JSON")


@pytest.mark.parametrize("data", [b"[]", b'"text"', b"null", b"7"])
def test_create_note_rejects_json_that_is_not_an_object(client, data):
    response = client.post("/api/notes", data=data, content_type="application/json")
    assert_error(response, 400, "bad_request", mentions="JSON object")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_create_note_rejects_a_body_that_is_not_json_with_415(client, content_type):
    response = client.post("/api/notes", data=b'{"text": "hi"}', content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


def test_create_note_rejects_a_body_over_64_kib_with_413(client):
    body = json.dumps({"text": "x" * 64 * 1024}).encode()
    assert_error(client.post("/api/notes", data=body, content_type="application/json"), 413, "request_entity_too_large")


def test_create_note_reads_a_body_of_exactly_64_kib(client):
    body = b'{"text": "%s"}' % (b"x" * (64 * 1024 - 12))
    assert len(body) == 64 * 1024
    # Read and judged on its content (too long a text), not refused for its size.
    assert_error(client.post("/api/notes", data=body, content_type="application/json"), 400, "bad_request", "text")


# ---------------------------------------------------------------------------------------------- listing notes


def test_list_is_empty_without_notes(client, no_notes):
    assert client.get("/api/notes").get_json() == {"notes": [], "next": None}


def test_list_returns_newest_first_20_by_default_with_next_cursor(client, no_notes):
    ids = [create_note(client, f"note {n}")["id"] for n in range(25)]
    page = client.get("/api/notes").get_json()
    assert [note["id"] for note in page["notes"]] == ids[::-1][:20]
    assert page["next"] == ids[5]
    rest = client.get(f"/api/notes?before={page['next']}").get_json()
    assert [note["id"] for note in rest["notes"]] == ids[4::-1]
    assert rest["next"] is None


def test_pagination_visits_every_note_once_and_ends_exactly_on_a_full_page(client, no_notes):
    ids = [create_note(client, f"note {n}")["id"] for n in range(10)]
    seen, url = [], "/api/notes?limit=5"
    pages = 0
    while url:
        page = client.get(url).get_json()
        pages += 1
        seen += [note["id"] for note in page["notes"]]
        url = page["next"] and f"/api/notes?limit=5&before={page['next']}"
    assert seen == ids[::-1]
    assert pages == 2  # the second page is full and already says there is no third


def test_pagination_is_stable_when_notes_are_added_between_pages(client, no_notes):
    ids = [create_note(client, f"note {n}")["id"] for n in range(4)]
    first = client.get("/api/notes?limit=2").get_json()
    create_note(client, "newer than every page")
    second = client.get(f"/api/notes?limit=2&before={first['next']}").get_json()
    assert [note["id"] for note in second["notes"]] == [ids[1], ids[0]]


@pytest.mark.parametrize("limit", [1, 100])
def test_list_accepts_limit_bounds(client, no_notes, limit):
    for n in range(limit + 1):
        create_note(client, f"note {n}")
    page = client.get(f"/api/notes?limit={limit}").get_json()
    assert len(page["notes"]) == limit
    assert page["next"] is not None


def test_list_before_the_first_note_is_empty(client, no_notes):
    first = create_note(client, "first")
    assert client.get(f"/api/notes?before={first['id']}").get_json() == {"notes": [], "next": None}


def test_list_accepts_before_at_both_ends_of_its_range(client, no_notes):
    note = create_note(client, "below every cursor")
    # The largest bigint: every id is below it, as without a cursor.
    assert client.get(f"/api/notes?before={BIGINT_MAX}").get_json() == {"notes": [note], "next": None}
    # 1, the smallest note id: no note is below it.
    assert client.get("/api/notes?before=1").get_json() == {"notes": [], "next": None}


def test_a_full_page_says_next_only_when_a_note_follows_it_and_next_is_its_last_id(client, no_notes):
    ids = [create_note(client, f"note {n}")["id"] for n in range(4)]
    full = client.get("/api/notes?limit=3").get_json()
    assert [note["id"] for note in full["notes"]] == ids[:0:-1]
    assert full["next"] == ids[1]
    last = client.get(f"/api/notes?limit=3&before={ids[3]}").get_json()
    assert [note["id"] for note in last["notes"]] == ids[2::-1]
    assert last["next"] is None


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=2.5", "limit"),
        ("limit=%205", "limit"),
        ("limit=%2B5", "limit"),
        ("limit=%D9%A5", "limit"),  # ARABIC-INDIC DIGIT FIVE, which int() would take
        ("before=0", "before"),
        ("before=-3", "before"),
        ("before=abc", "before"),
        (f"before={BIGINT_MAX + 1}", "before"),
        ("before=" + "9" * 5000, "before"),
    ],
)
def test_list_rejects_bad_parameters_naming_them(client, query, parameter):
    assert_error(client.get(f"/api/notes?{query}"), 400, "bad_request", mentions=parameter)


# ---------------------------------------------------------------------------------------------- one note


def test_get_note_returns_the_note(client):
    note = create_note(client, "find me")
    response = client.get(f"/api/notes/{note['id']}")
    assert response.status_code == 200
    assert response.get_json() == note


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "note_id", ["0", "007", "999999999", str(BIGINT_MAX), str(BIGINT_MAX + 1), "9" * 19, "9" * 5000, "abc", "-1", "1.0"]
)
def test_unknown_note_answers_404(client, method, note_id):
    assert_error(client.open(f"/api/notes/{note_id}", method=method), 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_note_id_with_a_leading_zero_answers_404_even_when_the_note_exists(client, method):
    # One URL per note: /api/notes/07 naming note 7 as well would give caches and logs two names for it.
    note = create_note(client, "one URL only")
    assert_error(client.open(f"/api/notes/0{note['id']}", method=method), 404, "not_found")
    assert client.get(f"/api/notes/{note['id']}").get_json() == note


def test_delete_note_answers_204_then_the_note_is_gone(client):
    note = create_note(client, "delete me")
    response = client.delete(f"/api/notes/{note['id']}")
    assert response.status_code == 204
    assert response.data == b""
    assert_error(client.get(f"/api/notes/{note['id']}"), 404, "not_found", mentions=str(note["id"]))
    assert_error(client.delete(f"/api/notes/{note['id']}"), 404, "not_found")


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_path_answers_404_json(client):
    assert_error(client.get("/api/nope"), 404, "not_found")


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/api/notes", {"GET", "POST"}),
        ("DELETE", "/api/notes", {"GET", "POST"}),
        ("POST", "/api/notes/1", {"GET", "DELETE"}),
        ("PATCH", "/api/notes/1", {"GET", "DELETE"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
def test_wrong_method_answers_405_json_with_allow_header(client, method, path, allowed):
    response = client.open(path, method=method)
    assert_error(response, 405, "method_not_allowed")
    assert allowed <= {name.strip() for name in response.headers["Allow"].split(",")}


def test_unexpected_error_is_logged_with_request_id_and_answered_500(client, app_module, postgres, database_url):
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(app_module.JsonFormatter())
    logging.getLogger("app").addHandler(handler)
    # A schema the code does not expect (here: no notes table) is a failure the app has no answer for.
    with connect(postgres, database_url) as conn:
        conn.execute("ALTER TABLE notes RENAME TO notes_elsewhere")
    try:
        response = client.get("/api/notes")
    finally:
        with connect(postgres, database_url) as conn:
            conn.execute("ALTER TABLE notes_elsewhere RENAME TO notes")
        logging.getLogger("app").removeHandler(handler)
    error = assert_error(response, 500, "internal_server_error", mentions=response.headers["X-Request-ID"])
    assert "notes" not in error["message"] and "psycopg" not in response.text  # nothing about the internals
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    [entry] = [entry for entry in entries if entry["message"] == "unexpected error"]
    assert entry["request_id"] == error["request_id"]
    assert entry["level"] == "ERROR"
    assert "UndefinedTable" in entry["exception"]


# ---------------------------------------------------------------------------------------------- database outage


def test_outage_answers_503_within_2_s_and_recovers_without_restart(client, postgres):
    assert client.get("/readyz").status_code == 200
    note = create_note(client, "written before the outage")
    container = postgres.get_wrapped_container()
    container.stop()
    try:
        for method, path, body in [
            ("GET", "/readyz", None),
            ("GET", "/api/notes", None),
            ("POST", "/api/notes", {"text": "during the outage"}),
            ("GET", f"/api/notes/{note['id']}", None),
            ("DELETE", f"/api/notes/{note['id']}", None),
        ]:
            started = time.monotonic()
            response = client.open(path, method=method, json=body)
            assert time.monotonic() - started < 2, path
            error = assert_error(response, 503, "service_unavailable", mentions="database")
            assert "password" not in error["message"] and postgres.password not in response.text
        assert client.get("/healthz").status_code == 200
    finally:
        container.start()
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=60, interval=0.5)
    assert client.get(f"/api/notes/{note['id']}").get_json() == note
    create_note(client, "written after the outage")


# ---------------------------------------------------------------------------------------------- migrations


def schema_versions(postgres, url):
    with connect(postgres, url) as conn:
        return [version for (version,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def test_migrate_creates_the_schema_and_a_second_run_changes_nothing(
    app_environment, app_module, postgres, fresh_database_url
):
    environment = {**app_environment, "DATABASE_URL": fresh_database_url}
    first = flask_cli(environment, "migrate")
    assert first.returncode == 0, first.stderr
    expected = list(range(1, len(app_module.MIGRATIONS) + 1))
    assert schema_versions(postgres, fresh_database_url) == expected
    # The log names the version the schema is at now: the last one applied.
    assert f"migrated the schema to version {expected[-1]}" in first.stdout
    second = flask_cli(environment, "migrate")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert schema_versions(postgres, fresh_database_url) == expected


def test_two_concurrent_migrate_runs_queue_on_the_lock_and_both_succeed(
    app_environment, app_module, postgres, fresh_database_url
):
    environment = {**app_environment, "DATABASE_URL": fresh_database_url}
    command = [sys.executable, "-m", "flask", "--app", "app", "migrate"]
    with connect(postgres, fresh_database_url) as holder:
        # Hold the migration lock so that both runs are provably inside `migrate` at the same time.
        holder.execute("SELECT pg_advisory_lock(%s)", (app_module.MIGRATION_LOCK,))
        runs = [
            subprocess.Popen(command, env=environment, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        try:
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            wait_until(lambda: holder.execute(waiting).fetchone()[0] == 2, timeout=30)
            holder.execute("SELECT pg_advisory_unlock(%s)", (app_module.MIGRATION_LOCK,))
            outputs = [run.communicate(timeout=60) for run in runs]
        finally:
            for run in runs:
                run.kill()
    assert [run.returncode for run in runs] == [0, 0], outputs
    stdout = b"".join(out for out, _ in outputs).decode()
    assert stdout.count("migrated the schema") == 1
    assert stdout.count("up to date") == 1
    assert schema_versions(postgres, fresh_database_url) == list(range(1, len(app_module.MIGRATIONS) + 1))


def test_migrates_help_says_how_long_it_waits_by_default(app_environment):
    helped = flask_cli(app_environment, "migrate", "--help")
    assert helped.returncode == 0, helped.stderr
    # README: Compose and Kubernetes run migrate without --wait, so its default is what they get.
    assert re.search(r"--wait INTEGER RANGE\s+Seconds to keep trying while the database is\s+unreachable\.\s+"
                     r"\[default: 30; x>=0\]", helped.stdout), helped.stdout


def test_migrate_refuses_a_negative_wait_with_a_usage_error_and_accepts_none(app_environment):
    refused = flask_cli(app_environment, "migrate", "--wait", "-1")
    assert refused.returncode == 2  # click's usage error, before anything is tried
    assert "Invalid value for '--wait'" in refused.stderr
    accepted = flask_cli(app_environment, "migrate", "--wait", "0")
    assert accepted.returncode == 0, accepted.stderr


def test_migrate_gives_up_on_an_unreachable_database_after_its_wait_with_one_line(app_environment, postgres):
    environment = {**app_environment, "DATABASE_URL": f"postgresql://app@127.0.0.1:{free_port()}/app"}
    started = time.monotonic()
    result = flask_cli(environment, "migrate", "--wait", "3")
    # Its wait, plus the interpreter's start; twice the wait would be a deploy's timeout spent for nothing.
    assert 3 <= time.monotonic() - started < 6
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: cannot connect to the database within 3 s: ")
    assert postgres.password not in result.stdout + result.stderr


def test_migrate_retries_about_once_a_second_not_in_a_busy_loop(app_environment):
    # A port that accepts and at once closes, as a database still starting may: each attempt fails fast.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        attempts, stop = [], threading.Event()

        def count():
            while not stop.is_set():
                try:
                    listener.accept()[0].close()
                    attempts.append(time.monotonic())
                except TimeoutError:
                    pass

        counter = threading.Thread(target=count)
        counter.start()
        url = f"postgresql://app@127.0.0.1:{listener.getsockname()[1]}/app"
        try:
            result = flask_cli({**app_environment, "DATABASE_URL": url}, "migrate", "--wait", "3")
        finally:
            stop.set()
            counter.join()
    assert result.returncode != 0
    # libpq tries twice per connect (with and without SSL): about 2 a second over 3 s, not hundreds.
    assert 3 <= len(attempts) <= 16, len(attempts)


def test_migrate_gives_up_on_a_server_that_never_answers_after_its_connect_timeout(app_environment, postgres):
    # A frozen or half-dead database host: the kernel completes the handshake, and nothing answers after that.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        held = []

        def hold():  # accepts, then waits for the client to give up: how long libpq waited for an answer
            connection, _ = silent.accept()
            with connection:
                accepted = time.monotonic()
                connection.recv(1024)  # libpq's first message, never answered
                while connection.recv(1024):
                    pass
                held.append(time.monotonic() - accepted)

        holder = threading.Thread(target=hold)
        holder.start()
        environment = {**app_environment, "DATABASE_URL": f"postgresql://app@127.0.0.1:{silent.getsockname()[1]}/app"}
        started = time.monotonic()
        result = flask_cli(environment, "migrate", "--wait", "0", timeout=15)
        seconds = time.monotonic() - started
        holder.join(timeout=15)
    # The attempt ends after 5 s (CONNECT_TIMEOUT_SECONDS), timed by the server: the interpreter's start adds nothing.
    assert len(held) == 1 and 4.5 <= held[0] < 5.5, held
    assert seconds < 9
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: cannot connect to the database within 0 s: ")
    assert postgres.password not in result.stdout + result.stderr


def test_migrate_refused_a_password_says_so_at_once_instead_of_retrying_until_its_wait(app_environment, postgres):
    # A rejected password (a secret changed after Postgres initialised its volume) will not start working.
    started = time.monotonic()
    result = flask_cli({**app_environment, "DATABASE_PASSWORD": "not-the-password"}, "migrate", "--wait", "30")
    assert time.monotonic() - started < 15
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: cannot connect to the database: it refused the password: ")
    assert "password authentication failed" in line


def test_readyz_is_unavailable_until_the_schema_is_migrated(app_environment, create_app, fresh_database_url):
    environment = {**app_environment, "DATABASE_URL": fresh_database_url}
    client = create_app(environment).test_client()
    assert_error(client.get("/readyz"), 503, "schema_not_migrated", mentions="run migrate")
    assert flask_cli(environment, "migrate").returncode == 0
    response = client.get("/readyz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ready"})


def test_readyz_answers_ready_on_a_schema_newer_than_the_app(app_environment, create_app, postgres, fresh_database_url):
    # A rolling deploy: the new release migrated the schema while pods of the old one still serve.
    environment = {**app_environment, "DATABASE_URL": fresh_database_url}
    assert flask_cli(environment, "migrate").returncode == 0
    with connect(postgres, fresh_database_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version) SELECT max(version) + 1 FROM schema_migrations")
    response = create_app(environment).test_client().get("/readyz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ready"})


def test_the_app_creates_no_schema(app_environment, create_app, postgres, fresh_database_url):
    client = create_app({**app_environment, "DATABASE_URL": fresh_database_url}).test_client()
    assert client.get("/api/notes").status_code == 500
    with connect(postgres, fresh_database_url) as conn:
        tables = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        assert tables.fetchall() == []


# ---------------------------------------------------------------------------------------------- without a database


def test_without_database_url_the_greeting_and_liveness_answer(create_app):
    client = create_app({"NAME": "Docker"}).test_client()
    assert client.get("/").text == "Hello, Docker!"
    assert client.get("/healthz").get_json() == {"status": "ok"}


@pytest.mark.parametrize("method, path", [("GET", "/readyz"), ("GET", "/api/notes"), ("POST", "/api/notes"),
                                          ("GET", "/api/notes/1"), ("DELETE", "/api/notes/1")])
def test_without_database_url_every_database_path_answers_503_naming_the_setting(create_app, method, path):
    response = create_app({}).test_client().open(path, method=method, json={"text": "no database"})
    assert_error(response, 503, "database_not_configured", mentions="DATABASE_URL")


def test_without_database_url_the_app_warns_once_at_start(create_app, capsys):
    create_app({})
    [entry] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["level"] == "WARNING" and "DATABASE_URL is not set" in entry["message"]


def test_migrate_without_database_url_exits_with_one_line_naming_it(app_environment):
    environment = {name: value for name, value in app_environment.items() if name != "DATABASE_URL"}
    result = flask_cli(environment, "migrate")
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: DATABASE_URL is not set")


# ---------------------------------------------------------------------------------------------- configuration


def run_with_configuration(app_environment, **variables):
    """Run `flask --app app migrate` with app variables set (a value of None unsets one)."""
    environment = {**app_environment, **variables}
    for name in [name for name, value in environment.items() if value is None]:
        environment.pop(name)
    return flask_cli(environment, "migrate", "--wait", "0")


def assert_one_line_naming(result, variable):
    assert result.returncode != 0
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"configuration error: {variable}: ")


@pytest.mark.parametrize(
    "variables, variable",
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://app@db/app"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://app@db/app?colour=red"}, "DATABASE_URL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"NAME": ""}, "NAME"),
        ({"NAME": "   "}, "NAME"),
        ({"METRICS_PORT": "65536"}, "METRICS_PORT"),
        ({"METRICS_PORT": "0"}, "METRICS_PORT"),
        ({"DATABASE_POOL_MIN_SIZE": "-1"}, "DATABASE_POOL_MIN_SIZE"),
        ({"DATABASE_POOL_MIN_SIZE": "two"}, "DATABASE_POOL_MIN_SIZE"),
        ({"DATABASE_POOL_MAX_SIZE": "0"}, "DATABASE_POOL_MAX_SIZE"),
        ({"DATABASE_POOL_MIN_SIZE": "0", "DATABASE_POOL_MAX_SIZE": "0"}, "DATABASE_POOL_MAX_SIZE"),  # a pool of none
        ({"DATABASE_POOL_MIN_SIZE": "5", "DATABASE_POOL_MAX_SIZE": "2"}, "DATABASE_POOL_MAX_SIZE"),
        ({"DATABASE_POOL_MIN_SIZE": "5"}, "DATABASE_POOL_MAX_SIZE"),  # over the default maximum, 4
    ],
)
def test_invalid_configuration_exits_with_one_line_naming_the_variable(app_environment, variables, variable):
    assert_one_line_naming(run_with_configuration(app_environment, **variables), variable)


@pytest.mark.parametrize("variables", [{"METRICS_PORT": "65535"}, {"METRICS_PORT": "1"}, {"LOG_LEVEL": "debug"},
                                       # Within the defaults: minimum 1, maximum 4.
                                       {"DATABASE_POOL_MAX_SIZE": "1"}, {"DATABASE_POOL_MIN_SIZE": "4"},
                                       {"DATABASE_POOL_MIN_SIZE": "0"}],  # no connection kept while idle
                         ids=lambda variables: "=".join(*variables.items()))
def test_configuration_at_the_edge_of_its_range_or_in_lower_case_is_accepted(app_environment, variables):
    result = run_with_configuration(app_environment, **variables)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("content", [None, b"\n", b"caf\xe9\n"], ids=["missing", "empty", "latin-1"])
def test_unusable_password_file_exits_with_one_line_naming_it(app_environment, tmp_path, content):
    path = tmp_path / "database_password"
    if content is not None:
        path.write_bytes(content)
    result = run_with_configuration(app_environment, DATABASE_PASSWORD=None, DATABASE_PASSWORD_FILE=str(path))
    assert_one_line_naming(result, "DATABASE_PASSWORD_FILE")


def test_password_file_and_password_together_are_refused(app_environment, tmp_path):
    path = tmp_path / "database_password"
    path.write_text("from-file")
    result = run_with_configuration(app_environment, DATABASE_PASSWORD_FILE=str(path))
    assert_one_line_naming(result, "DATABASE_PASSWORD_FILE")


def test_a_password_in_an_invalid_database_url_is_not_shown(app_environment):
    result = run_with_configuration(app_environment, DATABASE_URL="postgresql://app:hunter2-secret@db/app?colour=red")
    assert_one_line_naming(result, "DATABASE_URL")
    assert "hunter2-secret" not in result.stderr


def test_a_printed_configuration_never_shows_the_password(app, postgres):
    assert postgres.password not in repr(app.config["NOTES"])


def documented_variables(text, pattern):
    return [(name, None if default in ("unset", "") else default.strip("`")) for name, default in
            re.findall(pattern, text, re.M)]


def test_every_variable_the_service_reads_is_in_env_example_and_the_readme_with_its_default(app_module):
    expected = [(variable.name, variable.default) for variable in app_module.VARIABLES]
    example = (REPOSITORY / ".env.example").read_text()
    assert documented_variables(example, r"^(?:# )?([A-Z_]+)=(.*)$") == expected
    readme = (REPOSITORY / "README.md").read_text()
    assert documented_variables(readme, r"^\| `([A-Z_]+)` \| (unset|`[^`]*`) \|") == expected
