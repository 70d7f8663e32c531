"""`make rename NAME=...` (rename.py) on a copy of the repository, as a team starting from the template runs
it: every place that carries the project's name takes the new one in one step, and the fast checks stay green."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import copy_repository, one_line_error
from containers import learner_environment
from project import DEFAULT_VARIANT, IMAGE, render

RENAMED = "acme-api"


def make(copy, *arguments, check=True):
    # As a team runs it, not with the IMAGE that `make test` exports to its children.
    return subprocess.run(["make", "--no-print-directory", *arguments], cwd=copy, capture_output=True, text=True,
                          check=check, env=learner_environment())


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    copy = copy_repository(tmp_path_factory.mktemp("renamed"))
    make(copy, "rename", f"NAME={RENAMED}")
    return copy


def test_rename_leaves_the_old_image_name_nowhere_but_in_its_own_account_of_it(renamed):
    left = [f"{path.relative_to(renamed)}:{number}" for path in sorted(renamed.rglob("*"))
            if path.is_file() and path.suffix not in {".pyc"} and path.name != "rename.py"
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if IMAGE in line]
    assert left == []


def test_rename_names_the_image_labels_help_compose_project_namespace_and_database_clients(renamed):
    build = make(renamed, "-n", "build").stdout
    assert f"-t {RENAMED}:{DEFAULT_VARIANT}" in build and IMAGE not in build
    assert f"{RENAMED}:{DEFAULT_VARIANT}" in make(renamed, "help").stdout
    for dockerfile in renamed.glob("Dockerfile*"):
        assert f'org.opencontainers.image.title="{RENAMED}"' in dockerfile.read_text(), dockerfile.name
    config = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=renamed, capture_output=True,
                            text=True, check=True, env=learner_environment()).stdout
    assert json.loads(config)["name"] == RENAMED
    manifests = [doc for doc in yaml.safe_load_all(render(DEFAULT_VARIANT, root=renamed)) if doc]
    assert {doc["metadata"]["name"] if doc["kind"] == "Namespace" else doc["metadata"]["namespace"]
            for doc in manifests} == {RENAMED}
    assert {doc["metadata"]["labels"]["app.kubernetes.io/part-of"] for doc in manifests} == {RENAMED}
    # What web tells PostgreSQL it is (pg_stat_activity.application_name); migrate adds "-migrate" to it.
    told = subprocess.run([sys.executable, "-c", "import app; print(app.APPLICATION_NAME)"], cwd=renamed,
                          capture_output=True, text=True, check=True).stdout
    assert told == f"{RENAMED}\n"


@pytest.mark.parametrize("name", ["", "Acme", "acme_api", "-acme", "acme api"])
def test_rename_refuses_a_name_docker_or_kubernetes_would_refuse_naming_an_example(tmp_path, name):
    copy = copy_repository(tmp_path / "copy")
    line = one_line_error(make(copy, "rename", f"NAME={name}", check=False))
    assert "NAME" in line and "make rename NAME=acme-api" in line
    unchanged = subprocess.run(["diff", "-r", "-q", copy, copy_repository(tmp_path / "original")], capture_output=True)
    assert unchanged.returncode == 0, unchanged.stdout


@pytest.mark.nested
def test_the_readmes_template_rename_keeps_the_fast_checks_green(renamed):
    # The instruments' agreement and manifest checks too, while proof/ is there, as `make test` runs them.
    instruments = [f"proof/tests/{name}" for name in ("test_project.py", "test_k8s_policies.py")
                   if (renamed / "proof").is_dir()]
    fast = [
        # Everything about the manifests but running them, and the places that must agree.
        ["tests/test_k8s.py", *instruments, "-m", "not docker and not nested"],
        # What `docker compose config` makes of compose.yaml: needs the CLI, not an engine.
        ["tests/test_compose.py", "-k", "read_only or dockerfile or graceful"],
    ]
    for selection in fast:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                                cwd=renamed, capture_output=True, text=True, timeout=600, env=learner_environment())
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert " passed" in result.stdout, result.stdout[-2000:]
