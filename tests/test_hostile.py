"""What a hostile or unlucky client or operator does next to each feature: malformed headers and chunked bodies on
raw sockets, a body past the limit sent chunked, ids past bigint's range, a reload (SIGHUP) and `--check-config`
beside a running server, a migration lock or a table lock held by someone else. Each is driven from outside, against
the real gunicorn and the test database; every bound below is the one the README and docs/openapi.yaml promise."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
import requests
from conftest import (
    GUNICORN,
    REPOSITORY,
    free_port,
    gunicorn_server,
    metric_value,
    migrate_from_source,
    one_line_error,
    scrape,
    wait_until,
)
from psycopg import sql
from test_gunicorn import trickle

from app import APPLICATION_NAME, MIGRATION_LOCK

# Bodies over 64 KiB are refused with 413, however they are sent (README, docs/openapi.yaml).
BODY_LIMIT = 64 * 1024
# A request that needs the database answers within 2 s, or 503 (docs/openapi.yaml); half a second of slack for
# a machine shared with other test runs.
DATABASE_BOUND_SECONDS = 2.5
# A request's body must arrive within 10 s of its headers, or the answer is 408 and the connection is closed.
BODY_DEADLINE_SECONDS = 10
# The largest id a bigint column holds; one more cannot name a note.
BIGINT_MAX = 2**63 - 1


# ---------------------------------------------------------------------------------------------- helpers


def exchange(url, request_bytes, timeout=10):
    """Sends `request_bytes` on a connection of its own and reads one answer, as a client that wrote them by hand
    sees it: (status, [(header name, value), ...] in the order sent, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as client:
        try:
            client.sendall(request_bytes)
        except OSError:  # the server answered and closed before the whole request was sent: read what it said
            pass
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < content_length(answer):
            try:
                data = client.recv(65536)
            except ConnectionResetError:  # closed with part of the request unread: the answer came before it
                break
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), [tuple(line.split(": ", 1)) for line in lines], body


def content_length(answer):
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    lengths = [line.split(":", 1)[1] for line in head.split("\r\n") if line.startswith("content-length:")]
    return int(lengths[0]) if lengths else float("inf")


def header(headers, name):
    """Every value of the header `name`, however its name is spelled."""
    return [value for key, value in headers if key.lower() == name.lower()]


def json_error(headers, body):
    """The app's error shape, {"error": {"code", "message", "request_id"}}, with the request id it also sent as a
    header; returns the error."""
    assert header(headers, "Content-Type") == ["application/json"], (headers, body)
    error = json.loads(body)["error"]
    assert error["code"] and error["message"] and header(headers, "X-Request-ID") == [error["request_id"]]
    return error


