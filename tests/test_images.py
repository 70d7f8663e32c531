"""Every hardening claim of the two images, proven against the built images, for both variants."""

import io
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid

import docker
import pytest
import requests
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.community.postgres import PostgresContainer

from conftest import APP_VARIABLES, POSTGRES_IMAGE, REPOSITORY

VARIANTS = ("slim", "distroless")
RUNTIME_UID = 65532
DB_PASSWORD = "images-test-db-password"
PLANTED_SECRET = "planted-secret-value-that-must-never-ship"
GRACEFUL_TIMEOUT = 20  # gunicorn.conf.py


@pytest.fixture(scope="module")
def engine():
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Both variants, built once by `make build` from a copy of the build context with secrets planted in it."""
    context = tmp_path_factory.mktemp("context")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPOSITORY,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (REPOSITORY / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, context / name)
    (context / ".env").write_text(f"DATABASE_PASSWORD={PLANTED_SECRET}\n")
    (context / "secrets").mkdir()
    (context / "secrets" / "db_password.txt").write_text(PLANTED_SECRET)
    (context / ".git").mkdir()
    (context / ".git" / "config").write_text(f"[credential]\n\thelper = store {PLANTED_SECRET}\n")
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True,
                              check=True).stdout.strip()
    subprocess.run(["make", "--no-print-directory", "-s", "build", f"REVISION={revision}", "IMAGE=notes-web"],
                   cwd=context, check=True, capture_output=True)
    return {"revision": revision, "context": context, **{v: f"notes-web:{v}" for v in VARIANTS}}


@pytest.fixture(scope="module")
def network():
    with Network() as created:
        yield created


@pytest.fixture(scope="module")
def database(network):
    """Postgres reachable from the web containers by the service name `db`, migrated once."""
    container = PostgresContainer(POSTGRES_IMAGE, username="notes", password=DB_PASSWORD, dbname="notes")
    container.with_network(network).with_network_aliases("db")
    with container:
        host_url = f"postgresql://notes@127.0.0.1:{container.get_exposed_port(5432)}/notes"
        environment = {name: value for name, value in os.environ.items() if name not in APP_VARIABLES}
        subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=REPOSITORY, check=True,
                       env={**environment, "DATABASE_URL": host_url, "DATABASE_PASSWORD": DB_PASSWORD})
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
        container.with_kwargs(**options)
        container.start()
        started.append(container)
        url = f"http://127.0.0.1:{container.get_exposed_port(8000)}"
        if wait:
            wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, container)
        return container, url

    yield start
    for container in started:
        container.stop()


def wait_until(condition, container, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        container.reload()
        assert container.status == "running", container.get_logs()
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s: {container.get_logs()}")


def exported_files(engine, image):
    """Every path in the image with its tar header, read from `docker export` of a created container."""
    container = engine.containers.create(image)
    try:
        stream = io.BytesIO(b"".join(container.export()))
    finally:
        container.remove()
    with tarfile.open(fileobj=stream) as archive:
        return {member.name.lstrip("./"): member for member in archive.getmembers()}


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

def test_image_user_is_numeric_and_not_root(engine, images, variant):
    user = engine.images.get(images[variant]).attrs["Config"]["User"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user


def test_running_process_uid_is_65532(web):
    container, _ = web()
    code, output = run_python(container, "print(open('/proc/1/status').read())")
    assert code == 0, output
    uids = re.search(r"^Uid:\s+(.*)$", output, re.M).group(1).split()
    assert set(uids) == {str(RUNTIME_UID)}


def test_runtime_user_cannot_write_the_application_files(web, engine, images, variant):
    files = exported_files(engine, images[variant])
    assert files["app/app.py"].uid == 0 and files["app"].uid == 0
    container, _ = web()
    code, output = run_python(container, "open('/app/app.py', 'a')")
    assert code != 0 and "PermissionError" in output
    code, output = run_python(container, "open('/app/new.py', 'w')")
    assert code != 0 and "PermissionError" in output


# --- what is in the image --------------------------------------------------------------------------------------------

def test_distroless_has_no_shell_package_manager_or_pip(engine, images):
    files = exported_files(engine, images["distroless"])
    names = {path.rsplit("/", 1)[-1]: path for path, member in files.items() if not member.isdir()}
    assert {"sh", "bash", "dash", "apt", "apt-get", "dpkg", "pip", "pip3"} & names.keys() == set()
    assert not any(path.startswith("venv/lib/python3.13/site-packages/pip/") for path in files)


def test_no_setuid_or_setgid_files(engine, images, variant):
    files = exported_files(engine, images[variant])
    privileged = [path for path, member in files.items() if member.isfile() and member.mode & 0o6000]
    assert privileged == []


def test_planted_env_git_and_secrets_are_absent_from_the_image(engine, images, variant):
    files = exported_files(engine, images[variant])
    leaked = [path for path in files if re.search(r"(^|/)(\.env|\.git|secrets)(/|$)", path)]
    assert leaked == []


def test_build_context_holds_only_the_allowlisted_files(engine, images):
    # The .dockerignore allowlist is what keeps the planted files out of the builder, not just out of COPY.
    context = images["context"]
    probe = context / "Dockerfile.context-probe"
    base = engine.images.get(images["slim"]).attrs["Config"]["Labels"]["org.opencontainers.image.base.name"]
    probe.write_text(f"FROM {base}\nCOPY . /context/\n")
    image, _ = engine.images.build(path=str(context), dockerfile=probe.name, rm=True, forcerm=True)
    try:
        listing = engine.containers.run(image.id, ["python", "-c", "import os; print(sorted(os.listdir('/context')))"],
                                        remove=True, entrypoint=[]).decode()
    finally:
        engine.images.remove(image.id, force=True)
        probe.unlink()
    assert listing.strip() == str(["app.py", "gunicorn.conf.py", "requirements.txt"])


def test_no_secret_in_history_or_environment(engine, images, variant):
    image = engine.images.get(images[variant])
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", images[variant]],
                             capture_output=True, text=True, check=True).stdout
    env = image.attrs["Config"]["Env"]
    for text in (history, "\n".join(env)):
        assert PLANTED_SECRET not in text
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)[A-Z_]*=\S", text, re.I), text


def test_revision_label_is_the_git_commit(engine, images, variant):
    labels = engine.images.get(images[variant]).attrs["Config"]["Labels"]
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


def test_migration_command_runs_in_the_image(web, images, variant, network, database):
    container = DockerContainer(images[variant]).with_network(network).with_command(
        ["python", "-m", "flask", "--app", "app", "migrate"])
    container.with_env("DATABASE_URL", "postgresql://notes@db:5432/notes").with_env("DATABASE_PASSWORD", DB_PASSWORD)
    container.with_kwargs(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
    with container:
        assert container.get_wrapped_container().wait(timeout=60)["StatusCode"] == 0, container.get_logs()


def test_healthcheck_turns_the_container_healthy(web):
    container, _ = web()
    wrapped = container.get_wrapped_container()

    def healthy():
        wrapped.reload()
        return wrapped.attrs["State"]["Health"]["Status"] == "healthy"

    wait_until(healthy, container, timeout=60)


def test_docker_stop_lets_an_in_flight_request_finish(web):
    container, url = web()
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"text": "sent slowly across a docker stop"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"POST /api/notes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        client.sendall(body[:5])
        time.sleep(0.5)  # nothing outside shows the worker reading the body; give it a moment to get there
        started = time.monotonic()
        stopper = subprocess.Popen(["docker", "stop", "--time", str(GRACEFUL_TIMEOUT + 10),
                                    container.get_container_id()], stdout=subprocess.DEVNULL)
        wait_until(lambda: b"Handling signal: term" in b"".join(container.get_logs()), container)
        client.sendall(body[5:])
        response = client.makefile("rb").read().decode()
        stopper.wait(timeout=GRACEFUL_TIMEOUT + 20)
        elapsed = time.monotonic() - started
    assert response.startswith("HTTP/1.1 201"), response
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    assert wrapped.attrs["State"]["ExitCode"] == 0, container.get_logs()
    assert elapsed < GRACEFUL_TIMEOUT
