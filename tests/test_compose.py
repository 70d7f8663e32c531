"""compose.yaml, run for real once per image variant: the stack comes up healthy, reaches db by its service name,
publishes web on loopback only, and keeps its notes in the named volume until `down -v`. Then the same volume
lesson without Compose, with testcontainers alone.

Every stack gets its own Compose project, published port and throwaway password file, so a run never touches a
developer's stack or secrets/. The tests talk to containers only through ports published on 127.0.0.1.
"""

import contextlib
import os
import re
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath

import containers
import docker
import pytest
import requests
import yaml
from conftest import GRACEFUL_TIMEOUT, REPOSITORY, VARIANTS, free_port
from manifests import parse_quantity
from project import DEFAULT_VARIANT, IMAGE, MIGRATE, dockerfile
from requests.adapters import HTTPAdapter
from testcontainers.compose import DockerCompose
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import HttpWaitStrategy
from urllib3.util import Retry

pytestmark = pytest.mark.docker

TEST_LABEL = {"notes.tests": "test_compose"}
# web answers 503 while it has no database connection, and each gunicorn worker reconnects on its own schedule:
# like any client of the service, these tests try a 503 again (at once, then after 0.5 s, 1 s, 2 s ... 31 s in all).
# POST too: the tests compare sets of texts, which a note stored twice would not change.
http = requests.Session()
http.mount("http://", HTTPAdapter(max_retries=Retry(total=7, backoff_factor=0.25, status_forcelist=[503],
                                                    allowed_methods=None)))


# ---------------------------------------------------------------------------------------------- fixtures


def use_compose_project(env, image, password_file, port=None):
    """Points `docker compose` (and make) in this process at a project of its own running `image`."""
    for name, value in containers.compose_environment(image, password_file, port or free_port()).items():
        env.setenv(name, value)


@dataclass
class ComposeStack:
    compose: DockerCompose
    variant: str
    port: int

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def run(self, *arguments):
        """A `docker compose` command for this stack's project, e.g. stack.run("down")."""
        subprocess.run([*self.compose.docker_compose_command(), *arguments], cwd=REPOSITORY, check=True)

    def container(self, docker_client, service):
        return docker_client.containers.get(self.compose.get_container(service, include_all=True).ID)


@pytest.fixture(scope="module", params=VARIANTS)
def stack(request, images, tmp_path_factory):
    """The whole stack of one variant, up and healthy (`up --wait`); `down --volumes` at the end."""
    variant = request.param
    port = free_port()
    password_file = containers.write_password_file(tmp_path_factory.mktemp(f"compose-{variant}"))
    with pytest.MonkeyPatch.context() as env:
        use_compose_project(env, images[variant], password_file, port)
        tag = containers.stack_image(os.environ)
        with containers.tagged(images[variant], tag), DockerCompose(REPOSITORY) as compose:
            yield ComposeStack(compose, variant, port)


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture
def config(variant, tmp_path, monkeypatch):
    """`docker compose config` as JSON, for one variant: the model Compose will run, after interpolation."""
    use_compose_project(monkeypatch, f"{IMAGE}:{variant}", containers.write_password_file(tmp_path))
    return DockerCompose(REPOSITORY).get_config()


def add_note(url, text):
    response = http.post(f"{url}/api/notes", json={"text": text}, timeout=5)
    assert response.status_code == 201, response.text
    return text


def note_texts(url):
    response = http.get(f"{url}/api/notes", params={"limit": 100}, timeout=5)
    response.raise_for_status()
    return {note["text"] for note in response.json()["notes"]}


def seconds(duration):
    """A Compose duration as `config` prints it, e.g. 1m0s or 30s."""
    minutes, secs = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration).groups()
    return int(minutes or 0) * 60 + int(secs or 0)


# ---------------------------------------------------------------------------------------------- the configuration


