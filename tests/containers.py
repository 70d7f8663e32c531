"""Containers as the service runs them, for the tests and the instruments: Postgres, the web image, a stack of both,
a Compose project of its own, and the images `make build` makes from a copy of the repository.

A stack is what compose.yaml runs, made with testcontainers so that each run owns its containers: Postgres on a
network of its own under the alias `db`, the schema migrated by the web image itself, and web started with
compose.yaml's restrictions. Web is published on a fixed 127.0.0.1 port, so that it keeps it across a restart.
"""

import io
import os
import re
import subprocess
import tarfile
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from project import DATABASE_URL, DEFAULT_VARIANT, IMAGE, MIGRATE, POSTGRES_IMAGE, ROOT, VARIANTS, copy_repository
from waits import answers, free_port, wait_until

# Ryuk, testcontainers' clean-up container, cannot be pulled here; every container below is removed by its `with`.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TC_HOST", "127.0.0.1")

# Imported after the settings above, which testcontainers reads when it is imported.
from testcontainers.community.postgres import PostgresContainer  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.network import Network  # noqa: E402

# `docker ps --filter label=notes.bench` finds what a run left behind, if it was killed before its clean-up.
LABEL = {"notes.bench": "containers"}
DB_PASSWORD = uuid.uuid4().hex
DATABASE_ENV = {"DATABASE_URL": DATABASE_URL, "DATABASE_PASSWORD": DB_PASSWORD}
# compose.yaml's restrictions on web: a drill must find what production would, not what a laxer container would.
RESTRICTIONS = {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "labels": LABEL}


def exported_files(client, image):
    """Every path in the image's filesystem with its tar header (mode, owner), read from `docker export`."""
    container = client.containers.create(image)
    try:
        stream = io.BytesIO(b"".join(container.export()))
    finally:
        container.remove()
    with tarfile.open(fileobj=stream) as archive:
        return {member.name.lstrip("./"): member for member in archive.getmembers()}


# Planted in the build context of the images under test; it must never reach an image.
PLANTED_SECRET = "planted-secret-value-that-must-never-ship"


def build_images(context):
    """Every variant, built by `make build` in `context`, a copy of the repository with secrets planted in it, as a
    developer's checkout has them: a .env, a .git/ and a secrets/ folder. Returns the revision, the context and
    {variant: image}."""
    copy_repository(context)
    (context / ".env").write_text(f"DATABASE_PASSWORD={PLANTED_SECRET}\n")
    (context / "secrets").mkdir()
    (context / "secrets" / "db_password.txt").write_text(PLANTED_SECRET)
    (context / ".git").mkdir()
    (context / ".git" / "config").write_text(f"[credential]\n\thelper = store {PLANTED_SECRET}\n")
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    build = subprocess.run(["make", "--no-print-directory", "build", f"REVISION={revision}", f"IMAGE={IMAGE}"],
                           cwd=context, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return {"revision": revision, "context": context, **{variant: f"{IMAGE}:{variant}" for variant in VARIANTS}}


# ---------------------------------------------------------------------------------------------- containers


def postgres(network=None, port=None, published=True, password=DB_PASSWORD, labels=LABEL):
    """PostgreSQL as compose.yaml runs it: role and database `notes`; on `network` under the alias `db` when given.

    Published on 127.0.0.1, on `port` when given (Docker would pick a new one each time the container starts
    again), or, with published=False, nowhere: as in compose.yaml, only containers on its network reach it.
    """
    container = PostgresContainer(POSTGRES_IMAGE, username="notes", password=password, dbname="notes")
    container.ports.clear()
    if published:
        container.ports["5432/tcp"] = ("127.0.0.1", port)
    if network is not None:
        container.with_network(network).with_network_aliases("db")
    return container.with_kwargs(labels=labels)


def migrate(image, network):
    """Runs `flask migrate` from the web image, as compose.yaml's migrate service does."""
    container = DockerContainer(image).with_network(network).with_command(MIGRATE).with_kwargs(labels=LABEL)
    for name, value in DATABASE_ENV.items():
        container.with_env(name, value)
    with container:
        status = container.get_wrapped_container().wait(timeout=60)["StatusCode"]
        assert status == 0, f"migrate exited {status}: {container.get_logs()}"


def web(image, network, port):
    container = DockerContainer(image).with_network(network).with_kwargs(**RESTRICTIONS)
    container.with_tmpfs_mount("/tmp", "size=16m")  # the one writable path, as in compose.yaml
    for name, value in DATABASE_ENV.items():
        container.with_env(name, value)
    container.ports["8000/tcp"] = ("127.0.0.1", port)
    return container


@dataclass
class Stack:
    network: Network
    db: PostgresContainer
    web: DockerContainer
    port: int

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def docker(self, service):
        """The docker-py container of `db` or `web`, fresh from the engine (status, exit code, restart count)."""
        container = getattr(self, service).get_wrapped_container()
        container.reload()
        return container


@contextmanager
def stack(image, database=postgres):
    """db and web on a network of their own, web ready (/readyz 200); everything is removed on exit.

    `database(network)` makes the db container: postgres() above, or a drill's variation of it."""
    port = free_port()
    with Network() as network, database(network) as db:
        migrate(image, network)
        with web(image, network, port) as app:
            wait_until(answers(f"http://127.0.0.1:{port}/readyz"), 30, f"{image} ready")
            yield Stack(network, db, app, port)


# ---------------------------------------------------------------------------------------------- Compose


def write_password_file(folder):
    """A random db_password secret in `folder`, as `make up` writes it: readable by web's uid 65532 and db's 999,
    since Compose bind-mounts a file secret with the host file's mode."""
    path = Path(folder, "db_password.txt")
    path.write_text(uuid.uuid4().hex + "\n")
    path.chmod(0o644)
    return path


def compose_environment(image, password_file, port):
    """The variables under which `docker compose` runs compose.yaml as a project of its own: its own name, WEB_PORT
    and secret file (an override merged over compose.yaml), web and migrate on `image`'s repository and variant,
    under the project's own tag (stack_image). A developer's stack and secrets/ stay untouched."""
    repository, variant = image.rsplit(":", 1)
    override = Path(password_file).with_name("compose.secret.yaml")
    override.write_text(f"secrets:\n  db_password:\n    file: {password_file}\n")
    return {"COMPOSE_FILE": os.pathsep.join(["compose.yaml", str(override)]),
            "COMPOSE_PROJECT_NAME": f"notes-{variant}-{uuid.uuid4().hex[:8]}", "WEB_PORT": str(port),
            # compose.yaml runs ${IMAGE}:${VARIANT:-slim}-<project>; the Makefile passes the default variant as empty.
            "IMAGE": repository, "VARIANT": "" if variant == DEFAULT_VARIANT else variant}


def stack_image(environment):
    """The tag compose.yaml builds and runs in the project that `environment` (from compose_environment) names."""
    variant = environment["VARIANT"] or DEFAULT_VARIANT
    return f"{environment['IMAGE']}:{variant}-{environment['COMPOSE_PROJECT_NAME']}"


@contextmanager
def tagged(image, tag):
    """`image` under a second tag for the `with` block: a stack's own, so that Compose runs a built image as it is."""
    subprocess.run(["docker", "tag", image, tag], check=True)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)


