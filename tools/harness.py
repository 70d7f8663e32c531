"""What the tools and the tests share: containers (Postgres, the web image, a Compose project), waits, builds,
and a load that records outcomes.

A stack is what compose.yaml runs, made with testcontainers so that each run owns its containers: Postgres on a
network of its own under the alias `db`, the schema migrated by the web image itself, and web started with
compose.yaml's restrictions. Web is published on a fixed 127.0.0.1 port, so that it keeps it across a restart.
"""

import io
import itertools
import json
import os
import platform
import re
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from project import BASE_VARIABLES, DATABASE_URL, DEFAULT_VARIANT, MIGRATE, POSTGRES_IMAGE, ROOT

# Ryuk, testcontainers' clean-up container, cannot be pulled here; every container below is removed by its `with`.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TC_HOST", "127.0.0.1")

# Imported after the settings above, which testcontainers reads when it is imported.
from testcontainers.community.postgres import PostgresContainer  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.network import Network  # noqa: E402

# `docker ps --filter label=notes.bench` finds what a run left behind, if it was killed before its clean-up.
LABEL = {"notes.bench": "harness"}
DB_PASSWORD = uuid.uuid4().hex
DATABASE_ENV = {"DATABASE_URL": DATABASE_URL, "DATABASE_PASSWORD": DB_PASSWORD}
# compose.yaml's restrictions on web: a drill must find what production would, not what a laxer container would.
RESTRICTIONS = {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "labels": LABEL}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout, what="the condition", interval=0.05, explain=None):
    """Polls `condition` until it returns a true value, which it returns; a refused connection counts as false.

    After `timeout` seconds it raises TimeoutError naming `what`, with what `explain()` says (a container's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := condition():
                return result
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s" + (f"; {explain()}" if explain else ""))


def tcp_states():
    """(local port, remote port, state) of every IPv4 and IPv6 TCP socket on this host, from /proc/net."""
    rows = []
    for table in ("tcp", "tcp6"):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state))
    return rows


TIME_WAIT = "06"  # the kernel's code for the state in /proc/net/tcp


def wait_for_time_wait(limit=1000, timeout=70):
    """Waits until fewer than `limit` sockets are in TIME_WAIT (60 s each on Linux): a load phase that closes a
    connection per request leaves tens of thousands, and the next phase started among them measures a fraction of
    its rate. Returns the seconds waited."""
    start = time.monotonic()
    wait_until(lambda: sum(state == TIME_WAIT for *_, state in tcp_states()) < limit, timeout,
               f"fewer than {limit} sockets in TIME_WAIT", interval=1)
    return time.monotonic() - start


def answers(url):
    """A condition for wait_until: `url` answers 200."""
    return lambda: requests.get(url, timeout=2).status_code == 200


# ---------------------------------------------------------------------------------------------- images

# The base-image variables make exports (a mirror's, or .ci/'s stand-ins): passed on to every build.
BASE_ARGS = [arg for name in BASE_VARIABLES if name in os.environ for arg in ("--build-arg", name)]


def timed_build(context, dockerfile, tag, *extra, timeout=600):
    """`docker build` of the folder `context` with its `dockerfile`; returns the seconds it took and the image id."""
    start = time.monotonic()
    image_id = subprocess.run(
        ["docker", "build", "--quiet", "--file", str(context / dockerfile), "--tag", tag, *BASE_ARGS, *extra,
         str(context)], check=True, capture_output=True, text=True, timeout=timeout).stdout.strip()
    return time.monotonic() - start, image_id


def cold_and_rebuild(context, dockerfile, tag, timeout=600):
    """The two build times a developer meets: cold (--no-cache), then after a one-line change to app.py.

    `context` is a scratch copy, changed here; `tag` names the rebuild, and the cold image is removed."""
    cold, cold_id = timed_build(context, dockerfile, tag, "--no-cache", timeout=timeout)
    with open(context / "app.py", "a") as source:
        source.write(f"# rebuilt at {time.time()}\n")
    rebuild, rebuild_id = timed_build(context, dockerfile, tag, timeout=timeout)
    if cold_id != rebuild_id:
        subprocess.run(["docker", "image", "rm", cold_id], check=True, capture_output=True, timeout=60)
    return cold, rebuild


def exported_files(client, image):
    """Every path in the image's filesystem with its tar header (mode, owner), read from `docker export`."""
    container = client.containers.create(image)
    try:
        stream = io.BytesIO(b"".join(container.export()))
    finally:
        container.remove()
    with tarfile.open(fileobj=stream) as archive:
        return {member.name.lstrip("./"): member for member in archive.getmembers()}