def test_every_service_runs_read_only_without_capabilities_or_privilege_gain_and_within_limits(config):
    assert set(config["services"]) == {"db", "migrate", "web"}
    for name in config["services"]:
        service = config["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        limits = service["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and int(limits["memory"]) > 0 and int(limits["pids"]) > 0, name


def test_prometheus_runs_only_with_its_profile_hardened_and_published_on_loopback_only(tmp_path, monkeypatch):
    use_compose_project(monkeypatch, f"{IMAGE}:{DEFAULT_VARIANT}", containers.write_password_file(tmp_path))
    assert "prometheus" not in DockerCompose(REPOSITORY).get_config()["services"]
    monkeypatch.setenv("COMPOSE_PROFILES", "observability")
    prometheus = DockerCompose(REPOSITORY).get_config()["services"]["prometheus"]
    assert prometheus["read_only"] is True and prometheus["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in prometheus["security_opt"] and not prometheus["user"].startswith("0:")
    assert [(port["host_ip"], port["target"]) for port in prometheus["ports"]] == [("127.0.0.1", 9090)]


def test_db_writes_only_its_volume_and_the_paths_its_kubernetes_pod_mounts_writable(config):
    db = config["services"]["db"]
    statefulset = yaml.safe_load((REPOSITORY / "k8s" / "base" / "db-statefulset.yaml").read_text())
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    scratch = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} - {
        PurePosixPath(v["value"]).parent.as_posix() for v in container["env"] if v["name"] == "PGDATA"}
    # Docker gives every container a /dev/shm of its own, sized by shm_size; the pod mounts one.
    assert {path.split(":")[0] for path in db["tmpfs"]} | {"/dev/shm"} == scratch == {
        "/var/run/postgresql", "/tmp", "/dev/shm"}
    [shm] = [volume for volume in statefulset["spec"]["template"]["spec"]["volumes"] if volume["name"] == "shm"]
    assert int(db["shm_size"]) == parse_quantity(shm["emptyDir"]["sizeLimit"])
    assert [volume["target"] for volume in db["volumes"]] == ["/var/lib/postgresql/data"]


def test_web_and_migrate_run_the_image_built_from_the_variants_dockerfile(config, variant):
    web, migrate = config["services"]["web"], config["services"]["migrate"]
    assert web["image"] == migrate["image"] == f"{IMAGE}:{variant}-{config['name']}"
    assert web["build"]["dockerfile"] == dockerfile(variant)
    # One build: migrate runs web's image and never asks a registry for it.
    assert "build" not in migrate and migrate["pull_policy"] == "never"


def test_each_stack_tags_an_image_of_its_own_apart_from_make_builds(variant, tmp_path, monkeypatch):
    images = set()
    for _ in range(2):
        use_compose_project(monkeypatch, f"{IMAGE}:{variant}", containers.write_password_file(tmp_path))
        images.add(DockerCompose(REPOSITORY).get_config()["services"]["web"]["image"])
    assert len(images) == 2 and f"{IMAGE}:{variant}" not in images


def test_a_code_change_under_watch_rebuilds_web_and_migrate_alike(config):
    # web's rebuild makes the image migrate runs, and the same change runs migrate again, so `make watch` applies
    # a new migration before web needs it (test_makefile.py watches it live).
    web, migrate = config["services"]["web"], config["services"]["migrate"]
    assert migrate["image"] == web["image"]
    watched = {service: {(rule["action"], rule["path"]) for rule in config["services"][service]["develop"]["watch"]}
               for service in ("web", "migrate")}
    assert {("restart", path) for _, path in watched["web"]} == watched["migrate"]
    assert {action for action, _ in watched["web"]} == {"rebuild"}
    assert {path.rsplit("/", 1)[-1] for _, path in watched["web"]} >= {"app.py", "requirements.txt"}


def test_web_is_given_longer_to_stop_than_gunicorns_graceful_timeout(config):
    assert seconds(config["services"]["web"]["stop_grace_period"]) > GRACEFUL_TIMEOUT


def test_port_check_before_make_up_names_the_busy_port_and_suggests_another():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(["make", "--no-print-directory", "check-port", f"WEB_PORT={port}"],
                                cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"error: port {port} on 127.0.0.1 is in use" in result.stderr
    assert "WEB_PORT=8081" in result.stderr


def test_each_make_up_builds_the_image_once_and_leaves_no_dangling_image(own_stack, docker_client):
    copy, env, arguments = own_stack
    project = {"label": f"com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"}

    def dangling():
        return {image.id for image in docker_client.images.list(filters={"dangling": True, **project})}

    before = dangling()
    for number in range(3):
        # A code change between two ups, as a learner makes: the image it replaces must not linger as <none>.
        with (copy / "app.py").open("a") as app:
            app.write(f"# edit {number}\n")
        up = subprocess.run(["make", "--no-print-directory", "up", *arguments], cwd=copy, capture_output=True,
                            text=True, timeout=300, env=containers.learner_environment(env))
        assert up.returncode == 0, up.stdout + up.stderr
        # Compose names each build it finished: by its service with its own builder, by its image through buildx.
        built = re.findall(r"^\s*(?:Service\s+|Image\s+)?(\S+)\s+Built\s*$", up.stdout + up.stderr, re.M)
        webs = {tag for image in docker_client.images.list(filters={"label": [
            project["label"], "com.docker.compose.service=web"]}) for tag in image.tags}
        assert len(built) == 1 and built[0] in {"web"} | webs, up.stdout + up.stderr
    assert dangling() - before == set()
    labelled = docker_client.images.list(all=True, filters=project)
    assert {image.labels["com.docker.compose.service"] for image in labelled} == {"web"}


def test_port_check_names_a_busy_prometheus_port_only_when_prometheus_runs():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        check = ["make", "--no-print-directory", "check-port", f"PROMETHEUS_PORT={port}"]
        alone = subprocess.run(check, cwd=REPOSITORY, capture_output=True, text=True)
        observing = subprocess.run([*check, "COMPOSE_PROFILES=observability"], cwd=REPOSITORY, capture_output=True,
                                   text=True)
    assert alone.returncode == 0, alone.stderr
    assert observing.returncode != 0
    assert f"error: port {port} on 127.0.0.1 is in use" in observing.stderr
    assert "PROMETHEUS_PORT=9091" in observing.stderr


# ---------------------------------------------------------------------------------------------- the running stack


def test_stack_comes_up_with_db_and_web_healthy_after_migrate_exits_0(stack):
    containers = {container.Service: container for container in stack.compose.get_containers(include_all=True)}
    assert containers["db"].Health == "healthy"
    assert containers["web"].Health == "healthy"
    assert (containers["migrate"].State, containers["migrate"].ExitCode) == ("exited", 0)


def test_migrates_log_stays_readable_after_its_container_exits(stack):
    stdout, _ = stack.compose.get_logs("migrate")
    assert re.search(r"migrated the schema to version \d+|the schema is already up to date", stdout), stdout


def test_root_greets_with_the_name_set_in_compose(stack):
    response = http.get(stack.url, timeout=5)
    assert response.status_code == 200
    assert response.text == "Hello, Compose!"


def test_web_reaches_db_by_its_service_name(stack, docker_client):
    # What web itself resolves DATABASE_URL's host to, from inside its container.
    stdout, _, exit_code = stack.compose.exec_in_container(
        ["python", "-c", "import os, socket, urllib.parse;"
                         "host = urllib.parse.urlsplit(os.environ['DATABASE_URL']).hostname;"
                         "print(host, socket.gethostbyname(host))"],
        "web",
    )
    assert exit_code == 0
    (network,) = stack.container(docker_client, "db").attrs["NetworkSettings"]["Networks"].values()
    assert stdout.split() == ["db", network["IPAddress"]]
    assert http.get(f"{stack.url}/readyz", timeout=5).json() == {"status": "ready"}


def test_web_is_published_on_loopback_only_its_metrics_port_and_db_not_at_all(stack, docker_client):
    web = stack.container(docker_client, "web")
    assert web.ports.pop("8000/tcp") == [{"HostIp": "127.0.0.1", "HostPort": str(stack.port)}]
    assert web.ports == {"9000/tcp": None}  # Prometheus reaches it on the project network
    assert all(binding is None for binding in stack.container(docker_client, "db").ports.values())
    # The gateway is this host's own address on the project network, and not loopback: nothing answers there.
    (network,) = web.attrs["NetworkSettings"]["Networks"].values()
    gateway = network["Gateway"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((gateway, stack.port), timeout=5).close()


def test_make_debug_opens_a_shell_beside_web_that_sees_its_files(stack):
    # The distroless web has no shell of its own; `make debug` brings one in another container.
    result = subprocess.run(["make", "--no-print-directory", "-s", "debug"], input="ls /proc/1/root/app\n",
                            cwd=REPOSITORY, capture_output=True, text=True, check=True)
    assert {"app.py", "gunicorn.conf.py"} <= set(result.stdout.split())


def test_notes_survive_down_and_up(stack):
    text = add_note(stack.url, f"kept across down and up ({stack.variant})")
    stack.run("down")
    stack.compose.start()
    assert text in note_texts(stack.url)


def test_notes_survive_replacing_the_db_container(stack, docker_client):
    text = add_note(stack.url, f"kept across a new db container ({stack.variant})")
    before = stack.container(docker_client, "db").id
    stack.run("up", "--wait", "--force-recreate", "db")
    assert stack.container(docker_client, "db").id != before
    assert text in note_texts(stack.url)


def test_down_with_volumes_deletes_the_notes(stack):
    add_note(stack.url, f"deleted with the volume ({stack.variant})")
    stack.run("down", "--volumes")
    stack.compose.start()
    assert note_texts(stack.url) == set()


# ---------------------------------------------------------------------------------------------- without Compose

DB_PASSWORD = "compose-free-test-password"


@pytest.fixture
def network():
    with Network(docker_network_kw={"labels": TEST_LABEL}) as created:
        yield created


@pytest.fixture
def db_volume(docker_client):
    volume = docker_client.volumes.create(f"notes-test-db-data-{uuid.uuid4().hex[:8]}", labels=TEST_LABEL)
    yield volume.name
    volume.remove()


@pytest.fixture
def start_db(network, db_volume):
    """Starts Postgres on the named volume as `db` on the network; removes what is still running at the end."""
    started = []

    def start():
        container = containers.postgres(network, published=False, password=DB_PASSWORD, labels=TEST_LABEL)
        container.with_volume_mapping(db_volume, "/var/lib/postgresql/data", "rw")
        started.append(container.start())
        return container

    yield start
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):  # already removed by the test
            container.stop()


def replace(container, start):
    """Stops the container as `docker stop` would (a clean shutdown), removes it, and starts its successor."""
    container.get_wrapped_container().stop(timeout=30)
    container.stop()
    return start()


def test_named_volume_keeps_every_note_when_a_new_postgres_container_takes_it_over(images, network, start_db):
    db = start_db()
    web = DockerContainer(images["slim"]).with_network(network).with_kwargs(labels=TEST_LABEL)
    web.with_envs(DATABASE_URL="postgresql://notes@db:5432/notes", DATABASE_PASSWORD=DB_PASSWORD)
    web.ports["8000"] = ("127.0.0.1", free_port())
    # Live, not ready: readiness waits for the schema, which the migration below creates.
    with web.waiting_for(HttpWaitStrategy(8000, "/healthz")):
        assert web.exec(MIGRATE).exit_code == 0
        url = f"http://127.0.0.1:{web.get_exposed_port(8000)}"
        texts = {add_note(url, f"note {number} before the new container") for number in range(5)}

        replace(db, start_db)

        assert note_texts(url) == texts
