"""Every hardening claim of the two images, proven against the built images, for both variants."""

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import time

import containers
import pytest
import requests
from conftest import (
    APP_VARIABLES,
    GRACEFUL_TIMEOUT,
    PLANTED_SECRET,
    VARIANTS,
    exported_files,
    metric_value,
    migrate_from_source,
    scrape,
    wait_until,
)
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

pytestmark = pytest.mark.docker  # the built images, against a real Postgres

RUNTIME_UID = 65532
DB_PASSWORD = "images-test-db-password"


@pytest.fixture(scope="module")
def network():
    with Network() as created:
        yield created


@pytest.fixture(scope="module")
def database(network):
    """Postgres reachable from the web containers by the service name `db`, migrated once."""
    with containers.postgres(network, password=DB_PASSWORD) as container:
        host_url = f"postgresql://notes@127.0.0.1:{container.get_exposed_port(5432)}/notes"
        environment = {name: value for name, value in os.environ.items() if name not in APP_VARIABLES}
        migrate_from_source({**environment, "DATABASE_URL": host_url, "DATABASE_PASSWORD": DB_PASSWORD})
        yield container


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture
def web(images, network, database, variant):
    """Starts the variant's image the way Compose does; returns a function that takes extra options."""
    started = []

    def start(env=None, wait=True, tmpfs=None, **options):
        container = DockerContainer(images[variant]).with_network(network)
        for path, mount_options in (tmpfs or {}).items():
            container.with_tmpfs_mount(path, mount_options)  # passed to Docker as the mount's options
        environment = {"DATABASE_URL": "postgresql://notes@db:5432/notes", "DATABASE_PASSWORD": DB_PASSWORD,
                       **(env or {})}
        for key, value in environment.items():
            if value is not None:
                container.with_env(key, value)
        container.ports["8000/tcp"] = ("127.0.0.1", None)
        container.ports["9000/tcp"] = ("127.0.0.1", None)  # the metrics port
        container.with_kwargs(**options)
        container.start()
        started.append(container)
        url = f"http://127.0.0.1:{container.get_exposed_port(8000)}"
        if wait:
            wait_while_running(lambda: requests.get(f"{url}/healthz", timeout=1).ok, container)
        return container, url

    yield start
    for container in started:
        container.stop()


def wait_while_running(condition, container, timeout=30):
    """wait_until, failing at once if the container exits; a request that fails counts as not yet."""
    def met():
        container.reload()
        assert container.status == "running", container.get_logs()
        try:
            return condition()
        except requests.RequestException:
            return False

    wait_until(met, timeout, interval=0.2, explain=container.get_logs)


# Counts the connections to port 8000 that a gunicorn worker has accept()ed: a socket the kernel established but
# no worker took yet is in /proc/net/tcp and in no process's fd table.
ACCEPTED_CONNECTIONS = """
import os
established = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(":1F40") and fields[3] == "01":
            established.add(fields[9])
held = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    if pid in ("1", str(os.getpid())):
        continue
    try:
        held.update(os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
print(len(established & held))
"""


def run_python(container, code):
    """Runs Python inside the container as its runtime user: the distroless image has no shell for `exec`."""
    result = container.get_wrapped_container().exec_run(["python", "-c", code])
    return result.exit_code, result.output.decode()


# --- the module's contract: configuration at run time ----------------------------------------------------------------

def test_name_from_the_environment_is_injected_at_run_time(web):
    _, url = web(env={"NAME": "Docker"})
    response = requests.get(url, timeout=5)
    assert (response.status_code, response.text) == (200, "Hello, Docker!")


def test_without_name_the_greeting_falls_back_to_world(web):
    _, url = web()
    assert requests.get(url, timeout=5).text == "Hello, World!"


# --- non-root --------------------------------------------------------------------------------------------------------

def test_image_user_is_numeric_and_not_root(docker_client, images, variant):
    user = docker_client.images.get(images[variant]).attrs["Config"]["User"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user


def test_running_process_uid_is_65532(web):
    container, _ = web()
    code, output = run_python(container, "print(open('/proc/1/status').read())")
    assert code == 0, output
    uids = re.search(r"^Uid:\s+(.*)$", output, re.M).group(1).split()
    assert set(uids) == {str(RUNTIME_UID)}


def test_runtime_user_cannot_write_the_application_files(web, docker_client, images, variant):
    files = exported_files(docker_client, images[variant])
    assert files["app/app.py"].uid == 0 and files["app"].uid == 0
    container, _ = web()
    code, output = run_python(container, "open('/app/app.py', 'a')")
    assert code != 0 and "PermissionError" in output
    code, output = run_python(container, "open('/app/new.py', 'w')")
    assert code != 0 and "PermissionError" in output


# --- what is in the image --------------------------------------------------------------------------------------------

def test_distroless_has_no_shell_package_manager_or_pip(docker_client, images):
    files = exported_files(docker_client, images["distroless"])
    names = {path.rsplit("/", 1)[-1]: path for path, member in files.items() if not member.isdir()}
    assert {"sh", "bash", "dash", "apt", "apt-get", "dpkg", "pip", "pip3"} & names.keys() == set()
    assert not any(path.startswith("venv/lib/python3.13/site-packages/pip/") for path in files)


def test_no_setuid_or_setgid_files(docker_client, images, variant):
    files = exported_files(docker_client, images[variant])
    privileged = [path for path, member in files.items() if member.isfile() and member.mode & 0o6000]
    assert privileged == []


def test_planted_env_git_and_secrets_are_absent_from_the_image(docker_client, images, variant):
    files = exported_files(docker_client, images[variant])
    leaked = [path for path in files if re.search(r"(^|/)(\.env|\.git|secrets)(/|$)", path)]
    assert leaked == []


def test_build_context_holds_only_the_allowlisted_files(docker_client, images):
    # The .dockerignore allowlist is what keeps the planted files out of the builder, not just out of COPY.
    context = images["context"]
    probe = context / "Dockerfile.context-probe"
    base = docker_client.images.get(images["slim"]).attrs["Config"]["Labels"]["org.opencontainers.image.base.name"]
    probe.write_text(f"FROM {base}\nCOPY . /context/\n")
    image, _ = docker_client.images.build(path=str(context), dockerfile=probe.name, rm=True, forcerm=True)
    try:
        command = ["python", "-c", "import os; print(sorted(os.listdir('/context')))"]
        listing = docker_client.containers.run(image.id, command, remove=True, entrypoint=[]).decode()
    finally:
        docker_client.images.remove(image.id, force=True)
        probe.unlink()
    assert listing.strip() == str(["app.py", "gunicorn.conf.py", "requirements.txt", "serving.py"])


def test_no_secret_in_history_or_environment(docker_client, images, variant):
    image = docker_client.images.get(images[variant])
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", images[variant]],
                             capture_output=True, text=True, check=True).stdout
    env = image.attrs["Config"]["Env"]
    for text in (history, "\n".join(env)):
        assert PLANTED_SECRET not in text
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)[A-Z_]*=\S", text, re.I), text


