"""The service under gunicorn when its database fails: frozen, stuck behind a lock, restarted, or late to start.

Each failure is made from outside, as a bad day would make it: `docker pause`, a table lock held by another
session, a stop and start of the container. The bounds are the service's contract, written here and never
read back from app.py: a constant changed there must fail a test here.

These tests run on a PostgreSQL of their own, so that pausing and restarting it never disturbs the session's
`postgres` that every other test shares. It is published on a fixed port, which it keeps across a restart.
"""

import socket
import subprocess
import sys
import time
from contextlib import ExitStack

import containers
import psycopg
import pytest
import requests
from conftest import REPOSITORY, TEST_LABEL, free_port, gunicorn_server, migrated_environment, wait_until

pytestmark = pytest.mark.docker

# Every answer arrives within 2.5 s, however the database fails (docs/drills.md's frozen-database drill): a client,
# a proxy or a load balancer can set its own timeout above that and still get the service's 503.
ANSWER_WITHIN = 2.5
# Long enough for the contract's answer, short enough that a service that hangs fails in seconds, not minutes.
CLIENT_TIMEOUT = 5
# A statement stuck behind a lock is stopped by the server well before the client gives up at 2 s, so its
# connection goes back to the pool alive instead of being thrown away mid-statement.
SERVER_STOPS_A_STATEMENT = (0.5, 2.0)


@pytest.fixture(scope="module")
def database():
    with containers.postgres(port=free_port(), labels=TEST_LABEL) as container:
        yield container


@pytest.fixture(scope="module")
def environment(database):
    return migrated_environment(database)


def connect(database):
    return psycopg.connect(database.get_connection_url(driver=None), autocommit=True)


def accepts_connections(database):
    """A condition for wait_until: the server answers a query."""
    try:
        with connect(database) as conn:
            return conn.execute("SELECT true").fetchone()[0]
    except psycopg.OperationalError:
        return False


def pooled_backends(database):
    """The pids of the server's other client connections: here, only the service's pool has any."""
    with connect(database) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                            " AND pid <> pg_backend_pid()").fetchall()
    return {pid for (pid,) in rows}


def last_served_by(database):
    """The pid of the pooled connection that ran the latest statement."""
    with connect(database) as conn:
        return conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                            " AND pid <> pg_backend_pid() ORDER BY query_start DESC NULLS LAST LIMIT 1").fetchone()[0]


def timed(method, url, body=None):
    """(seconds, response) of one request."""
    started = time.monotonic()
    response = requests.request(method, url, json=body, timeout=CLIENT_TIMEOUT)
    return time.monotonic() - started, response


def create_note(server, text):
    response = requests.post(server["url"] + "/api/notes", json={"text": text}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()


def assert_unavailable(response):
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "service_unavailable"


@pytest.fixture
def serve(database, environment, tmp_path):
    """`serve(pool_size, **variables)` starts gunicorn against this module's database, its pool of `pool_size`
    connections already open, so that every request in the test meets a pooled connection."""
    with ExitStack() as stack:
        def start(pool_size, **variables):
            pool = {"DATABASE_POOL_MIN_SIZE": str(pool_size), "DATABASE_POOL_MAX_SIZE": str(pool_size)}
            server = stack.enter_context(gunicorn_server({**environment, **pool, **variables}, tmp_path))
            # The pool opens on the first request that needs the database, then fills in the background.
            assert requests.get(server["url"] + "/readyz", timeout=CLIENT_TIMEOUT).status_code == 200
            wait_until(lambda: len(pooled_backends(database)) == pool_size, timeout=10, what="a full pool")
            return server

        yield start


def test_a_frozen_database_answers_503_json_within_the_deadline_and_recovers_when_thawed(database, serve):
    # Two connections: both requests below send their statement into the frozen server, none waits for the pool.
    server = serve(pool_size=2)
    note = create_note(server, "written before the freeze")
    container = database.get_wrapped_container()
    container.pause()  # every process of the server stops, yet its kernel still accepts and acknowledges packets
    try:
        for method, path, body in [("GET", f"/api/notes/{note['id']}", None),
                                   ("POST", "/api/notes", {"text": "written during the freeze"})]:
            seconds, response = timed(method, server["url"] + path, body)
            assert_unavailable(response)
            assert seconds < ANSWER_WITHIN, f"{method} {path}"
    finally:
        container.unpause()
    wait_until(lambda: timed("GET", f"{server['url']}/api/notes/{note['id']}")[1].status_code == 200, timeout=15,
               what="reads answering again")
    create_note(server, "written after the thaw")


def test_a_statement_stuck_behind_a_lock_is_stopped_by_the_server_and_its_connection_kept(database, serve):
    server = serve(pool_size=1)
    note = create_note(server, "read under a lock")
    [before] = pooled_backends(database)
    with connect(database) as holder, holder.transaction():
        # A migration or a maintenance job holding the table: the read waits for the lock, not for the network.
        holder.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        seconds, response = timed("GET", f"{server['url']}/api/notes/{note['id']}")
    assert_unavailable(response)
    shortest, longest = SERVER_STOPS_A_STATEMENT
    assert shortest <= seconds < longest
    assert timed("GET", f"{server['url']}/api/notes/{note['id']}")[1].json() == note
    # The connection that met the lock served the next request: the pool opened no new one.
    assert last_served_by(database) == before


def test_after_a_database_restart_a_worker_answers_at_most_one_503(database, serve):
    server = serve(pool_size=4, WEB_CONCURRENCY="1")
    note = create_note(server, "read after a restart")
    container = database.get_wrapped_container()
    container.stop()  # every pooled connection dies with the server
    container.start()
    wait_until(lambda: accepts_connections(database), timeout=30, what="the database accepting connections again")
    statuses = []

    def answered():
        statuses.append(timed("GET", f"{server['url']}/api/notes/{note['id']}")[1].status_code)
        return statuses[-1] == 200

    wait_until(answered, timeout=15, what="reads answering again")
    # The first dead connection answers 503 and has the pool test the idle ones; every later request gets a live one.
    assert statuses.count(503) <= 1 and set(statuses) <= {200, 503}, statuses


def test_migrate_without_wait_succeeds_against_a_database_that_starts_after_it(database, environment):
    port = int(database.get_exposed_port(5432))
    container = database.get_wrapped_container()
    container.stop()
    try:
        # While the database is down, the test answers on its port, to know when migrate has tried once: a
        # migrate that gave up at its first failure would be gone already when the database comes back.
        with socket.create_server(("127.0.0.1", port)) as stand_in:
            migrate = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "migrate"], env=environment,
                                       cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stand_in.settimeout(30)
            first_try, _ = stand_in.accept()
            first_try.close()  # fails that try, as a database still starting up would
    finally:
        container.start()
    try:
        stdout, stderr = migrate.communicate(timeout=60)
    finally:
        migrate.kill()
    assert migrate.returncode == 0, stderr
    assert "the schema is already up to date" in stdout
