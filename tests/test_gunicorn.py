"""The app under gunicorn with gunicorn.conf.py, as both images run it, started as a process against the test
database: the greeting, the password file, the JSON access log, configuration errors, and the header and body
deadlines that keep slow clients from holding a worker."""

import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import GUNICORN, REPOSITORY, RFC3339_UTC, free_port, gunicorn_server, metric_value, scrape, wait_until
from project import BODY_TIMEOUT_SECONDS, KEEPALIVE_SECONDS
from waits import answers

# ---------------------------------------------------------------------------------------------- gunicorn


def http(method, url, body=None):
    request = urllib.request.Request(url, method=method, data=body and json.dumps(body).encode())
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture(scope="module")
def gunicorn(app_environment, postgres, tmp_path_factory):
    """The real server, its password read from a secret file."""
    directory = tmp_path_factory.mktemp("gunicorn")
    password_file = directory / "database_password"
    password_file.write_text(postgres.password + "\n")
    environment = {**app_environment, "NAME": "Gunicorn", "DATABASE_PASSWORD_FILE": str(password_file)}
    environment.pop("DATABASE_PASSWORD")
    with gunicorn_server(environment, directory) as server:
        yield server
    assert postgres.password not in server["stdout"].read_text() + server["stderr"].read_text()


def access_log_entry(gunicorn, request_id):
    entries = [json.loads(line) for line in gunicorn["stdout"].read_text().splitlines()]
    matching = [entry for entry in entries if entry.get("request_id") == request_id]
    return matching[0] if matching else None


def test_gunicorn_serves_the_greeting_with_name_from_the_environment(gunicorn):
    status, headers, body = http("GET", gunicorn["url"] + "/")
    assert (status, body) == (200, b"Hello, Gunicorn!")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


def test_gunicorn_stores_a_note_with_the_password_from_a_file(gunicorn):
    status, headers, body = http("POST", gunicorn["url"] + "/api/notes", {"text": "via gunicorn"})
    assert status == 201
    note = json.loads(body)
    status, _, body = http("GET", gunicorn["url"] + headers["Location"])
    assert (status, json.loads(body)) == (200, note)


def test_gunicorn_writes_one_json_access_line_per_request(gunicorn):
    status, headers, _ = http("GET", gunicorn["url"] + "/api/notes/999999999")
    assert status == 404
    request_id = headers["X-Request-ID"]
    wait_until(lambda: access_log_entry(gunicorn, request_id), timeout=10)
    lines = [line for line in gunicorn["stdout"].read_text().splitlines() if request_id in line]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/notes/999999999"
    assert entry["status"] == 404
    assert isinstance(entry["duration_ms"], float) and 0 <= entry["duration_ms"] < 10_000
    assert RFC3339_UTC.match(entry["time"])


