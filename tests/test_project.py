"""The places that must agree with tools/project.py's facts do: adding a variant or renaming the image is one
change in the Makefile plus its Dockerfile and overlay, and a test here names whatever was left behind."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPOSITORY, copy_repository, gunicorn_default, gunicorn_setting
from project import (
    BASE_VARIABLES,
    DATABASE_URL,
    DEFAULT_VARIANT,
    IMAGE,
    MIGRATE,
    VARIANTS,
    base_variable,
    dockerfile,
    make_default,
)

from app import read_metrics_port

WORKFLOW = yaml.safe_load((REPOSITORY / ".github" / "workflows" / "ci.yml").read_text())
COMPOSE_TEXT = (REPOSITORY / "compose.yaml").read_text()
K8S = REPOSITORY / "k8s"
DOCKERFILES = sorted(REPOSITORY.glob("Dockerfile*")) + sorted((REPOSITORY / "tools" / "measure").glob("*/Dockerfile"))


def k8s_base(name):
    return yaml.safe_load((K8S / "base" / name).read_text())


def containers(manifest, kind="containers"):
    return manifest["spec"]["template"]["spec"][kind]


@pytest.mark.parametrize("job", ["image", "publish"])
def test_each_ci_matrix_builds_every_variant_from_its_dockerfile(job):
    matrix = WORKFLOW["jobs"][job]["strategy"]["matrix"]
    assert matrix["variant"] == list(VARIANTS)
    assert {row["variant"]: row["dockerfile"] for row in matrix["include"]} == {v: dockerfile(v) for v in VARIANTS}


def test_every_variant_has_its_dockerfile_and_no_dockerfile_is_left_without_a_variant():
    assert {path.name for path in REPOSITORY.glob("Dockerfile*")} == {dockerfile(v) for v in VARIANTS}


def test_every_variant_has_an_overlay_that_sets_its_tag_on_the_image_and_nothing_else():
    assert {path.name for path in (K8S / "overlays").iterdir()} == set(VARIANTS)
    for variant in VARIANTS:
        overlay = yaml.safe_load((K8S / "overlays" / variant / "kustomization.yaml").read_text())
        assert overlay["images"] == [{"name": IMAGE, "newTag": variant}]


def test_the_image_name_is_the_makefiles_in_compose_k8s_and_ci():
    assert re.search(r"image: \$\{IMAGE:-([^}]+)\}:\$\{VARIANT:-([^}]+)\}", COMPOSE_TEXT).groups() == (
        IMAGE, DEFAULT_VARIANT)
    assert [c["image"] for c in containers(k8s_base("web-deployment.yaml"))] == [IMAGE]
    assert [c["image"] for c in containers(k8s_base("web-deployment.yaml"), "initContainers")] == [IMAGE]
    assert WORKFLOW["env"]["IMAGE_NAME"] == IMAGE


def test_the_compose_files_variant_picks_the_dockerfile_the_makefile_names():
    # compose.yaml: Dockerfile for an empty VARIANT (the default), Dockerfile.<VARIANT> otherwise.
    assert "dockerfile: ${VARIANT:+Dockerfile.}${VARIANT:-Dockerfile}" in COMPOSE_TEXT
    assert dockerfile(DEFAULT_VARIANT) == "Dockerfile" and all(
        dockerfile(v) == f"Dockerfile.{v}" for v in VARIANTS if v != DEFAULT_VARIANT)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_every_dockerfiles_base_image_defaults_are_the_makefiles(path):
    defaults = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", path.read_text(), re.M))
    assert defaults and defaults == {name: make_default(name) for name in defaults}
    assert set(defaults) <= set(BASE_VARIABLES)


def test_each_variant_is_labelled_with_a_base_image_that_make_passes_to_its_build():
    build_args = make_default("BUILD_ARGS")
    for variant in VARIANTS:
        assert base_variable(variant) in BASE_VARIABLES and f"--build-arg {base_variable(variant)}" in build_args


def test_the_postgres_and_prometheus_images_are_the_makefiles_in_compose_and_k8s():
    for variable in ("POSTGRES_IMAGE", "PROMETHEUS_IMAGE"):
        assert f"image: ${{{variable}:-{make_default(variable)}}}" in COMPOSE_TEXT, variable
    assert [c["image"] for c in containers(k8s_base("db-statefulset.yaml"))] == [make_default("POSTGRES_IMAGE")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_image_reports_its_own_variant_in_its_build_info(variant):
    assert re.search(r"^ENV .*\bAPP_VARIANT=(\S+)$", (REPOSITORY / dockerfile(variant)).read_text(), re.M)[1] == variant


def test_the_metrics_port_is_app_pys_in_the_images_and_prometheus_scrape_target():
    port = read_metrics_port({})
    for variant in VARIANTS:
        exposed = re.search(r"^EXPOSE (.+)$", (REPOSITORY / dockerfile(variant)).read_text(), re.M)[1].split()
        assert str(port) in exposed, variant
    scrape = yaml.safe_load((REPOSITORY / "tools" / "observe" / "prometheus.yml").read_text())
    assert [target for job in scrape["scrape_configs"] for config in job["static_configs"]
            for target in config["targets"]] == [f"web:{port}"]


def test_kubernetes_reaches_the_database_and_migrates_as_compose_does():
    literals = next(generator["literals"] for generator in k8s_base("kustomization.yaml")["configMapGenerator"]
                    if generator["name"] == "web")
    assert f"DATABASE_URL={DATABASE_URL}" in literals
    assert [c["command"] for c in containers(k8s_base("web-deployment.yaml"), "initContainers")] == [MIGRATE]


RENAMED = "acme-api"


def renamed_copy(destination):
    """The repository as a team has it after the README's rename step: a new project and image name."""
    copy = copy_repository(destination)
    targets = [copy / "compose.yaml", copy / "Makefile", copy / ".github" / "workflows" / "ci.yml",
               *(copy / "k8s").rglob("*.yaml")]
    for path in targets:
        path.write_text(path.read_text().replace(IMAGE, RENAMED))
    compose = copy / "compose.yaml"
    compose.write_text(re.sub(r"^name: .*$", "name: acme", compose.read_text(), count=1, flags=re.M))
    return copy


