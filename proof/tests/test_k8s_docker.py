"""The rendered pods run under Docker: each workload's pod spec turned into `docker run` options (proof/kube.py's
docker_run), checked option by option, then run for real: db starts, web's migrate init container runs, web answers
its probes."""

import subprocess
import uuid

import pytest
import requests
from manifests import config_data, find, named, pod_template, workloads
from project import DATABASE_URL, IMAGE, POSTGRES_IMAGE, make_default
from project import MIGRATE as MIGRATE_COMMAND
from waits import wait_until

from proof.kube import docker_run, host_path, option_values

# ---------------------------------------------------------------------------------------------------------
# Running a rendered pod spec's container under Docker, for the smoke test


def test_docker_run_reproduces_the_web_pods_hardening_and_configuration(manifests, overlay, tmp_path):
    run = docker_run(manifests, find(manifests, "Deployment", "web"), tmp_path)
    assert run.image == f"{IMAGE}:{overlay}"
    assert run.args == []
    assert option_values(run.options, "--user") == ["65532:65532"]
    assert option_values(run.options, "--group-add") == ["65532"]
    assert "--read-only" in run.options
    assert option_values(run.options, "--cap-drop") == ["ALL"]
    assert option_values(run.options, "--cap-add") == []
    assert option_values(run.options, "--security-opt") == ["no-new-privileges"]
    assert option_values(run.options, "--tmpfs") == [f"/tmp:mode=1777,size={16 * 2**20}"]
    assert option_values(run.options, "--memory") == [str(256 * 2**20)]
    assert option_values(run.options, "--cpus") == ["1"]
    assert option_values(run.options, "--stop-timeout") == ["30"]
    # Every value of web's ConfigMap, and the password as a file: whatever variables the ConfigMap lists.
    environment = option_values(run.options, "--env")
    assert sorted(environment) == sorted([*(f"{name}={value}" for name, value in
                                            config_data(manifests, "ConfigMap", "web").items()),
                                          "DATABASE_PASSWORD_FILE=/run/secrets/db_password"])
    assert "NAME=Kubernetes" in environment and f"DATABASE_URL={DATABASE_URL}" in environment
    argv = run.argv("--detach", "--publish", "8000:8000")
    assert argv[:5] == ["docker", "run", "--detach", "--publish", "8000:8000"]
    assert argv[-1] == f"{IMAGE}:{overlay}"


def test_docker_run_for_the_migration_replaces_the_entrypoint_with_the_migrate_command(manifests, tmp_path):
    run = docker_run(manifests, find(manifests, "Deployment", "web"), tmp_path, container_name="migrate")
    assert option_values(run.options, "--entrypoint") == [MIGRATE_COMMAND[0]]
    assert run.args == MIGRATE_COMMAND[1:]


def test_docker_run_for_the_database_keeps_pgdata_in_a_named_volume_and_scratch_in_tmpfs(manifests, tmp_path):
    run = docker_run(manifests, find(manifests, "StatefulSet", "db"), tmp_path)
    assert run.image == make_default("POSTGRES_IMAGE")
    assert option_values(run.options, "--user") == ["10999:10999"]
    mounts = option_values(run.options, "--mount")
    assert "type=volume,src=db-data,dst=/var/lib/postgresql/data" in mounts
    assert [tmpfs.split(":")[0] for tmpfs in option_values(run.options, "--tmpfs")] == [
        "/var/run/postgresql", "/tmp", "/dev/shm"]
    assert "PGDATA=/var/lib/postgresql/data/pgdata" in option_values(run.options, "--env")
    assert "POSTGRES_USER=notes" in option_values(run.options, "--env")


def test_docker_run_puts_the_secret_where_every_password_file_variable_points(manifests, tmp_path):
    password = config_data(manifests, "Secret", "db-password")["db_password"]
    for doc, _ in workloads(manifests):
        run = docker_run(manifests, doc, tmp_path / doc["metadata"]["name"])
        files = [env.split("=", 1)[1] for env in option_values(run.options, "--env")
                 if env.split("=", 1)[0].endswith("_PASSWORD_FILE")]
        assert len(files) == 1, named(doc)
        password_file = host_path(run, files[0])
        assert password_file.read_text() == password
        assert password_file.stat().st_mode & 0o004, "the container's user could not read it"


# ---------------------------------------------------------------------------------------------------------
# Smoke test: the rendered pods, run under Docker with the options derived above


def upstream_to_configured(image: str) -> str:
    """The manifests name the upstream Postgres image; a machine without a registry runs POSTGRES_IMAGE instead."""
    return POSTGRES_IMAGE if image == make_default("POSTGRES_IMAGE") else image


@pytest.mark.docker
def test_rendered_pods_run_migrate_and_answer_their_probes_under_docker(manifests, overlay, images, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    network, volume = f"k8s-smoke-{suffix}", f"k8s-smoke-db-data-{suffix}"
    started: list[str] = []

    def run(workload: dict, *extra: str, container: str | None = None, detach: bool = True):
        derived = docker_run(manifests, workload, tmp_path / workload["metadata"]["name"], container)
        options = [option.replace("src=db-data,", f"src={volume},") for option in derived.options]
        name = f"{network}-{container or workload['metadata']['name']}"
        argv = ["docker", "run", "--name", name, "--network", network, *extra, *options,
                upstream_to_configured(derived.image), *derived.args]
        if detach:
            argv.insert(2, "--detach")
        started.append(name)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    try:
        db = run(find(manifests, "StatefulSet", "db"), "--network-alias", "db")
        assert db.returncode == 0, db.stderr
        # The init container's command waits for the database to accept connections (migrate --wait), as in a pod.
        web_deployment = find(manifests, "Deployment", "web")
        migrate = run(web_deployment, container="migrate", detach=False)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        web = run(web_deployment, "--publish", "127.0.0.1::8000")
        assert web.returncode == 0, web.stderr
        port = subprocess.run(["docker", "port", started[-1], "8000/tcp"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()
        [container] = pod_template(web_deployment)["spec"]["containers"]
        probes = {kind: container[kind]["httpGet"]["path"]
                  for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        answers: dict = {}

        def probes_answer_200():
            try:
                answers.update({kind: requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
                                for kind, path in probes.items()})
            except requests.ConnectionError:
                return False
            return answers == dict.fromkeys(probes, 200)

        wait_until(probes_answer_200, timeout=30, interval=0.2, explain=lambda: str(answers))
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", *started], capture_output=True)
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
