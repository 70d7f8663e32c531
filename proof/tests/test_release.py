"""`make release-local` (.ci/release/): ci.yml's image and publish jobs against a local registry. Each variant is
built once for linux/amd64 and linux/arm64 with BuildKit's SBOM and provenance into an OCI archive, run on both
platforms, pushed by the archive's digest, signed with a key pair of the run, verified by digest, refused once its
tag names another image, and described per platform by an SBOM that sees the whole image: its Python, gunicorn,
psycopg with the libpq it bundles, and the Debian packages.

The release runs once per module, as images of its own (RELEASE_IMAGE, default release-<IMAGE>), its registry's
state a folder of the module's. Where `bash .ci/run` has just run the release as its own phase, RELEASE_LOG names
that run's output and the module checks that release instead of making another.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from project import DEFAULT_VARIANT, IMAGE, ROOT, VARIANTS

pytestmark = pytest.mark.docker

RELEASE_IMAGE = os.environ.get("RELEASE_IMAGE", f"release-{IMAGE}")
OUT = ROOT / "build" / "release"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def tool(name):
    """A tool .ci/release/build made (cached by version: this only reads the cache)."""
    built = subprocess.run(["bash", str(ROOT / ".ci" / "release" / "build"), name], capture_output=True, text=True,
                           timeout=3600, check=True).stdout
    return built.splitlines()[-1].removeprefix(f"{name}=")


def released(output):
    refs = dict(line.split(" ") for line in output.strip().splitlines()[-len(VARIANTS):])
    registry, image = refs[VARIANTS[0]].split("@")[0].split("/", 1)
    return {"output": output, "refs": refs, "registry": registry, "image": image}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """One `make release-local`: {"output": its stdout, "refs": {variant: REGISTRY/IMAGE@DIGEST}, "registry": ...}."""
    if log := os.environ.get("RELEASE_LOG"):
        yield released(Path(log).read_text())
        return
    if not shutil.which("go"):
        pytest.skip("no Go toolchain on PATH: .ci/release/build builds crane, cosign, syft and buildkit with it")
    env = {**os.environ, "NOTES_REGISTRY_STATE": str(tmp_path_factory.mktemp("registry") / "state")}
    try:
        result = subprocess.run(["make", "--no-print-directory", "release-local", f"IMAGE={RELEASE_IMAGE}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=5400, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield released(result.stdout)
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


class Archive:
    """An OCI archive as buildx writes it, read with tarfile alone: none of the release's own code."""

    def __init__(self, path):
        self.tar = tarfile.open(path)

    def json(self, name):
        return json.load(self.tar.extractfile(name))

    def blob(self, digest):
        return self.tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}").read()

    def index(self):
        [top] = self.json("index.json")["manifests"]
        return top["digest"], json.loads(self.blob(top["digest"]))

    def images(self):
        """{os/arch: manifest descriptor}, and {manifest digest: attestation manifest} from the index."""
        _, index = self.index()
        platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}": m for m in index["manifests"]
                     if m["platform"]["os"] != "unknown"}
        attestations = {m["annotations"]["vnd.docker.reference.digest"]: json.loads(self.blob(m["digest"]))
                        for m in index["manifests"]
                        if m.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"}
        return platforms, attestations

    def files(self, platform, prefix):
        """{path: bytes} of the files under prefix in that platform's layers."""
        platforms, _ = self.images()
        manifest = json.loads(self.blob(platforms[platform]["digest"]))
        found = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(self.blob(layer["digest"]))) as contents:
                for member in contents:
                    name = member.name.lstrip("./")
                    if member.isfile() and name.startswith(prefix):
                        found[name] = contents.extractfile(member).read()
        return found


def archive(variant):
    return Archive(OUT / f"{variant}.oci.tar")


