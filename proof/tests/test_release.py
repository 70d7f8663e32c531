"""`make release-local` (.ci/release/): each variant pushed to a local registry by the digest of its archive, signed
with a key pair of the run, verified by digest, refused once its tag names another image, and described by an SBOM
that sees the whole image: its Python, gunicorn, psycopg with the libpq it bundles, and the Debian packages.

The release runs once per module, on images of its own (RELEASE_IMAGE, default release-<IMAGE>), so it never retags
the images the other tests build; its registry's state is a folder of the module's, removed at the end.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest
from project import IMAGE, ROOT, VARIANTS

pytestmark = pytest.mark.docker

RELEASE_IMAGE = os.environ.get("RELEASE_IMAGE", f"release-{IMAGE}")
OUT = ROOT / "build" / "release"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def tool(name):
    """A tool .ci/release/build made (cached by version: this only reads the cache)."""
    built = subprocess.run(["bash", str(ROOT / ".ci" / "release" / "build"), name], capture_output=True, text=True,
                           timeout=3600, check=True).stdout
    return built.splitlines()[-1].removeprefix(f"{name}=")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """One `make release-local`: {"output": its stdout, "refs": {variant: REGISTRY/IMAGE@DIGEST}, "registry": ...}."""
    if not shutil.which("go"):
        pytest.skip("no Go toolchain on PATH: .ci/release/build builds crane, cosign and syft with it")
    env = {**os.environ, "NOTES_REGISTRY_STATE": str(tmp_path_factory.mktemp("registry") / "state")}
    try:
        result = subprocess.run(["make", "--no-print-directory", "release-local", f"IMAGE={RELEASE_IMAGE}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=5400, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        lines = result.stdout.strip().splitlines()
        last = [line.split(" ") for line in lines[-len(VARIANTS):]]
        refs = dict(last)
        registry = refs[VARIANTS[0]].split("/")[0]
        yield {"output": result.stdout, "refs": refs, "registry": registry, "env": env}
    finally:
        subprocess.run(["bash", str(ROOT / ".ci" / "registry" / "down")], env=env, capture_output=True)


def registry_script(name, state):
    return subprocess.run(["bash", str(ROOT / ".ci" / "registry" / name)], capture_output=True, text=True,
                          timeout=3600, env={**os.environ, "NOTES_REGISTRY_STATE": str(state)})


def test_the_registry_starts_once_on_loopback_and_down_stops_it_and_removes_its_blobs(tmp_path):
    if not shutil.which("go"):
        pytest.skip("no Go toolchain on PATH: .ci/release/build builds crane with it")
    state = tmp_path / "state"
    try:
        first, second = registry_script("up", state), registry_script("up", state)
        assert first.returncode == second.returncode == 0, first.stderr + second.stderr
        assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]  # the same registry, reused
        port = re.fullmatch(r"REGISTRY=127\.0\.0\.1:(\d+)", first.stdout.splitlines()[-1])[1]
        pid = int((state / "registry.pid").read_text())
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening.split()[3] == f"127.0.0.1:{port}"
    finally:
        down = registry_script("down", state)
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    assert not Path(f"/proc/{pid}").exists()


def test_up_names_the_failing_step_on_one_line(tmp_path):
    if not shutil.which("go"):
        pytest.skip("no Go toolchain on PATH: .ci/release/build builds crane with it")
    (tmp_path / "file").write_text("")
    up = registry_script("up", tmp_path / "file" / "state")  # a folder that cannot be created
    assert up.returncode != 0
    assert up.stderr.strip().splitlines() == [f"up: cannot create {tmp_path}/file/state"], up.stderr


def verify(reference, key=OUT / "cosign.pub", env=None):
    """cosign verify as the release runs it: offline, the key the only thing trusted."""
    return subprocess.run([tool("cosign"), "verify", "--key", str(key), "--trusted-root",
                           str(OUT / "trusted_root.json"), "--insecure-ignore-tlog=true", reference],
                          capture_output=True, text=True, env={**(env or os.environ), "COSIGN_PASSWORD": ""})


def test_the_last_lines_name_each_variant_by_digest_in_the_local_registry(release):
    assert list(release["refs"]) == list(VARIANTS)
    for ref in release["refs"].values():
        assert re.fullmatch(rf"127\.0\.0\.1:\d+/{re.escape(RELEASE_IMAGE)}@{DIGEST.pattern}", ref), ref


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pushed_digest_is_the_archives_and_the_tag_names_it(release, variant):
    digest = release["refs"][variant].split("@")[1]
    printed = dict(re.findall(rf"^{variant}: (archive's manifest|pushed) +({DIGEST.pattern})", release["output"],
                              re.M))
    assert printed == {"archive's manifest": digest, "pushed": digest}
    # Computed again here, from the archive alone and from the registry.
    crane = tool("crane")
    archive = subprocess.run([crane, "digest", "--tarball", str(OUT / f"{variant}.tar")], capture_output=True,
                             text=True, check=True).stdout.strip()
    held = subprocess.run([crane, "digest", f"{release['registry']}/{RELEASE_IMAGE}:{variant}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert archive == held == digest


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_signed_digest_verifies_with_the_runs_public_key_only(release, variant, tmp_path):
    ref = release["refs"][variant]
    verified = verify(ref)
    assert verified.returncode == 0, verified.stderr
    [claim] = json.loads(verified.stdout)
    assert claim["critical"]["image"]["docker-manifest-digest"] == ref.split("@")[1]
    # Another key pair's public key does not verify the same signature.
    subprocess.run([tool("cosign"), "generate-key-pair"], cwd=tmp_path, capture_output=True, check=True,
                   env={**os.environ, "COSIGN_PASSWORD": ""})
    assert verify(ref, key=tmp_path / "cosign.pub").returncode != 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_tag_moved_to_another_image_fails_verification_while_the_signed_digest_still_passes(release, variant):
    assert re.search(rf"^{variant}: \S+:{variant} -> {DIGEST.pattern}: verification fails", release["output"], re.M)
    assert re.search(rf"^{variant}: \S+@{DIGEST.pattern} still verifies$", release["output"], re.M)
    # Again here, and the tag put back on the signed image afterwards.
    crane, ref = tool("crane"), release["refs"][variant]
    tag = f"{release['registry']}/{RELEASE_IMAGE}:{variant}"
    subprocess.run([crane, "mutate", tag, "--label", "tampered-by=test_release", "--tag", tag], capture_output=True,
                   check=True)
    try:
        assert verify(tag).returncode != 0
        assert verify(ref).returncode == 0
    finally:
        subprocess.run([crane, "tag", ref, variant], capture_output=True, check=True)
    assert verify(tag).returncode == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_signed_digest_deploys_pulled_by_digest_and_is_the_built_image(release, variant):
    """Verify, then deploy by digest: the engine pulls the reference the release printed (127.0.0.0/8 is an insecure
    registry to Docker by default) and runs it; its image is the one `make build` tagged."""
    ref = release["refs"][variant]
    assert verify(ref).returncode == 0
    name = f"release-deploy-{variant}-{os.getpid()}"
    try:
        subprocess.run(["docker", "pull", "--quiet", ref], capture_output=True, text=True, check=True, timeout=300)
        subprocess.run(["docker", "run", "--detach", "--name", name, "--publish", "127.0.0.1::8000", ref],
                       capture_output=True, text=True, check=True)
        port = subprocess.run(["docker", "port", name, "8000"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the deployed image did not answer /healthz within 60 s"
                time.sleep(0.5)
        running = subprocess.run(["docker", "container", "inspect", "--format", "{{.Image}}", name],
                                 capture_output=True, text=True, check=True).stdout.strip()
        built = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", f"{RELEASE_IMAGE}:{variant}"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert running == built
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)
        subprocess.run(["docker", "image", "rm", ref], capture_output=True)


# ---------------------------------------------------------------------------------------------------------------
# The SBOMs


def sbom(variant):
    document = json.loads((OUT / f"{variant}.spdx.json").read_text())
    assert document["spdxVersion"].startswith("SPDX-2.")
    return document


def versions(document, name):
    return {package.get("versionInfo") for package in document["packages"] if package["name"] == name}


def purls(document):
    return [reference["referenceLocator"] for package in document["packages"]
            for reference in package.get("externalRefs", []) if reference["referenceType"] == "purl"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sbom_describes_the_signed_digest(release, variant):
    [image] = [package for package in sbom(variant)["packages"] if package.get("primaryPackagePurpose") == "CONTAINER"]
    assert image["versionInfo"] == release["refs"][variant].split("@")[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sbom_lists_python_gunicorn_and_psycopg_at_their_pinned_versions(release, variant):
    document = sbom(variant)
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    found = purls(document)
    for package in ("gunicorn", "psycopg", "psycopg-binary", "flask"):
        assert any(purl.startswith(f"pkg:pypi/{package}@{pinned[package]}") for purl in found), package
    # The interpreter itself, whichever way syft sees it (the Debian package or the binary).
    pythons = versions(document, "python3.13") | versions(document, "python")
    assert any(version and version.startswith("3.13") for version in pythons), pythons


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sbom_sees_the_libpq_that_psycopg_binary_bundles(release, variant):
    files = [entry["fileName"] for entry in sbom(variant).get("files", [])]
    assert any(re.search(r"psycopg_binary\.libs/libpq[-.]", name) for name in files), [
        name for name in files if "psycopg" in name][:20]


def dpkg_status_d(archive):
    """{package: version} from the distroless image's /var/lib/dpkg/status.d/, read from its `docker save` archive."""
    found = {}
    with tarfile.open(archive) as saved:
        manifest = json.load(saved.extractfile("manifest.json"))
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=saved.extractfile(layer)) as contents:
                for member in contents:
                    name = member.name.lstrip("./")
                    if member.isfile() and name.startswith("var/lib/dpkg/status.d/"):
                        text = contents.extractfile(member).read().decode()
                        for paragraph in re.split(r"\n\s*\n", text):
                            fields = dict(re.findall(r"^(Package|Version): (\S+)$", paragraph, re.M))
                            if "Package" in fields:
                                found[fields["Package"]] = fields["Version"]
    return found


