"""The places that must agree with tests/project.py's facts do: adding a variant or renaming the image is one
change in the Makefile plus its Dockerfile and overlay, and a test here names whatever was left behind. The timing
promises the tests hold the service to are the ones gunicorn.conf.py and app.py set."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from containers import learner_environment
from project import (
    BASE_VARIABLES,
    BODY_TIMEOUT_SECONDS,
    DATABASE_TIMEOUT_SECONDS,
    DATABASE_URL,
    DATABASE_WAIT_SECONDS,
    DEFAULT_VARIANT,
    GRACEFUL_TIMEOUT,
    IMAGE,
    KEEPALIVE_SECONDS,
    KUBERNETES_VERSIONS,
    MIGRATE,
    VARIANTS,
    base_variable,
    copy_repository,
    dockerfile,
    gunicorn_settings,
    make_default,
)
from project import ROOT as REPOSITORY

import app
from app import DEFAULTS

WORKFLOW = yaml.safe_load((REPOSITORY / ".github" / "workflows" / "ci.yml").read_text())
COMPOSE_TEXT = (REPOSITORY / "compose.yaml").read_text()
K8S = REPOSITORY / "k8s"
DOCKERFILES = sorted(REPOSITORY.glob("Dockerfile*")) + sorted((REPOSITORY / "proof" / "bench").glob("*/Dockerfile"))


def k8s_base(name):
    return yaml.safe_load((K8S / "base" / name).read_text())


def containers(manifest, kind="containers"):
    return manifest["spec"]["template"]["spec"][kind]


@pytest.mark.parametrize("job", ["image", "publish"])
def test_each_ci_matrix_lists_every_variant(job):
    # The image job's rows also name each variant's Dockerfile: tests/test_workflow.py checks those.
    assert WORKFLOW["jobs"][job]["strategy"]["matrix"]["variant"] == list(VARIANTS)


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
def test_every_dockerfiles_base_image_defaults_are_the_whole_references_of_the_base_images_file(path):
    # The rule: an ARG default is the reference the Makefile holds, digest included once Renovate has pinned
    # it there, so that `docker build .` and CI's build, which pass no base image, build on the bytes make does.
    defaults = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", path.read_text(), re.M))
    assert defaults and defaults == {name: make_default(name) for name in defaults}
    assert set(defaults) <= set(BASE_VARIABLES)


def print_base_images(directory, env=None):
    """The four base images as make sees them in `directory`, one per line."""
    echo = " ".join(f"$({name})" for name in BASE_VARIABLES)
    result = subprocess.run(["make", "--no-print-directory", "--eval", f"print-bases: ; @echo {echo}", "print-bases"],
                            cwd=directory, capture_output=True, text=True, env=env, check=True)
    return dict(zip(BASE_VARIABLES, result.stdout.split(), strict=True))


def test_make_reads_the_base_images_from_their_one_file_and_the_environment_or_airgap_mk_still_wins(tmp_path):
    # The Makefile alone: no file it always includes, nothing else read before a target runs.
    copy, makefile = tmp_path, tmp_path / "Makefile"
    makefile.write_text((REPOSITORY / "Makefile").read_text())
    assert not re.findall(r"^include ", makefile.read_text(), re.M)
    (copy / ".ci").mkdir()
    for name in BASE_VARIABLES:
        assert len(re.findall(rf"^{name} [?:]?=", makefile.read_text(), re.M)) == 1, name
    # As a team runs make: without the values `make test` exports, nor this machine's .ci/airgap.mk.
    env = {key: value for key, value in learner_environment().items() if key not in BASE_VARIABLES}
    assert print_base_images(copy, env) == {name: make_default(name) for name in BASE_VARIABLES}
    makefile.write_text(makefile.read_text().replace(
        f"PYTHON_IMAGE ?= {make_default('PYTHON_IMAGE')}", "PYTHON_IMAGE ?= example.test/python:3.13-slim-trixie"))
    assert print_base_images(copy, env)["PYTHON_IMAGE"] == "example.test/python:3.13-slim-trixie"
    assert print_base_images(copy, {**env, "PYTHON_IMAGE": "mirror.example/python:3.13-slim-trixie"})[
        "PYTHON_IMAGE"] == "mirror.example/python:3.13-slim-trixie"
    (copy / ".ci" / "airgap.mk").write_text("POSTGRES_IMAGE ?= airgap/postgres:17-trixie\n")
    assert print_base_images(copy, env)["POSTGRES_IMAGE"] == "airgap/postgres:17-trixie"


def test_each_variant_is_labelled_with_a_base_image_that_make_passes_to_its_build():
    build_args = make_default("BUILD_ARGS")
    for variant in VARIANTS:
        assert base_variable(variant) in BASE_VARIABLES and f"--build-arg {base_variable(variant)}" in build_args


def test_the_postgres_and_prometheus_images_are_the_makefiles_in_compose_and_k8s():
    for variable in ("POSTGRES_IMAGE", "PROMETHEUS_IMAGE"):
        assert f"image: ${{{variable}:-{make_default(variable)}}}" in COMPOSE_TEXT, variable
    assert [c["image"] for c in containers(k8s_base("db-statefulset.yaml"))] == [make_default("POSTGRES_IMAGE")]
    # The backup's pg_dump is the server's own: the same image.
    backup = yaml.safe_load((K8S / "components" / "backup" / "db-backup-cronjob.yaml").read_text())
    assert [c["image"] for c in containers(backup["spec"]["jobTemplate"])] == [make_default("POSTGRES_IMAGE")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_image_reports_its_own_variant_in_its_build_info(variant):
    assert re.search(r"^ENV .*\bAPP_VARIANT=(\S+)$", (REPOSITORY / dockerfile(variant)).read_text(), re.M)[1] == variant


def test_the_metrics_port_is_app_pys_in_the_images_and_prometheus_scrape_target():
    port = int(DEFAULTS["METRICS_PORT"])
    for variant in VARIANTS:
        exposed = re.search(r"^EXPOSE (.+)$", (REPOSITORY / dockerfile(variant)).read_text(), re.M)[1].split()
        assert str(port) in exposed, variant
    scrape = yaml.safe_load((REPOSITORY / "prometheus.yml").read_text())
    assert [target for job in scrape["scrape_configs"] for config in job["static_configs"]
            for target in config["targets"]] == [f"web:{port}"]


RENOVATE = json.loads((REPOSITORY / ".github" / "renovate.json").read_text())
# Stands in for the digest Renovate resolves where a registry answers; written only into a scratch copy.
PINNED_DIGEST = "sha256:" + "0123456789abcdef" * 4


def renovate_references(root):
    """The image references the regex managers of .github/renovate.json find under `root`, matched as Renovate's
    `recursive` strategy does (each regex within the previous one's matches): [(file, reference, groups)]."""
    found = []
    for manager in RENOVATE["customManagers"]:
        assert manager["matchStringsStrategy"] == "recursive"
        files = [re.compile(pattern.strip("/")) for pattern in manager["managerFilePatterns"]]  # the /regex/ form
        regexes = [re.compile(regex.replace("(?<", "(?P<")) for regex in manager["matchStrings"]]
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.is_file() and any(pattern.search(name) for pattern in files):
                texts = [path.read_text()]
                for regex in regexes[:-1]:
                    texts = [match[0] for text in texts for match in regex.finditer(text)]
                found += [(name, match[0], match.groupdict()) for text in texts for match in regexes[-1].finditer(text)]
    return found


def render(template, values):
    """The Handlebars that Renovate's autoReplaceStringTemplate uses here, `{{#if name}}...{{/if}}` and
    `{{{name}}}`: hand-written, as no Handlebars library is among the test dependencies."""
    template = re.sub(r"\{\{#if (\w+)\}\}(.*?)\{\{/if\}\}", lambda m: m[2] if values.get(m[1]) else "", template)
    rendered = re.sub(r"\{\{\{(\w+)\}\}\}", lambda m: values[m[1]], template)
    assert "{{" not in rendered, rendered
    return rendered


@pytest.mark.nested
def test_renovate_pins_each_base_image_in_every_place_that_must_agree_and_the_pinned_copies_still_agree(tmp_path):
    assert (RENOVATE["enabledManagers"], RENOVATE["pinDigests"]) == (["custom.regex"], True)
    [manager] = RENOVATE["customManagers"]
    assert (manager["datasourceTemplate"], manager["versioningTemplate"]) == ("docker", "docker")
    # Digests only: no rule may re-enable the tag updates that the first one turns off.
    assert RENOVATE["packageRules"][0] == {**RENOVATE["packageRules"][0], "matchManagers": ["custom.regex"],
                                           "matchUpdateTypes": ["major", "minor", "patch"], "enabled": False}
    assert not any(rule.get("enabled") for rule in RENOVATE["packageRules"])
    copy = copy_repository(tmp_path)
    found = renovate_references(copy)
    must_agree = {("Makefile", make_default(name)) for name in BASE_VARIABLES}
    must_agree |= {(path.relative_to(REPOSITORY).as_posix(), reference) for path in DOCKERFILES
                   for reference in re.findall(r"^ARG \w+_IMAGE=(\S+)$", path.read_text(), re.M)}
    must_agree |= {("compose.yaml", make_default("POSTGRES_IMAGE")),
                   ("k8s/base/db-statefulset.yaml", make_default("POSTGRES_IMAGE")),
                   ("k8s/components/backup/db-backup-cronjob.yaml", make_default("POSTGRES_IMAGE")),
                   ("Makefile", make_default("PROMETHEUS_IMAGE")),
                   ("compose.yaml", make_default("PROMETHEUS_IMAGE"))}
    assert must_agree <= {(name, reference) for name, reference, _ in found}
    # Renovate's pin, or its next digest, as it writes them: each reference it found becomes name:tag@digest.
    for name, reference, groups in found:
        tagged = f"{groups['depName']}:{groups['currentValue']}"
        assert reference in (tagged, f"{tagged}@{groups['currentDigest']}")
        pinned = render(manager["autoReplaceStringTemplate"],
                        {**groups, "newValue": groups["currentValue"], "newDigest": PINNED_DIGEST})
        assert pinned == f"{tagged}@{PINNED_DIGEST}"
        text = (copy / name).read_text()
        (copy / name).write_text(text.replace(reference, pinned, 1))
    # The next run finds each digest, to keep it current.
    assert {(name, groups["currentDigest"]) for name, _, groups in renovate_references(copy)} == {
        (name, PINNED_DIGEST) for name, _, _ in found}
    env = {name: value for name, value in os.environ.items() if name not in {*BASE_VARIABLES, "IMAGE"}}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "proof/tests/test_project.py", "-m", "not nested"],
                            cwd=copy, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert make_default("POSTGRES_IMAGE", copy) == f"{make_default('POSTGRES_IMAGE').split('@')[0]}@{PINNED_DIGEST}"