def chunked(body, size=8192):
    """`body` as HTTP/1.1 chunks of `size` bytes, with the last, empty chunk."""
    pieces = [body[start:start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def post_note_chunked(body):
    return (b"POST /api/notes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)


def log_mark(server):
    """Where the server's logs end now: logs_since() reads only what comes after."""
    return {name: server[name].stat().st_size for name in ("stdout", "stderr")}


def logs_since(server, mark):
    text = ""
    for name, start in mark.items():
        with server[name].open("rb") as log:
            log.seek(start)
            text += log.read().decode(errors="replace")
    return text


def json_lines(path):
    """The complete lines of a log that are JSON objects (the writer may be half-way through the last one)."""
    entries = []
    for line in path.read_text().split("\n")[:-1]:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [entry for entry in entries if isinstance(entry, dict)]


def lines_naming(server, request_id, **fields):
    """The JSON lines on the server's stdout that name `request_id` and hold `fields`."""
    return [entry for entry in json_lines(server["stdout"])
            if entry.get("request_id") == request_id and fields.items() <= entry.items()]


def connect(postgres, url):
    return psycopg.connect(url, password=postgres.password, autocommit=True)


def children(pid):
    """The pids of a process's children, as `ps --ppid` lists them: gunicorn's workers, for its master."""
    listed = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True).stdout
    return {int(line) for line in listed.split()}


# ---------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def server(app_environment, tmp_path_factory):
    """The real server against the test database, shared by the tests that only send it requests."""
    with gunicorn_server(app_environment, tmp_path_factory.mktemp("hostile")) as served:
        yield served


@pytest.fixture(scope="module")
def unreachable(app_environment, tmp_path_factory):
    """The real server whose database is a closed port: every path that needs the database answers 503."""
    environment = {**app_environment, "DATABASE_URL": f"postgresql://app@127.0.0.1:{free_port()}/app"}
    with gunicorn_server(environment, tmp_path_factory.mktemp("unreachable")) as served:
        yield served


@pytest.fixture
def own_database(app_environment, postgres, database_url):
    """A migrated database of its own on the test server, so that pg_stat_activity tells its connections apart:
    (name, URL)."""
    name = f"hostile_{uuid.uuid4().hex[:12]}"
    with connect(postgres, database_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url.rsplit("/", 1)[0] + "/" + name
    migrate_from_source({**app_environment, "DATABASE_URL": url})
    yield name, url
    with connect(postgres, database_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------------------------- malformed requests


@pytest.mark.parametrize("path", ["/", "/healthz"])  # a probe's path, logged too once it fails
@pytest.mark.parametrize("lengths", [[b"abc"], [b"1", b"2"]], ids=["not-a-number", "two-different"])
def test_a_malformed_content_length_answers_400_json_closes_and_logs_its_request_id(server, lengths, path):
    mark = log_mark(server)
    request = (b"GET %s HTTP/1.1\r\nHost: x\r\n" % path.encode()
               + b"".join(b"Content-Length: %s\r\n" % n for n in lengths) + b"\r\n")
    status, headers, body = exchange(server["url"], request)
    assert status == 400, body
    assert json_error(headers, body)["code"] == "bad_request"
    assert header(headers, "Connection") == ["close"]
    # The id the client is told to quote must find the refusal in the log.
    request_id = header(headers, "X-Request-ID")[0]

    # gunicorn answered it itself, before the app: its access line still names the request's method and path.
    [entry] = wait_until(lambda: lines_naming(server, request_id, logger="gunicorn.access"), timeout=10,
                         what=f"an access line naming {request_id}")
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", path, 400), entry
    written = logs_since(server, mark)
    assert "Traceback" not in written and "KeyError" not in written, written


@pytest.mark.parametrize("coding", [b"xchunked", b"gzip, chunked", b"chunked;q=1"])
def test_a_transfer_encoding_the_server_does_not_take_answers_400_not_a_5xx(server, coding):
    # Any client can send one: a 5xx would let it drive the service's error rate.
    request = (b"POST /api/notes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: %s\r\n\r\n2\r\n{}\r\n0\r\n\r\n" % coding)
    status, headers, body = exchange(server["url"], request)
    assert status == 400, body
    assert json_error(headers, body)["code"] == "bad_request"


@pytest.mark.parametrize("body", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}zz0\r\n\r\n"],
                         ids=["bad-chunk-size", "missing-chunk-terminator"])
def test_a_malformed_chunked_body_answers_400_json_without_a_traceback(server, body):
    mark = log_mark(server)
    status, headers, answer = exchange(server["url"], post_note_chunked(body))
    assert status == 400, answer
    request_id = json_error(headers, answer)["request_id"]
    wait_until(lambda: request_id in logs_since(server, mark), timeout=10, what=f"a log line naming {request_id}")
    assert "Traceback" not in logs_since(server, mark)


def test_a_malformed_chunk_closes_a_keep_alive_connection(server):
    # The client asked to keep the connection: what follows the bad chunk cannot be read as a next request.
    request = post_note_chunked(b"zz\r\n{}\r\n0\r\n\r\n").replace(b"Connection: close\r\n", b"")
    status, headers, _ = exchange(server["url"], request)
    assert status == 400 and header(headers, "Connection") == ["close"], headers


def test_a_chunked_body_over_64_kib_answers_413_and_stores_nothing(server, postgres, database_url):
    text = f"over the limit {uuid.uuid4().hex}"
    body = json.dumps({"text": text}).encode().ljust(100_025)  # spaces after JSON are still valid JSON
    status, headers, answer = exchange(server["url"], post_note_chunked(chunked(body)))
    assert status == 413, answer
    assert json_error(headers, answer)["message"] == "the request body is over 64 KiB"
    with connect(postgres, database_url) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE text = %s", (text,)).fetchone()[0] == 0


def test_a_chunked_body_of_exactly_64_kib_is_still_read_and_stored(server):
    text = f"at the limit {uuid.uuid4().hex}"
    body = json.dumps({"text": text}).encode().ljust(BODY_LIMIT)
    status, headers, answer = exchange(server["url"], post_note_chunked(chunked(body)))
    assert status == 201, answer
    assert json.loads(answer)["text"] == text


@pytest.mark.slow  # waits out a deadline or a lock
def test_a_body_slower_than_its_deadline_answers_408_saying_the_connection_closes(server):
    head = (b"POST /api/notes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n")
    seconds, response = trickle(server["url"], head, BODY_DEADLINE_SECONDS)
    head, _, _ = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), response
    # It closes: a client told keep-alive would send its next request into a closed connection.
    lines = [line.lower() for line in head.decode("latin-1").split("\r\n")]
    assert "connection: close" in lines and "connection: keep-alive" not in lines, head


# ---------------------------------------------------------------------------------------------- ids past bigint


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("note_id", [BIGINT_MAX + 1, 9_999_999_999_999_999_999])
def test_an_id_past_bigints_range_answers_404_without_asking_the_database(unreachable, method, note_id):
    # Against a server whose database is unreachable, a request that asks it answers 503 after waiting for a
    # connection; this one must not ask it at all.
    started = time.monotonic()
    answer = requests.request(method, f"{unreachable['url']}/api/notes/{note_id}", timeout=10)
    assert answer.status_code == 404, answer.text
    assert time.monotonic() - started < 1
    assert answer.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_the_largest_bigint_id_still_asks_the_database(unreachable, method):
    answer = requests.request(method, f"{unreachable['url']}/api/notes/{BIGINT_MAX}", timeout=10)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "service_unavailable"


def test_a_database_outage_warning_is_written_as_json_on_stdout(unreachable):
    answer = requests.get(f"{unreachable['url']}/api/notes/1", timeout=10)
    assert answer.status_code == 503
    request_id = answer.headers["X-Request-ID"]

    [entry] = wait_until(lambda: lines_naming(unreachable, request_id, level="WARNING"), timeout=10,
                         what=f"a JSON warning naming {request_id} on stdout")
    assert "database unavailable" in entry["message"]


def test_a_failing_readiness_probe_is_logged_though_a_passing_one_is_not(unreachable):
    answer = requests.get(f"{unreachable['url']}/readyz", timeout=10)
    assert answer.status_code == 503
    request_id = answer.headers["X-Request-ID"]

    [entry] = wait_until(lambda: lines_naming(unreachable, request_id, logger="gunicorn.access"), timeout=10,
                         what=f"an access line naming {request_id}")
    assert (entry["path"], entry["status"]) == ("/readyz", 503)


# ---------------------------------------------------------------------------------------------- operators


def greet(url, count):
    """`count` GET / on connections of their own, each checked for the headers every answer carries: no Server
    banner, exactly one X-Request-ID. Returns their request ids."""
    request_ids = []
    for _ in range(count):
        status, headers, _ = exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200
        assert header(headers, "Server") == [], headers
        [request_id] = header(headers, "X-Request-ID")
        request_ids.append(request_id)
    return request_ids


def test_a_reload_keeps_the_access_log_the_counters_the_build_info_and_the_headers(app_environment, tmp_path):
    with gunicorn_server(app_environment, tmp_path) as server:
        before = greet(server["url"], 10)
        samples = scrape(server["metrics"])
        assert metric_value(samples, "http_requests_total", route="/", method="GET", status="200") >= len(before)
        assert metric_value(samples, "app_build_info") == 1
        workers = children(server["pid"])
        # What `docker kill -s HUP` and `kill -HUP` send: gunicorn re-reads its settings and replaces its workers.
        os.kill(server["pid"], signal.SIGHUP)
        wait_until(lambda: children(server["pid"]) and not children(server["pid"]) & workers, timeout=30,
                   what="new workers in place of the old ones")
        after = greet(server["url"], 10)

        def logged():
            return {entry.get("request_id") for entry in json_lines(server["stdout"])} >= set(after)

        wait_until(logged, timeout=10, what="an access line on stdout for each request after the reload")
        samples = scrape(server["metrics"])
        # Counted since the start, not since the reload.
        assert metric_value(samples, "http_requests_total", route="/", method="GET",
                            status="200") >= len(before) + len(after)
        assert metric_value(samples, "app_build_info") == 1


def test_check_config_beside_a_running_server_leaves_its_counters(app_environment, tmp_path):
    environment = {**app_environment, "PORT": str(free_port()), "METRICS_PORT": str(free_port()),
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with gunicorn_server(environment, tmp_path) as server:
        sent = greet(server["url"], 10)
        counted = metric_value(scrape(server["metrics"]), "http_requests_total", route="/", method="GET", status="200")
        assert counted >= len(sent)
        # An operator checking a changed setting inside the live container, with the container's environment.
        checked = subprocess.run([*GUNICORN, "--check-config"], env=environment, cwd=REPOSITORY,
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        samples = scrape(server["metrics"])
        assert metric_value(samples, "http_requests_total", route="/", method="GET", status="200") >= counted
        assert metric_value(samples, "app_build_info") == 1


def test_gunicorn_refuses_a_non_numeric_worker_count_with_one_line(app_environment, tmp_path):
    environment = {**app_environment, "PORT": str(free_port()), "METRICS_PORT": str(free_port()),
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "WEB_CONCURRENCY": "abc"}
    result = subprocess.run(GUNICORN, env=environment, cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert one_line_error(result).startswith("configuration error: WEB_CONCURRENCY")


# ---------------------------------------------------------------------------------------------- locks held elsewhere

def test_migrate_takes_the_shared_lock_waiting_2_minutes_for_it_and_5_s_for_a_table(own_database, app_environment,
                                                                           postgres, database_url):
    """The two bounds as the server is told them, read from its own statement log: waiting them out takes minutes
    (the slow tests below wait out the table's)."""
    name, url = own_database
    with connect(postgres, database_url) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(name)))
    since = int(time.time())
    migrate_from_source({**app_environment, "DATABASE_URL": url})
    logged = postgres.get_wrapped_container().logs(since=since).decode()
    assert [line.rsplit("statement: ", 1)[1] for line in logged.splitlines() if "lock_timeout" in line] == [
        "SET LOCAL lock_timeout = '120s'", "SET LOCAL lock_timeout = '5s'"], logged[-2000:]
    # The lock every migrate shares, old images' too during a rolling deploy: "notes" in ASCII, for good.
    assert f"Parameters: $1 = '{int.from_bytes(b'notes')}'" in logged, logged[-2000:]


# How long the tests below hold a lock: longer than any request may take, shorter than a migration must wait.
HOLD_SECONDS = 5


@pytest.mark.slow  # waits out a deadline or a lock
def test_migrate_waits_for_its_lock_held_elsewhere_instead_of_timing_out(app_environment, postgres, database_url):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as runner, connect(postgres, database_url) as holder:
        # Another pod's migrate, or an operator's session, holding the lock for a while.
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        started = time.monotonic()
        migrating = runner.submit(migrate_from_source, app_environment)
        try:
            migrating.result(timeout=HOLD_SECONDS)
        except concurrent.futures.TimeoutError:
            pass  # still waiting for the lock, as it should be
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        migrating.result(timeout=60)  # raises CalledProcessError if migrate failed
    assert time.monotonic() - started > HOLD_SECONDS - 1, "migrate ended before the lock was released"


@pytest.mark.slow  # waits out a deadline or a lock
def test_migrate_gives_up_on_a_table_locked_past_its_bound_with_one_line_and_changes_nothing(
    app_environment, postgres, database_url
):
    # While a schema statement waits for its table, every request that touches the table queues behind it: migrate
    # waits for a table 5 s at most (documented), then stops with one line, to be run again.
    with connect(postgres, database_url) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], env=app_environment,
                                cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
        waited = time.monotonic() - started
        holder.execute("ROLLBACK")
    line = one_line_error(result)
    assert line.startswith("Error: another migrate held the migration lock") and "run migrate again" in line
    assert 4 <= waited <= 15


@pytest.mark.slow  # waits out a deadline or a lock
def test_a_locked_table_answers_503_within_the_bound_and_the_pool_keeps_its_connections(
    app_environment, postgres, own_database, tmp_path
):
    name, url = own_database
    pool_size = 2
    environment = {**app_environment, "DATABASE_URL": url, "DATABASE_POOL_MIN_SIZE": str(pool_size),
                   "DATABASE_POOL_MAX_SIZE": str(pool_size)}
    with gunicorn_server(environment, tmp_path) as server, connect(postgres, url) as watcher:
        created = requests.post(server["url"] + "/api/notes", json={"text": "behind a lock"}, timeout=10)
        assert created.status_code == 201, created.text
        note_url = server["url"] + created.headers["Location"]

        def pool_pids():
            pids = watcher.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                                   (APPLICATION_NAME, name)).fetchall()
            return {pid for (pid,) in pids}

        before = wait_until(lambda: len(pids := pool_pids()) == pool_size and pids, timeout=15,
                            what=f"web's pool holding {pool_size} connections")

        def timed_get(_):
            started = time.monotonic()
            answer = requests.get(note_url, timeout=10)
            return answer, time.monotonic() - started

        with psycopg.connect(url, password=postgres.password) as holder:
            holder.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")  # held until the transaction ends
            with concurrent.futures.ThreadPoolExecutor(max_workers=pool_size + 3) as clients:
                # Every answer comes while the lock is still held: none waited for its release.
                answered = list(clients.map(timed_get, range(pool_size + 3), timeout=HOLD_SECONDS))
            holder.rollback()
        for answer, seconds in answered:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "service_unavailable"
            assert seconds <= DATABASE_BOUND_SECONDS
        assert wait_until(lambda: requests.get(note_url, timeout=10).status_code == 200, timeout=10)
        # The server cancelled the statements, so each connection came back idle and the pool kept it.
        assert pool_pids() == before