def machine():
    """The machine a run's figures come from, as docs/benchmarks.md and docs/drills.md print it."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    engine = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], check=True, capture_output=True,
                            text=True, timeout=30).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} cores, {memory / 2**30:.1f} GiB, Linux {platform.release()}, "
            f"Docker Engine {engine}")


def revision():
    """The commit checked out, and whether the working tree differs from it outside docs/, which the figures of one
    run (bench, then drills) change without changing what they measure."""
    def git(*arguments):
        return subprocess.run(["git", *arguments], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if git("status", "--porcelain", "--", ".", ":!docs") else "")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


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

    `database(network)` makes the db container: harness.postgres, or a drill's variation of it."""
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


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request started
    done: float
    status: int | None  # None: no HTTP response at all (refused, reset, timed out)
    body: str
    text: str | None  # the note a POST sent


@dataclass
class Load:
    """Threads that each send one request after another until the `with` block ends, recording every outcome.

    Each thread creates notes with unique texts (POST /api/notes); with `reads`, it alternates them with
    GET /api/notes, so that both the write and the read path meet whatever the drill does to the stack.
    """

    url: str
    threads: int = 4
    reads: bool = False
    timeout: float = 10
    outcomes: list = field(default_factory=list)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __enter__(self):
        self._stopping = threading.Event()
        self._workers = [threading.Thread(target=self._send, args=(number,)) for number in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        for worker in self._workers:
            worker.join()

    def _send(self, thread):
        session = requests.Session()
        for count in itertools.count():
            if self._stopping.is_set():
                return
            text = None
            sent = time.monotonic()
            try:
                if self.reads and count % 2:
                    response = session.get(f"{self.url}/api/notes", params={"limit": 5}, timeout=self.timeout)
                else:
                    text = f"load {self.run} {thread} {count}"
                    response = session.post(f"{self.url}/api/notes", json={"text": text}, timeout=self.timeout)
                status, body = response.status_code, response.text
            except requests.RequestException as error:
                status, body = None, f"{type(error).__name__}: {error}"
            self.outcomes.append(Outcome(sent, time.monotonic(), status, body, text))
            if status is None:
                # A refused connection fails at once: without a pause the threads would spin, taking the CPU
                # that the containers being restarted need.
                self._stopping.wait(0.05)

    def acknowledged(self):
        """{id: text} of every note the service answered 201 for."""
        return {json.loads(o.body)["id"]: o.text for o in list(self.outcomes) if o.status == 201}

    def wait_for_acknowledged(self, count, after=0.0, timeout=30):
        """Waits until `count` notes sent after the monotonic time `after` have been acknowledged."""
        wait_until(lambda: sum(o.status == 201 and o.sent >= after for o in list(self.outcomes)) >= count,
                   timeout, f"{count} acknowledged notes")


def every_note(url):
    """Every note the service returns, page by page, as a list of its JSON objects, newest first."""
    notes, before = [], None
    while True:
        params = {"limit": 100} | ({"before": before} if before else {})
        page = requests.get(f"{url}/api/notes", params=params, timeout=10)
        page.raise_for_status()
        notes += page.json()["notes"]
        before = page.json()["next"]
        if before is None:
            return notes


def stored_notes(url):
    """{id: text} of every note the service returns."""
    return {note["id"]: note["text"] for note in every_note(url)}