def test_kubernetes_reaches_the_database_and_migrates_as_compose_does():
    literals = next(generator["literals"] for generator in k8s_base("kustomization.yaml")["configMapGenerator"]
                    if generator["name"] == "web")
    assert f"DATABASE_URL={DATABASE_URL}" in literals
    assert [c["command"] for c in containers(k8s_base("web-deployment.yaml"), "initContainers")] == [MIGRATE]


def test_the_bench_ceiling_runs_gunicorn_with_the_services_worker_settings(tmp_path):
    command = re.search(r"^CMD (\[.*?\])$", (REPOSITORY / "proof" / "bench" / "ceiling" / "Dockerfile").read_text(),
                        re.M | re.S)[1]
    options = dict(re.findall(r'"--([a-z-]+)", "([^"]+)"', command))
    settings = gunicorn_settings("workers", "worker_connections", "keepalive")
    assert options["workers"] == str(settings["workers"])
    for option, setting in (("worker-connections", "worker_connections"), ("keep-alive", "keepalive")):
        assert options[option] == str(settings[setting]), option
    # The service's worker class is gunicorn's gevent worker with changes of its own (serving.py), which a bare
    # WSGI callable does not need: the ceiling runs the gevent worker itself.
    assert options["worker-class"] == "gevent" and subprocess.run(
        [sys.executable, "-c", "import sys, runpy; from gunicorn.util import load_class; "
         "from gunicorn.workers.ggevent import GeventWorker; "
         "sys.exit(not issubclass(load_class(runpy.run_path('gunicorn.conf.py')['worker_class']), GeventWorker))"],
        cwd=REPOSITORY, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}).returncode == 0