def wanted_platforms():
    return sorted(yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["env"]["PLATFORMS"]
                  .split(","))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_release_builds_with_the_flags_of_ci_ymls_build_step(variant):
    """workflow.py turns the build step's inputs into buildx's flags; what it may not map it refuses, naming it."""
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    [row] = [row for row in ci["jobs"]["image"]["strategy"]["matrix"]["include"] if row["variant"] == variant]
    given = ["env.ARCHIVE=out.tar", "github.sha=0123abc", "steps.date.outputs.created=2026-12-05T00:00:00Z",
             "github.server_url=file://", "github.repository=/here"]
    arguments = subprocess.run([sys.executable, str(ROOT / ".ci" / "release" / "workflow.py"), "build-args", variant,
                                *given], capture_output=True, text=True, check=True).stdout.splitlines()
    assert arguments[-1] == "."
    assert {f"--file={row['dockerfile']}", f"--platform={ci['env']['PLATFORMS']}", "--output=type=oci,dest=out.tar",
            "--sbom=true", "--provenance=mode=max", "--pull"} <= set(arguments)
    build_args = [arguments[i + 1] for i, argument in enumerate(arguments) if argument == "--build-arg"]
    assert "REVISION=0123abc" in build_args and "CREATED=2026-12-05T00:00:00Z" in build_args
    missing = subprocess.run([sys.executable, str(ROOT / ".ci" / "release" / "workflow.py"), "build-args", variant,
                              *given[:-1]], capture_output=True, text=True)
    assert missing.returncode != 0 and "github.repository=VALUE" in missing.stderr


def test_the_last_lines_name_each_variant_by_digest_in_the_local_registry(release):
    assert list(release["refs"]) == list(VARIANTS)
    for ref in release["refs"].values():
        assert re.fullmatch(rf"127\.0\.0\.1:\d+/{re.escape(release['image'])}@{DIGEST.pattern}", ref), ref


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_archive_holds_every_platform_each_with_its_sbom_and_provenance(release, variant):
    platforms, attestations = archive(variant).images()
    assert sorted(platforms) == wanted_platforms()
    for platform, descriptor in platforms.items():
        attestation = attestations[descriptor["digest"]]
        types = sorted(layer["annotations"]["in-toto.io/predicate-type"] for layer in attestation["layers"])
        assert len(types) == 2 and types[0].startswith("https://slsa.dev/provenance/"), (platform, types)
        assert types[1] == "https://spdx.dev/Document", (platform, types)


