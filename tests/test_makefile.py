"""The Makefile's answers to a learner's mistakes: a wrong variable stops it first with one line naming the fix,
`make clean` takes no for an answer, and an engine that refuses the user says why."""

import os
import subprocess
import uuid

import pytest
from conftest import REPOSITORY, copy_repository, free_port
from project import VARIANTS

# What a `make test` run hands down to its children; a learner's shell has none of it.
INHERITED = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "IMAGE", "VARIANT", "WEB_PORT"}


def make(*arguments, answer=None, env=None, cwd=REPOSITORY):
    env = {name: value for name, value in (env or os.environ).items() if name not in INHERITED}
    return subprocess.run(["make", "--no-print-directory", *arguments], cwd=cwd, input=answer,
                          capture_output=True, text=True, timeout=60, env=env)


def one_line_error(result):
    """The one line that names the fix; make may add its own `*** ... Error 1` after it."""
    assert result.returncode != 0, result.stdout
    line, *rest = result.stderr.splitlines()
    assert all(extra.startswith("make: *** ") for extra in rest), result.stderr
    return line


@pytest.mark.parametrize("variant", ["alpine", "Distroless", "slim,distroless"])
def test_a_wrong_variant_stops_make_before_anything_runs_naming_the_variants(variant):
    line = one_line_error(make("-n", "up", f"VARIANT={variant}"))
    assert f"VARIANT={variant} is not a variant" in line and " ".join(VARIANTS) in line


@pytest.mark.parametrize("port", ["abc", "0", "70000", "80 81"])
def test_a_web_port_that_is_not_a_port_number_says_so(port):
    line = one_line_error(make("-n", "up", f"WEB_PORT={port}"))
    assert f"WEB_PORT={port} is not a port number" in line and "WEB_PORT=8081" in line


def test_every_variant_and_a_free_port_pass_the_checks():
    for variant in VARIANTS:
        assert make("-n", "up", f"VARIANT={variant}", "WEB_PORT=8081").returncode == 0


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` first on PATH that records its arguments, as the engine's CLI would receive them."""
    calls = tmp_path / "calls"
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    script.chmod(0o755)
    return {"env": {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, "calls": calls}


@pytest.mark.parametrize("answer", ["n\n", "\n", "no\n", "N\n"])
def test_clean_answered_no_deletes_nothing_and_succeeds(fake_docker, answer):
    result = make("clean", "COMPOSE=docker compose", answer=answer, env=fake_docker["env"])
    assert result.returncode == 0 and result.stdout.rstrip().endswith("[y/N] nothing deleted"), result.stderr
    assert "down" not in fake_docker["calls"].read_text()  # only check-engine's `info` and `compose version`


@pytest.mark.parametrize("answer", ["y\n", "Y\n", "yes\n"])
def test_clean_answered_yes_takes_the_stack_down_with_its_volume(fake_docker, answer):
    result = make("clean", "COMPOSE=docker compose", answer=answer, env=fake_docker["env"])
    assert result.returncode == 0, result.stderr
    assert "compose down --volumes --remove-orphans" in fake_docker["calls"].read_text()


def test_permission_denied_on_the_engine_socket_names_the_docker_group_and_its_risk(tmp_path):
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\necho 'permission denied while trying to connect to the Docker daemon socket at "
                      "unix:///var/run/docker.sock' >&2\nexit 1\n")
    script.chmod(0o755)
    line = one_line_error(make("check-engine", env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}))
    assert "permission denied" in line and "docker group" in line and "root" in line


@pytest.mark.docker
def test_up_without_the_password_beside_an_existing_volume_stops_before_creating_or_starting_anything(
        tmp_path, docker_client):
    # A fresh clone (secrets/ is ignored by git) of a project whose db_data volume is still there.
    copy = copy_repository(tmp_path)
    project = f"notes-test-lost-secret-{uuid.uuid4().hex[:8]}"
    volume = docker_client.volumes.create(f"{project}_db_data", labels={
        "com.docker.compose.project": project, "com.docker.compose.volume": "db_data"})
    try:
        environment = {**os.environ, "COMPOSE_PROJECT_NAME": project}
        line = one_line_error(make("up", f"WEB_PORT={free_port()}", env=environment, cwd=copy))
        assert "is missing, but volume db_data" in line and "put the old file back" in line and "make clean" in line
        assert not (copy / "secrets" / "db_password.txt").exists()
        assert docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}) == []
    finally:
        volume.remove()