def test_the_timing_promises_the_tests_hold_the_service_to_are_what_its_settings_and_app_py_set():
    settings = gunicorn_settings("graceful_timeout", "keepalive", "serving.BODY_TIMEOUT_SECONDS")
    assert (settings["graceful_timeout"], settings["keepalive"], settings["serving.BODY_TIMEOUT_SECONDS"]) == (
        GRACEFUL_TIMEOUT, KEEPALIVE_SECONDS, BODY_TIMEOUT_SECONDS)
    assert (app.DATABASE_WAIT_SECONDS, app.DATABASE_TIMEOUT_SECONDS) == (DATABASE_WAIT_SECONDS,
                                                                         DATABASE_TIMEOUT_SECONDS)


def test_the_renovate_config_follows_renovates_published_schema_and_ci_checks_it():
    check_jsonschema = Path(sys.prefix) / "scan" / "bin" / "check-jsonschema"
    assert check_jsonschema.exists(), f"{check_jsonschema} is missing: `make venv` installs the scanners"
    renovate = REPOSITORY / ".github" / "renovate.json"
    result = subprocess.run([str(check_jsonschema), "--builtin-schema", "vendor.renovate", str(renovate)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lint = " ".join(step.get("run", "") for step in WORKFLOW["jobs"]["lint"]["steps"])
    assert "--builtin-schema vendor.renovate .github/renovate.json" in lint


def test_the_ci_cluster_runs_the_oldest_kubernetes_the_manifests_support():
    versions = (REPOSITORY / ".ci" / "cluster" / "versions.sh").read_text()
    pinned = re.search(r"^KUBERNETES_VERSION=v(\d+\.\d+)\.\d+$", versions, re.M)
    assert pinned and pinned[1] == KUBERNETES_VERSIONS[0]