@pytest.mark.parametrize("variant", VARIANTS)
def test_buildkits_own_sbom_of_each_platform_lists_gunicorn_and_psycopg(release, variant):
    """The SBOM the build attached (BuildKit's generator, syft behind its protocol), not the one made after the push."""
    built = archive(variant)
    platforms, attestations = built.images()
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    for platform, descriptor in platforms.items():
        [layer] = [layer for layer in attestations[descriptor["digest"]]["layers"]
                   if layer["annotations"]["in-toto.io/predicate-type"] == "https://spdx.dev/Document"]
        # Its subject is the image the attestation manifest points at (vnd.docker.reference.digest).
        found = purls(json.loads(built.blob(layer["digest"]))["predicate"])
        for package in ("gunicorn", "psycopg"):
            assert any(purl.startswith(f"pkg:pypi/{package}@{pinned[package]}") for purl in found), (platform, package)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pushed_digest_is_the_archives_and_the_tag_names_it(release, variant):
    digest = release["refs"][variant].split("@")[1]
    printed = dict(re.findall(rf"^{variant}: (built|pushed) +({DIGEST.pattern})", release["output"], re.M))
    assert printed == {"built": digest, "pushed": digest}
    # Again here, from the archive alone and from the registry.
    held = subprocess.run([tool("crane"), "digest", f"{release['registry']}/{release['image']}:{variant}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert archive(variant).index()[0] == held == digest


@pytest.mark.parametrize("variant", VARIANTS)
def test_both_platforms_ran_the_smoke_test_and_arm64_stored_a_note_through_compose(release, variant):
    for platform in wanted_platforms():
        assert re.search(rf"^{variant}: {platform}: healthy, / greets", release["output"], re.M), platform
    assert re.search(rf"^{variant}: linux/arm64 through Compose: / says \"Hello, .+!\", /healthz 200, note \d+ stored "
                     r"and read back$", release["output"], re.M)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_arm64_image_pulled_by_digest_runs_an_arm64_interpreter(release, variant):
    """Under QEMU, through binfmt_misc: the interpreter in the pushed index's arm64 image is an aarch64 one."""
    ref = release["refs"][variant]
    try:
        ran = subprocess.run(["docker", "run", "--rm", "--platform", "linux/arm64", "--entrypoint", "python3.13", ref,
                              "-c", "import platform; print(platform.machine())"], capture_output=True, text=True,
                             timeout=300)
        assert ran.stdout.strip() == "aarch64", ran.stderr
    finally:
        subprocess.run(["docker", "image", "rm", ref], capture_output=True)


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
    # Again here, and the tag put back on the signed index afterwards.
    crane, ref = tool("crane"), release["refs"][variant]
    repository = f"{release['registry']}/{release['image']}"
    amd64 = subprocess.run([crane, "digest", "--platform", "linux/amd64", ref], capture_output=True, text=True,
                           check=True).stdout.strip()
    subprocess.run([crane, "mutate", f"{repository}@{amd64}", "--label", "tampered-by=test_release", "--tag",
                    f"{repository}:{variant}"], capture_output=True, check=True)
    try:
        assert verify(f"{repository}:{variant}").returncode != 0
        assert verify(ref).returncode == 0
    finally:
        subprocess.run([crane, "tag", ref, variant], capture_output=True, check=True)
    assert verify(f"{repository}:{variant}").returncode == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_signed_digest_deploys_pulled_by_digest_and_is_the_archives_amd64_image(release, variant):
    """Verify, then deploy by digest: the engine pulls the reference the release printed (127.0.0.0/8 is an insecure
    registry to Docker by default), takes its amd64 image and runs it; that image is the archive's."""
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
        built = archive(variant)
        platforms, _ = built.images()
        config = json.loads(built.blob(platforms["linux/amd64"]["digest"]))["config"]["digest"]
        assert running == config
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)
        subprocess.run(["docker", "image", "rm", ref], capture_output=True)


# ---------------------------------------------------------------------------------------------------------------
# The SBOMs made from the registry after the push, one per platform

PLATFORM_CASES = [(variant, platform.removeprefix("linux/")) for variant in VARIANTS for platform in
                  wanted_platforms()]


def sbom(variant, arch):
    document = json.loads((OUT / f"{variant}-{arch}.spdx.json").read_text())
    assert document["spdxVersion"].startswith("SPDX-2.")
    return document


def versions(document, name):
    return {package.get("versionInfo") for package in document["packages"] if package["name"] == name}


def purls(document):
    return [reference["referenceLocator"] for package in document["packages"]
            for reference in package.get("externalRefs", []) if reference["referenceType"] == "purl"]


@pytest.mark.parametrize(("variant", "arch"), PLATFORM_CASES)
def test_the_sbom_describes_the_signed_digest(release, variant, arch):
    [image] = [package for package in sbom(variant, arch)["packages"]
               if package.get("primaryPackagePurpose") == "CONTAINER"]
    assert image["versionInfo"] == release["refs"][variant].split("@")[1]


@pytest.mark.parametrize(("variant", "arch"), PLATFORM_CASES)
def test_the_sbom_lists_python_gunicorn_and_psycopg_at_their_pinned_versions(release, variant, arch):
    document = sbom(variant, arch)
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    found = purls(document)
    for package in ("gunicorn", "psycopg", "psycopg-binary", "flask"):
        assert any(purl.startswith(f"pkg:pypi/{package}@{pinned[package]}") for purl in found), package
    # The interpreter itself, whichever way syft sees it (the Debian package or the binary).
    pythons = versions(document, "python3.13") | versions(document, "python")
    assert any(version and version.startswith("3.13") for version in pythons), pythons
    # Debian's packages of that platform, and none of another: the architecture is in the deb purls that name one.
    arches = {found[1] for purl in purls(document) if (found := re.search(r"^pkg:deb/debian/.*[?&]arch=(\w+)", purl))}
    assert arches - {"all"} == {arch}, arches


@pytest.mark.parametrize(("variant", "arch"), PLATFORM_CASES)
def test_the_sbom_sees_the_libpq_that_psycopg_binary_bundles(release, variant, arch):
    files = [entry["fileName"] for entry in sbom(variant, arch).get("files", [])]
    assert any(re.search(r"psycopg_binary\.libs/libpq[-.]", name) for name in files), [
        name for name in files if "psycopg" in name][:20]


@pytest.mark.parametrize("arch", [platform.removeprefix("linux/") for platform in wanted_platforms()])
def test_the_distroless_sbom_lists_every_debian_package_of_its_dpkg_status(release, arch):
    if "distroless" not in VARIANTS:
        pytest.skip("no distroless variant")
    installed = {}
    for text in archive("distroless").files(f"linux/{arch}", "var/lib/dpkg/status.d/").values():
        for paragraph in re.split(r"\n\s*\n", text.decode()):
            fields = dict(re.findall(r"^(Package|Version): (\S+)$", paragraph, re.M))
            if "Package" in fields:
                installed[fields["Package"]] = fields["Version"]
    assert {"libc6", "libssl3t64", "python3.13", "tzdata"} <= installed.keys(), installed
    debs = {}
    for purl in purls(sbom("distroless", arch)):
        if found := re.match(r"pkg:deb/debian/([^@]+)@([^?]+)", purl):
            debs[unquote(found[1])] = unquote(found[2])
    missing = {name: version for name, version in installed.items() if debs.get(name) != version}
    assert missing == {}, f"in status.d but not in the SBOM at that version: {missing}"


@pytest.mark.parametrize(("variant", "arch"), PLATFORM_CASES)
def test_the_sbom_is_attested_to_its_platforms_digest(release, variant, arch):
    platforms, _ = archive(variant).images()
    manifest = platforms[f"linux/{arch}"]["digest"]
    ref = f"{release['registry']}/{release['image']}@{manifest}"
    verified = subprocess.run([tool("cosign"), "verify-attestation", "--key", str(OUT / "cosign.pub"), "--type",
                               "spdxjson", "--trusted-root", str(OUT / "trusted_root.json"),
                               "--insecure-ignore-tlog=true", ref], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    [envelope] = [json.loads(line) for line in verified.stdout.splitlines()]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["subject"][0]["digest"] == {"sha256": manifest.removeprefix("sha256:")}
    assert statement["predicate"] == sbom(variant, arch)


def test_vulnerability_matching_is_skipped_and_says_why(release):
    assert re.search(r"^vulnerability matching: SKIPPED \(.+database.+\)$", release["output"], re.M)


def test_the_public_key_is_published_and_the_private_key_is_not(release):
    assert (OUT / "cosign.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert not list(Path(OUT).rglob("*.key"))


# ---------------------------------------------------------------------------------------------------------------
# Deployed by digest into a cluster


@pytest.mark.cluster
def test_the_clusters_containerd_pulls_the_signed_digest_from_the_registry_and_runs_it(release):
    """Where a cluster runs on this machine (CLUSTER_CONTEXT, as `bash .ci/run` sets it), its containerd pulls the
    released index by digest from the local registry (plain HTTP on loopback, containerd's default for 127.0.0.1)
    and runs its own platform's image."""
    context = os.environ.get("CLUSTER_CONTEXT")
    if not context:
        pytest.skip("CLUSTER_CONTEXT is not set: no cluster to deploy the released digest into")
    ref = release["refs"][DEFAULT_VARIANT]
    namespace = f"release-{os.getpid()}"

    def kubectl(*args, **kwargs):
        return subprocess.run(["kubectl", "--context", context, *args], capture_output=True, text=True, timeout=300,
                              **kwargs)

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": namespace},
           "spec": {"containers": [{"name": "web", "image": ref, "imagePullPolicy": "Always",
                                    "env": [{"name": "NAME", "value": "cluster"}],
                                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8000}},
                                    # Admitted under the restricted Pod Security profile too.
                                    "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]},
                                                        "seccompProfile": {"type": "RuntimeDefault"}}}]}}
    assert kubectl("create", "namespace", namespace).returncode == 0
    try:
        created = kubectl("apply", "-f", "-", input=json.dumps(pod))
        assert created.returncode == 0, created.stderr
        ready = kubectl("--namespace", namespace, "wait", "pod/web", "--for=condition=Ready", "--timeout=180s")
        status = json.loads(kubectl("--namespace", namespace, "get", "pod/web", "-o", "json").stdout)["status"]
        assert ready.returncode == 0, (ready.stderr, status)
        [container] = status["containerStatuses"]
        assert container["imageID"] == ref, container
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