def test_revision_label_is_the_git_commit(docker_client, images, variant):
    labels = docker_client.images.get(images[variant]).attrs["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == images["revision"]
    for key in ("title", "source", "created", "version", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


# --- run options -----------------------------------------------------------------------------------------------------

def test_runs_read_only_without_capabilities_or_privilege_escalation(web):
    _, url = web(read_only=True, tmpfs={"/tmp": "size=16m"}, cap_drop=["ALL"],
                 security_opt=["no-new-privileges:true"])
    assert requests.get(url, timeout=5).status_code == 200
    ready = requests.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text


def test_metrics_add_up_every_workers_requests_on_a_read_only_root_and_name_the_build(web, images, variant):
    container, url = web(env={"WEB_CONCURRENCY": "3"}, read_only=True, tmpfs={"/tmp": "size=16m"},
                         cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
    metrics = f"http://127.0.0.1:{container.get_exposed_port(9000)}/metrics"
    sent = 90
    with concurrent.futures.ThreadPoolExecutor(max_workers=9) as pool:  # a connection each: any worker may take it
        statuses = list(pool.map(lambda _: requests.get(url, headers={"Connection": "close"}, timeout=10).status_code,
                                 range(sent)))
    assert statuses == [200] * sent
    # More than one worker answered: each writes its counters to a file of its own, named by its pid.
    assert run_python(container, "import glob; print(len(glob.glob('/tmp/metrics/counter_*.db')) > 1)") == (0, "True\n")
    samples = scrape(metrics)
    assert metric_value(samples, "http_requests_total", route="/", status="200") == sent
    assert metric_value(samples, "app_build_info", variant=variant, revision=images["revision"]) == 1


def test_migration_command_creates_the_schema_from_the_image(images, variant, network, database):
    # A database of its own: the shared one is migrated already, and would only show the "up to date" path.
    fresh = f"fresh_{variant}"
    database.exec(["createdb", "--username=notes", fresh])
    container = DockerContainer(images[variant]).with_network(network).with_command(
        ["python", "-m", "flask", "--app", "app", "migrate"])
    container.with_env("DATABASE_URL", f"postgresql://notes@db:5432/{fresh}").with_env("DATABASE_PASSWORD", DB_PASSWORD)
    container.with_kwargs(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
    with container:
        assert container.get_wrapped_container().wait(timeout=60)["StatusCode"] == 0, container.get_logs()
    tables = database.exec(["psql", "--username=notes", f"--dbname={fresh}", "--tuples-only", "--no-align",
                            "--command=SELECT to_regclass('notes') IS NOT NULL"])
    assert tables.output.decode().strip() == "t"


def test_healthcheck_turns_the_container_healthy(web):
    container, _ = web()
    wrapped = container.get_wrapped_container()

    def healthy():
        wrapped.reload()
        return wrapped.attrs["State"]["Health"]["Status"] == "healthy"

    wait_while_running(healthy, container, timeout=60)


def test_docker_stop_lets_an_in_flight_request_finish(web):
    container, url = web()
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"text": "sent slowly across a docker stop"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"POST /api/notes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        client.sendall(body[:5])
        wait_while_running(lambda: run_python(container, ACCEPTED_CONNECTIONS) == (0, "1\n"), container)
        started = time.monotonic()
        stopper = subprocess.Popen(["docker", "stop", "--time", str(GRACEFUL_TIMEOUT + 10),
                                    container.get_container_id()], stdout=subprocess.DEVNULL)
        wait_while_running(lambda: b"Handling signal: term" in b"".join(container.get_logs()), container)
        client.sendall(body[5:])
        response = client.makefile("rb").read().decode()
        stopper.wait(timeout=GRACEFUL_TIMEOUT + 20)
        elapsed = time.monotonic() - started
    assert response.startswith("HTTP/1.1 201"), response
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    assert wrapped.attrs["State"]["ExitCode"] == 0, container.get_logs()
    assert elapsed < GRACEFUL_TIMEOUT