def test_the_access_lines_duration_is_the_whole_request_in_milliseconds_its_body_too(gunicorn):
    body = json.dumps({"text": "sent a second and a half after its headers"}).encode()
    host, port = gunicorn["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        started = time.monotonic()
        client.sendall(b"POST /api/notes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(1.5)  # well within the body's deadline, and longer than any one read may wait
        client.sendall(body)
        answer = b""
        while data := client.recv(65536):
            answer += data
        elapsed_ms = (time.monotonic() - started) * 1000
    assert answer.startswith(b"HTTP/1.1 201 "), answer
    request_id = re.search(rb"X-Request-ID: (\w+)", answer)[1].decode()
    entry = wait_until(lambda: access_log_entry(gunicorn, request_id), timeout=10)
    # The server's clock starts once it has read the headers, a little after they were sent.
    assert 1200 <= entry["duration_ms"] <= elapsed_ms, (entry, elapsed_ms)


def test_gunicorn_logs_a_passing_health_probe_or_scrape_only_when_it_fails(gunicorn):
    probes = [http("GET", gunicorn["url"] + path)[1]["X-Request-ID"] for path in ("/healthz", "/readyz")]
    assert http("GET", gunicorn["metrics"])[0] == 200
    _, headers, _ = http("GET", gunicorn["url"] + "/")
    # One writer thread, in order: once the later request's line is out, the probes' would be too.
    wait_until(lambda: access_log_entry(gunicorn, headers["X-Request-ID"]), timeout=10)
    assert [access_log_entry(gunicorn, request_id) for request_id in probes] == [None, None]
    paths = [json.loads(line).get("path") for line in gunicorn["stdout"].read_text().splitlines()]
    assert "/metrics" not in paths


def test_every_line_gunicorn_writes_is_json_its_own_start_up_lines_too(gunicorn):
    http("GET", gunicorn["url"] + "/")
    lines = gunicorn["stdout"].read_text().splitlines() + gunicorn["stderr"].read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    started = [entry for entry in entries if entry["message"].startswith("Starting gunicorn")]
    assert [entry["logger"] for entry in started] == ["gunicorn.error"]
    assert "request_id" not in started[0]  # a line about no request names none
    assert all(RFC3339_UTC.match(entry["time"]) and entry["level"] for entry in entries)


def test_everyday_requests_log_no_warning(app_environment, tmp_path):
    with gunicorn_server(app_environment, tmp_path) as server:
        for _ in range(5):
            status, headers, _ = http("POST", server["url"] + "/api/notes", {"text": "an everyday note"})
            assert status == 201
            assert http("GET", server["url"] + headers["Location"])[0] == 200
            assert http("GET", server["url"] + "/api/notes?limit=2")[0] == 200
    # A connection given back to the pool mid-transaction, say, would be rolled back with a warning.
    entries = [json.loads(line) for name in ("stdout", "stderr") for line in server[name].read_text().splitlines()]
    assert [entry for entry in entries if entry["level"] not in ("INFO", "DEBUG")] == []


def test_an_idle_worker_uses_next_to_no_cpu(gunicorn):
    assert http("GET", gunicorn["url"] + "/api/notes")[0] == 200  # the pool and its sampler running

    def cpu_seconds():
        workers = Path(f"/proc/{gunicorn['pid']}/task/{gunicorn['pid']}/children").read_text().split()
        return sum(sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
                   for pid in workers) / os.sysconf("SC_CLK_TCK")

    before = cpu_seconds()
    time.sleep(3)
    assert cpu_seconds() - before < 0.3


def test_each_worker_writes_its_last_line_as_it_stops(app_environment, tmp_path):
    with gunicorn_server(app_environment, tmp_path) as server:
        assert http("GET", server["url"] + "/")[0] == 200
    # Written after the worker's log queue has closed: the worker must write it itself, or it is lost.
    entries = [json.loads(line) for line in server["stderr"].read_text().splitlines()]
    booted = [entry for entry in entries if entry["message"].startswith("Booting worker with pid")]
    exited = [entry for entry in entries if entry["message"].startswith("Worker exiting")]
    assert booted and len(exited) == len(booted), entries


@pytest.mark.parametrize("path", ["/", "/api/notes", "/api/notes/999999999"])
def test_gunicorn_names_no_server_in_its_answers(gunicorn, path):
    status, headers, _ = http("GET", gunicorn["url"] + path)
    assert status < 500 and "Server" not in headers


@pytest.mark.parametrize(
    "variables, variable",
    [({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"), ({"PORT": "http"}, "PORT"), ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
     ({"METRICS_PORT": "70000"}, "METRICS_PORT"), ({"PORT": "18765", "METRICS_PORT": "18765"}, "METRICS_PORT")],
)
def test_gunicorn_refuses_invalid_configuration_with_one_line(app_environment, tmp_path, variables, variable):
    environment = {**app_environment, "PORT": str(free_port()), "METRICS_PORT": str(free_port()),
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **variables}
    result = subprocess.run(
        GUNICORN, env=environment, cwd=REPOSITORY, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line.startswith(f"configuration error: {variable}: ")


# ---------------------------------------------------------------------------------------------- slow clients


def trickle(url, head, seconds):
    """Sends `head`, then a byte a second until the server closes the connection; returns (seconds, response)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds + 5) as client:
        client.sendall(head)
        started, received = time.monotonic(), b""
        client.settimeout(1)
        while time.monotonic() - started < seconds + 5:
            try:
                client.sendall(b"x")
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset, or the pipe broke: closed
                break
            if not data:
                break
            received += data
        return time.monotonic() - started, received


@pytest.mark.slow  # waits out the deadline it checks
def test_gunicorn_disconnects_a_client_whose_headers_never_end_after_keepalive_seconds(gunicorn):
    bound = KEEPALIVE_SECONDS
    seconds, response = trickle(gunicorn["url"], b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ", bound)
    assert bound - 1 <= seconds <= bound + 2 and response == b""
    assert http("GET", gunicorn["url"] + "/")[0] == 200


@pytest.mark.slow  # waits out the deadline it checks
def test_gunicorn_answers_408_json_and_disconnects_a_body_slower_than_its_deadline(gunicorn):
    bound = BODY_TIMEOUT_SECONDS
    head = (b"POST /api/notes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n")
    seconds, response = trickle(gunicorn["url"], head, bound)
    assert bound - 1 <= seconds <= bound + 2
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), response
    assert json.loads(body)["error"]["code"] == "request_timeout"


def raw_exchange(url, request):
    """Sends `request` as bytes and reads the whole answer: what a client sees when gunicorn refuses it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(request)
        answer = b""
        while data := client.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(120)) + b"\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
    (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
])
def test_requests_gunicorn_refuses_before_the_app_get_the_apps_json_error_shape(gunicorn, request_bytes, status, code):
    answered, headers, body = raw_exchange(gunicorn["url"], request_bytes)
    assert answered == status
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"] and error["request_id"] == headers["X-Request-ID"]
    # gunicorn's own words on what was wrong, not the status line's reason again.
    assert error["message"].lower() != code.replace("_", " "), error


def test_importing_the_serving_module_starts_nothing(app_environment):
    # gunicorn.conf.py imports it: only `python -m serving` may start a server.
    imported = subprocess.run([sys.executable, "-c", "import serving; print('imported')"], env=app_environment,
                              cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert (imported.returncode, imported.stdout) == (0, "imported\n"), imported.stderr


def test_serving_is_checked_against_the_gunicorn_version_pinned():
    """serving.py replaces two names gunicorn reads at call time but does not document (gunicorn.http.wsgi.Response
    and gunicorn.util.write_error), and relies on the worker's handle_request and handle_error: a new gunicorn may
    use them differently. Read the new version's source for those four, then change the version here."""
    pinned = re.search(r"^gunicorn==(\S+) ", (REPOSITORY / "requirements.txt").read_text(), re.M)[1]
    assert pinned == "27.0.1"


def pipelined_greetings(url, count):
    """`count` GET / sent back to back on one connection, their answers read as they come: the status codes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        sender = threading.Thread(target=client.sendall, args=(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * count,))
        sender.start()
        answers, pending = [], b""
        while len(answers) < count:
            data = client.recv(1 << 20)
            assert data, f"closed after {len(answers)} answers"
            pending += data
            while (end := pending.find(b"\r\n\r\n")) >= 0:
                head = pending[:end].decode("latin-1")
                length = int(re.search(r"(?im)^content-length: *(\d+)", head)[1])
                if len(pending) < end + 4 + length:
                    break
                answers.append(int(head.split()[1]))
                pending = pending[end + 4 + length:]
        sender.join()
    return answers


def test_a_log_reader_that_stops_reading_costs_log_lines_counted_never_answers(app_environment, tmp_path):
    # LOG_LEVEL=debug: gunicorn's own lines for every request too, which must take the same queue.
    environment = {**app_environment, "WEB_CONCURRENCY": "1", "PORT": str(free_port()), "LOG_LEVEL": "debug",
                   "METRICS_PORT": str(free_port()), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    # stdout and stderr are pipes this test never reads: once their 64 KiB are full, every write to them would block.
    process = subprocess.Popen(GUNICORN, env=environment, cwd=REPOSITORY, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{environment['PORT']}"
        wait_until(answers(url + "/healthz"), timeout=30)
        # More access lines than the worker's queue holds (10,000, serving.py) and the pipe's buffer together.
        assert set(pipelined_greetings(url, 12_000)) == {200}
        samples = scrape(f"http://127.0.0.1:{environment['METRICS_PORT']}/metrics")
        assert metric_value(samples, "log_lines_dropped_total") >= 1_000
    finally:
        process.kill()
        process.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- its connections


def database_sockets(pid, port):
    """The worker `pid`'s TCP sockets to 127.0.0.1:`port`, each as a copy it shares with this process: the very
    sockets the kernel holds for the worker, read with pidfd_getfd(2), which Python's os module lacks."""
    inodes = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":  # remote port, ESTABLISHED
            inodes.add(fields[9])
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]") in inodes:
                copied = syscall(438, pidfd, int(fd), 0)  # SYS_pidfd_getfd on x86-64 and arm64 alike
                assert copied >= 0, os.strerror(ctypes.get_errno())
                yield socket.socket(fileno=copied)
    finally:
        os.close(pidfd)


def test_the_pools_connections_notice_a_vanished_database_within_seconds(gunicorn, postgres):
    # The database's published port, as the worker dialled it.
    port = int(postgres.get_exposed_port(5432))
    assert http("GET", gunicorn["url"] + "/api/notes")[0] == 200
    workers = Path(f"/proc/{gunicorn['pid']}/task/{gunicorn['pid']}/children").read_text().split()
    found = [sock for pid in workers for sock in database_sockets(int(pid), port)]
    assert found, "no worker holds a connection to the database"
    for sock in found:
        with sock:
            # What the kernel does for each connection: probe an idle one after 10 s, every 2 s, 3 times; give up
            # on unanswered data after 10 s (app.py's comment is the contract).
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
