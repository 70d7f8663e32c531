"""The contract this project relies on from its four base images and Prometheus, checked against whichever images
the PYTHON_IMAGE, BUILD_IMAGE, DISTROLESS_IMAGE, POSTGRES_IMAGE and PROMETHEUS_IMAGE variables name: upstream, a
mirror, or the stand-ins that .ci/ builds where no registry is reachable."""

import time
import uuid

import psycopg
import pytest
from conftest import exported_files, wait_until
from project import BASE_VARIABLES, base_image

pytestmark = [pytest.mark.base_images, pytest.mark.docker]

PYTHON_IMAGE, BUILD_IMAGE, DISTROLESS_IMAGE, POSTGRES_IMAGE = map(base_image, BASE_VARIABLES)


@pytest.fixture
def run(docker_client):
    """Starts containers (detached, ports on 127.0.0.1) and removes them, and their anonymous volumes, afterwards."""
    started = []

    def start(image, **kwargs):
        kwargs.setdefault("detach", True)
        container = docker_client.containers.run(image, **kwargs)
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True, v=True)


@pytest.fixture
def volume(docker_client):
    """A named volume; request it before `run` so that its containers are removed first."""
    created = docker_client.volumes.create(f"base-images-test-{uuid.uuid4().hex[:8]}")
    yield created.name
    created.remove(force=True)


def published_port(container, port="5432/tcp"):
    container.reload()
    return int(container.ports[port][0]["HostPort"])


def start_postgres(run, **kwargs):
    kwargs.setdefault("environment", {"POSTGRES_PASSWORD": "first-password"})
    return run(POSTGRES_IMAGE, ports={"5432/tcp": ("127.0.0.1", None)}, **kwargs)


def readable_by_the_postgres_user(folder):
    # pytest makes its folders private to the host's user; the bind-mounted files are read as uid 999.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def connect(container, password, dbname="postgres", user="postgres", timeout=60):
    """Connects over TCP through the published port, retrying while the server initialises."""
    port = published_port(container)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                                   dbname=dbname, connect_timeout=2, autocommit=True)
        except psycopg.OperationalError as error:
            container.reload()
            if container.status == "exited" or "password authentication failed" in str(error) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def exit_code(container, timeout=60):
    return container.wait(timeout=timeout)["StatusCode"]


# --- postgres -------------------------------------------------------------------------------------------------------

def test_postgres_refuses_to_start_without_a_password(run):
    container = run(POSTGRES_IMAGE)
    assert exit_code(container) != 0
    assert b"POSTGRES_PASSWORD" in container.logs()