def test_the_distroless_sbom_lists_every_debian_package_of_its_dpkg_status(release):
    if "distroless" not in VARIANTS:
        pytest.skip("no distroless variant")
    installed = dpkg_status_d(OUT / "distroless.tar")
    assert {"libc6", "libssl3t64", "python3.13", "tzdata"} <= installed.keys(), installed
    document = sbom("distroless")
    debs = {}
    for purl in purls(document):
        if found := re.match(r"pkg:deb/debian/([^@]+)@([^?]+)", purl):
            debs[unquote(found[1])] = unquote(found[2])
    missing = {name: version for name, version in installed.items() if debs.get(name) != version}
    assert missing == {}, f"in status.d but not in the SBOM at that version: {missing}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sbom_is_attested_to_the_signed_digest(release, variant):
    ref = release["refs"][variant]
    verified = subprocess.run([tool("cosign"), "verify-attestation", "--key", str(OUT / "cosign.pub"), "--type",
                               "spdxjson", "--trusted-root", str(OUT / "trusted_root.json"),
                               "--insecure-ignore-tlog=true", ref], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    [envelope] = [json.loads(line) for line in verified.stdout.splitlines()]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["subject"][0]["digest"] == {"sha256": ref.split("@sha256:")[1]}
    assert statement["predicate"] == sbom(variant)


def test_vulnerability_matching_is_skipped_and_says_why(release):
    assert re.search(r"^vulnerability matching: SKIPPED \(.+database.+\)$", release["output"], re.M)


def test_the_public_key_is_published_and_the_private_key_is_not(release):
    assert (OUT / "cosign.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert not list(Path(OUT).rglob("*.key"))
