"""Shared fixtures: a real PostgreSQL from testcontainers, and the app wired to it."""

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import pytest
from project import IMAGE, POSTGRES_IMAGE, VARIANTS

# Ryuk, testcontainers' clean-up container, is an image that cannot be pulled here: the fixtures remove their own.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
# Reach containers through ports published on 127.0.0.1, never container IPs, even when the tests themselves
# run inside a container (where testcontainers would otherwise pick the gateway's IP).
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TC_HOST", "127.0.0.1")

from testcontainers.community.postgres import PostgresContainer  # after the settings above, which it reads

REPOSITORY = Path(__file__).resolve().parent.parent
# Marks the containers these fixtures start, so they can be found (`docker ps --filter label=...`) and told apart.
TEST_LABEL = {"notes.tests": "test_app"}
# Every variable app.py reads: removed from the environment a test hands to the app, unless the test sets it.
APP_VARIABLES = (
    "NAME",
    "DATABASE_URL",
    "DATABASE_PASSWORD",
    "DATABASE_PASSWORD_FILE",
    "LOG_LEVEL",
    "DATABASE_POOL_MIN_SIZE",
    "DATABASE_POOL_MAX_SIZE",
    "PORT",
    "WEB_CONCURRENCY",
)


def gunicorn_setting(name):
    """A number set in gunicorn.conf.py, read, not run: running it would monkey-patch this process for gevent."""
    return int(re.search(rf"^{name} = (\d+)", (REPOSITORY / "gunicorn.conf.py").read_text(), re.M)[1])


# How long gunicorn lets requests finish after SIGTERM; every grace period in compose.yaml and k8s/ must exceed it.
GRACEFUL_TIMEOUT = gunicorn_setting("graceful_timeout")
# Planted in the build context of the images under test; it must never reach an image.
PLANTED_SECRET = "planted-secret-value-that-must-never-ship"


def wait_until(condition, timeout, interval=0.1, explain=lambda: ""):
    """Poll until condition() is true; fail after timeout seconds, with what explain() says."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s {explain()}")
        time.sleep(interval)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole run.

    Its port is published on a fixed 127.0.0.1 port: Docker picks a new random host port each time a container
    with a random one starts again, and the outage test stops and starts this container under a running app.
    """
    container = PostgresContainer(POSTGRES_IMAGE, username="app", password="test-password-7fq2", dbname="app")
    container.ports["5432"] = ("127.0.0.1", free_port())
    container.with_kwargs(labels=TEST_LABEL)
    with container:
        yield container


@pytest.fixture(scope="session")
def database_url(postgres):
    """The app's DATABASE_URL for the test server: no password in it, as in Compose and Kubernetes."""
    host = postgres.get_container_host_ip()
    port = postgres.get_exposed_port(5432)
    return f"postgresql://{postgres.username}@{host}:{port}/{postgres.dbname}"


@pytest.fixture(scope="session")
def app_environment(postgres, database_url):
    """An environment for running the app against the test server, after `flask --app app migrate` has run there.

    Of the variables the app reads, only DATABASE_URL and DATABASE_PASSWORD are set.
    """
    environment = {name: value for name, value in os.environ.items() if name not in APP_VARIABLES}
    environment.update(DATABASE_URL=database_url, DATABASE_PASSWORD=postgres.password)
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "migrate"], env=environment, cwd=REPOSITORY, check=True
    )
    return environment


@pytest.fixture(scope="session")
def create_app(app_environment):
    """app.py's factory, with the test server's environment unless a test passes its own."""
    import app

    return lambda environ=app_environment: app.create_app(environ)


@pytest.fixture(scope="session")
def app(create_app):
    """The Flask app, built in this process against the test server."""
    return create_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def docker_client():
    client = docker.from_env()
    yield client
    client.close()


def exported_files(client, image):
    """Every path in the image's filesystem with its tar header (mode, owner), read from `docker export`."""
    container = client.containers.create(image)
    try:
        stream = io.BytesIO(b"".join(container.export()))
    finally:
        container.remove()
    with tarfile.open(fileobj=stream) as archive:
        return {member.name.lstrip("./"): member for member in archive.getmembers()}


def copy_repository(destination):
    """The working tree's files that git tracks or would track, copied to `destination`; returns it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPOSITORY,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in listed:
        if name and (REPOSITORY / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, destination / name)
    return destination


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Both variants, built once by `make build` from a copy of the build context with secrets planted in it:
    a .env, a .git/ and a secrets/ folder, as a developer's checkout has."""
    context = copy_repository(tmp_path_factory.mktemp("context"))
    (context / ".env").write_text(f"DATABASE_PASSWORD={PLANTED_SECRET}\n")
    (context / "secrets").mkdir()
    (context / "secrets" / "db_password.txt").write_text(PLANTED_SECRET)
    (context / ".git").mkdir()
    (context / ".git" / "config").write_text(f"[credential]\n\thelper = store {PLANTED_SECRET}\n")
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True,
                              check=True).stdout.strip()
    build = subprocess.run(["make", "--no-print-directory", "build", f"REVISION={revision}", f"IMAGE={IMAGE}"],
                           cwd=context, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return {"revision": revision, "context": context, **{variant: f"{IMAGE}:{variant}" for variant in VARIANTS}}


def pytest_configure(config):
    config.addinivalue_line("markers", "base_images: the base-image contract (tests/test_base_images.py)")
    config.addinivalue_line("markers", "docker: needs a Docker engine and the built images")
    config.addinivalue_line("markers", "slow: drills against real containers, minutes in all (tests/test_drills.py)")