def test_postgres_reads_the_password_from_a_file(run, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    readable_by_the_postgres_user(tmp_path)
    container = start_postgres(
        run, environment={"POSTGRES_PASSWORD_FILE": "/run/secrets/db_password"},
        volumes={str(secret): {"bind": "/run/secrets/db_password", "mode": "ro"}})
    with connect(container, "from-a-file") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_postgres_rejects_a_wrong_password_over_tcp(run):
    container = start_postgres(run)
    connect(container, "first-password").close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(container, "not-the-password")


def test_postgres_runs_init_scripts_and_initialises_a_volume_only_once(volume, run, tmp_path):
    (tmp_path / "10-seed.sql").write_text("create table seeded (v text); insert into seeded values ('from init');\n")
    readable_by_the_postgres_user(tmp_path)
    mounts = {volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"},
              str(tmp_path): {"bind": "/docker-entrypoint-initdb.d", "mode": "ro"}}
    env = {"POSTGRES_PASSWORD": "first-password", "POSTGRES_USER": "notes", "POSTGRES_DB": "notes"}
    first = start_postgres(run, environment=env, volumes=mounts)
    with connect(first, "first-password", dbname="notes", user="notes") as conn:
        conn.execute("insert into seeded values ('written later')")
    first.stop()

    second = start_postgres(run, environment={**env, "POSTGRES_PASSWORD": "second-password"}, volumes=mounts)
    with connect(second, "first-password", dbname="notes", user="notes") as conn:
        rows = conn.execute("select v from seeded order by v").fetchall()
    assert rows == [("from init",), ("written later",)]
    assert b"initdb" not in second.logs() and b"10-seed.sql" not in second.logs()


def test_postgres_server_is_pid_1_and_not_root(run):
    container = start_postgres(run)
    connect(container, "first-password").close()
    status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Name"].strip() == "postgres"
    assert fields["Uid"].split()[0] != "0"


def test_postgres_stops_cleanly_on_docker_stop(run):
    container = start_postgres(run)
    connect(container, "first-password").close()
    container.stop(timeout=30)
    assert exit_code(container) == 0


def test_postgres_runs_as_an_arbitrary_uid_without_a_passwd_entry(run):
    # Kubernetes' restricted profile and uid >= 10000 linters start it this way: no chown, no privilege drop.
    container = start_postgres(run, user="70000:70000",
                               tmpfs={"/var/lib/postgresql/data": "uid=70000,gid=70000,mode=0700"})
    with connect(container, "first-password") as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    assert container.exec_run(["id", "-u"]).output.strip() == b"70000"


# --- distroless ----------------------------------------------------------------------------------------------------

def test_distroless_base_has_no_shell_and_lists_its_packages_for_scanners(docker_client):
    files = exported_files(docker_client, DISTROLESS_IMAGE)
    programs = {"sh", "bash", "dash", "apt", "apt-get", "dpkg", "pip", "pip3"}
    present = {path for path, member in files.items()
               if not member.isdir() and path.rsplit("/", 1)[-1] in programs}
    assert present == set()
    assert any(path.startswith("var/lib/dpkg/status.d/") for path in files), "scanners need the package records"


def test_distroless_runs_as_nonroot_65532(docker_client, run):
    assert docker_client.images.get(DISTROLESS_IMAGE).attrs["Config"]["User"].split(":")[0] in {"65532", "nonroot"}
    container = run(DISTROLESS_IMAGE, command=["-c", "import os; print(os.getuid(), os.getgid())"])
    assert exit_code(container) == 0
    assert container.logs().split() == [b"65532", b"65532"]


def test_distroless_python_has_ssl_sqlite3_and_the_cpp_runtime(run):
    # libstdc++: greenlet (under gevent) is C++; distroless builds python3 on its cc image, which ships it.
    code = "import ctypes, ssl, sqlite3, sys; ctypes.CDLL('libstdc++.so.6'); print(sys.version_info[:2])"
    container = run(DISTROLESS_IMAGE, command=["-c", code])
    assert exit_code(container) == 0
    assert container.logs().strip() == b"(3, 13)"


# --- python slim and debian slim ------------------------------------------------------------------------------------

def test_python_slim_builds_an_image_that_pip_installs_a_pinned_package(docker_client, tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "six==1.16.0 --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\n")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {PYTHON_IMAGE}\n"
        "COPY requirements.txt .\n"
        "RUN pip install --no-cache-dir --require-hashes -r requirements.txt\n"
        'CMD ["python", "-c", "import six; print(six.__version__)"]\n')
    image, _ = docker_client.images.build(path=str(tmp_path), rm=True, forcerm=True)
    try:
        assert docker_client.containers.run(image.id, remove=True).strip() == b"1.16.0"
    finally:
        docker_client.images.remove(image.id, force=True)


def test_debian_slim_has_the_python_the_distroless_runtime_has(docker_client):
    # Dockerfile.distroless builds its virtual environment on BUILD_IMAGE for the DISTROLESS_IMAGE interpreter.
    def candidate(image, command):
        return docker_client.containers.run(image, command, remove=True, entrypoint="").decode()

    build = candidate(BUILD_IMAGE, ["sh", "-c", "apt-get update -qq >/dev/null && apt-cache policy python3.13"])
    version = "import platform; print(platform.python_version())"
    runtime = candidate(DISTROLESS_IMAGE, ["/usr/bin/python3.13", "-c", version])
    assert f"Candidate: {runtime.strip()}" in build


def test_prometheus_runs_as_nobody_from_the_upstream_entrypoint_and_answers_its_readiness_check(run, docker_client):
    """What compose.yaml's prometheus service relies on: the image's user and entrypoint (it passes only flags), and
    /bin/promtool for its healthcheck. A stand-in must hold to it as prom/prometheus does."""
    image = base_image("PROMETHEUS_IMAGE")
    config = docker_client.images.get(image).attrs["Config"]
    assert config["User"] in ("nobody", "65534") and config["Entrypoint"] == ["/bin/prometheus"]
    container = run(image, read_only=True, tmpfs={"/prometheus": "uid=65534,gid=65534"})

    def ready():
        container.reload()
        assert container.status == "running", container.logs().decode()
        return container.exec_run(["/bin/promtool", "check", "ready", "--url=http://127.0.0.1:9090"]).exit_code == 0

    wait_until(ready, 60, "prometheus ready", interval=0.5)
