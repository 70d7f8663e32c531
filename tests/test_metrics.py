"""Prometheus metrics, read from outside as Prometheus reads them: every worker's requests counted, labels bounded
whatever clients send, failures counted with their status, and a real Prometheus in Compose scraping web."""

import concurrent.futures
import threading
import time
import urllib.error
import urllib.request
import uuid

import containers
import psycopg
import pytest
import requests
from conftest import free_port, gunicorn_server, migrate_from_source, scrape, wait_until
from conftest import metric_value as value


def scrape_until(url, condition, what, timeout=15):
    """The first scrape whose samples meet `condition`: the pool's figures are sampled once a second."""
    def met():
        samples = scrape(url)
        return samples if condition(samples) else None
    return wait_until(met, timeout, what)


def get(url):
    """One request on a connection of its own, so that any worker may accept it; returns the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def server(app_environment, tmp_path_factory):
    """gunicorn with three workers against the test database."""
    with gunicorn_server({**app_environment, "WEB_CONCURRENCY": "3"}, tmp_path_factory.mktemp("metrics")) as served:
        yield served


def test_every_request_is_counted_once_whichever_worker_answered_it(server):
    before = value(scrape(server["metrics"]), "http_requests_total", route="/")
    requests_sent = 300
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: get(server["url"] + "/"), range(requests_sent)))
    assert statuses == [200] * requests_sent
    # The load reached more than one worker: each keeps its counters in a file of its own (named by its pid).
    assert len(list(server["metrics_dir"].glob("counter_*.db"))) >= 2
    after = scrape(server["metrics"])
    assert value(after, "http_requests_total", route="/", method="GET", status="200") - before == requests_sent
    assert value(after, "http_request_duration_seconds_count", route="/") - before == requests_sent


def test_a_restarted_server_counts_from_zero_not_from_an_earlier_runs_files(app_environment, tmp_path):
    for run in range(2):  # the same metrics folder both times, as a container's /tmp across gunicorn restarts
        with gunicorn_server(app_environment, tmp_path) as served:
            assert [get(served["url"] + "/") for _ in range(5)] == [200] * 5
            assert value(scrape(served["metrics"]), "http_requests_total", route="/") == 5, f"run {run + 1}"


def test_the_route_label_is_the_url_rule_never_the_path(server):
    ids = ("123456789", "987654321")
    for note_id in ids:
        assert get(f"{server['url']}/api/notes/{note_id}") == 404
    samples = scrape(server["metrics"])
    assert value(samples, "http_requests_total", route="/api/notes/<note_id>", status="404") >= len(ids)
    assert not [labels for _, labels in samples if any(note_id in str(labels) for note_id in ids)]


def test_a_thousand_unknown_paths_and_methods_add_no_series(server):
    assert get(server["url"] + "/warm-up") == 404  # the one series every unmatched path shares
    with requests.Session() as session:
        session.request("BREW", server["url"] + "/warm-up")  # and the one every unknown method shares
        before = scrape(server["metrics"])
        for number in range(1000):
            # A method gunicorn passes on: capitals only, 3 to 20 of them.
            method = "GET" if number % 10 else "XQ" + "".join(chr(ord("A") + int(digit)) for digit in str(number))
            assert session.request(method, f"{server['url']}/unknown/{uuid.uuid4().hex}").status_code in (404, 405)
    after = scrape(server["metrics"])
    assert set(after) == set(before)
    assert value(after, "http_requests_total", route="unmatched") - value(before, "http_requests_total",
                                                                          route="unmatched") == 1000
    assert value(after, "http_requests_total", method="other") - value(before, "http_requests_total",
                                                                       method="other") == 100


def test_metrics_are_served_on_their_own_port_and_not_on_the_public_one(server):
    public = requests.get(server["url"] + "/metrics", timeout=10)
    assert public.status_code == 404 and public.json()["error"]["code"] == "not_found"
    # Only /metrics itself: paths that sort before or after it, and below it, are not found.
    for path in ("/api/notes", "/status", "/metrics/extra"):
        assert requests.get(server["metrics"].removesuffix("/metrics") + path, timeout=10).status_code == 404, path
    scraped = requests.get(server["metrics"], timeout=10)
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")


def test_the_pool_reports_its_connections_and_the_build_its_origin(server):
    assert get(server["url"] + "/readyz") == 200
    # Sampled once a second, so a sample may still show a request in flight: the first at rest must come soon.
    samples = scrape_until(server["metrics"], lambda s: value(s, "db_pool_connections") >= 1
                           and value(s, "db_pool_connections_in_use") == 0, "the pool sampled at rest")
    assert value(samples, "db_pool_requests_waiting") == 0
    # Nothing failed: every sample since the pool opened added nothing to the errors.
    assert [value(samples, "db_pool_errors_total", kind=kind) for kind in ("wait", "connect")] == [0, 0]
    assert value(samples, "app_build_info", variant="source") == 1  # run from the source tree, not an image


def test_the_time_counted_per_request_is_within_what_the_client_waited(server):
    before = value(scrape(server["metrics"]), "http_request_duration_seconds_sum", route="/")
    started = time.monotonic()
    assert [get(server["url"] + "/") for _ in range(20)] == [200] * 20
    waited = time.monotonic() - started
    counted = value(scrape(server["metrics"]), "http_request_duration_seconds_sum", route="/") - before
    # The server's time for a request lies within the client's wait for its answer.
    assert 0 < counted <= waited


def test_the_pool_reports_the_connections_in_use_and_no_failed_connection(app_environment, postgres, database_url,
                                                                          tmp_path):
    """One worker, so that its pool is the only one reported, keeping three connections or more open (it may grow as
    it opens): one in use of three or more is a figure that only open minus idle gives."""
    environment = {**app_environment, "WEB_CONCURRENCY": "1", "DATABASE_POOL_MIN_SIZE": "3"}
    with gunicorn_server(environment, tmp_path) as served, \
            psycopg.connect(database_url, password=postgres.password, autocommit=True) as holder, \
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        assert get(served["url"] + "/readyz") == 200
        at_rest = scrape_until(served["metrics"], lambda s: value(s, "db_pool_connections") >= 3
                               and value(s, "db_pool_connections_in_use") == 0, "the pool sampled at rest")
        assert value(at_rest, "db_pool_errors_total", kind="connect") == 0
        done = threading.Event()

        def one_request_at_a_time():
            while not done.is_set():
                get(served["url"] + "/api/notes")

        with holder.transaction():
            # Each request waits on this lock, holding its connection until its statement times out.
            holder.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
            looping = pool.submit(one_request_at_a_time)
            try:
                scrape_until(served["metrics"], lambda s: value(s, "db_pool_connections") >= 3
                             and value(s, "db_pool_connections_in_use") == 1, "one of three connections in use")
            finally:
                done.set()
                looping.result()


@pytest.mark.slow  # a real outage, waited out
def test_a_503_during_a_database_outage_is_counted_with_its_status(app_environment, tmp_path):
    """Its own database, stopped under a running server as an outage would."""
    with containers.postgres(port=free_port(), password="outage-password") as db:
        url = f"postgresql://notes@127.0.0.1:{db.get_exposed_port(5432)}/notes"
        environment = {**app_environment, "DATABASE_URL": url, "DATABASE_PASSWORD": "outage-password"}
        migrate_from_source(environment)
        with gunicorn_server(environment, tmp_path) as served:
            assert requests.post(served["url"] + "/api/notes", json={"text": "before"}, timeout=10).status_code == 201
            db.get_wrapped_container().stop()
            answers = [requests.post(served["url"] + "/api/notes", json={"text": "during"}, timeout=10)
                       for _ in range(3)]
            assert [answer.status_code for answer in answers] == [503] * 3
            samples = scrape_until(served["metrics"], lambda s: value(s, "db_pool_errors_total"),
                                   "a pool error counted")
    assert value(samples, "http_requests_total", method="POST", route="/api/notes", status="503") == 3
    assert value(samples, "http_requests_total", method="POST", route="/api/notes", status="201") == 1


@pytest.mark.docker
def test_prometheus_in_compose_scrapes_web_and_reports_its_requests(images):
    """`COMPOSE_PROFILES=observability`: the real Prometheus (or its stand-in), asked through its HTTP API."""
    prometheus = f"http://127.0.0.1:{free_port()}"

    def query(expression):
        answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5).json()
        return [float(result["value"][1]) for result in answer["data"]["result"]]

    with containers.compose_project(images["slim"], COMPOSE_PROFILES="observability",
                                 PROMETHEUS_PORT=prometheus.rsplit(":", 1)[1]) as project:
        for _ in range(25):
            assert requests.get(f"{project.url}/", timeout=5).status_code == 200
        assert wait_until(lambda: query('up{job="web"}') == [1.0], 30, "web's target up in Prometheus")
        counted = wait_until(lambda: query('sum(http_requests_total{route="/", status="200"})'), 30,
                             "GET / counted in Prometheus")
        assert counted[0] >= 25