# What a `make test` or `make drills` run hands down to its children; a learner's shell has none of it.
INHERITED = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "IMAGE", "VARIANT", "WEB_PORT"}


def learner_environment(env=None):
    """`env` (this process's environment) without what a make above this one set: make then reads only the
    project's own variables, as in a learner's shell."""
    return {name: value for name, value in (env or os.environ).items() if name not in INHERITED}


@dataclass
class Project:
    """A Compose project of its own (compose_project): `docker compose` and `make` run in it, and web's URL.

    `make` runs as a learner's shell would run it, not with the variables of a `make drills` or `make test`
    above it."""

    environment: dict
    url: str

    def run(self, *command, check=True, answer=None, timeout=180, text=True):
        """`command` in the repository, in this project; with check, a non-zero exit raises, naming what it said."""
        done = subprocess.run(command, cwd=ROOT, env=self.environment, input=answer, capture_output=True, text=text,
                              timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def compose(self, *arguments, **options):
        return self.run("docker", "compose", *arguments, **options)

    def make(self, *arguments, **options):
        return self.run("make", "--no-print-directory", *arguments, **options)

    def backup(self, directory):
        """`make backup` into `directory`: the archive's path, its size in bytes and the notes it holds, as it said."""
        said = self.make("backup", f"BACKUP_DIR={directory}").stdout
        path, size, notes = re.fullmatch(r"(\S+): ([\d,]+) bytes, (\d+) notes\n", said).groups()
        return Path(directory, os.path.basename(path)), int(size.replace(",", "")), int(notes)

    def up(self):
        # --no-build: the drill runs the image `make build` made, never one it builds itself.
        self.compose("up", "--detach", "--wait", "--wait-timeout", "120", "--no-build")


@contextmanager
def compose_project(image, **variables):
    """compose.yaml up (`--wait`) with web and migrate on `image`, under a project name, WEB_PORT and password file
    of its own, and any other `variables` Compose reads (COMPOSE_PROFILES, say); `down --volumes` after."""
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        environment = {**learner_environment(), **compose_environment(image, write_password_file(scratch), port),
                       **variables}
        project = Project(environment, f"http://127.0.0.1:{port}")
        with tagged(image, stack_image(environment)):
            try:
                project.up()
                yield project
            finally:
                project.compose("down", "--volumes", "--remove-orphans")
