"""Shared fixtures: a real PostgreSQL from testcontainers, and the app wired to it."""

import functools
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import docker
import harness
import project
import pytest
import yaml
from harness import answers, exported_files, free_port, wait_until  # noqa: F401  (the tests' too)
from project import DEFAULT_VARIANT, IMAGE, POSTGRES_IMAGE, VARIANTS, components  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

from app import VARIABLES

REPOSITORY = Path(__file__).resolve().parent.parent
# Marks the containers these fixtures start, so they can be found (`docker ps --filter label=...`) and told apart.
TEST_LABEL = {"notes.tests": "test_app"}
# Every variable the service reads (app.py's VARIABLES): removed from the environment a test hands to the app,
# unless the test sets it.
APP_VARIABLES = tuple(variable.name for variable in VARIABLES)


def gunicorn_setting(name):
    """A value set in gunicorn.conf.py (a number, or a name such as worker_class's), read, not run: running it
    would monkey-patch this process for gevent."""
    value = re.search(rf'^{name} = "?(\w+)"?$', (REPOSITORY / "gunicorn.conf.py").read_text(), re.M)[1]
    return int(value) if value.isdigit() else value


def gunicorn_default(variable):
    """The default the service takes when the environment does not set `variable` (app.py's VARIABLES)."""
    import app

    return int(app.DEFAULTS[variable])


# How long gunicorn lets requests finish after SIGTERM; every grace period in compose.yaml and k8s/ must exceed it.
GRACEFUL_TIMEOUT = gunicorn_setting("graceful_timeout")
# The shape of every timestamp the app writes: UTC, with microseconds.
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
# Planted in the build context of the images under test; it must never reach an image.
PLANTED_SECRET = "planted-secret-value-that-must-never-ship"


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole run.

    Its port is published on a fixed 127.0.0.1 port: Docker picks a new random host port each time a container
    with a random one starts again, and the outage test stops and starts this container under a running app.
    """
    with harness.postgres(port=free_port(), password="test-password-7fq2", labels=TEST_LABEL) as container:
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


def copy_repository(destination):
    """The working tree's files that git tracks or would track, copied to `destination`; returns it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPOSITORY,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in listed:
        if name and (REPOSITORY / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, destination / name)
    return destination


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
                   env=harness.learner_environment(env), capture_output=True, timeout=120)
    for image in docker_client.images.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        docker_client.images.remove(image.id, force=True)


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


# ---------------------------------------------------------------------------------------------------------
# The Kubernetes manifests, rendered


# Every optional kustomize component in k8s/components/, each added to an overlay by a user's own kustomization.
COMPONENTS = components()


@functools.cache
def render(overlay: str, added: tuple[str, ...] = ()) -> str:
    """An overlay with components added, as k8s/README.md shows, rendered once per session (tools/project.py)."""
    try:
        return project.render(overlay, added)
    except project.RendererMissing:
        pytest.skip("neither kubectl nor kustomize is on PATH: the manifests cannot be rendered")


@pytest.fixture(scope="module", params=VARIANTS)
def overlay(request) -> str:
    """Each variant's overlay in k8s/overlays/, rendered by the fixtures below (tests/test_k8s*.py)."""
    return request.param


@pytest.fixture(scope="module")
def rendered(overlay) -> str:
    return render(overlay)


@pytest.fixture(scope="module")
def manifests(rendered) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module", params=[*((variant, ()) for variant in VARIANTS),
                                        *((DEFAULT_VARIANT, (component,)) for component in COMPONENTS)],
                ids=lambda rendering: "+".join([rendering[0], *rendering[1]]))
def every_rendering(request) -> list[dict]:
    """What a user can apply: each overlay alone, and the default one with each component (tests/test_k8s.py's
    gates); the overlays differ only in the image tag."""
    overlay, added = request.param
    return [doc for doc in yaml.safe_load_all(render(overlay, added)) if doc]


def pytest_configure(config):
    config.addinivalue_line("markers", "base_images: the base-image contract (tests/test_base_images.py)")
    config.addinivalue_line("markers", "docker: needs a Docker engine and the built images")
    config.addinivalue_line("markers", "slow: drills against real containers, minutes in all (tests/test_drills.py)")
    config.addinivalue_line("markers", "kind: needs a kind cluster named by KIND_CLUSTER (tests/test_kind.py)")
    config.addinivalue_line("markers", "nested: runs pytest itself in a copy of the repository")
