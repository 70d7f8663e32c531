"""The Makefile's answers to a learner's mistakes: a wrong variable stops it first with one line naming the fix,
`make clean` takes no for an answer, and an engine that refuses the user says why."""

import os
import signal
import subprocess
import time
import uuid

import pytest
from conftest import REPOSITORY, copy_repository, free_port, one_line_error, wait_until
from containers import learner_environment
from project import BASE_VARIABLES, DEFAULT_VARIANT, IMAGE, VARIANTS


def make(*arguments, answer=None, env=None, cwd=REPOSITORY, timeout=60):
    return subprocess.run(["make", "--no-print-directory", *arguments], cwd=cwd, input=answer,
                          capture_output=True, text=True, timeout=timeout, env=learner_environment(env))


@pytest.mark.parametrize("variant", ["alpine", "Distroless", "slim,distroless"])
def test_a_wrong_variant_stops_make_before_anything_runs_naming_the_variants(variant):
    line = one_line_error(make("-n", "up", f"VARIANT={variant}"))
    assert f"VARIANT={variant} is not a variant" in line and " ".join(VARIANTS) in line


@pytest.mark.parametrize("port", ["abc", "0", "70000", "80 81"])
def test_a_web_port_that_is_not_a_port_number_says_so(port):
    line = one_line_error(make("-n", "up", f"WEB_PORT={port}"))
    assert f"WEB_PORT={port} is not a port number" in line and "WEB_PORT=8081" in line


@pytest.mark.parametrize("port", ["abc", "0", "70000"])
def test_a_prometheus_port_that_is_not_a_port_number_says_so(port):
    line = one_line_error(make("-n", "up", f"PROMETHEUS_PORT={port}"))
    assert f"PROMETHEUS_PORT={port} is not a port number" in line and "PROMETHEUS_PORT=9091" in line


def test_help_lists_the_everyday_targets_first_then_every_other():
    listed = [line.split()[1] for line in make("help").stdout.splitlines() if line.strip()]
    everyday = ["up", "down", "logs", "ps", "watch", "psql", "backup"]
    assert listed[:len(everyday)] == everyday
    assert {"build", "test", "clean", "restore", "rename", "help"} <= set(listed[len(everyday):])
    assert len(listed) == len(set(listed))


def test_restore_without_a_file_stops_make_before_anything_runs_naming_an_archive(tmp_path):
    archive = tmp_path / "notes-20261203T101500Z.dump"
    archive.touch()
    line = one_line_error(make("-n", "restore", f"BACKUP_DIR={tmp_path}"))
    assert f"FILE is not set: name the archive to restore, e.g. make restore FILE={archive}" in line