def test_the_readmes_template_rename_keeps_the_fast_checks_green(tmp_path):
    copy = renamed_copy(tmp_path)
    fast = [
        # Everything about the manifests but running them, and the places that must agree.
        ["tests/test_project.py", "tests/test_k8s.py", "tests/test_k8s_docker.py", "-m", "not docker", "-k",
         "not template_rename"],
        # What `docker compose config` makes of compose.yaml: needs the CLI, not an engine.
        ["tests/test_compose.py", "-k", "read_only or dockerfile or graceful"],
    ]
    # As a team runs them, not with the IMAGE that `make test` exports to its children.
    env = {name: value for name, value in os.environ.items() if name not in {"IMAGE", "MAKELEVEL", "MAKEFLAGS"}}
    for selection in fast:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                                cwd=copy, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
    build = subprocess.run(["make", "-n", "build"], cwd=copy, capture_output=True, text=True, check=True,
                           env=env).stdout
    assert f"-t {RENAMED}:slim" in build and IMAGE not in build


def test_the_bench_ceiling_runs_gunicorn_with_the_services_worker_settings():
    command = re.search(r"^CMD (\[.*?\])$", (REPOSITORY / "tools" / "measure" / "ceiling" / "Dockerfile").read_text(),
                        re.M | re.S)[1]
    options = dict(re.findall(r'"--([a-z-]+)", "([^"]+)"', command))
    assert options["workers"] == str(gunicorn_default("WEB_CONCURRENCY"))
    for option, setting in (("worker-class", "worker_class"), ("worker-connections", "worker_connections"),
                            ("keep-alive", "keepalive")):
        assert options[option] == str(gunicorn_setting(setting)), option

