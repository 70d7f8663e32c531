"""Shared fixtures: a real PostgreSQL from testcontainers, and the app wired to it."""

import os
import re
import subprocess
import sys
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import containers
import docker
import project
import pytest
from containers import PLANTED_SECRET, exported_files  # noqa: F401  (the tests' too)
from project import (  # noqa: F401  (the tests' too)
    DEFAULT_VARIANT,
    GRACEFUL_TIMEOUT,
    IMAGE,
    POSTGRES_IMAGE,
    VARIANTS,
    components,
    copy_repository,
)
from prometheus_client.parser import text_string_to_metric_families
from renderings import COMPONENTS, every_rendering, manifests, overlay, render, rendered  # noqa: F401
from waits import answers, free_port, wait_until  # noqa: F401

from app import VARIABLES

REPOSITORY = project.ROOT
project.export_images()
# Marks the containers these fixtures start, so they can be found (`docker ps --filter label=...`) and told apart.
TEST_LABEL = {"notes.tests": "test_app"}
# Every variable the service reads (app.py's VARIABLES): removed from the environment a test hands to the app,
# unless the test sets it.
APP_VARIABLES = tuple(variable.name for variable in VARIABLES)


# The shape of every timestamp the app writes: UTC, with microseconds.
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole run.

    Its port is published on a fixed 127.0.0.1 port: Docker picks a new random host port each time a container
    with a random one starts again, and the outage test stops and starts this container under a running app.
    """
    with containers.postgres(port=free_port(), password="test-password-7fq2", labels=TEST_LABEL) as container:
        yield container


def url_of(container):
    """The app's DATABASE_URL for a test server: no password in it, as in Compose and Kubernetes."""
    host = container.get_container_host_ip()
    port = container.get_exposed_port(5432)
    return f"postgresql://{container.username}@{host}:{port}/{container.dbname}"


def migrated_environment(container):
    """An environment for running the app against a test server, after `flask --app app migrate` has run there.

    Of the variables the app reads, only DATABASE_URL and DATABASE_PASSWORD are set.
    """
    environment = {name: value for name, value in os.environ.items() if name not in APP_VARIABLES}
    environment.update(DATABASE_URL=url_of(container), DATABASE_PASSWORD=container.password)
    migrate_from_source(environment)
    return environment


@pytest.fixture(scope="session")
def database_url(postgres):
    """The session's test server's DATABASE_URL."""
    return url_of(postgres)


@pytest.fixture(scope="session")
def app_environment(postgres):
    """The app's environment for the session's test server, migrated."""
    return migrated_environment(postgres)


def one_line_error(result):
    """The one line a failed command said, naming the fix; make may add its own `*** ... Error 1` after it."""
    assert result.returncode != 0, result.stdout
    line, *rest = result.stderr.splitlines()
    assert all(extra.startswith("make: *** ") for extra in rest), result.stderr
    return line


def migrate_from_source(environment):
    """`flask --app app migrate` from the repository, against the database `environment` names."""
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], env=environment, cwd=REPOSITORY,
                   check=True)


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


def scrape(url):
    """{(name, labels as a sorted tuple): value} of every sample the metrics port serves."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric_value(samples, name, **labels):
    """The sum of `name` over the samples whose labels include `labels`: 0 when there is none."""
    return sum(v for (sample, sample_labels), v in samples.items()
               if sample == name and labels.items() <= dict(sample_labels).items())


# What the images run: serving.py checks the settings, then runs gunicorn -c gunicorn.conf.py 'app:create_app()'.
GUNICORN = [sys.executable, "-m", "serving"]


@contextmanager
def gunicorn_server(environment, directory):
    """The real server, `python -m serving` from the repository, as the images run
    it, on ports and with a metrics folder of its own (set them in `environment` to choose), until it answers.

    Yields its public and metrics URLs, its stdout and stderr files, the metrics folder and the master's pid (for
    the signals an operator sends it); on exit it must stop cleanly."""
    environment = {"PORT": str(free_port()), "METRICS_PORT": str(free_port()),
                   "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"), **environment}
    stdout, stderr = directory / "stdout", directory / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(GUNICORN, env=environment, cwd=REPOSITORY, stdout=out, stderr=err)
    server = {"url": f"http://127.0.0.1:{environment['PORT']}",
              "metrics": f"http://127.0.0.1:{environment['METRICS_PORT']}/metrics", "stdout": stdout,
              "stderr": stderr, "metrics_dir": Path(environment["PROMETHEUS_MULTIPROC_DIR"]), "pid": process.pid}

    def answering():
        assert process.poll() is None, stderr.read_text()
        return answers(server["url"] + "/healthz")()

    try:
        wait_until(answering, timeout=30)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0, stderr.read_text()


@pytest.fixture(scope="session")
def docker_client():
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def own_stack(tmp_path, docker_client):
    """A fresh clone's copy, and make's arguments for a stack of its own there: project, port and image repository
    (Compose builds it from the cache). `make clean` removes all three at the end, and any image Compose left
    labelled with the project."""
    copy = copy_repository(tmp_path / "copy")
    project = f"{IMAGE}-test-make-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project}
    arguments = [f"WEB_PORT={free_port()}", f"IMAGE={IMAGE}-test-make"]
    yield copy, env, arguments
    subprocess.run(["make", "--no-print-directory", "clean", "FORCE=1", *arguments], cwd=copy,
                   env=containers.learner_environment(env), capture_output=True, timeout=120)
    for image in docker_client.images.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        docker_client.images.remove(image.id, force=True)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Both variants, built once by `make build` from a copy of the build context with secrets planted in it:
    a .env, a .git/ and a secrets/ folder, as a developer's checkout has."""
    return containers.build_images(tmp_path_factory.mktemp("context"))