def test_every_variant_and_a_free_port_pass_the_checks():
    for variant in VARIANTS:
        assert make("-n", "up", f"VARIANT={variant}", "WEB_PORT=8081").returncode == 0


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` first on PATH that records its arguments, as the engine's CLI would receive them, lists the tags
    written to `tags` and names the Compose project `mine`."""
    calls, tags = tmp_path / "calls", tmp_path / "tags"
    tags.touch()
    script = tmp_path / "docker"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
  "image ls"*) cat {tags} ;;
  "compose config --format json") echo '{{"name": "mine"}}' ;;
esac
""")
    script.chmod(0o755)
    return {"env": {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, "calls": calls, "tags": tags}


def removed_tags(calls):
    return {tag for line in calls.read_text().splitlines() if line.startswith("image rm ") for tag in line.split()[2:]}


OLD, NEW = "1" * 40, "2" * 40


def test_build_keeps_one_revision_tag_per_variant_and_no_stacks_tag(fake_docker):
    fake_docker["tags"].write_text("".join(f"{IMAGE}:{tag}\n" for tag in [
        *VARIANTS, *(f"{v}-{OLD}" for v in VARIANTS), f"{DEFAULT_VARIANT}-{OLD}-dirty", f"{DEFAULT_VARIANT}-mine"]))
    result = make("build", f"REVISION={NEW}", "DIRTY=", env=fake_docker["env"])
    assert result.returncode == 0, result.stderr
    assert removed_tags(fake_docker["calls"]) == {
        *(f"{IMAGE}:{v}-{OLD}" for v in VARIANTS), f"{IMAGE}:{DEFAULT_VARIANT}-{OLD}-dirty"}


def test_build_from_uncommitted_changes_tags_the_revision_dirty(fake_docker, tmp_path):
    copy = copy_repository(tmp_path / "copy")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=copy, check=True)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=copy, capture_output=True, text=True).stdout.strip()
    builds = {}
    for state in ("clean", "dirty"):
        make("build", env=fake_docker["env"], cwd=copy)
        builds[state] = [line for line in fake_docker["calls"].read_text().splitlines() if line.startswith("build ")]
        fake_docker["calls"].write_text("")
        (copy / "app.py").write_text((copy / "app.py").read_text() + "# an uncommitted change\n")
    assert all(f"-t {IMAGE}:{v}-{revision} " in " ".join(builds["clean"]) for v in VARIANTS)
    assert all(f"-t {IMAGE}:{v}-{revision}-dirty " in " ".join(builds["dirty"]) for v in VARIANTS)


def test_clean_deletes_this_stacks_and_make_builds_tags_and_no_other_stacks(fake_docker):
    fake_docker["tags"].write_text("".join(f"{IMAGE}:{tag}\n" for tag in [
        *VARIANTS, *(f"{v}-{OLD}" for v in VARIANTS), *(f"{v}-mine" for v in VARIANTS),
        f"{DEFAULT_VARIANT}-other", f"{DEFAULT_VARIANT}-mine-2", f"{DEFAULT_VARIANT}-extra"]))
    result = make("clean", "FORCE=1", env=fake_docker["env"])
    assert result.returncode == 0, result.stderr
    assert removed_tags(fake_docker["calls"]) == {
        f"{IMAGE}:{tag}" for v in VARIANTS for tag in (v, f"{v}-{OLD}", f"{v}-mine")}


@pytest.mark.parametrize("answer", ["n\n", "\n", "no\n", "N\n"])
def test_clean_answered_no_deletes_nothing_and_succeeds(fake_docker, answer):
    result = make("clean", "COMPOSE=docker compose", answer=answer, env=fake_docker["env"])
    assert result.returncode == 0 and result.stdout.rstrip().endswith("[y/N] nothing deleted"), result.stderr
    assert "down" not in fake_docker["calls"].read_text()  # only check-engine's `info` and `compose version`


@pytest.mark.parametrize("answer", ["y\n", "Y\n", "yes\n"])
def test_clean_answered_yes_takes_the_stack_down_with_its_volume(fake_docker, answer):
    result = make("clean", "COMPOSE=docker compose", answer=answer, env=fake_docker["env"])
    assert result.returncode == 0, result.stderr
    assert "down --volumes --remove-orphans" in fake_docker["calls"].read_text()


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



# ---------------------------------------------------------------------------------------------- a stack of its own


@pytest.mark.docker
def test_up_where_no_registry_gives_the_images_names_the_setup_step_in_one_line(own_stack):
    # A fresh clone (no .ci/airgap.mk: git ignores it) on a machine where no registry answers: names in the
    # reserved .invalid domain fail to pull anywhere, as every name does there.
    copy, env, arguments = own_stack
    unreachable = [f"{name}=registry.invalid/{name.lower()}:1" for name in BASE_VARIABLES]
    result = make("up", *arguments, *unreachable, env=env, cwd=copy, timeout=120)
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "bash .ci/run --setup-only" in line and "registry.invalid/postgres_image:1" in line, result.stderr


def container(docker_client, env, service):
    # By its name: while Compose replaces a container, the old one is still there under another.
    return docker_client.containers.get(f"{env['COMPOSE_PROJECT_NAME']}-{service}-1")


def schema_version(docker_client, env):
    command = ["psql", "--username=notes", "--dbname=notes", "-tAc", "SELECT max(version) FROM schema_migrations"]
    result = container(docker_client, env, "db").exec_run(command)
    assert result.exit_code == 0, result.output
    return int(result.output)


def add_migration(copy):
    app = copy / "app.py"
    text = app.read_text()
    end = text.index("\n)\n", text.index("MIGRATIONS = ("))
    app.write_text(text[:end] + '\n    "CREATE TABLE added_under_watch (id integer)",' + text[end:])


@pytest.mark.docker
def test_watch_keeps_the_variant_applies_a_new_migration_and_ctrl_c_leaves_the_stack_running(
        own_stack, docker_client, tmp_path):
    copy, env, arguments = own_stack
    variant = VARIANTS[-1]  # not the default, which an unset VARIANT would give as well
    output = tmp_path / "watch.log"
    with output.open("w") as log:
        # Its own session, as a terminal's foreground job: Ctrl-C signals make and Compose alike.
        watch = subprocess.Popen(["make", "--no-print-directory", "watch", f"VARIANT={variant}", *arguments],
                                 cwd=copy, env=learner_environment(env), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_until(lambda: "Ctrl-C stops watching" in output.read_text() or watch.poll() is not None,
                   timeout=300, interval=1, what="make watch to start watching", explain=output.read_text)
        assert watch.poll() is None, output.read_text()
        web, version = container(docker_client, env, "web").id, schema_version(docker_client, env)
        time.sleep(2)  # Compose's watcher settles before the first change
        add_migration(copy)

        def rebuilt_and_migrated():
            now = container(docker_client, env, "web")
            health = now.attrs["State"].get("Health", {}).get("Status")
            return now.id != web and health == "healthy" and schema_version(docker_client, env) == version + 1

        wait_until(rebuilt_and_migrated, timeout=240, interval=1, what="web rebuilt and the new migration applied",
                   explain=output.read_text)
        stack_tag = f"{IMAGE}-test-make:{variant}-{env['COMPOSE_PROJECT_NAME']}"
        assert container(docker_client, env, "web").image.tags == [stack_tag]
        os.killpg(watch.pid, signal.SIGINT)
        watch.wait(timeout=60)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
    said = output.read_text()
    assert "make: ***" not in said and said.rstrip().endswith("the stack is still up (make down stops it)"), said
    assert container(docker_client, env, "web").status == "running"
    assert container(docker_client, env, "db").status == "running"


@pytest.mark.docker
def test_up_that_fails_shows_the_failing_services_last_lines_and_a_refused_password_at_once(
        own_stack, docker_client):
    copy, env, arguments = own_stack
    first = make("up", *arguments, env=env, cwd=copy, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    # The password changed after Postgres initialised db_data with the old one, which it keeps.
    (copy / "secrets" / "db_password.txt").write_text("a-new-password\n")
    second = make("up", *arguments, env=env, cwd=copy, timeout=120)
    assert second.returncode != 0
    shown = second.stderr
    assert "--- migrate is Exited (1)" in shown and "its last lines" in shown, shown
    assert "it refused the password" in shown and "password authentication failed" in shown, shown
    assert "--- web" not in shown and "--- db" not in shown  # both still healthy
